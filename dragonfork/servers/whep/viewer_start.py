"""Starting one viewer and refusing one, the same in the server and in a WebRTC worker process.

``start_viewer`` runs a ``Viewer`` as a reader of a stream in a session table and turns every way its start
can fail into a ``WhepRefused`` carrying the HTTP status of this project's WHEP error matrix; the server
calls it for in-process viewers, a worker for its own (and sends the refusal back as it is).
``check_capacity`` is admission by capacity, for the server's own core or for one worker's.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from dragonfork.servers import SignallingRefused
from dragonfork.servers.whep.sessions import ViewerCapReached, ViewerRefused, ViewerSessions
from dragonfork.stream.stream import Stream, StreamEnded
from dragonfork.webrtc.sdp import SdpRejected
from dragonfork.webrtc.viewer import AnswerTimeout, Viewer, ViewerClosed

RETRY_AFTER_NOT_LIVE = 2
RETRY_AFTER_FULL = 5


class WhepRefused(SignallingRefused):
    """An offer, trickle or session request that cannot be served; ``status`` is the HTTP status."""


async def start_viewer(
    stream: Stream,
    viewer: Viewer,
    sessions: ViewerSessions,
    offer_sdp: str,
    *,
    max_viewers: int | None = None,
    client: Any = None,
) -> str:
    """Start ``viewer`` on ``stream`` (in the stream's nursery, in ``sessions`` for its whole life) and
    return its SDP answer; raises ``WhepRefused``."""
    reader = functools.partial(sessions.run_viewer, viewer, max_viewers=max_viewers, client=client)
    with refusals(viewer.process_id, max_viewers):
        answer: str = await stream.start_reader(reader, offer_sdp)
    return answer


@contextlib.contextmanager
def refusals(name: str, max_viewers: int | None) -> Iterator[None]:
    """Turn what starting a viewer of stream ``name`` raises into ``WhepRefused`` with its HTTP status."""
    try:
        yield
    except ViewerCapReached:
        cap = max_viewers
        raise WhepRefused(
            503,
            f"stream {name!r} is full ({cap} viewer{'' if cap == 1 else 's'}); retry in {RETRY_AFTER_FULL} s",
            field="webrtc.max_peers_per_stream",
            retry_after=RETRY_AFTER_FULL,
        ) from None
    except ViewerRefused as exc:
        raise WhepRefused(503, exc.message, field=exc.setting, retry_after=exc.retry_after) from None
    except SdpRejected as exc:
        raise WhepRefused(exc.status, exc.message, field="offer") from None
    except AnswerTimeout as exc:
        raise WhepRefused(504, str(exc)) from None
    except (StreamEnded, ViewerClosed):
        raise WhepRefused(
            409,
            f"the session on {name!r} ended while it was being set up; retry shortly",
            retry_after=RETRY_AFTER_NOT_LIVE,
        ) from None


def check_capacity(viewers: int, cpu_percent: float, *, budget: int, cpu_limit: float, where: str) -> None:
    """Refuse a new viewer (503 + Retry-After) before a core saturates: ``viewers`` at the per-core
    ``budget``, or ``cpu_percent`` (of the core ``where`` names, over the last second) above ``cpu_limit``."""
    if viewers >= budget:
        raise WhepRefused(
            503,
            f"{where} is at capacity ({budget} viewers per core); retry in {RETRY_AFTER_FULL} s",
            field="webrtc.max_viewers_per_core",
            retry_after=RETRY_AFTER_FULL,
        )
    if cpu_percent > cpu_limit:
        raise WhepRefused(
            503,
            f"{where} is at capacity (CPU {cpu_percent:.0f} % of a core, above {cpu_limit:g} %); "
            f"retry in {RETRY_AFTER_FULL} s",
            field="webrtc.admission_cpu_percent",
            retry_after=RETRY_AFTER_FULL,
        )
