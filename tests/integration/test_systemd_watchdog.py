"""``dragonfork serve`` under a (stand-in) systemd notify socket: READY, watchdog pings, STOPPING."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from harness import NotifySocket, running_server


def test_serve_pings_the_watchdog_from_its_root_nursery_and_stops_when_frozen(tmp_path: Path) -> None:
    with NotifySocket(tmp_path / "notify").receiving() as notify:
        overrides = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}  # pings every 0.25 s
        with running_server(tmp_path, **overrides) as server:
            assert server.proc is not None
            time.sleep(1.0)
            assert any(message == "READY=1" for _, message in notify.messages), notify.messages
            assert len(notify.pings(time.monotonic() - 1.0)) >= 3, notify.messages

            server.proc.send_signal(signal.SIGSTOP)  # the whole server frozen: no tick can run
            frozen_at = time.monotonic()
            time.sleep(1.5)
            thawed_at = time.monotonic()
            server.proc.send_signal(signal.SIGCONT)
            time.sleep(1.0)
            assert notify.pings(frozen_at + 0.05, thawed_at) == [], notify.messages
            assert len(notify.pings(thawed_at)) >= 2, notify.messages
            assert "watchdog ping withheld" in server.log()
        time.sleep(0.1)
        assert "STOPPING=1" in [message for _, message in notify.messages], notify.messages[-3:]


def test_a_server_killed_by_the_watchdog_leaves_its_stacks_in_the_log(tmp_path: Path) -> None:
    """systemd's WatchdogSignal is SIGABRT: the server dumps every thread's stack on it (faulthandler)."""
    with running_server(tmp_path) as server:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGABRT)
        assert server.proc.wait(10) == -signal.SIGABRT
        log = server.log()
    assert "Fatal Python error: Aborted" in log
    assert "Current thread" in log and 'File "' in log
