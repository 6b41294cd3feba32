"""A request body the application did not read never stalls a keep-alive connection.

Hypercorn hands a request body to the application through a queue of ``max_app_queue_size`` (10) messages
and waits while it is full. Quart reads the body only while its handler runs, so a handler that answers
before reading (401, 404, 413, 415) leaves the rest unread: ten chunks later Hypercorn waits forever, and
the next request on that connection is never answered. A small body that arrives just after the early
answer ends up the same way, or in h11 with the connection half-finished.

``UnreadBodyGuard`` sits between Hypercorn and the application. When the response starts before the body
is complete, it reads the rest and discards it, for at most ``drain_max_bytes`` more bytes and until the
request's body deadline (``body_timeout`` after the request began): a body that ends within both keeps the
connection alive. Anything larger or slower gets ``Connection: close`` on its response, and the guard keeps
reading (discarding) until Hypercorn reports the disconnect, so Hypercorn's queue never fills.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[..., Awaitable[None]]  # an ASGI application (QuartTrio's own signature is narrower)


class _RequestBody:
    """Where one request's body stands, seen through the ``receive`` the application calls."""

    def __init__(self, receive: Receive, declared_length: int | None, *, complete: bool) -> None:
        self._receive = receive
        self.declared_length = declared_length  # None for a chunked body
        self.received = 0
        self.complete = complete  # True from the start for a request without a body
        self.disconnected = False
        self._progress = trio.Event()

    @property
    def finished(self) -> bool:
        return self.complete or self.disconnected

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.disconnected = True
        self._progress.set()
        self._progress = trio.Event()
        return message

    async def discard_rest(self) -> None:
        while not self.finished:
            await self.receive()

    async def ends_within(self, max_bytes: int, deadline: float) -> bool:
        """Wait until the body is complete; False if it needs more than ``max_bytes`` or the deadline."""
        start = self.received
        if self.declared_length is not None and self.declared_length - start > max_bytes:
            return False
        with trio.move_on_at(deadline):
            while not self.finished and self.received - start <= max_bytes:
                await self._progress.wait()
        return self.complete


def _declared_body(scope: Message) -> tuple[bool, int | None]:
    """(has a body, its declared length) from the request headers."""
    length: int | None = None
    chunked = False
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.strip().isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    if chunked:
        return True, None
    return bool(length), length


class UnreadBodyGuard:
    """ASGI wrapper: drain what the application left unread, else close the connection (module docstring).

    It also shields every ``send``: Hypercorn closes a ``Connection: close`` connection inside the send of
    the last body chunk and reports the disconnect to the application first; Quart-Trio cancels its
    request task on that report, which would abort the close half-way and leave the socket open.
    """

    def __init__(self, app: App, *, drain_max_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.drain_max_bytes = drain_max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        has_body, declared_length = _declared_body(scope)
        expects_continue = (b"expect", b"100-continue") in (
            (name, value.lower()) for name, value in scope.get("headers", ())
        )
        deadline = trio.current_time() + self.body_timeout
        body = _RequestBody(receive, declared_length, complete=not has_body)

        async with trio.open_nursery() as nursery:
            draining = False

            async def guarded_send(message: Message) -> None:
                nonlocal draining
                if message["type"] == "http.response.start" and not body.finished:
                    draining = True
                    # Read concurrently: the application's own reader may be waiting in receive() too, and
                    # Hypercorn reports the disconnect of a closing connection from inside this send.
                    nursery.start_soon(body.discard_rest)
                    # A client still waiting for ``100 Continue`` sends no body after a final answer (FFmpeg's
                    # PUT to /memfs before its credentials): nothing will arrive to drain, so close at once.
                    not_sent = expects_continue and body.received == 0
                    if not_sent or not await body.ends_within(self.drain_max_bytes, deadline):
                        headers = [*message.get("headers", ()), (b"connection", b"close")]
                        message = {**message, "headers": headers}
                with trio.CancelScope(shield=True):
                    await send(message)

            await self.app(scope, body.receive, guarded_send)
            # A body still arriving after the application finished is discarded until it ends or the
            # connection closes; the deadline bounds a client that neither finishes nor goes away.
            nursery.cancel_scope.deadline = max(deadline, trio.current_time()) + self.body_timeout
            if not (body.finished or draining):
                nursery.start_soon(body.discard_rest)
