"""Shared fixtures: a real dragonfork server per module (cheap processes share it) or per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

sys.path.insert(0, str(Path(__file__).parent))

# Components tested in this process log through structlog's default configuration, whose console renderer
# formats an exception with rich (installed here by schemathesis) and the locals of every frame: once,
# rendering a live viewer's locals raised "deque mutated during iteration" inside ``log.exception``, and
# the failure under test went uncounted. The server formats exceptions as plain text (dragonfork/logs.py);
# so do the tests.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
    ]
)

from harness import Server, running_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests of a module; tests use distinct process ids."""
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def fresh_server_dir(tmp_path: Path) -> Path:
    return tmp_path
