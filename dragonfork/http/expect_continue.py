"""Let a ``401`` reach FFmpeg before ``100 Continue`` on unauthenticated writes to ``/memfs``.

FFmpeg's HTTP client sends the credentials of a URL (``http://user:pass@host/memfs/x.ts``) only after a
Basic challenge: its first PUT carries ``Expect: 100-continue`` and no ``Authorization``, and it retries with
the credentials when the answer is ``401``. Hypercorn answers every ``Expect: 100-continue`` with
``100 Continue`` as soon as the request head arrives, before the app can refuse; FFmpeg then streams the whole
body, reads the ``401`` at the end and never retries, so nothing would ever be stored with
``storage.memory.auth`` on. This HTTP/1.1 connection holds back the interim response for exactly those
requests (writes to ``/memfs`` without ``Authorization``), so the route's ``401`` comes first, as a Go server
(datarhei) does it. Every other request keeps hypercorn's behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h11
import hypercorn.protocol
from hypercorn.protocol.h11 import H11Protocol

_WRITES = frozenset({b"PUT", b"POST", b"DELETE"})


def _memfs_auth_off() -> bool:
    return False


_memfs_auth_enabled: Callable[[], bool] = _memfs_auth_off


def _needs_challenge_first(request: h11.Request) -> bool:
    return (
        _memfs_auth_enabled()
        and request.method in _WRITES
        and request.target.startswith(b"/memfs/")
        and not any(name == b"authorization" for name, _ in request.headers)
    )


class _ChallengeFirstConnection(h11.Connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._challenge_first = False

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request):
            self._challenge_first = _needs_challenge_first(event)
        return event

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return super().they_are_waiting_for_100_continue and not self._challenge_first


class _ChallengeFirstProtocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = _ChallengeFirstConnection(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )


def challenge_memfs_writes_first(memfs_auth_enabled: Callable[[], bool]) -> None:
    """Make hypercorn's HTTP/1.1 connections in this process behave as described above while
    ``memfs_auth_enabled()`` (read per request: ``storage.memory.auth.enable`` may change at a reload)."""
    global _memfs_auth_enabled
    _memfs_auth_enabled = memfs_auth_enabled
    hypercorn.protocol.H11Protocol = _ChallengeFirstProtocol  # type: ignore[misc]
