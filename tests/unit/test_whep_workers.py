"""The pieces of the WebRTC workers that need no worker process: the channel's wire form, the choice of a
worker (admission per worker), and the counters a worker adds to the server's."""

from __future__ import annotations

import socket

import pytest

from dragonfork import metrics
from dragonfork.servers.whep.channel import (
    MEDIA_FRAME,
    MEDIA_OPEN,
    ChannelClosed,
    MessageChannel,
    frame_message,
    frame_of,
    media_type,
    opened_description,
    stream_opened,
)
from dragonfork.servers.whep.server import WhepServer, WhepSettings
from dragonfork.servers.whep.viewer_start import WhepRefused
from dragonfork.servers.whep.workers import RemoteViewer, WorkerConnection, WorkerPool
from dragonfork.stream.directory import StreamDirectory
from dragonfork.stream.frames import MediaFrame


def channel_pair() -> tuple[MessageChannel, MessageChannel]:
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return MessageChannel(here), MessageChannel(there)


async def test_frames_and_control_messages_cross_the_channel_whole_and_in_order() -> None:
    sender, receiver = channel_pair()
    frames = [
        MediaFrame("video", bytes(range(256)) * 400, 90_000 * 3, 90_000, True, 86, 102_400, 0.0, 3000),
        MediaFrame("audio", b"\x01\x02", 48_000, 48_000, False, 1, 2, 0.0),
    ]
    await sender.send(stream_opened(7, {"name": "cam", "has_audio": True}))
    for frame in frames:
        await sender.send(frame_message(7, frame))
    await sender.send_json({"op": "ready"})
    opened = await receiver.receive()
    assert media_type(opened) == (MEDIA_OPEN, 7) and opened_description(opened)["name"] == "cam"
    for frame in frames:
        message = await receiver.receive()
        assert media_type(message) == (MEDIA_FRAME, 7)
        assert frame_of(message, received_at=5.0) == MediaFrame(
            frame.kind,
            frame.data,
            frame.timestamp,
            frame.clock_rate,
            frame.keyframe,
            frame.packet_count,
            frame.size,
            5.0,
            frame.composition_offset,
        )
    assert await receiver.receive_json() == {"op": "ready"}
    await sender.aclose()
    with pytest.raises(ChannelClosed):
        await receiver.receive()


def worker_with(index: int, viewers: int, cpu_percent: float) -> WorkerConnection:
    control, media = channel_pair()
    worker = WorkerConnection(index, 1000 + index, control, media)
    for _ in range(viewers):
        viewer = RemoteViewer("cam", worker)
        worker.sessions[viewer.id] = viewer
    worker.cpu_percent = cpu_percent
    return worker


def pool_of(*workers: WorkerConnection | None) -> WorkerPool:
    async def no_spawn(*args: object, **kwargs: object) -> None:
        raise AssertionError("not started in this test")

    pool = WorkerPool(len(workers), no_spawn)  # type: ignore[arg-type]
    pool.workers = list(workers)
    return pool


def test_a_viewer_goes_to_the_least_loaded_worker_under_its_budget_and_cpu_limit() -> None:
    busy, idle = worker_with(0, 3, 10.0), worker_with(1, 1, 10.0)
    assert pool_of(busy, idle).choose(budget=300, cpu_limit=85).index == 1
    hot = worker_with(1, 1, 95.0)  # fewest viewers, but over the CPU limit of its core
    assert pool_of(busy, hot).choose(budget=300, cpu_limit=85).index == 0


@pytest.mark.parametrize(
    ("viewers", "cpu", "setting"),
    [(2, 10.0, "webrtc.max_viewers_per_core"), (0, 95.0, "webrtc.admission_cpu_percent")],
)
def test_every_worker_at_capacity_is_a_503_naming_the_setting(viewers: int, cpu: float, setting: str) -> None:
    pool = pool_of(worker_with(0, viewers, cpu), worker_with(1, viewers, cpu))
    with pytest.raises(WhepRefused) as refused:
        pool.choose(budget=2, cpu_limit=85)
    assert refused.value.status == 503 and refused.value.field == setting and refused.value.retry_after


def test_no_running_worker_is_a_503_naming_webrtc_workers() -> None:
    with pytest.raises(WhepRefused) as refused:
        pool_of(None, None).choose(budget=300, cpu_limit=85)
    assert refused.value.status == 503 and refused.value.field == "webrtc.workers"


def test_a_workers_counter_growth_is_added_to_the_same_series() -> None:
    deltas = metrics.CounterDeltas()
    deltas.take()  # what was counted before this test
    series = metrics.PACKETS_DROPPED.labels("video", "send_would_block")
    series.inc(5)
    metrics.KEYFRAME_BURSTS.inc()
    taken = deltas.take()
    assert (
        "dragonfork_webrtc_packets_dropped",
        {"kind": "video", "reason": "send_would_block"},
        5.0,
    ) in taken
    assert ("dragonfork_webrtc_keyframe_cache_bursts", {}, 1.0) in taken
    assert deltas.take() == []  # nothing new since
    before = series._value.get()  # prometheus_client has no public read of one series
    metrics.add_counter_deltas(taken + [("dragonfork_no_such_counter", {}, 3.0)])
    assert series._value.get() == before + 5


@pytest.mark.parametrize(("deleted", "counted"), [(True, "delete"), (False, "peer_closed")])
async def test_a_delete_that_found_the_session_is_its_close_reason_whatever_the_worker_saw(
    deleted: bool, counted: str
) -> None:
    """The stopping client's DTLS close reaches the worker before its DELETE, which goes through the server:
    the worker reports peer_closed; the server's table, which the DELETE found the session in, says delete."""
    here, there = channel_pair()
    worker = WorkerConnection(0, 1000, here, channel_pair()[0])
    pool = pool_of(worker)
    whep = WhepServer(StreamDirectory(), WhepSettings(), lambda _: None, workers=pool)
    viewer = RemoteViewer("cam", worker)
    whep.sessions.add(viewer)
    worker.sessions[viewer.id] = viewer
    viewer.answered = True
    if deleted:
        whep.end_session("cam", viewer.id)
    closed = {
        reason: metrics.VIEWERS_CLOSED.labels(reason)._value.get() for reason in ("delete", "peer_closed")
    }
    await there.send_json(
        {"op": "ended", "session": viewer.id, "reason": "peer_closed", "figures": [9, 0.1, 0.2]}
    )
    await there.aclose()
    assert await pool._receive(worker) == "channel_closed"
    assert whep.sessions.get(viewer.id) is None and viewer.close_reason == counted
    for reason, before in closed.items():
        assert metrics.VIEWERS_CLOSED.labels(reason)._value.get() == before + (reason == counted)
