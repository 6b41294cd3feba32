"""FFmpeg children that never outlive the server: parent-death signal, plus a ledger reaped at start.

Two nets, because either alone has a hole:

- ``PR_SET_PDEATHSIG`` (prctl, set in the child between fork and exec) makes the kernel SIGKILL the child
  when its parent dies, ``kill -9`` included. Linux sends it when the *thread* that forked the child ends,
  not the process, and ``trio.lowlevel.open_process`` forks in a worker thread that Trio's thread cache
  retires after 10 idle seconds, which would kill every FFmpeg ten seconds after its start. So children are
  forked here from the Trio thread itself (``subprocess.Popen`` is a fork + exec of a few milliseconds),
  and their exit is awaited through a pidfd, with the standard library and Trio's public API only.
- The ledger: one small file per running child in ``<data dir>/children/`` (its pid, the kernel's start
  time of that pid and the binary), removed when the child is reaped. A server that starts finds the files
  a killed predecessor left and kills what is still running, but only a process whose pid, start time and
  binary all match the record (a pid reused by anything else is left alone).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import structlog
import trio

log = structlog.get_logger("dragonfork.process")

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # resolved before any fork: the child only calls it


def _die_with_parent(parent_pid: int) -> None:
    """In the child before exec: SIGKILL when the server dies (and now, if it already has)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the server died between fork and prctl
        os._exit(1)


class ChildLedger:
    """The running children of this data directory, on disk (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "children"

    def record(self, pid: int, binary: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        entry = {"pid": pid, "start_time": _start_time(pid), "binary": binary}
        (self.directory / str(pid)).write_text(json.dumps(entry))

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / str(pid)).unlink()

    def reap(self) -> list[int]:
        """Kill the recorded children that still run (a killed server's orphans); return their pids."""
        killed = []
        for path in sorted(self.directory.glob("*")) if self.directory.is_dir() else []:
            try:
                entry = json.loads(path.read_text())
                pid, start_time, binary = int(entry["pid"]), entry["start_time"], str(entry["binary"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable child ledger entry removed", path=str(path))
                path.unlink(missing_ok=True)
                continue
            if _is_our_child(pid, start_time, binary):
                log.warning("killing an FFmpeg left running by a previous server", pid=pid, binary=binary)
                with contextlib.suppress(psutil.Error):
                    child = psutil.Process(pid)
                    child.kill()
                    child.wait(timeout=5)
                killed.append(pid)
            path.unlink(missing_ok=True)
        return killed


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _is_our_child(pid: int, start_time: float | None, binary: str) -> bool:
    try:
        process = psutil.Process(pid)
        return (
            start_time is not None
            and process.create_time() == start_time
            and process.cmdline()[:1] == [binary]
        )
    except (psutil.Error, IndexError):
        return False


class ChildProcess:
    """A running child: its pid, pipes as Trio streams, signals, and an awaitable exit."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdout: trio.lowlevel.FdStream | None,
        stderr: trio.lowlevel.FdStream | None,
        ledger: ChildLedger | None,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout = stdout
        self.stderr = stderr
        self._ledger = ledger
        self._pidfd = os.pidfd_open(popen.pid)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def send_signal(self, signum: int) -> None:
        """Signal the child unless it has been reaped (until then its pid cannot belong to anyone else).

        Not ``Popen.send_signal``: that polls first and may reap the child behind ``wait``'s back.
        """
        if self._popen.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """Wait for the exit (the pidfd turns readable), reap the child and forget it in the ledger."""
        if self._popen.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
        code = self._popen.wait()  # reaps it now (it has exited), or returns the code already collected
        self._closed()
        return code

    def _closed(self) -> None:
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
            if self._ledger is not None:
                self._ledger.forget(self.pid)


async def spawn(
    argv: list[str],
    *,
    stdout: bool,
    stderr: bool,
    ledger: ChildLedger | None = None,
    inherit_stderr: bool = False,
    pass_fds: tuple[int, ...] = (),
) -> ChildProcess:
    """Start ``argv`` with stdin from /dev/null and stdout/stderr as pipes when asked for (see module doc).

    ``inherit_stderr`` (with ``stderr`` false): the child writes to the server's own stderr (a WebRTC
    worker's log lines join the server's). ``pass_fds`` stay open in the child (a worker's sockets).
    Raises ``OSError`` when the binary cannot be started (missing, not executable).
    """
    await trio.lowlevel.checkpoint()
    pipes: list[tuple[int, int] | None] = [os.pipe() if wanted else None for wanted in (stdout, stderr)]
    parent_pid = os.getpid()
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=pipes[0][1] if pipes[0] else subprocess.DEVNULL,
            stderr=pipes[1][1] if pipes[1] else (None if inherit_stderr else subprocess.DEVNULL),
            pass_fds=pass_fds,
            start_new_session=True,  # a Ctrl-C on the server's terminal must not reach FFmpeg directly
            preexec_fn=lambda: _die_with_parent(parent_pid),
        )
    except BaseException:
        for pipe in pipes:
            if pipe is not None:
                os.close(pipe[0])
        raise
    finally:
        for pipe in pipes:
            if pipe is not None:
                os.close(pipe[1])
    if ledger is not None:
        ledger.record(popen.pid, argv[0])
    streams = [trio.lowlevel.FdStream(pipe[0]) if pipe is not None else None for pipe in pipes]
    return ChildProcess(popen, streams[0], streams[1], ledger)
