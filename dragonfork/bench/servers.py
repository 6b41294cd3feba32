"""The two servers under test, each started in a temporary directory, bound to loopback, and always stopped.

- dragonfork: ``python -m dragonfork serve`` with a fresh database, one process playing the benchmark clip
  into its WebRTC legs, viewers over WHEP.
- Janus (Debian package ``janus``, installed with apt-get when missing): only the streaming plugin and the
  HTTP transport (on 127.0.0.1), one RTP mountpoint on 127.0.0.1 fed by dragonfork's own FFmpeg command with
  the RTP ports changed, no STUN, ICE on this machine's interface address. Its configuration lives in the
  temporary directory; nothing in /etc is read or changed.

Every process starts in its own process group; leaving the context manager signals the group, waits a
bounded time, then kills it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import trio

from dragonfork.bench.media import ffmpeg_binary, with_rtp_ports
from dragonfork.loadtest.viewer import Target
from dragonfork.servers.whep.workers import WORKER_MODULE
from dragonfork.stream.ingest.ports import pair_is_free

READY_TIMEOUT = 30.0
STOP_GRACE = 10.0
PROCESS_ID = "bench"
JANUS_MOUNTPOINT = 1
JANUS_LIBRARIES = Path("/usr/lib/x86_64-linux-gnu/janus")
JANUS_RTP_PORTS = "30000-30999"


class ServerFailed(Exception):
    """A server did not start, or died; the message ends with the tail of its log."""


@dataclasses.dataclass
class RunningServer:
    name: str
    pid: int
    target: Target
    video_port: int  # the source socket: where FFmpeg sends the video RTP
    feed_command: list[str]  # the FFmpeg command feeding it
    log: Path
    feed_pid: int | None = None  # the FFmpeg feeding it, when it is not the server's own child
    metrics_url: str | None = None  # Prometheus text (dragonfork only)
    workers: int = 1  # dragonfork's webrtc.workers: the cores it may serve viewers on

    def worker_pids(self) -> list[int]:
        """dragonfork's WebRTC worker processes (none when its viewers run in the server itself)."""
        if self.workers <= 1:
            return []
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        return [child.pid for child in children if WORKER_MODULE in child.cmdline()]

    def sender_pids(self) -> list[int]:
        """The processes that send media to the viewers: the server and its WebRTC workers."""
        return [self.pid, *self.worker_pids()]

    def alive(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _fresh_folder(workdir: Path, name: str) -> Path:
    """A new folder for one server start (``name-XXXX``): a repeated sweep restarts the same configuration."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))


def pinned(argv: list[str], cpus: set[int] | None) -> list[str]:
    """``argv`` run on ``cpus`` only (taskset sets the affinity before exec, so every thread inherits it)."""
    if not cpus:
        return argv
    return ["taskset", "-c", ",".join(str(cpu) for cpu in sorted(cpus)), *argv]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _process_group(
    argv: list[str], log: Path, *, env: dict[str, str] | None = None, stop_signal: int = signal.SIGTERM
) -> AsyncIterator[trio.Process]:
    with log.open("ab") as out:
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    descendants: set[psutil.Process] = set()
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            with contextlib.suppress(psutil.Error):
                descendants = set(psutil.Process(process.pid).children(recursive=True))
            await _stop_group(process, stop_signal)
            for leftover in descendants:  # children that left the group (none expected)
                with contextlib.suppress(psutil.Error):
                    leftover.kill()


async def _stop_group(process: trio.Process, stop_signal: int) -> None:
    for sig, wait in ((stop_signal, STOP_GRACE), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with trio.move_on_after(wait):
            await process.wait()
        if process.returncode is not None:
            return


async def _poll(what: str, check: object, timeout: float, log: Path) -> None:
    """Call the async ``check`` until it returns True; ServerFailed with the log tail after ``timeout``."""
    with trio.move_on_after(timeout):
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if await check():  # type: ignore[operator]
                    return
            await trio.sleep(0.2)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
    raise ServerFailed(f"{what} not within {timeout:g} s\n{tail}")


@contextlib.asynccontextmanager
async def dragonfork_server(
    workdir: Path, clip: Path, *, keyframe_cache: bool, cpus: set[int] | None, workers: int = 1
) -> AsyncIterator[RunningServer]:
    """A dragonfork server with one WebRTC process playing ``clip``, ready for viewers (in the server, or
    in ``workers`` WebRTC worker processes)."""
    db = _fresh_folder(workdir, f"dragonfork-{'cache' if keyframe_cache else 'nocache'}-{workers}-workers")
    (db / "data").mkdir()
    shutil.copy(clip, db / "data" / "clip.mkv")
    http_port, rtp_port = free_port(), _free_udp_pair()
    env = {
        **os.environ,
        "CORE_DB_DIR": str(db),
        "CORE_ADDRESS": f"127.0.0.1:{http_port}",
        "CORE_DEMO": "false",
        "CORE_LOG_LEVEL": "warn",
        "CORE_WEBRTC_MAX_PEERS_PER_STREAM": "500",
        # the sweep measures capacity: admission control (503 near saturation) would stop it short
        "CORE_WEBRTC_MAX_VIEWERS_PER_CORE": "1000",
        "CORE_WEBRTC_ADMISSION_CPU_PERCENT": "100",
        "CORE_WEBRTC_PORT_FIRST": str(rtp_port),
        "CORE_WEBRTC_PORT_LAST": str(rtp_port + 1),
        "CORE_WEBRTC_KEYFRAME_CACHE_ENABLE": "true" if keyframe_cache else "false",
        "CORE_WEBRTC_WORKERS": str(workers),
    }
    log = db / "server.log"
    api = f"http://127.0.0.1:{http_port}"
    argv = pinned([sys.executable, "-m", "dragonfork", "serve"], cpus)
    async with (
        _process_group(argv, log, env=env, stop_signal=signal.SIGINT) as process,
        httpx.AsyncClient(timeout=5.0) as http,
    ):

        async def answering() -> bool:
            return (await http.get(f"{api}/ping")).status_code == 200

        async def has_media() -> bool:
            state = (await http.get(f"{api}/api/v3/process/{PROCESS_ID}/state")).json()
            return bool(state["webrtc"]["ready"])

        await _poll("dragonfork answering /ping", answering, READY_TIMEOUT, log)
        config = {
            "id": PROCESS_ID,
            "reference": "dragonfork benchmark stream",
            "input": [
                {"id": "clip", "address": "{diskfs}/clip.mkv", "options": ["-re", "-stream_loop", "-1"]}
            ],
            "output": [],
            "reconnect": True,
            "reconnect_delay_seconds": 1,
            "webrtc": {"enabled": True},
        }
        created = await http.post(f"{api}/api/v3/process", json=config)
        if created.status_code != 200:
            raise ServerFailed(f"creating the process: HTTP {created.status_code} {created.text}")
        await _poll("the benchmark process serving media", has_media, READY_TIMEOUT, log)
        state = (await http.get(f"{api}/api/v3/process/{PROCESS_ID}/state")).json()
        yield RunningServer(
            name="dragonfork" if workers <= 1 else "dragonfork_workers",
            pid=process.pid,
            target=Target(f"{api}/api/v3/whep/{PROCESS_ID}"),
            video_port=rtp_port,
            feed_command=state["command"],
            log=log,
            metrics_url=f"{api}/metrics",
            workers=workers,
        )


def _free_udp_pair() -> int:
    """An even port P with P and P+1 free for UDP on loopback (dragonfork's FFmpeg legs go there)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1] & ~1
        if pair_is_free(port):
            return port
    raise ServerFailed("no free UDP port pair on loopback")


def ensure_janus() -> str:
    """The janus binary; installs the Debian package when it is missing (needs root and apt)."""
    found = shutil.which("janus")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServerFailed("janus is not installed and apt-get cannot run here: apt-get install janus")
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "janus"]):
        subprocess.run(command, check=True, env=quiet, timeout=900, stdout=subprocess.DEVNULL)
    found = shutil.which("janus")
    if not found:
        raise ServerFailed("apt-get install janus did not provide a janus binary")
    return found


