"""deploy/Containerfile against the package: no container engine runs here, so every instruction is checked
against what it refers to (the entry point, the config defaults, the files a build copies, /ping)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from harness import Server, free_port

from dragonfork.cli import build_parser
from dragonfork.config import host_port, kept_keys, leaf_paths, load_settings, settings_value
from dragonfork.server import UnsafeBind, check_bind_is_safe

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "deploy" / "Containerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in CONTAINERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        found.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


def arguments(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def container_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in arguments("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"use the exec form (a JSON list), not a shell string: {args}"
    return [str(item) for item in parsed]


def test_the_base_image_is_a_slim_python_the_package_supports() -> None:
    (image,) = arguments("FROM")
    name, _, tag = image.rpartition("/")[2].partition(":")
    assert name == "python" and "slim" in tag
    version = tuple(int(part) for part in tag.split("-")[0].split("."))
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert version >= tuple(int(part) for part in minimum.split("."))


def test_it_runs_the_packages_entry_point_as_a_non_root_user() -> None:
    (user,) = arguments("USER")
    assert user not in ("root", "0") and any("useradd" in run and user in run for run in arguments("RUN"))
    (entrypoint,) = arguments("ENTRYPOINT")
    (cmd,) = arguments("CMD")
    command, subcommand = exec_form(entrypoint), exec_form(cmd)
    assert command == list(PYPROJECT["project"]["scripts"])  # ["dragonfork"]
    parsed = build_parser().parse_args(subcommand)
    assert parsed.command == "serve"


def test_the_data_volume_is_the_database_directory() -> None:
    (volume,) = arguments("VOLUME")
    assert exec_form(volume) == [container_env()["CORE_DB_DIR"]]
    (workdir,) = arguments("WORKDIR")
    assert workdir == container_env()["CORE_DB_DIR"]


def expected_ports() -> set[str]:
    """Every listening ``*address`` setting's port under the container's environment, e.g. {"8080/tcp"}
    (datarhei's keys for listeners dragonfork does not have, such as ``tls.address``, are kept, not bound)."""
    settings = load_settings(environ=container_env()).settings
    without_listener = set(kept_keys())
    ports = set()
    for path in leaf_paths(type(settings)):
        if path[-1].startswith("address") and ".".join(path) not in without_listener:
            _, port = host_port(settings_value(settings, ".".join(path)))
            ports.add(f"{port}/{'udp' if 'srt' in path else 'tcp'}")
    return ports


def test_exposed_ports_are_the_configured_listeners() -> None:
    exposed = {port for args in arguments("EXPOSE") for port in args.split()}
    assert exposed == expected_ports()
    webrtc = load_settings(environ=container_env()).settings.webrtc
    internal = range(webrtc.port_first, webrtc.port_last + 1)
    assert not any(int(port.split("/")[0]) in internal for port in exposed), "the RTP legs are loopback only"


def test_the_container_binds_every_interface_and_refuses_to_without_auth() -> None:
    env = container_env()
    host, port = host_port(load_settings(environ=env).settings.address)
    assert host in ("", "0.0.0.0")
    with pytest.raises(UnsafeBind):
        check_bind_is_safe(load_settings(environ=env))
    auth = {"CORE_API_AUTH_ENABLE": "true", "CORE_API_AUTH_USERNAME": "a", "CORE_API_AUTH_PASSWORD": "b"}
    check_bind_is_safe(load_settings(environ={**env, **auth}))


def healthcheck_command(port: int) -> list[str]:
    """The HEALTHCHECK's command, aimed at ``port`` and run by this interpreter (the image's is python)."""
    (healthcheck,) = arguments("HEALTHCHECK")
    command = exec_form(healthcheck.split(" CMD ", 1)[1])
    http_port = host_port(load_settings(environ=container_env()).settings.address)[1]
    script = command[-1]
    assert f"http://127.0.0.1:{http_port}/ping" in script
    assert command[0] == "python"
    return [sys.executable, *command[1:-1], script.replace(f":{http_port}/", f":{port}/")]


def test_the_healthcheck_passes_on_a_live_server_and_fails_without_one(server: Server) -> None:
    healthy = subprocess.run(healthcheck_command(server.port), capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    down = subprocess.run(healthcheck_command(free_port()), capture_output=True, timeout=30)
    assert down.returncode != 0


def test_the_copied_files_build_the_package_with_its_ui_and_entry_point(tmp_path: Path) -> None:
    """What the COPY lines bring into the image is enough for `pip install /src` (built here as a wheel)."""
    for args in arguments("COPY"):
        *sources, destination = args.split()
        for source in sources:
            target = tmp_path / destination.removeprefix("/")
            if destination.endswith("/"):
                target /= Path(source).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / source, target)
    (run,) = [args for args in arguments("RUN") if "pip install" in args]
    assert "pip install --no-cache-dir /src" in run
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(tmp_path / "src")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("dragonfork-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dragonfork/http/static/index.html" in names
    (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
    assert "dragonfork = dragonfork.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
