"""``dragonfork serve | config | check | install-service`` (and the tools: ``loadtest``, ``bench``).

Exit codes: 0 success, 1 a check failed or the server could not start, 2 unusable configuration.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from dragonfork import __version__
from dragonfork.config import (
    ConfigError,
    LoadedSettings,
    auth_problem,
    kept_keys,
    leaf_paths,
    load_settings,
    redacted,
    settings_value,
)

EXIT_FAILED = 1
EXIT_CONFIG = 2


def _load(args: argparse.Namespace) -> LoadedSettings:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"dragonfork: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_serve(args: argparse.Namespace) -> int:
    started_at = time.perf_counter()
    loaded = _load(args)
    if problem := auth_problem(loaded.settings.api.auth):
        print(f"dragonfork: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    from dragonfork.logs import configure_logging

    configure_logging(loaded.settings.log.level, max_lines=loaded.settings.log.max_lines)
    # systemd's watchdog kills a hung server with SIGABRT: the journal then shows where each thread was stuck.
    faulthandler.enable()
    from dragonfork.server import serve

    if loaded.ignored_file_keys:
        print(
            "dragonfork: ignoring unknown config keys: " + ", ".join(loaded.ignored_file_keys),
            file=sys.stderr,
        )
    without_effect = [key for key in kept_keys() if loaded.sources[key] != "default"]
    if without_effect:
        print(
            "dragonfork: datarhei keys kept without effect (no such feature here): "
            + ", ".join(without_effect),
            file=sys.stderr,
        )
    try:
        trio.run(serve, loaded, started_at)
    except BaseException as exc:
        failure = _startup_failure(exc, loaded)
        if failure is None:
            raise
        message, code = failure
        print(f"dragonfork: {message}", file=sys.stderr)
        return code
    return 0


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups: what a trio nursery raised."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _startup_failure(exc: BaseException, loaded: LoadedSettings) -> tuple[str, int] | None:
    """A message and exit code for failures a user can fix; None for anything else (a bug: traceback)."""
    from dragonfork.process.registry import DiskDirUnavailable
    from dragonfork.process.store import DatabaseError
    from dragonfork.server import StartupRefused, UnsafeBind
    from dragonfork.servers import ListenFailed

    for leaf in _leaves(exc):
        if isinstance(leaf, UnsafeBind):
            return str(leaf), EXIT_CONFIG
        if isinstance(leaf, StartupRefused | ListenFailed):
            return str(leaf), EXIT_FAILED
        if isinstance(leaf, DatabaseError | DiskDirUnavailable):
            return str(leaf), EXIT_FAILED
        if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
            return f"address {loaded.settings.address} is already in use", EXIT_FAILED
    return None


def cmd_config(args: argparse.Namespace) -> int:
    loaded = _load(args)
    print(f"# config file: {loaded.config_file or '(none: built-in defaults and environment)'}")
    rows = []
    without_effect = set(kept_keys())
    for path in leaf_paths(type(loaded.settings)):
        key = ".".join(path)
        value = redacted(key, settings_value(loaded.settings, key))
        note = ", no effect here" if key in without_effect else ""
        rows.append((key, repr(value), loaded.sources[key] + note))
    width = max(len(key) for key, _, _ in rows)
    for key, value, source in rows:
        print(f"{key:<{width}}  {value}  [{source}]")
    print(f"# data directory: {loaded.settings.data_dir}")
    for key in loaded.ignored_file_keys:
        print(f"# ignored (unknown key): {key}")
    return 0


class Verdicts:
    """Collects check results and prints each as it happens."""

    def __init__(self) -> None:
        self.failed = 0

    def report(self, ok: bool, what: str, detail: str) -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {what}: {detail}")
        self.failed += not ok

    def run(self, what: str, check: Callable[[], str]) -> None:
        try:
            self.report(True, what, check())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a verdict line
            self.report(False, what, str(exc) or type(exc).__name__)


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args)
    settings = loaded.settings
    verdicts = Verdicts()

    def ffmpeg() -> str:
        from dragonfork.process.skills import has_encoder, read_skills

        skills = trio.run(read_skills, settings.ffmpeg_binary)
        missing = [name for name in ("libx264", "libopus") if not has_encoder(skills, name)]
        if missing:
            raise RuntimeError(
                f"{settings.ffmpeg_binary} (version {skills.version}) lacks {', '.join(missing)}"
            )
        return f"{settings.ffmpeg_binary} version {skills.version} with libx264 and libopus"

    def http_port() -> str:
        from dragonfork.server import check_http_port

        check_http_port(settings.address)
        return f"{settings.address} is free"

    def rtp_ports() -> str:
        from dragonfork.stream.ingest.ports import pair_is_free

        first, last = settings.webrtc.port_first, settings.webrtc.port_last
        free = sum(pair_is_free(port) for port in range(first + first % 2, last, 2))
        if not free:
            raise RuntimeError(f"no free UDP port pair in {first}-{last}")
        return f"{free} free UDP port pairs in {first}-{last} (one per WebRTC process)"

    def data_dir() -> str:
        directory = settings.data_dir
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
        db = Path(directory) / "db.json"
        return f"{directory} is writable" + (" (db.json present)" if db.exists() else " (no database yet)")

    def security() -> str:
        from dragonfork.server import check_bind_is_safe

        check_bind_is_safe(loaded)
        if problem := auth_problem(settings.api.auth):
            raise RuntimeError(problem)
        return "auth enabled" if settings.api.auth.enable else f"auth disabled, bound to {settings.address}"

    verdicts.run("ffmpeg", ffmpeg)
    verdicts.run("http address", http_port)
    verdicts.run("webrtc ports", rtp_ports)
    verdicts.run("data directory", data_dir)
    verdicts.run("security", security)
    if verdicts.failed:
        print(f"verdict: NOT READY ({verdicts.failed} check(s) failed)")
        return EXIT_FAILED
    print("verdict: ready to serve")
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from dragonfork.systemd import ServiceUnit

    loaded = _load(args)
    data_dir = Path(args.data_dir) if args.data_dir else loaded.settings.data_dir
    config_file = Path(loaded.config_file) if loaded.config_file else None
    try:
        unit = ServiceUnit.for_this_environment(data_dir, config_file, args.user)
    except KeyError:
        print(f"dragonfork: no such user: {args.user}", file=sys.stderr)
        return EXIT_CONFIG
    text = unit.render()
    if args.dry_run:
        print(text, end="")
        return 0
    output = Path(args.output)
    try:
        output.write_text(text)
        if not unit.data_dir.exists():
            # ReadWritePaths= must exist when the service starts; it belongs to the service's user.
            unit.data_dir.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(unit.data_dir, unit.user, unit.group)
    except OSError as exc:
        hint = " (run it with sudo)" if isinstance(exc, PermissionError) else ""
        print(f"dragonfork: cannot write {exc.filename}: {exc.strerror}{hint}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {output} (runs {unit.exec_start!r} as {unit.user}, data in {unit.data_dir})")
    print(f"next: systemctl daemon-reload && systemctl enable --now {output.stem}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dragonfork", description="Live-video server: FFmpeg processes over WHEP"
    )
    parser.add_argument("--version", action="version", version=f"dragonfork {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, handler, help_text in (
        ("serve", cmd_serve, "run the server (HTTP API, processes, WHEP)"),
        ("config", cmd_config, "print the effective configuration and where each value came from"),
        ("check", cmd_check, "verify FFmpeg, ports and the data directory"),
        (
            "install-service",
            cmd_install_service,
            "write a systemd unit for this venv and user",
        ),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument(
            "--config", "-c", help=f"config file (JSON or TOML); default ${'CORE_CONFIGFILE'}"
        )
        command.set_defaults(handler=handler)
        if name == "install-service":
            command.add_argument("--dry-run", action="store_true", help="print the unit, write nothing")
            command.add_argument(
                "--output", default="/etc/systemd/system/dragonfork.service", help="where to write the unit"
            )
            command.add_argument("--user", help="user to run as; default: you (or the user behind sudo)")
            command.add_argument("--data-dir", help="data directory; default: db.dir as configured")
    from dragonfork.bench import cli as bench_cli
    from dragonfork.loadtest import cli as loadtest_cli

    for name, tool in (("loadtest", loadtest_cli), ("bench", bench_cli)):
        command = sub.add_parser(
            name,
            help=tool.HELP,
            description=tool.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        tool.add_arguments(command)
        command.set_defaults(handler=tool.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result: int = args.handler(args)
    return result
