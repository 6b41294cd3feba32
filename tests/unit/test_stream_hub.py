"""The hub's protocol-neutral parts: readers in the stream's nursery, the directory, waiting for a publisher.

Frames are written by the test as a publisher would (``Track.write``); real FFmpeg feeds are in
tests/integration/test_stream_sources.py.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from dragonfork.stream.directory import StreamDirectory, StreamNameTaken, StreamNotLive
from dragonfork.stream.frames import VIDEO_CLOCK_RATE, MediaFrame
from dragonfork.stream.stream import Stream, StreamEnded, StreamSettings


def keyframe(timestamp: int = 0) -> MediaFrame:
    return MediaFrame("video", b"\x00\x00\x00\x01\x65", timestamp, VIDEO_CLOCK_RATE, True, 1, 1, 0.0)


async def answer_after(
    delay: float, stream: Stream, offer: str, *, task_status: trio.TaskStatus[str]
) -> None:
    await trio.sleep(delay)
    task_status.started(f"answer to {offer} on {stream.name}")
    await trio.sleep_forever()


async def test_a_reader_starts_in_a_running_stream_and_ends_with_it() -> None:
    stream = Stream("s", StreamSettings(), has_audio=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(stream.run)
        assert await stream.start_reader(partial(answer_after, 0), "offer") == "answer to offer on s"
        nursery.cancel_scope.cancel()  # the publisher's scope ends: the reader (sleeping forever) ends too


async def test_a_stream_that_is_ending_refuses_new_readers() -> None:
    stream = Stream("s", StreamSettings(), has_audio=False)
    with pytest.raises(StreamEnded):
        await stream.start_reader(partial(answer_after, 0), "offer")  # never ran
    async with trio.open_nursery() as nursery:
        await nursery.start(stream.run)
        nursery.cancel_scope.cancel()
        with pytest.raises(StreamEnded):
            await stream.start_reader(partial(answer_after, 0), "offer")


async def test_a_stream_that_ends_while_a_reader_starts_raises_stream_ended() -> None:
    stream = Stream("s", StreamSettings(), has_audio=False)
    async with trio.open_nursery() as outer, trio.open_nursery() as publisher:
        await publisher.start(stream.run)
        outer.start_soon(_cancel_soon, publisher.cancel_scope)
        with pytest.raises(StreamEnded):
            await stream.start_reader(partial(answer_after, 1), "offer")


async def test_the_tracks_end_for_their_subscribers_when_the_stream_ends() -> None:
    stream = Stream("s", StreamSettings(), has_audio=True)
    assert stream.audio is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(stream.run)
        with stream.video.subscribe() as video, stream.audio.subscribe() as audio:
            stream.video.write(keyframe())
            assert (await video.frames.receive()).keyframe
            nursery.cancel_scope.cancel()
            await trio.sleep(0)
        with pytest.raises(trio.EndOfChannel):
            await video.frames.receive()
        with pytest.raises(trio.EndOfChannel):
            await audio.frames.receive()


async def test_the_directory_waits_for_a_publisher_then_lists_it_only_while_it_runs() -> None:
    directory = StreamDirectory()
    stream = Stream("cam", StreamSettings(), has_audio=False)
    found: list[Stream] = []

    async def reader() -> None:
        found.append(await directory.wait_live("cam", timeout=5))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.05)
            async with trio.open_nursery() as publisher:
                await publisher.start(directory.run, stream)
                assert directory.get("cam") is stream and not found  # published, not live yet
                with pytest.raises(StreamNameTaken):
                    await directory.run(Stream("cam", StreamSettings(), has_audio=False))
                stream.video.write(keyframe())
                while not found:
                    await trio.sleep(0.01)
                assert found == [stream]
                publisher.cancel_scope.cancel()
    assert directory.get("cam") is None and directory.names() == []


async def test_a_reader_of_a_name_nobody_publishes_gets_not_live_after_the_timeout() -> None:
    directory = StreamDirectory()
    started = trio.current_time()
    with pytest.raises(StreamNotLive, match="'nobody' is not being published"):
        await directory.wait_live("nobody", timeout=0.2)
    assert trio.current_time() - started >= 0.2
    stream = Stream("quiet", StreamSettings(), has_audio=False)
    async with trio.open_nursery() as publisher:
        await publisher.start(directory.run, stream)
        with pytest.raises(StreamNotLive, match="'quiet' has no media yet"):
            await directory.wait_live("quiet", timeout=0)
        publisher.cancel_scope.cancel()


async def _cancel_soon(scope: trio.CancelScope) -> None:
    await trio.sleep(0.05)
    scope.cancel()