def interface_address() -> str:
    """This machine's first non-loopback IPv4 address: where aioice (and so our viewers) put candidates."""
    for name, addresses in psutil.net_if_addrs().items():
        stats = psutil.net_if_stats().get(name)
        for address in addresses:
            if (
                address.family == socket.AF_INET
                and not address.address.startswith("127.")
                and stats
                and stats.isup
            ):
                return address.address
    raise ServerFailed("no non-loopback IPv4 address: WebRTC viewers need one for their ICE candidates")


def _janus_config(
    workdir: Path, http_port: int, video_port: int, audio_port: int, event_loops: int | None
) -> Path:
    """A Janus configuration folder: streaming plugin + HTTP transport only, everything on this machine.

    ``event_loops`` None keeps Janus's default (a thread with its own event loop per viewer); a number makes
    the viewers share that many loops, which Janus's documentation recommends for many viewers.
    """
    folder = _fresh_folder(workdir, "janus" if event_loops is None else f"janus-{event_loops}-loops")
    for sub in ("plugins", "transports", "events", "loggers"):
        (folder / sub).mkdir()
    (folder / "plugins" / "libjanus_streaming.so").symlink_to(
        JANUS_LIBRARIES / "plugins" / "libjanus_streaming.so"
    )
    (folder / "transports" / "libjanus_http.so").symlink_to(
        JANUS_LIBRARIES / "transports" / "libjanus_http.so"
    )
    (folder / "janus.jcfg").write_text(
        f"""general: {{
	configs_folder = "{folder}"
	plugins_folder = "{folder}/plugins"
	transports_folder = "{folder}/transports"
	events_folder = "{folder}/events"
	loggers_folder = "{folder}/loggers"
	debug_level = 3
	{"" if event_loops is None else f"event_loops = {event_loops}"}
	admin_secret = "{os.urandom(8).hex()}"
}}
certificates: {{
}}
media: {{
	ipv6 = false
	rtp_port_range = "{JANUS_RTP_PORTS}"
}}
nat: {{
	nice_debug = false
	ice_enforce_list = "{interface_address()}"
	ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
}}
"""
    )
    (folder / "janus.transport.http.jcfg").write_text(
        f"""general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	port = {http_port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
"""
    )
    (folder / "janus.plugin.streaming.jcfg").write_text(
        f"""general: {{
}}
bench: {{
	type = "rtp"
	id = {JANUS_MOUNTPOINT}
	description = "dragonfork benchmark stream"
	media = (
		{{
			type = "video"
			mid = "v"
			port = {video_port}
			pt = 96
			codec = "h264"
			fmtp = "profile-level-id=42e01f;packetization-mode=1"
			iface = "127.0.0.1"
		}},
		{{
			type = "audio"
			mid = "a"
			port = {audio_port}
			pt = 111
			codec = "opus"
			iface = "127.0.0.1"
		}}
	)
}}
"""
    )
    return folder


