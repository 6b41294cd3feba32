"""``nox`` runs the whole suite (tests, lint, typecheck); ``nox -s tests`` just the tests."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests with real FFmpeg and real aiortc peers."""
    session.install("-e", ".[test]")
    session.run("pytest", "-ra", "--durations=15", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "dragonfork", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "dragonfork", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy")
    session.run("mypy", "dragonfork")
