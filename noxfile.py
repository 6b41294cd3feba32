"""``nox`` runs the whole suite (tests, chaos, lint, typecheck, e2e); ``nox -s tests`` just the tests.

The sessions that need the package share one virtualenv (``.nox/shared``), so a run installs
``-e .[test]`` and the tools once instead of once per session; lint keeps its own small one (ruff only).
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "chaos", "lint", "typecheck", "e2e"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
SHARED_ENV = Path(__file__).parent / ".nox" / "shared"
# Everything tests, chaos, e2e and typecheck run, installed in one pip call (one resolve, one build of the
# package); `nox -s tests` alone installs the same, so switching sessions never reinstalls.
SHARED_REQUIREMENTS = ("-e", ".[test]", "playwright", "mypy")
CHROMIUM = "/usr/bin/chromium"
# Debian programs the tests run for real: Prometheus and promtool (deploy/prometheus), systemd-analyze.
TEST_PROGRAMS = {
    "/usr/bin/prometheus": "prometheus",
    "/usr/bin/promtool": "prometheus",
    "/usr/bin/systemd-analyze": "systemd",
}


# What this nox run has done already (nox runs every selected session in one Python process).
done_this_run: set[str] = set()


def apt_install_missing(session: nox.Session, programs: dict[str, str]) -> None:
    """Install the Debian package of every program that is missing (needs root; otherwise say what to run)."""
    missing = {program: package for program, package in programs.items() if not Path(program).exists()}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0:
        session.error(f"missing {', '.join(missing)}: run `sudo apt-get install {' '.join(packages)}`")
    apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
    if "apt-get update" not in done_this_run:
        session.run("apt-get", "update", external=True, env=apt_env)
        done_this_run.add("apt-get update")
    session.run("apt-get", "install", "-y", *packages, external=True, env=apt_env)


def run_shared(session: nox.Session, program: str, *args: str, extra: tuple[str, ...] = ()) -> None:
    """Run ``program`` from the shared virtualenv, creating and filling it first when this nox run has not.

    ``extra`` requirements (a session's own tools) are installed on top when they are not yet."""
    bin_dir = SHARED_ENV / "bin"
    if not (bin_dir / "python").exists():
        session.run(f"python{PYTHON}", "-m", "venv", str(SHARED_ENV), external=True)
    for requirements in (SHARED_REQUIREMENTS, extra):
        if requirements and repr(requirements) not in done_this_run:
            session.run(str(bin_dir / "python"), "-m", "pip", "install", *requirements, external=True)
            done_this_run.add(repr(requirements))
    env = {"VIRTUAL_ENV": str(SHARED_ENV), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    session.run(str(bin_dir / program), *args, external=True, env=env)


# Two test files at a time (pytest-xdist): most tests wait on real-time media, so on two cores two workers
# take 0.59x the serial time (456-465 s vs 787 s). A file stays on one worker (its tests share its module
# server), and files go out in collection order, not xdist's most-tests-first: the long integration files
# start first and the many short unit files fill the end. `nox -s tests -- -n 0` runs serially.
PARALLEL = ("-n", "2", "--dist", "loadfile", "--no-loadscope-reorder")


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Unit and integration tests with real FFmpeg, real aiortc peers, real Prometheus and systemd-analyze."""
    apt_install_missing(session, TEST_PROGRAMS)
    run_shared(
        session, "pytest", "-ra", "--durations=15", "-m", "not e2e and not chaos", *PARALLEL, *session.posargs
    )


@nox.session(python=False)
def chaos(session: nox.Session) -> None:
    """Failures that must stay local, kill -9 rounds, stop/start cycles and hostile RTP (bounded, < 4 min).

    See tests/chaos/: every round is bounded in count and time, and all traffic stays on loopback.
    """
    run_shared(session, "pytest", "-ra", "--durations=10", "-m", "chaos", "tests/chaos", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "dragonfork", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "dragonfork", "tests", "noxfile.py")


@nox.session(python=False)
def typecheck(session: nox.Session) -> None:
    run_shared(session, "mypy", "dragonfork")


@nox.session(python=False)
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
    run_shared(session, "pytest", "-ra", "--durations=10", "-m", "e2e", "tests/e2e", *session.posargs)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks against Janus on this machine (~30 min; not in the default run): writes docs/benchmarks/.

    Needs root for the packet capture (server-hop latency) and, when Janus is missing, for apt-get.
    """
    run_shared(
        session,
        "python",
        "-m",
        "dragonfork",
        "bench",
        "--out",
        "docs/benchmarks",
        *session.posargs,
        extra=("matplotlib", "py-spy"),
    )