@contextlib.asynccontextmanager
async def janus_server(
    workdir: Path, dragonfork_feed: list[str], *, event_loops: int | None, cpus: set[int] | None
) -> AsyncIterator[RunningServer]:
    """Janus with one streaming mountpoint fed by dragonfork's FFmpeg command (RTP ports swapped)."""
    binary = ensure_janus()
    http_port, video_port = free_port(), _free_udp_pair()
    folder = _janus_config(workdir, http_port, video_port, video_port + 1, event_loops)
    log = folder / "janus.log"
    janus_argv = [
        binary,
        "-C",
        str(folder / "janus.jcfg"),
        "-F",
        str(folder),
        "-P",
        str(folder / "plugins"),
        "-o",
    ]
    feed = with_rtp_ports(dragonfork_feed, video_port, video_port + 1)
    feed[0] = ffmpeg_binary()
    api = f"http://127.0.0.1:{http_port}/janus"
    async with (
        _process_group(pinned(janus_argv, cpus), log) as janus,
        httpx.AsyncClient(timeout=5.0) as http,
    ):

        async def answering() -> bool:
            return json.loads((await http.get(f"{api}/info")).text).get("janus") == "server_info"

        await _poll("Janus answering /janus/info", answering, READY_TIMEOUT, log)
        async with _process_group(
            pinned(feed, cpus), folder / "ffmpeg.log", stop_signal=signal.SIGINT
        ) as ffmpeg:
            await trio.sleep(2.0)  # the first keyframe reaches the mountpoint
            yield RunningServer(
                name="janus" if event_loops is None else f"janus ({event_loops} event loop)",
                pid=janus.pid,
                target=Target(api, janus_mountpoint=JANUS_MOUNTPOINT),
                video_port=video_port,
                feed_command=feed,
                log=log,
                feed_pid=ffmpeg.pid,
            )
