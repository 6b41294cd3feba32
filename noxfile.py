"""``nox`` runs the whole suite (tests, chaos, lint, typecheck, e2e); ``nox -s tests`` just the tests."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "chaos", "lint", "typecheck", "e2e"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
CHROMIUM = "/usr/bin/chromium"
# Debian programs the tests run for real: Prometheus and promtool (deploy/prometheus), systemd-analyze.
TEST_PROGRAMS = {
    "/usr/bin/prometheus": "prometheus",
    "/usr/bin/promtool": "prometheus",
    "/usr/bin/systemd-analyze": "systemd",
}


def apt_install_missing(session: nox.Session, programs: dict[str, str]) -> None:
    """Install the Debian package of every program that is missing (needs root; otherwise say what to run)."""
    missing = {program: package for program, package in programs.items() if not Path(program).exists()}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0:
        session.error(f"missing {', '.join(missing)}: run `sudo apt-get install {' '.join(packages)}`")
    apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", external=True, env=apt_env)
    session.run("apt-get", "install", "-y", *packages, external=True, env=apt_env)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests with real FFmpeg, real aiortc peers, real Prometheus and systemd-analyze."""
    apt_install_missing(session, TEST_PROGRAMS)
    session.install("-e", ".[test]")
    session.run("pytest", "-ra", "--durations=15", "-m", "not e2e and not chaos", *session.posargs)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """Failures that must stay local, kill -9 rounds, stop/start cycles and hostile RTP (bounded, < 4 min).

    See tests/chaos/: every round is bounded in count and time, and all traffic stays on loopback.
    """
    session.install("-e", ".[test]")
    session.run("pytest", "-ra", "--durations=10", "-m", "chaos", "tests/chaos", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "dragonfork", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "dragonfork", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy")
    session.run("mypy", "dragonfork")


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """The admin UI and the WHEP player in headless Debian Chromium, driven by Playwright for Python.

    The lossy-viewer test creates a network namespace with an nftables rule, so it needs root.

    Chromium (and npm, for hls.js) come from Debian (installed here when missing), never from Playwright's
    own download; ``UPDATE_DOC_SCREENSHOTS=1 nox -s e2e`` also refreshes the README's screenshots.
    """
    # npm installs hls.js for the HLS test, into a cache directory (never into the repository); nft and ip
    # build the lossy viewer's network namespace (tests/e2e/test_fast_path_browser.py)
    apt_install_missing(
        session,
        {
            CHROMIUM: "chromium",
            "/usr/bin/chromedriver": "chromium-driver",
            "/usr/bin/npm": "npm",
            "/usr/sbin/nft": "nftables",
            "/usr/sbin/ip": "iproute2",
        },
    )
    session.install("-e", ".[test]", "playwright")
    session.run("pytest", "-ra", "--durations=10", "-m", "e2e", "tests/e2e", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against Janus on this machine (~10 min; not in the default run): writes docs/benchmarks/.

    Needs root for the packet capture (server-hop latency) and, when Janus is missing, for apt-get.
    """
    session.install("-e", ".[test]", "matplotlib", "py-spy")
    session.run("python", "-m", "dragonfork", "bench", "--out", "docs/benchmarks", *session.posargs)
