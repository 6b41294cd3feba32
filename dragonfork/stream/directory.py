"""The stream directory: name → the live ``Stream`` published under it (owned by the core, no tasks).

A publisher runs its stream through ``StreamDirectory.run`` (in the publisher's own nursery), which lists
the stream under its name for exactly as long as it runs. A reader asks for a name with ``wait_live``: a
stream that has media is returned at once; otherwise the reader waits until one goes live under that name
(a process that is starting, or restarting after a crash), up to a timeout, then gets ``StreamNotLive``.
"""

from __future__ import annotations

import trio

from dragonfork.stream.stream import Stream


class StreamNotLive(Exception):
    """No stream with media under this name (yet): a reader may retry shortly (WHEP: 409 + Retry-After)."""


class StreamNameTaken(Exception):
    """Another publisher already publishes a stream under this name."""


class StreamDirectory:
    def __init__(self) -> None:
        self._streams: dict[str, Stream] = {}
        self._changed = trio.Event()

    def get(self, name: str) -> Stream | None:
        """The stream published under ``name`` now (live or not yet), or None."""
        return self._streams.get(name)

    def names(self) -> list[str]:
        return sorted(self._streams)

    async def run(
        self, stream: Stream, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``stream`` (``Stream.run``) listed under its name; unlisted when it ends, however it ends."""
        if stream.name in self._streams:
            raise StreamNameTaken(f"a stream named {stream.name!r} is already published")
        self._streams[stream.name] = stream
        self._notify()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(stream.run)
                nursery.start_soon(self._notify_when_live, stream)
                task_status.started()
        finally:
            if self._streams.get(stream.name) is stream:
                del self._streams[stream.name]
                self._notify()

    async def wait_for_any(self) -> None:
        """Until any stream is published (returns at once when one is)."""
        while not self._streams:
            await self._changed.wait()

    async def wait_live(self, name: str, timeout: float) -> Stream:
        """The stream under ``name`` once it has media, waiting up to ``timeout`` seconds for it."""
        with trio.move_on_after(timeout):
            while True:
                stream = self._streams.get(name)
                if stream is not None and stream.has_media():
                    return stream
                await self._changed.wait()
        state = "has no media yet" if name in self._streams else "is not being published"
        raise StreamNotLive(f"stream {name!r} {state} (waited {timeout:g} s)")

    async def _notify_when_live(self, stream: Stream) -> None:
        await stream.live.wait()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
