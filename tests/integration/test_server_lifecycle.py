"""Start-up, shutdown, restore, auth and concurrency: each test runs its own real server."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from harness import Server, ffmpeg_children, lavfi_process, running_server, server_env


def test_demo_is_running_with_fps_within_5_seconds(tmp_path: Path) -> None:
    """The embedded default: no config file, the demo process seeded on first start."""
    with running_server(tmp_path, CORE_DEMO="true") as server:
        began = time.monotonic()
        server.wait_for(
            lambda: any(
                entry["state"]["exec"] == "running" and entry["state"]["progress"]["fps"] > 0
                for entry in server.api("GET", "/api/v3/process").json()
                if entry["id"] == "demo"
            ),
            5,
            "demo running with fps > 0",
        )
        print(
            f"server start → /ping: {server.started_seconds:.2f} s; then demo fps > 0 after "
            f"{time.monotonic() - began:.2f} s"
        )


def test_sigterm_stops_children_persists_and_restores(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        for process_id in ("keep-a", "keep-b"):
            assert server.api("POST", "/api/v3/process", json=lavfi_process(process_id)).status_code == 200
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("parked", autostart=False)).status_code
            == 200
        )
        for process_id in ("keep-a", "keep-b"):
            server.wait_state(process_id, "running")
        assert len(ffmpeg_children(server)) == 2
        children = psutil.Process(server.proc.pid).children(recursive=True)  # and WebRTC workers, if any
        code = server.stop()
        assert code == 0, server.log()
        gone, alive = psutil.wait_procs(children, timeout=1)
        assert not alive, f"children outlived the server: {alive}"
        assert "shutting down" in server.log() and "stopped" in server.log()

        server.start()
        for process_id in ("keep-a", "keep-b"):
            server.wait_state(process_id, "running")
        assert server.state("parked")["exec"] == "finished" and server.state("parked")["order"] == "stop"
        assert {entry["config"]["id"] for entry in server.db()["processes"]} == {"keep-a", "keep-b", "parked"}


def test_auth_required_when_enabled(tmp_path: Path) -> None:
    with running_server(
        tmp_path,
        CORE_API_AUTH_ENABLE="true",
        CORE_API_AUTH_USERNAME="admin",
        CORE_API_AUTH_PASSWORD="s3cret",
    ) as server:
        response = server.api("GET", "/api/v3/process")
        assert response.status_code == 401 and response.json()["message"].startswith("missing Authorization")
        assert (
            server.api("GET", "/api/v3/process", headers={"Authorization": "Bearer nope"}).status_code == 401
        )
        wrong = server.api("POST", "/api/login", json={"username": "admin", "password": "wrong"})
        assert wrong.status_code == 401
        tokens = server.api("POST", "/api/login", json={"username": "admin", "password": "s3cret"}).json()
        assert set(tokens) >= {"access_token", "refresh_token"}
        # A refresh token is not an access token.
        as_access = server.api(
            "GET", "/api/v3/process", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
        )
        assert as_access.status_code == 401
        refreshed = server.api(
            "GET", "/api/login/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
        ).json()
        server.token = refreshed["access_token"]
        assert server.api("GET", "/api/v3/process").status_code == 200
        assert server.api("GET", "/ping").status_code == 200  # public


def test_auth_disabled_accepts_requests(server: Server) -> None:
    assert server.api("GET", "/api/v3/process").status_code == 200
    response = server.api("POST", "/api/login", json={"username": "a", "password": "b"})
    assert response.status_code == 400 and "disabled" in response.json()["message"]


def test_public_address_without_auth_refuses_to_start(tmp_path: Path) -> None:
    env = server_env(tmp_path, CORE_ADDRESS="0.0.0.0:0")
    result = subprocess.run(
        [sys.executable, "-m", "dragonfork", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "CORE_API_AUTH_ENABLE=true" in result.stderr


def test_thirty_concurrent_clients_lose_nothing(tmp_path: Path) -> None:
    """30 clients create and delete processes at once; db.json ends with exactly the survivors."""
    with running_server(tmp_path) as server:

        def client_work(index: int) -> str:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                keep, drop = f"keep-{index}", f"drop-{index}"
                for process_id in (keep, drop):
                    response = client.post("/api/v3/process", json=lavfi_process(process_id, autostart=False))
                    assert response.status_code == 200, response.text
                assert client.delete(f"/api/v3/process/{drop}").status_code == 200
                return keep

        with ThreadPoolExecutor(max_workers=30) as pool:
            kept = set(pool.map(client_work, range(30)))
        stored = [entry["config"]["id"] for entry in server.db()["processes"]]
        assert sorted(stored) == sorted(kept)
        assert len(stored) == len(set(stored)) == 30
        listed = [entry["id"] for entry in server.api("GET", "/api/v3/process").json()]
        assert sorted(listed) == sorted(kept)


def test_check_command_prints_verdict(tmp_path: Path) -> None:
    env = server_env(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dragonfork", "check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "libx264" in result.stdout and "verdict: ready to serve" in result.stdout

    env["CORE_FFMPEG_BINARY"] = str(tmp_path / "no-ffmpeg")
    result = subprocess.run(
        [sys.executable, "-m", "dragonfork", "check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "[FAIL] ffmpeg" in result.stdout and "NOT READY" in result.stdout


@pytest.mark.parametrize("limit", [1])
def test_max_processes(tmp_path: Path, limit: int) -> None:
    with running_server(tmp_path, CORE_FFMPEG_MAX_PROCESSES=str(limit)) as server:
        assert server.api("POST", "/api/v3/process", json=lavfi_process("first")).status_code == 200
        server.wait_state("first", "running")
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("second", autostart=False)).status_code
            == 200
        )
        response = server.api("PUT", "/api/v3/process/second/command", json={"command": "start"})
        assert response.status_code == 400 and "max_processes" in response.json()["message"]
        assert server.state("first")["exec"] == "running"
