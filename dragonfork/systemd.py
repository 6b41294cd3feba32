"""systemd without libsystemd: ``sd_notify``, the watchdog pings, and the unit ``install-service`` writes.

The watchdog task runs in the root nursery. It asks Trio to wake it after a tick and measures how late it
woke: that lag is the event loop's health (other tasks' work in between, or a call that blocks the loop).
It is exported as ``dragonfork_event_loop_lag_seconds``; under a systemd watchdog (``WatchdogSec=`` in the
unit, which sets ``$WATCHDOG_USEC``) each healthy tick also sends ``WATCHDOG=1``. A blocked loop cannot run
the task, so the pings stop and systemd restarts the server after ``WatchdogSec``; a loop that wakes the
task more than half a period late withholds the ping too, so a server that is alive but hopelessly behind
is restarted as well.
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import socket
import sys
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import structlog
import trio

from dragonfork import metrics

log = structlog.get_logger("dragonfork.systemd")


def notify_systemd(message: str, environ: Mapping[str, str] = os.environ) -> None:
    """One datagram to ``$NOTIFY_SOCKET`` when running under systemd (``sd_notify``)."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("systemd notification failed", error=str(exc))


def watchdog_period(environ: Mapping[str, str] = os.environ) -> float | None:
    """``WatchdogSec=`` in seconds when systemd armed a watchdog for this process."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not environ.get("NOTIFY_SOCKET") or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # the variables were meant for a parent and leaked into our environment
    return int(usec) / 1_000_000


async def watch_event_loop(
    sample_interval: Callable[[], float], environ: Mapping[str, str] = os.environ
) -> NoReturn:
    """Sample the event loop's lag forever; ping the systemd watchdog on every healthy tick.

    ``sample_interval()`` is read at every tick (``metrics.interval_sec`` may change at a config reload);
    with a watchdog the tick is never longer than a quarter of its period."""
    period = watchdog_period(environ)
    max_lag = None if period is None else period / 2
    if period is not None:
        log.info("systemd watchdog armed", period_seconds=period, ping_at_least_every_seconds=period / 4)
    while True:
        tick = sample_interval() if period is None else min(sample_interval(), period / 4)
        asked_at = trio.current_time()
        await trio.sleep(tick)
        lag = max(0.0, trio.current_time() - asked_at - tick)
        metrics.EVENT_LOOP_LAG.set(lag)
        if max_lag is None:
            continue
        if lag <= max_lag:
            notify_systemd("WATCHDOG=1", environ)
        else:
            log.warning("event loop lagging: watchdog ping withheld", lag_seconds=lag, limit_seconds=max_lag)


# --- the unit file -----------------------------------------------------------------------------------------

ENV_FILE = Path("/etc/dragonfork/dragonfork.env")
STATE_ROOT = Path("/var/lib")
# Trees that ProtectHome= hides; a venv or data directory in one of them needs ProtectHome=read-only.
HOME_TREES = (Path("/home"), Path("/root"), Path("/run/user"))
WATCHDOG_SECONDS = 20


@dataclass(frozen=True)
class ServiceUnit:
    """What differs between installations: where the program lives, who runs it, where its data goes."""

    exec_start: str
    user: str
    group: str
    data_dir: Path
    config_file: Path | None = None
    # Files the service reads besides its program (the venv's real interpreter may live in a home directory).
    reads: tuple[Path, ...] = ()

    @classmethod
    def for_this_environment(
        cls, data_dir: Path, config_file: Path | None = None, user: str | None = None
    ) -> ServiceUnit:
        """The unit for the running interpreter's environment (a venv's ``bin/dragonfork``) and user.

        Under ``sudo`` the user is the one who ran sudo, not root.
        """
        script = Path(sysconfig.get_path("scripts")) / "dragonfork"
        exec_start = f"{script} serve" if script.exists() else f"{sys.executable} -m dragonfork serve"
        user = user or os.environ.get("SUDO_USER") or getpass.getuser()
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
        config_file = config_file and config_file.absolute()
        reads = (Path(sys.executable).resolve(), *([config_file] if config_file else []))
        return cls(exec_start, user, group, data_dir.absolute(), config_file, reads)

    def render(self) -> str:
        """The unit file's text."""
        program = Path(self.exec_start.split()[0])
        needed = (program, self.data_dir, *self.reads)
        in_home = any(_is_within(path, tree) for path in needed for tree in HOME_TREES)
        if _is_within(self.data_dir, STATE_ROOT):
            # systemd creates it, owned by User=, and keeps it writable under ProtectSystem=strict.
            writable = f"StateDirectory={self.data_dir.relative_to(STATE_ROOT)}"
        else:
            writable = f"ReadWritePaths={self.data_dir}"
        config = f"Environment=CORE_CONFIGFILE={self.config_file}\n" if self.config_file else ""
        return UNIT_TEMPLATE.format(
            exec_start=self.exec_start,
            user=self.user,
            group=self.group,
            env_file=ENV_FILE,
            data_dir=self.data_dir,
            config=config,
            writable=writable,
            protect_home="read-only" if in_home else "true",
            watchdog_seconds=WATCHDOG_SECONDS,
        )


def _is_within(path: Path, tree: Path) -> bool:
    return path == tree or tree in path.parents


UNIT_TEMPLATE = """\
# systemd unit for dragonfork, written by `dragonfork install-service` (deploy/README.md explains each step).
# Settings go in {env_file} (CORE_* variables) or the JSON/TOML file named by CORE_CONFIGFILE.
[Unit]
Description=dragonfork live-video server (FFmpeg processes over WHEP)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
# The server pings WATCHDOG=1 while its event loop is healthy; a hung loop is killed (SIGABRT) and restarted.
WatchdogSec={watchdog_seconds}s
User={user}
Group={group}
EnvironmentFile=-{env_file}
Environment=CORE_DB_DIR={data_dir}
{config}ExecStart={exec_start}
# SIGTERM: every FFmpeg child gets SIGINT, then SIGKILL after ffmpeg.stop_timeout_seconds; exit 0.
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=2

# Hardening that still lets the server run FFmpeg children, bind UDP for WebRTC and import from its venv.
{writable}
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=true
PrivateMounts=true
# Remove PrivateDevices= for capture devices (/dev/video*) or hardware encoders (/dev/dri) as FFmpeg inputs.
PrivateDevices=true
ProtectProc=invisible
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
RemoveIPC=true
# AF_NETLINK: ICE lists the host's interfaces; AF_UNIX: the systemd notify socket.
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0077

[Install]
WantedBy=multi-user.target
"""
