"""A WebRTC worker process: the viewers the server hands it, on a core of its own.

``python -m dragonfork.servers.whep.worker --control-fd C --media-fd M`` is started by the server's
``WorkerPool`` (``workers.py``) with the two sockets of its channels (``channel.py``). The worker keeps a
copy of each stream its viewers watch: a hub ``Stream`` published under the stream's id in a
``StreamDirectory`` of its own, written with the frames the server sends once over the media channel. Its
viewers are ordinary ``Viewer``s, readers of that copy, with the stream's ``StreamFanout`` (the fast path)
running here: ICE, DTLS, SRTP and every ``sendto`` of this worker's viewers happen in this process.

When the server ends a stream (its process stopped) the copy ends and so do its viewers (``process_stopped``).
When the control channel closes (the server is gone or restarting the worker) the worker exits; the
parent-death signal the server sets in it covers a server killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import socket
import time
from typing import Any

import structlog
import trio
import trio_asyncio

from dragonfork import metrics
from dragonfork.logs import configure_logging, log_asyncio_error
from dragonfork.servers.whep.channel import (
    MEDIA_END,
    MEDIA_FRAME,
    MEDIA_OPEN,
    ChannelClosed,
    MessageChannel,
    frame_of,
    media_type,
    opened_description,
)
from dragonfork.servers.whep.sessions import SessionEntry, ViewerSessions
from dragonfork.servers.whep.viewer_start import WhepRefused, start_viewer
from dragonfork.stream.directory import StreamDirectory, StreamNotLive
from dragonfork.stream.stream import Stream, StreamSettings
from dragonfork.stream.track import Codec
from dragonfork.webrtc.aiortc_internals import run_ready_callbacks_together
from dragonfork.webrtc.sdp import OfferLimits, SdpRejected
from dragonfork.webrtc.viewer import CloseReason, Viewer, ViewerSettings

log = structlog.get_logger(__name__)

STATS_INTERVAL = 1.0  # figures to the server (and the CPU measurement window for admission)
STREAM_WAIT = 5.0  # seconds an offer waits for its stream's first keyframe to reach this worker


def viewer_settings_of(settings: dict[str, Any]) -> ViewerSettings:
    limits = OfferLimits(**settings.pop("offer_limits"))
    return ViewerSettings(**settings, offer_limits=limits)


class Worker:
    """The worker's state: its copies of the streams, its viewers, and the server at the other end."""

    def __init__(self, index: int, control: MessageChannel, media: MessageChannel) -> None:
        self.index = index
        self.control = control
        self.media = media
        self.directory = StreamDirectory()
        self.sessions = ViewerSessions(self)
        self._streams: dict[int, tuple[Stream, trio.CancelScope]] = {}
        self._counters = metrics.CounterDeltas()
        self._outgoing_send, self._outgoing = trio.open_memory_channel[dict[str, Any]](10_000)

    # --- ViewerObserver: the session table tells us of every viewer that ends ------------------------

    def opened(self, viewer: SessionEntry, client: Any) -> None:
        pass  # the server already counted it against its limits

    def closed(self, viewer: SessionEntry) -> None:
        self._post(
            {
                "op": "ended",
                "session": viewer.id,
                "reason": (viewer.close_reason or CloseReason.PROCESS_STOPPED).value,
                "figures": _figures(viewer),
                "counters": self._counters.take(),
            }
        )

    # --- the tasks --------------------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_control)
            nursery.start_soon(self._receive_media, nursery)
            nursery.start_soon(self._report)
            self._post({"op": "ready"})
            try:
                while True:
                    message = await self.control.receive_json()
                    self._handle(nursery, message)
            finally:
                nursery.cancel_scope.cancel()

    def _handle(self, nursery: trio.Nursery, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "offer":
            nursery.start_soon(self._offer, message)
        elif op == "trickle":
            nursery.start_soon(self._trickle, message)
        elif op == "close":
            viewer = self.sessions.get(str(message.get("session")))
            if viewer is not None:
                viewer.close(CloseReason(message.get("reason", CloseReason.DELETE.value)))

    async def _offer(self, message: dict[str, Any]) -> None:
        request = message["request"]
        try:
            stream = await self.directory.wait_live(str(message["stream"]), STREAM_WAIT)
            settings = viewer_settings_of(dict(message["settings"]))
            viewer = Viewer(str(message["name"]), settings, records_end=False)  # the server records it
            viewer.id = str(message["session"])  # the server's resource id names it everywhere
            answer = await start_viewer(stream, viewer, self.sessions, str(message["offer"]))
        except WhepRefused as refused:
            self._refuse(request, refused)
        except StreamNotLive as exc:
            self._refuse(request, WhepRefused(409, f"{exc}; retry shortly", retry_after=2))
        else:
            self._post({"op": "reply", "reply": request, "answer": answer})

    async def _trickle(self, message: dict[str, Any]) -> None:
        request = message["request"]
        viewer = self.sessions.get(str(message.get("session")))
        try:
            if viewer is not None:
                await viewer.add_remote_candidates(
                    str(message["sdpfrag"]), if_match_sent=bool(message.get("if_match_sent"))
                )
        except SdpRejected as exc:
            self._refuse(request, WhepRefused(exc.status, exc.message, field="sdpfrag"))
        else:
            self._post({"op": "reply", "reply": request})

    def _refuse(self, request: int, refused: WhepRefused) -> None:
        reason = {
            "status": refused.status,
            "message": refused.message,
            "field": refused.field,
            "details": refused.details,
            "retry_after": refused.retry_after,
        }
        self._post({"op": "reply", "reply": request, "refused": reason})

    async def _receive_media(self, nursery: trio.Nursery) -> None:
        streams = self._streams
        while True:
            message = await self.media.receive()
            kind, stream_id = media_type(message)
            if kind == MEDIA_FRAME:
                entry = streams.get(stream_id)
                if entry is not None:
                    frame = frame_of(message, trio.current_time())
                    track = entry[0].video if frame.kind == "video" else entry[0].audio
                    if track is not None:
                        track.write(frame)
            elif kind == MEDIA_OPEN:
                await nursery.start(self._publish, stream_id, opened_description(message))
            elif kind == MEDIA_END and (entry := streams.pop(stream_id, None)) is not None:
                stream, scope = entry
                stream.end()  # its viewers end with process_stopped, as in the server
                scope.cancel()

    async def _publish(
        self, stream_id: int, description: dict[str, Any], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run this worker's copy of a stream until the server ends it."""
        video_name, video_clock = description["video_codec"]
        audio = description.get("audio_codec")
        stream = Stream(
            str(stream_id),
            StreamSettings(**description["settings"]),
            has_audio=bool(description["has_audio"]),
            video_codec=Codec("video", video_name, video_clock),
            **({"audio_codec": Codec("audio", audio[0], audio[1])} if audio else {}),
        )
        with trio.CancelScope() as scope:
            self._streams[stream_id] = (stream, scope)
            try:
                await self.directory.run(stream, task_status=task_status)
            finally:
                self._streams.pop(stream_id, None)
                self._post({"op": "stream_closed", "stream": stream_id})  # after its viewers' "ended"

    async def _report(self) -> None:
        """Once a second: this worker's CPU over the second, its counters' growth, each viewer's figures."""
        while True:
            at, cpu = time.monotonic(), time.process_time()
            await trio.sleep(STATS_INTERVAL)
            cpu_percent = 100.0 * (time.process_time() - cpu) / (time.monotonic() - at)
            viewers = {viewer.id: _figures(viewer) for viewer in self.sessions.all_viewers()}
            counters = self._counters.take()
            self._post({"op": "stats", "cpu_percent": cpu_percent, "viewers": viewers, "counters": counters})

    def _post(self, message: dict[str, Any]) -> None:
        try:
            self._outgoing_send.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError):
            log.warning("webrtc_worker_message_dropped", worker=self.index, op=message.get("op"))

    async def _send_control(self) -> None:
        async for message in self._outgoing:
            await self.control.send_json(message)


def _figures(viewer: SessionEntry) -> list[Any]:
    return [viewer.bytes_sent, viewer.setup_seconds, viewer.time_to_first_frame_seconds]


async def serve(index: int, control_fd: int, media_fd: int) -> None:
    control = MessageChannel(socket.socket(fileno=control_fd))
    media = MessageChannel(socket.socket(fileno=media_fd))
    worker = Worker(index, control, media)
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(log_asyncio_error)
        run_ready_callbacks_together(loop)
        gc.collect()
        gc.freeze()  # as the server does: start-up objects out of the collector's walks (server.py)
        with contextlib.suppress(ChannelClosed):
            await worker.run()
    log.info("webrtc_worker_stopped", worker=index)


def main() -> None:
    parser = argparse.ArgumentParser(description="a dragonfork WebRTC worker (started by the server)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--media-fd", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    configure_logging(args.log_level)
    structlog.contextvars.bind_contextvars(worker=args.index)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops its workers itself (SIGTERM)
    trio.run(serve, args.index, args.control_fd, args.media_fd)


if __name__ == "__main__":
    main()
