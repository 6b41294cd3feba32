"""An unhandled asyncio error (e.g. an aiortc peer's unretrieved exception) must not end the server."""

from __future__ import annotations

import asyncio

import pytest
import trio
import trio_asyncio
from structlog.testing import capture_logs

from dragonfork.logs import log_asyncio_error


async def test_unhandled_asyncio_error_is_logged_and_the_loop_goes_on() -> None:
    with capture_logs() as logs:
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(log_asyncio_error)
            loop.call_exception_handler({"message": "peer blew up", "exception": RuntimeError("boom")})
            await trio.sleep(0.05)
            assert await trio_asyncio.aio_as_trio(asyncio.sleep)(0, result="alive") == "alive"
    logged = [entry["message"] for entry in logs if entry["event"] == "unhandled asyncio error"]
    assert logged == ["peer blew up"]


async def test_without_the_handler_trio_asyncio_ends_the_loop() -> None:
    """Why the handler exists: trio-asyncio's default raises the error out of the loop."""
    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio_asyncio.open_loop() as loop:
            loop.call_exception_handler({"message": "peer blew up", "exception": RuntimeError("boom")})
            await trio.sleep(1)
    assert raised.group_contains(RuntimeError, match="boom")
