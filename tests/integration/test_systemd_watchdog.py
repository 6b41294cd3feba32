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
            # Waits for pings, not for a time: three 0.25 s ticks take 0.75 s, six times less than allowed.
            notify.wait_for_pings(3, since=time.monotonic(), timeout=5)
            assert notify.received("READY=1"), notify.messages

            server.proc.send_signal(signal.SIGSTOP)  # the whole server frozen: no tick can run
            frozen_at = time.monotonic()
            time.sleep(1.5)
            thawed_at = time.monotonic()
            server.proc.send_signal(signal.SIGCONT)
            notify.wait_for_pings(2, since=thawed_at, timeout=5)
            # a ping sent just before the freeze may be stamped by the receiving thread up to 0.3 s late
            assert notify.pings(frozen_at + 0.3, thawed_at) == [], notify.messages
            server.wait_for(lambda: "watchdog ping withheld" in server.log(), 5, "the withheld ping logged")
        notify.wait_until(lambda: notify.received("STOPPING=1"), 5, "STOPPING=1")


def test_a_server_killed_by_the_watchdog_leaves_its_stacks_in_the_log(tmp_path: Path) -> None:
    """systemd's WatchdogSignal is SIGABRT: the server dumps every thread's stack on it (faulthandler)."""
    with running_server(tmp_path) as server:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGABRT)
        assert server.proc.wait(10) == -signal.SIGABRT
        log = server.log()
    assert "Fatal Python error: Aborted" in log
    assert "Current thread" in log and 'File "' in log
