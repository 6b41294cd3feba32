"""Session collectors, the session service's rules and HLS session URLs, on a clock the test moves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from dragonfork.config import SessionsSettings
from dragonfork.sessions import (
    Client,
    HlsSessions,
    InvalidSession,
    SessionRefused,
    SessionRegistry,
)
from dragonfork.sessions.collector import Collector
from dragonfork.sessions.ffmpeg import network_host
from dragonfork.sessions.hls import SESSION_ID

VIEWER = Client("192.0.2.10", user_agent="test-player/1.0", referrer="example.org")

MEDIA_PLAYLIST = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:7
#EXTINF:2.000000,
demo_0007.ts
#EXTINF:2.000000,
demo_0008.ts?token=abc
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def registry(clock: Clock, tmp_path: Path | None = None, **settings: object) -> SessionRegistry:
    values: dict[str, object] = {"ip_ignorelist": ["127.0.0.1/32", "::1/128"], **settings}
    return SessionRegistry(SessionsSettings.model_validate(values), tmp_path, clock=clock)


# --- one collector ------------------------------------------------------------------------------------------


def test_session_is_pending_until_its_first_bytes(clock: Clock) -> None:
    collector = Collector("hls", clock=clock)
    collector.register("s1", reference="demo", location="/memfs/demo.m3u8", client=VIEWER)
    assert collector.active() == [] and len(collector) == 1
    collector.egress("s1", 1500)
    [session] = collector.active_json()
    assert session["id"] == "s1"
    assert session["reference"] == "demo"
    assert session["local"] == "/memfs/demo.m3u8"
    assert session["remote"] == "192.0.2.10"
    assert session["extra"] == "referrer=example.org test-player/1.0"
    assert session["bytes_tx"] == 1500 and session["bytes_rx"] == 0
    assert isinstance(session["created_at"], int)


def test_bandwidth_is_the_last_ten_seconds(clock: Clock) -> None:
    collector = Collector("webrtc", clock=clock)
    collector.register("s1", reference="demo", location="", client=VIEWER)
    for _ in range(10):
        collector.egress("s1", 128 * 1024 // 8)  # 128 kbit each second
        clock.now += 1
    clock.now -= 1
    assert collector.active_json()[0]["bandwidth_tx_kbit"] == pytest.approx(128)
    assert collector.summary_json()["active"]["bandwidth_tx_mbit"] == pytest.approx(0.125)
    clock.now += 11
    assert collector.active_json()[0]["bandwidth_tx_kbit"] == 0


def test_idle_session_expires_and_goes_into_the_history(clock: Clock) -> None:
    collector = Collector("hls", clock=clock)
    collector.register("s1", reference="demo", location="/memfs/demo.m3u8", client=VIEWER, idle_timeout=30)
    collector.egress("s1", 3 * 1024 * 1024)
    clock.now += 29
    collector.expire()
    assert len(collector.active()) == 1
    clock.now += 2
    collector.expire()
    assert collector.active() == []
    summary = collector.summary_json()["summary"]
    assert summary["sessions"] == 1 and summary["traffic_tx_mb"] == 3
    assert summary["reference"] == {"demo": {"sessions": 1, "traffic_rx_mb": 0, "traffic_tx_mb": 3}}
    assert summary["local"]["/memfs/demo.m3u8"]["sessions"] == 1
    assert summary["remote"]["192.0.2.10"]["local"]["/memfs/demo.m3u8"]["traffic_tx_mb"] == 3


def test_pending_session_is_dropped_after_five_seconds_without_history(clock: Clock) -> None:
    collector = Collector("hls", clock=clock)
    collector.register("s1", reference="demo", location="/x.m3u8", client=VIEWER, idle_timeout=30)
    clock.now += 6
    collector.expire()
    assert len(collector) == 0
    assert collector.summary_json()["summary"]["sessions"] == 0


def test_pulled_counter_feeds_deltas_and_its_last_bytes_on_close(clock: Clock) -> None:
    sent = [0]
    collector = Collector("webrtc", clock=clock)
    collector.register("v1", reference="demo", location="", client=VIEWER, counter=lambda: (0, sent[0]))
    collector.sample()
    assert collector.active() == []  # nothing sent yet
    sent[0] = 5000
    collector.sample()
    assert collector.active_json()[0]["bytes_tx"] == 5000
    sent[0] = 7000
    collector.close("v1")
    collector.close("v1")  # idempotent
    assert collector.summary_json()["summary"]["reference"]["demo"]["sessions"] == 1
    assert collector.history[("unknown", "192.0.2.10", "demo")].tx_bytes == 7000


# --- the service: ignore list, limits, widget counts, persistence -------------------------------------------


def test_loopback_is_ignored_by_default_and_other_clients_are_collected(clock: Clock) -> None:
    sessions = registry(clock)
    assert not sessions.collectable("127.0.0.1")
    assert not sessions.collectable("::1")
    assert not sessions.collectable("::ffff:127.0.0.1")
    assert not sessions.collectable("not an address")
    assert sessions.collectable("192.0.2.10")
    assert sessions.collectable("[2001:db8::1]")
    loopback = Client("127.0.0.1")
    assert sessions.open("webrtc", "v1", reference="demo", location="", client=loopback) is None
    assert sessions.open("webrtc", "v2", reference="demo", location="", client=VIEWER) is not None


def test_disabled_sessions_collect_nothing(clock: Clock) -> None:
    sessions = registry(clock, enable=False, max_sessions=1)
    assert sessions.open("webrtc", "v1", reference="demo", location="", client=VIEWER) is None
    assert sessions.open("webrtc", "v2", reference="demo", location="", client=VIEWER) is None


def test_max_sessions_refuses_new_viewers_per_collector(clock: Clock) -> None:
    sessions = registry(clock, max_sessions=2)
    for session_id in ("v1", "v2"):
        sessions.open("webrtc", session_id, reference="demo", location="", client=VIEWER)
    with pytest.raises(SessionRefused) as refused:
        sessions.open("webrtc", "v3", reference="demo", location="", client=VIEWER)
    assert refused.value.setting == "sessions.max_sessions"
    assert "too many webrtc sessions (2" in refused.value.message
    sessions.open("hls", "h1", reference="demo", location="", client=VIEWER)  # another collector
    sessions["webrtc"].close("v1")
    sessions.open("webrtc", "v3", reference="demo", location="", client=VIEWER)


def test_max_bitrate_counts_every_collector(clock: Clock) -> None:
    sessions = registry(clock, max_bitrate_mbit=1)
    sessions.open("hls", "h1", reference="demo", location="", client=VIEWER)
    sessions["hls"].egress("h1", 600 * 1024)  # 0.47 Mbit/s over 10 s
    sessions.check_admission("webrtc")
    sessions.open("webrtc", "v1", reference="demo", location="", client=VIEWER)
    sessions["webrtc"].egress("v1", 800 * 1024)  # together 1.09 Mbit/s
    with pytest.raises(SessionRefused) as refused:
        sessions.check_admission("hls")
    assert refused.value.setting == "sessions.max_bitrate_mbit"
    assert "sessions.max_bitrate_mbit (1)" in refused.value.message
    clock.now += 11
    sessions.check_admission("hls")


def test_new_limits_at_a_reload_hold_for_the_next_viewer_and_keep_the_open_ones(clock: Clock) -> None:
    sessions = registry(clock, max_sessions=1)
    sessions.open("webrtc", "v1", reference="demo", location="", client=VIEWER)
    with pytest.raises(SessionRefused):
        sessions.open("webrtc", "v2", reference="demo", location="", client=VIEWER)

    sessions.configure(SessionsSettings.model_validate({"max_sessions": 2, "ip_ignorelist": []}))

    sessions.open("webrtc", "v2", reference="demo", location="", client=VIEWER)
    assert len(sessions["webrtc"]) == 2  # the first viewer is still there
    assert sessions["webrtc"].summary_json()["active"]["max_sessions"] == 2
    assert sessions.collectable("127.0.0.1")  # loopback is no longer ignored
    sessions.configure(SessionsSettings.model_validate({"max_sessions": 1}))
    assert len(sessions["webrtc"]) == 2  # a lower limit refuses new viewers only
    with pytest.raises(SessionRefused):
        sessions.open("webrtc", "v3", reference="demo", location="", client=VIEWER)


def test_widget_counts_hls_and_webrtc_viewers_of_a_process(clock: Clock) -> None:
    sessions = registry(clock)
    sessions.open("webrtc", "v1", reference="demo", location="", client=VIEWER)
    sessions["webrtc"].egress("v1", 100)
    sessions.open("hls", "h1", reference="demo", location="", client=VIEWER, idle_timeout=30)
    sessions["hls"].egress("h1", 100)
    sessions.open("hls", "h2", reference="other", location="", client=VIEWER, idle_timeout=30)
    sessions["hls"].egress("h2", 100)
    assert sessions.viewers_of("demo", "") == (2, 2)
    sessions["webrtc"].close("v1")
    assert sessions.viewers_of("demo", "") == (1, 2)
    assert sessions.viewers_of("channel", "oth") == (1, 1)  # datarhei: reference prefix
    assert sessions.viewers_of("nobody", "") == (0, 0)


def test_totals_persist_across_restarts(clock: Clock, tmp_path: Path) -> None:
    first = registry(clock, tmp_path, persist=True)
    first.open("hls", "h1", reference="demo", location="/memfs/demo.m3u8", client=VIEWER)
    first["hls"].egress("h1", 2 * 1024 * 1024)
    first["hls"].close("h1")
    first.persist()
    stored = json.loads((tmp_path / "hls.json").read_text())
    assert list(stored["sessions"].values())[0]["total_txbytes"] == 2 * 1024 * 1024
    second = registry(clock, tmp_path, persist=True)
    assert second.summary_json(["hls"])["hls"]["summary"]["traffic_tx_mb"] == 2
    (tmp_path / "hls.json").write_text("{not json")
    assert registry(clock, tmp_path, persist=True).summary_json(["hls"])["hls"]["summary"]["sessions"] == 0


def test_unknown_collector_has_an_empty_summary(clock: Clock) -> None:
    summary = registry(clock).summary_json(["hlsingress"])["hlsingress"]
    assert summary["active"]["list"] == [] and summary["summary"]["sessions"] == 0


# --- HLS session URLs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileGet:
    """A GET of a file as the file-serving route describes it to the HLS sessions."""

    url: str
    query: str
    client: str
    user_agent: str
    referrer: str
    bytes_sent: int


def hls_request(
    path: str = "/memfs/demo.m3u8", query: str = "", client: Client = VIEWER, size: int = 0
) -> FileGet:
    return FileGet(path, query, client.address, client.user_agent, client.referrer, size)


def rewritten(hls: HlsSessions, request: FileGet, body: str = MEDIA_PLAYLIST) -> str:
    served = hls.playlist(request, body.encode())
    assert served is not None, "the playlist was not rewritten"
    return served.decode()


def session_of(uri: str) -> str:
    return parse_qs(urlsplit(uri).query)["session"][0]


def test_playlist_without_session_becomes_a_master_playlist_with_a_new_one(clock: Clock) -> None:
    hls = HlsSessions(registry(clock))
    lines = rewritten(hls, hls_request(query="token=abc")).splitlines()
    assert lines[:3] == ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-STREAM-INF:BANDWIDTH=1024"]
    assert lines[3].startswith("demo.m3u8?token=abc&session=")
    assert SESSION_ID.match(session_of(lines[3]))
    assert len(hls.collector) == 0  # the session exists once the player asks with it


def test_playlist_with_session_tags_every_segment_and_a_segment_activates(clock: Clock) -> None:
    hls = HlsSessions(registry(clock))
    session_id = session_of(rewritten(hls, hls_request()).splitlines()[3])
    served = rewritten(hls, hls_request(query=f"session={session_id}"))
    segments = [line for line in served.splitlines() if line.startswith("demo_")]
    assert segments == [f"demo_0007.ts?session={session_id}", f"demo_0008.ts?token=abc&session={session_id}"]
    assert "#EXT-X-MEDIA-SEQUENCE:7" in served
    assert hls.collector.active() == []
    hls.served(hls_request("/memfs/demo.m3u8", f"session={session_id}", size=len(served)))  # counted above
    hls.served(hls_request("/memfs/demo_0007.ts", f"session={session_id}", size=50_000))
    [session] = hls.collector.active_json()
    assert session["reference"] == "demo" and session["local"] == "/memfs/demo.m3u8"
    assert session["bytes_tx"] == 50_000 + len(served)


def test_master_playlist_gives_each_variant_its_own_session(clock: Clock) -> None:
    master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=8\nlow.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=1\nmaster.m3u8\n"
    lines = rewritten(HlsSessions(registry(clock)), hls_request("/memfs/master.m3u8"), master).splitlines()
    assert lines[2].startswith("low.m3u8?session=")
    assert lines[4].startswith("# m3u8 is referencing itself: master.m3u8?session=")


def test_ignored_client_gets_the_playlist_unchanged(clock: Clock) -> None:
    hls = HlsSessions(registry(clock, max_sessions=1))
    assert hls.playlist(hls_request(client=Client("127.0.0.1")), MEDIA_PLAYLIST.encode()) is None
    assert hls.playlist(hls_request("/memfs/demo_0007.ts"), b"not a playlist") is None


def test_forged_session_id_is_refused(clock: Clock) -> None:
    hls = HlsSessions(registry(clock))
    with pytest.raises(InvalidSession, match="session"):
        hls.playlist(hls_request(query="session=../../etc"), MEDIA_PLAYLIST.encode())


def test_hls_limit_refuses_new_players_but_not_one_already_watching(clock: Clock) -> None:
    hls = HlsSessions(registry(clock, max_sessions=1))
    session_id = session_of(rewritten(hls, hls_request()).splitlines()[3])
    hls.playlist(hls_request(query=f"session={session_id}"), MEDIA_PLAYLIST.encode())
    with pytest.raises(SessionRefused):
        hls.playlist(hls_request(), MEDIA_PLAYLIST.encode())
    hls.playlist(hls_request(query=f"session={session_id}"), MEDIA_PLAYLIST.encode())  # still served


# --- FFmpeg's network addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("rtmp://192.0.2.7/live/key", "192.0.2.7"),
        ("srt://[2001:db8::2]:6000?mode=caller", "2001:db8::2"),
        ("http://localhost:8080/memfs/x.m3u8", "127.0.0.1"),
        ("udp://127.0.0.1:5000?pkt_size=1316", "127.0.0.1"),
        ("/data/file.mp4", None),
        ("file:/data/file.mp4", None),
        ("testsrc2=size=320x240:rate=25", None),
        ("-", None),
        ("http://[bad/", None),
    ],
)
def test_network_host(address: str, host: str | None) -> None:
    assert network_host(address) == host
