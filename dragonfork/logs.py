"""structlog setup: JSON lines when stderr is not a terminal (systemd, containers), readable text when it is.

Every line about a process carries ``process=<id>`` (bound by the runner). FFmpeg's own output never reaches
this log: it goes to the process's log ring, read through ``/api/v3/process/{id}/report``. The last
``log.max_lines`` events are also kept in memory (:data:`RECENT`) for datarhei's ``/api/v3/log``.
"""

from __future__ import annotations

import collections
import datetime
import logging
import sys
from typing import Any

import structlog

CONSOLE = structlog.dev.ConsoleRenderer(colors=False)


class RecentEvents:
    """The last ``max_lines`` log events, each a JSON-safe dict (values that are not JSON become text)."""

    def __init__(self, max_lines: int = 1000) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_lines)

    def resize(self, max_lines: int) -> None:
        self._events = collections.deque(self._events, maxlen=max_lines)

    def __call__(self, logger: object, method: str, event: structlog.typing.EventDict) -> Any:
        """A structlog processor: keep a copy of the event, pass it on unchanged."""
        if self._events.maxlen:
            self._events.append({key: _json_safe(value) for key, value in event.items()})
        return event

    def raw(self) -> list[dict[str, Any]]:
        """datarhei's ``format=raw``: each event's fields, with ``ts``, ``level`` and ``message``."""
        return [
            {
                **{k: v for k, v in event.items() if k not in ("timestamp", "event")},
                "ts": event.get("timestamp"),
                "message": event.get("event", ""),
            }
            for event in self._events
        ]

    def console(self) -> list[str]:
        """datarhei's ``format=console``: each event as one line of the console renderer."""
        return [str(CONSOLE(None, "info", dict(event))).strip() for event in self._events]


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


RECENT = RecentEvents()

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "silent": logging.CRITICAL + 10,
}


def configure_logging(level: str = "info", *, json: bool | None = None, max_lines: int = 1000) -> None:
    as_json = not sys.stderr.isatty() if json is None else json
    RECENT.resize(max_lines)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            RECENT,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library; keep their noise at warning and above.
    logging.basicConfig(
        level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr, format="%(name)s: %(message)s"
    )


def log_asyncio_error(loop: object, context: dict[str, object]) -> None:
    """Log an unhandled asyncio error and carry on, as plain asyncio does.

    trio-asyncio's default handler raises it into the loop instead, which would end the whole server: one
    aiortc peer's unretrieved exception must not stop every process and viewer.
    """
    error = context.get("exception")
    structlog.get_logger("dragonfork.server").error(
        "unhandled asyncio error",
        message=context.get("message"),
        error=repr(error) if error is not None else None,
        exc_info=error if isinstance(error, BaseException) else None,
    )
