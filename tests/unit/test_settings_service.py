"""The settings service: datarhei's config document, PUT (merge, validation, storage), reload of services."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from dragonfork.config import REDACTED, STORED_CONFIG_NAME, Settings, load_settings
from dragonfork.http.read_only import changes_state
from dragonfork.settings_service import ConfigConflict, ConfigRejected, SettingsService

# every top-level key and section of datarhei v16's api.ConfigData (its swagger definition)
DATARHEI_TOP_LEVEL = {
    "created_at", "version", "id", "name", "address", "update_check", "log", "db", "host", "api", "tls",
    "storage", "rtmp", "srt", "ffmpeg", "playout", "debug", "metrics", "sessions", "service", "router",
}  # fmt: skip


def service(tmp_path: Path, config_file: Path | None = None, **environ: str) -> SettingsService:
    environ = {"CORE_DB_DIR": str(tmp_path / "db"), **environ}
    return SettingsService(load_settings(config_file, environ=environ))


def v3(**sections: Any) -> dict[str, Any]:
    return {"version": 3, **sections}


def stored(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "db" / STORED_CONFIG_NAME).read_text()))


# -- the document -------------------------------------------------------------------------------------------


def test_document_is_datarheis_shape(tmp_path: Path) -> None:
    document = service(tmp_path, CORE_API_AUTH_PASSWORD="hunter2").document()
    assert set(document) == {
        "created_at",
        "loaded_at",
        "updated_at",
        "config",
        "overrides",
        "restart_required",
    }
    assert document["restart_required"] == []
    assert all(document[key].endswith("Z") for key in ("created_at", "loaded_at", "updated_at"))
    config = document["config"]
    assert set(config) >= DATARHEI_TOP_LEVEL
    assert config["version"] == 3
    assert config["host"]["name"] == []
    assert config["storage"]["memory"]["auth"] == {"enable": True, "username": "admin", "password": ""}
    assert config["api"]["auth"]["password"] == REDACTED
    assert config["rtmp"]["address"] == ":1935" and config["srt"]["address"] == ":6000"
    assert config["webrtc"]["port_first"] == 20000  # dragonfork's own keys sit beside datarhei's
    assert sorted(document["overrides"]) == ["api.auth.password", "db.dir"]


# -- PUT ----------------------------------------------------------------------------------------------------


async def test_partial_update_merges_stores_the_difference_and_waits_for_reload(tmp_path: Path) -> None:
    config_file = tmp_path / "core.json"
    config_file.write_text(json.dumps({"name": "from-file", "ffmpeg": {"max_processes": 4}}))
    settings = service(tmp_path, config_file)

    await settings.update(v3(ffmpeg={"log": {"max_lines": 80}}, host={"name": ["example.org"]}))

    assert settings.pending.settings.ffmpeg.log.max_lines == 80
    assert settings.pending.settings.ffmpeg.max_processes == 4  # merged key by key, the file's value kept
    assert settings.settings.ffmpeg.log.max_lines == 50  # the running services see it after a reload only
    document = settings.document()
    assert document["config"]["host"]["name"] == ["example.org"]
    assert document["created_at"] == document["updated_at"]
    on_disk = stored(tmp_path)
    assert on_disk.pop("version") == 3 and on_disk.pop("created_at").endswith("Z")
    assert on_disk == {"ffmpeg": {"log": {"max_lines": 80}}, "host": {"name": ["example.org"]}}
    assert stat.S_IMODE((tmp_path / "db" / STORED_CONFIG_NAME).stat().st_mode) == 0o600


async def test_the_full_document_sent_back_changes_nothing_and_keeps_secrets(tmp_path: Path) -> None:
    settings = service(tmp_path, CORE_API_AUTH_USERNAME="admin", CORE_API_AUTH_JWT_SECRET="s3cret")
    before = settings.pending.settings
    document = settings.document()["config"]
    assert document["api"]["auth"]["jwt"]["secret"] == REDACTED

    await settings.update(document)

    assert settings.pending.settings == before
    assert settings.pending.settings.api.auth.jwt.secret == "s3cret"


async def test_values_fixed_by_the_environment_win_and_are_reported(tmp_path: Path) -> None:
    settings = service(tmp_path, CORE_FFMPEG_MAX_PROCESSES="3")
    await settings.update(v3(ffmpeg={"max_processes": 9}))
    assert settings.pending.settings.ffmpeg.max_processes == 3
    assert "ffmpeg.max_processes" in settings.document()["overrides"]
    assert stored(tmp_path)["ffmpeg"] == {"max_processes": 9}  # stored as sent, as datarhei does


@pytest.mark.parametrize(
    ("body", "message", "detail"),
    [
        (["not", "an", "object"], "Invalid JSON", "body: must be a JSON object"),
        (
            {"ffmpeg": {"max_processes": 2}},
            "Invalid config version",
            "version: only version 3 is supported (value 0)",
        ),
        (
            v3(ffmpeg={"max_processes": "many"}),
            "Invalid JSON",
            "ffmpeg.max_processes: Input should be a valid integer",
        ),
        (v3(log={"level": "chatty"}), "Invalid JSON", "log.level: Input should be"),
        (v3(webrtc={"port_first": 30000, "port_last": 29000}), "Invalid JSON", "port_last (29000)"),
        (v3(rtmp={"enable": True, "bogus": 1}), "Invalid JSON", 'rtmp: unknown key "bogus"'),
        (
            v3(db=[None, None]),
            "Invalid JSON",
            "db: Input should be a valid dictionary",
        ),  # found by the fuzzer: was a 500
    ],
)
async def test_invalid_updates_name_key_and_value_and_store_nothing(
    tmp_path: Path, body: Any, message: str, detail: str
) -> None:
    settings = service(tmp_path)
    with pytest.raises(ConfigRejected) as rejected:
        await settings.update(body)
    assert rejected.value.message == message
    assert any(detail in line for line in rejected.value.details), rejected.value.details
    assert not (tmp_path / "db" / STORED_CONFIG_NAME).exists()
    assert settings.pending.settings == settings.settings


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (v3(api={"auth": {"enable": True}}), "api.auth.enable"),
        (v3(address="0.0.0.0:8080"), "address"),
        (v3(db={"dir": "/somewhere/else"}), "db.dir"),
    ],
)
async def test_contradicting_values_are_datarheis_409(tmp_path: Path, body: Any, key: str) -> None:
    settings = service(tmp_path)
    with pytest.raises(ConfigConflict) as conflict:
        await settings.update(body)
    assert list(conflict.value.errors) == [key]
    assert not (tmp_path / "db" / STORED_CONFIG_NAME).exists()


async def test_the_stored_config_is_loaded_at_start_between_file_and_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "core.json"
    config_file.write_text(json.dumps({"ffmpeg": {"max_processes": 4, "log": {"max_history": 7}}}))
    settings = service(tmp_path, config_file)
    await settings.update(v3(ffmpeg={"max_processes": 6}, name="stored-name"))

    environ = {"CORE_DB_DIR": str(tmp_path / "db"), "CORE_NAME": "env-name"}
    restarted = load_settings(config_file, environ=environ)
    assert restarted.settings.ffmpeg.max_processes == 6  # stored beats the file
    assert restarted.settings.ffmpeg.log.max_history == 7  # the file still counts where nothing was stored
    assert restarted.settings.name == "env-name"  # the environment beats both
    assert restarted.sources["ffmpeg.max_processes"] == "stored"
    assert restarted.sources["ffmpeg.log.max_history"] == "file"
    assert SettingsService(restarted).document()["created_at"] == settings.document()["created_at"]


# -- reload -------------------------------------------------------------------------------------------------


async def test_reload_applies_only_services_whose_keys_changed(tmp_path: Path) -> None:
    settings = service(tmp_path)
    seen: dict[str, list[Settings]] = {"ffmpeg": [], "webrtc": []}
    settings.depend("ffmpeg user", ("ffmpeg",), seen["ffmpeg"].append)
    settings.depend("webrtc user", ("webrtc",), seen["webrtc"].append)

    async def failing(_: Settings) -> None:
        raise RuntimeError("cannot take it")

    settings.depend("failing ffmpeg user", ("ffmpeg.max_processes",), failing)
    await settings.update(v3(ffmpeg={"max_processes": 2}, address="127.0.0.1:9999", tls={"enable": True}))
    report = await settings.reload()

    assert [s.ffmpeg.max_processes for s in seen["ffmpeg"]] == [2] and seen["webrtc"] == []
    assert report.applied == ["ffmpeg user"] and report.failed == ["failing ffmpeg user"]
    assert report.at_next_start == ["address"]  # tls is kept without effect: not listed
    assert settings.settings.ffmpeg.max_processes == 2
    assert (await settings.reload()).changed == []  # nothing pending: nothing to apply
    assert settings.document()["restart_required"] == ["address"]  # until the next start
    await settings.update(v3(address=settings.started.address))
    assert settings.document()["restart_required"] == []  # back to what the server runs with


async def test_a_scoped_service_restarts_with_its_new_settings_and_only_then(tmp_path: Path) -> None:
    settings = service(tmp_path)
    runs: list[tuple[bool, str]] = []

    async def rtmp_like(current: Settings, *, task_status: trio.TaskStatus[None]) -> None:
        runs.append((current.rtmp.enable, current.rtmp.address))
        task_status.started()
        if current.rtmp.enable:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(settings.run)
        await settings.run_scoped("rtmp", ("rtmp",), rtmp_like)
        await settings.update(v3(ffmpeg={"max_processes": 1}))
        await settings.reload()
        assert runs == [(False, ":1935")]
        await settings.update(v3(rtmp={"enable": True, "address": "127.0.0.1:19350"}))
        assert "rtmp" in (await settings.reload()).applied
        await settings.update(v3(rtmp={"address": "127.0.0.1:19351"}))
        await settings.reload()
        nursery.cancel_scope.cancel()
    assert runs == [(False, ":1935"), (True, "127.0.0.1:19350"), (True, "127.0.0.1:19351")]


async def test_a_scoped_service_that_fails_ends_alone_and_a_reload_brings_it_back(tmp_path: Path) -> None:
    settings = service(tmp_path)
    starts: list[str] = []

    async def fragile(current: Settings, *, task_status: trio.TaskStatus[None]) -> None:
        starts.append(current.srt.address)
        task_status.started()
        await trio.sleep(0)
        if current.srt.address == ":6000":
            raise OSError("the listener broke")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(settings.run)
        await settings.run_scoped("srt", ("srt",), fragile)
        await trio.sleep(0.01)  # it failed; the nursery (the server) lives on
        assert settings.failure("srt") == "the listener broke"
        await settings.update(v3(srt={"address": "127.0.0.1:16000"}))
        assert "srt" in (await settings.reload()).applied
        assert settings.failure("srt") is None
        nursery.cancel_scope.cancel()
    assert starts == [":6000", "127.0.0.1:16000"]


# -- api.read_only ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "refused"),
    [
        ("POST", "/api/v3/process", True),
        ("PUT", "/api/v3/process/x", True),
        ("DELETE", "/api/v3/process/x", True),
        ("PUT", "/api/v3/process/x/command", True),
        ("PUT", "/api/v3/metadata/k", True),
        ("PUT", "/api/v3/config", True),
        ("GET", "/api/v3/config/reload", True),
        ("PUT", "/api/v3/fs/mem/a.txt", True),
        ("GET", "/api/v3/process", False),
        ("GET", "/api/v3/config", False),
        ("POST", "/api/v3/metrics", False),
        ("POST", "/api/v3/whep/demo", False),
        ("DELETE", "/api/v3/whep/demo/abc", False),
        ("POST", "/api/login", False),
    ],
)
def test_read_only_refuses_what_changes_state(method: str, path: str, refused: bool) -> None:
    assert changes_state(method, path) is refused
