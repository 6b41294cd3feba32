"""The systemd watchdog (tested by really blocking the event loop) and the unit ``install-service`` writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from harness import NotifySocket

from dragonfork import metrics
from dragonfork.systemd import ServiceUnit, watch_event_loop, watchdog_period

REPO = Path(__file__).resolve().parents[2]
SAMPLE_UNIT = REPO / "deploy" / "dragonfork.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(tmp_path / "notify").receiving() as receiver:
        yield receiver


def test_watchdog_pings_while_healthy_and_not_while_the_loop_is_blocked(notify_socket: NotifySocket) -> None:
    """The phases wait for pings rather than for a fixed time: four 0.1 s ticks take 0.4 s, ten times less
    than the 4 s allowed, while ticking at the 2 s sample interval (not a quarter of the period) takes 8 s.
    A ping sent just before the block may be stamped by the receiving thread up to 0.3 s late."""
    environ = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}  # ticks every 0.1 s
    phases: dict[str, float] = {}

    async def pings_arrive(count: int, since: float) -> None:
        with trio.fail_after(4):
            while len(notify_socket.pings(since)) < count:
                await trio.sleep(0.02)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_event_loop, lambda: 2.0, environ)
            await pings_arrive(4, since=time.monotonic())
            phases["blocked"] = time.monotonic()
            time.sleep(1.0)  # blocks the event loop itself: no task can run
            phases["unblocked"] = time.monotonic()
            await trio.sleep(0.05)
            phases["lag_after_block"] = metrics.REGISTRY.get_sample_value("dragonfork_event_loop_lag_seconds")
            await pings_arrive(3, since=phases["unblocked"])
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert notify_socket.pings(phases["blocked"] + 0.3, phases["unblocked"]) == [], notify_socket.messages
    # The tick that woke a whole second late is withheld (more than half the 0.4 s period), then pings resume.
    assert phases["lag_after_block"] > 0.8
    assert notify_socket.pings(phases["unblocked"], phases["unblocked"] + 0.05) == [], notify_socket.messages


def test_watchdog_is_armed_only_when_systemd_armed_it_for_this_process() -> None:
    socket_env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    armed = {**socket_env, "WATCHDOG_USEC": "20000000"}
    assert watchdog_period(armed) == 20.0
    assert watchdog_period({**armed, "WATCHDOG_PID": str(os.getpid())}) == 20.0
    assert watchdog_period({**armed, "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "20000000"}) is None
    assert watchdog_period(socket_env) is None
    assert watchdog_period({**socket_env, "WATCHDOG_USEC": "0"}) is None


def test_without_a_watchdog_the_task_only_samples_the_lag(notify_socket: NotifySocket) -> None:
    """The lag is the wake-up's delay past the 0.5 s tick (well under it even on a loaded machine), not the
    tick itself."""

    async def main() -> None:
        with trio.move_on_after(1.2):
            await watch_event_loop(lambda: 0.5, {"NOTIFY_SOCKET": str(notify_socket.path)})

    metrics.EVENT_LOOP_LAG.set(-1)
    trio.run(main)
    time.sleep(0.1)
    assert notify_socket.messages == []
    assert 0 <= metrics.REGISTRY.get_sample_value("dragonfork_event_loop_lag_seconds") < 0.4


# --- the unit file -----------------------------------------------------------------------------------------


def verify_unit(unit_text: str, tmp_path: Path, *, stub_program: bool) -> str:
    """``systemd-analyze verify`` on the unit; returns everything it printed ('' when clean).

    ``stub_program`` checks a unit whose ExecStart= does not exist on this machine (the sample's
    /opt/dragonfork/venv) inside a scratch root holding a stub of that program and systemd's own units.
    """
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: the nox tests session installs Debian's systemd package"
    command = [analyze, "verify", "--man=no"]
    unit_path = tmp_path / "dragonfork.service"
    if stub_program:
        root = tmp_path / "root"
        program = Path(unit_text.split("ExecStart=", 1)[1].split()[0])
        stub = root / program.relative_to("/")
        stub.parent.mkdir(parents=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
        unit_path = root / "etc/systemd/system/dragonfork.service"
        unit_path.parent.mkdir(parents=True)
        command.append(f"--root={root}")
        unit_path.write_text(unit_text)
        command.append("/etc/systemd/system/dragonfork.service")
    else:
        unit_path.write_text(unit_text)
        command.append(str(unit_path))
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return f"{result.stdout}{result.stderr}" + (f"(exit {result.returncode})" if result.returncode else "")


def test_the_sample_unit_is_what_install_service_writes_for_the_documented_layout() -> None:
    unit = ServiceUnit(
        "/opt/dragonfork/venv/bin/dragonfork serve", "dragonfork", "dragonfork", Path("/var/lib/dragonfork")
    )
    assert SAMPLE_UNIT.read_text() == unit.render()


def test_systemd_analyze_verify_is_clean_on_the_sample_unit(tmp_path: Path) -> None:
    text = SAMPLE_UNIT.read_text()
    assert "WatchdogSec=20s" in text and "StateDirectory=dragonfork" in text
    assert verify_unit(text, tmp_path, stub_program=True) == ""


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    broken = SAMPLE_UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilege=")
    assert "Unknown key 'NoNewPrivilege'" in verify_unit(broken, tmp_path, stub_program=True)


def test_install_service_dry_run_prints_a_clean_unit_for_this_venv(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "dragonfork", "install-service", "--dry-run", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={key: value for key, value in os.environ.items() if not key.startswith("CORE_")},
    )
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    program = Path(sys.prefix) / "bin" / "dragonfork"
    assert f"ExecStart={program} serve\n" in unit
    assert f"Environment=CORE_DB_DIR={data_dir}\n" in unit
    assert f"ReadWritePaths={data_dir}\n" in unit
    assert not data_dir.exists(), "--dry-run must not create anything"
    assert verify_unit(unit, tmp_path, stub_program=False) == ""


def test_install_service_writes_the_unit_and_creates_the_data_directory(tmp_path: Path) -> None:
    output = tmp_path / "units" / "dragonfork.service"
    output.parent.mkdir()
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "dragonfork", "install-service", "--output", str(output)]
    result = subprocess.run(
        [*command, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "systemctl daemon-reload" in result.stdout
    assert data_dir.is_dir()
    assert f"ReadWritePaths={data_dir}" in output.read_text()

    refused = subprocess.run(
        [*command, "--user", "no-such-user-here"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "no such user: no-such-user-here" in refused.stderr


@pytest.mark.parametrize(
    ("program", "data_dir", "protect_home", "writable"),
    [
        ("/opt/df/bin/dragonfork serve", "/var/lib/df/media", "true", "StateDirectory=df/media"),
        ("/home/ann/venv/bin/dragonfork serve", "/srv/video", "read-only", "ReadWritePaths=/srv/video"),
        ("/opt/df/bin/dragonfork serve", "/root/.local/share/df", "read-only", "ReadWritePaths=/root/"),
    ],
)
def test_the_unit_keeps_the_venv_readable_and_the_data_directory_writable(
    program: str, data_dir: str, protect_home: str, writable: str
) -> None:
    text = ServiceUnit(program, "ann", "ann", Path(data_dir)).render()
    assert f"ProtectHome={protect_home}\n" in text
    assert writable in text
    assert "ProtectSystem=strict\n" in text and "NoNewPrivileges=true\n" in text


def test_a_venv_whose_interpreter_lives_in_a_home_directory_keeps_home_readable() -> None:
    """A venv in /opt made from pyenv's Python links to /root/.pyenv/...: ProtectHome=true would hide it."""
    unit = ServiceUnit(
        "/opt/df/bin/dragonfork serve",
        "ann",
        "ann",
        Path("/var/lib/df"),
        reads=(Path("/root/.pyenv/bin/python"),),
    )
    assert "ProtectHome=read-only\n" in unit.render()
    this = ServiceUnit.for_this_environment(Path("/var/lib/df"))
    assert Path(sys.executable).resolve() in this.reads
