"""Find out what an input carries by letting FFmpeg open it without an output.

``ffmpeg -hide_banner -nostdin [options] -i address ...`` opens every input, prints its ``Input #N`` section
and exits with "At least one output file must be specified" (exit code 1). That is the successful probe
(there is no ffprobe in the imageio-ffmpeg build). An input that cannot be opened makes FFmpeg stop at it
with an error line instead; an input that never answers (a listening socket, a dead camera) is killed at
the timeout.
"""

from __future__ import annotations

import trio

from dragonfork.process.child import spawn
from dragonfork.process.progress import IOInfo, ProgressParser, StreamInfo, iter_lines

_NO_OUTPUT_LINE = "At least one output file must be specified"
_EXIT_NOTICE_PREFIX = "Exiting with exit code"
# Profiles every browser and aiortc negotiate (profile-level-id 42e01f / 42001f). See
# is_webrtc_compatible_h264.
_WEBRTC_H264_PROFILES = frozenset({"Baseline", "Constrained Baseline"})


class ProbeError(Exception):
    """FFmpeg could not open an input (the message names the address and FFmpeg's reason)."""


async def probe_inputs(
    ffmpeg_binary: str, inputs: list[tuple[list[str], str]], timeout: float
) -> list[IOInfo]:
    """Open each ``(input options, address)`` with FFmpeg and return what it found, in input order.

    Raises :class:`ProbeError` when FFmpeg cannot run, when an input cannot be opened (with FFmpeg's last
    error line), or when opening takes longer than ``timeout`` seconds (FFmpeg is killed).
    """
    if not inputs:
        raise ValueError("probe_inputs needs at least one input")
    argv = [ffmpeg_binary, "-hide_banner", "-nostdin"]
    for options, address in inputs:
        argv += [*options, "-i", address]

    try:
        process = await spawn(argv, stdout=False, stderr=True)
    except OSError as exc:
        raise ProbeError(f"cannot run FFmpeg {ffmpeg_binary!r} (CORE_FFMPEG_BINARY): {exc}") from exc

    assert process.stderr is not None
    parser = ProgressParser()
    last_line = ""
    saw_no_output_line = False
    try:
        with trio.move_on_after(timeout) as deadline:
            async for line in iter_lines(process.stderr):
                parser.feed_stderr(line)
                if line == _NO_OUTPUT_LINE:
                    saw_no_output_line = True
                elif not line.startswith(_EXIT_NOTICE_PREFIX):
                    last_line = line
            await process.wait()
    finally:
        # On timeout or cancellation: a probe has nothing to flush, so no SIGTERM and grace period.
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stderr.aclose()

    found = parser.inputs
    # FFmpeg opens and prints the inputs in order, so the first one missing is the one that failed or hung.
    stuck_address = inputs[min(len(found), len(inputs) - 1)][1]
    if deadline.cancelled_caught:
        raise ProbeError(f"probing {stuck_address!r} timed out after {timeout:g} s")
    if not saw_no_output_line or len(found) != len(inputs):
        raise ProbeError(f"probing {stuck_address!r} failed (exit code {process.returncode}): {last_line}")
    return found


def is_webrtc_compatible_h264(stream: StreamInfo) -> bool:
    """True for an H.264 stream that can go to browsers over WebRTC as it is, without re-encoding.

    Only Baseline and Constrained Baseline qualify:

    - aiortc negotiates H.264 only as profile-level-id 42001f/42e01f (baseline/constrained baseline), the
      profile every browser decodes; a High (or Main) stream would go out under a baseline label, and an
      offer that has only High fails aiortc's negotiation.
    - Main and High allow B-frames. WebRTC has no room for them: the RTP timestamp is the presentation
      time, receivers decode in arrival order without a reordering delay, and the pre-encoded path passes
      frames through as they come, so B-frames show as stutter or decoding errors.

    A stream whose profile FFmpeg did not print is not known to be compatible, so it is rejected.
    """
    return stream.type == "video" and stream.codec == "h264" and stream.profile in _WEBRTC_H264_PROFILES
