"""Settings: defaults < config file (JSON or TOML) < ``CORE_*`` environment; errors name the culprit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dragonfork.config import ConfigError, Settings, kept_keys, leaf_paths, load_settings

# A config.json as datarhei Core v16 writes it (config version 3): most sections are features dragonfork does
# not have; the ones it has must load with their values.
DATARHEI_CONFIG = {
    "version": 3,
    "id": "6f3e1c2a-8d4b-4e55-9a51-0c5b7e2d9f10",
    "name": "still-night-7342",
    "address": ":8080",
    "update_check": True,
    "log": {"level": "info", "topics": [], "max_lines": 1000},
    "db": {"dir": "./config"},
    "host": {"name": ["example.org"], "auto": True},
    "api": {
        "read_only": False,
        "access": {
            "http": {"allow": [], "block": []},
            "https": {"allow": [], "block": []},
        },
        "auth": {
            "enable": True,
            "disable_localhost": False,
            "username": "admin",
            "password": "datarhei",
            "jwt": {"secret": "k9fQv2s8Zp1LmT4w"},
            "auth0": {"enable": False, "tenants": []},
        },
    },
    "tls": {"address": ":8181", "enable": False, "auto": False, "email": "cert@datarhei.com"},
    "storage": {
        "disk": {
            "dir": "./data",
            "max_size_mbytes": 0,
            "cache": {
                "enable": True,
                "max_size_mbytes": 0,
                "ttl_seconds": 300,
                "types": {"allow": [], "block": []},
            },
        },
        "memory": {"auth": {"enable": True, "username": "admin", "password": "x"}, "max_size_mbytes": 0},
        "cors": {"origins": ["*"]},
        "mimetypes_file": "./mime.types",
    },
    "rtmp": {"enable": False, "enable_tls": False, "address": ":1935", "app": "/", "token": ""},
    "srt": {"enable": False, "address": ":6000", "passphrase": "", "token": "", "log": {"enable": False}},
    "ffmpeg": {
        "binary": "ffmpeg",
        "max_processes": 12,
        "access": {
            "input": {"allow": ["^rtmp://", "^srt://"], "block": ["^file:"]},
            "output": {"allow": [], "block": ["^/etc/"]},
        },
        "log": {"max_lines": 50, "max_history": 3},
    },
    "playout": {"enable": False, "min_port": 0, "max_port": 0},
    "debug": {"profiling": False, "force_gc": 0},
    "metrics": {"enable": False, "enable_prometheus": False, "range_sec": 300, "interval_sec": 2},
    "sessions": {"enable": True, "ip_ignorelist": ["127.0.0.1/32"], "persist": False},
    "service": {"enable": False, "token": "", "url": "https://service.datarhei.com"},
    "router": {"blocked_prefixes": ["/api"], "routes": {}, "ui_path": ""},
}


def write_json(directory: Path, data: object, name: str = "config.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(data))
    return path


def config_error(config_file: Path | None = None, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file, environ=environ)
    return str(caught.value)


# --- precedence and sources ---------------------------------------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    loaded = load_settings(None, environ={})
    assert loaded.settings == Settings()
    assert loaded.settings.address == "127.0.0.1:8080"
    assert loaded.settings.ffmpeg.log.max_lines == 50
    assert loaded.config_file is None
    assert loaded.ignored_file_keys == []
    assert set(loaded.sources) == {".".join(path) for path in leaf_paths(Settings)}
    assert set(loaded.sources.values()) == {"default"}


def test_file_overrides_defaults_and_environment_overrides_file(tmp_path: Path) -> None:
    config_file = write_json(
        tmp_path, {"name": "from-file", "ffmpeg": {"max_processes": 4, "log": {"max_lines": 7}}}
    )
    loaded = load_settings(config_file, environ={"CORE_FFMPEG_MAX_PROCESSES": "9"})

    assert loaded.settings.name == "from-file"
    assert loaded.settings.ffmpeg.max_processes == 9
    assert loaded.settings.ffmpeg.log.max_lines == 7
    assert loaded.settings.ffmpeg.log.max_history == 3
    assert loaded.sources["name"] == "file"
    assert loaded.sources["ffmpeg.max_processes"] == "env"
    assert loaded.sources["ffmpeg.log.max_lines"] == "file"
    assert loaded.sources["ffmpeg.log.max_history"] == "default"
    assert loaded.config_file == str(config_file)


def test_toml_file(tmp_path: Path) -> None:
    config_file = tmp_path / "dragonfork.toml"
    config_file.write_text(
        'name = "from-toml"\naddress = "127.0.0.1:9090"\n'
        "[webrtc]\nport_first = 31000\nport_last = 31099\n"
        '[ffmpeg.access.input]\nblock = ["^file:", "\\\\.\\\\./"]\n'
    )
    loaded = load_settings(config_file, environ={"CORE_WEBRTC_PORT_LAST": "31199"})

    assert loaded.settings.name == "from-toml"
    assert loaded.settings.address == "127.0.0.1:9090"
    assert loaded.settings.webrtc.port_first == 31000
    assert loaded.settings.webrtc.port_last == 31199
    assert loaded.settings.ffmpeg.access.input.block == ["^file:", "\\.\\./"]
    assert loaded.sources["webrtc.port_first"] == "file"
    assert loaded.sources["webrtc.port_last"] == "env"
    assert loaded.sources["ffmpeg.access.input.block"] == "file"


def test_config_file_named_by_core_configfile(tmp_path: Path) -> None:
    config_file = write_json(tmp_path, {"name": "via-env"})
    loaded = load_settings(None, environ={"CORE_CONFIGFILE": str(config_file)})
    assert loaded.settings.name == "via-env"
    assert loaded.config_file == str(config_file)


@pytest.mark.parametrize("name", ["CORE_FFMPEG_LOG_MAX_LINES", "CORE_FFMPEG_LOG_MAXLINES"])
def test_both_environment_spellings(name: str) -> None:
    loaded = load_settings(None, environ={name: "321"})
    assert loaded.settings.ffmpeg.log.max_lines == 321
    assert loaded.sources["ffmpeg.log.max_lines"] == "env"


def test_underscore_spelling_wins_over_datarhei_spelling() -> None:
    environ = {"CORE_FFMPEG_MAX_PROCESSES": "3", "CORE_FFMPEG_MAXPROCESSES": "8"}
    assert load_settings(None, environ=environ).settings.ffmpeg.max_processes == 3


def test_datarhei_variables() -> None:
    environ = {
        "CORE_ADDRESS": ":8080",
        "CORE_API_AUTH_ENABLE": "true",
        "CORE_API_AUTH_USERNAME": "admin",
        "CORE_API_AUTH_PASSWORD": "s3cret",
        "CORE_API_AUTH_JWT_SECRET": "jwt-secret",
        "CORE_DB_DIR": "/var/lib/core",
        "CORE_FFMPEG_BINARY": "/usr/bin/ffmpeg",
        "CORE_WEBRTC_MAX_PEERS_PER_STREAM": "7",
    }
    settings = load_settings(None, environ=environ).settings
    assert settings.address == ":8080"
    assert settings.api.auth.enable is True
    assert (settings.api.auth.username, settings.api.auth.password) == ("admin", "s3cret")
    assert settings.api.auth.jwt.secret == "jwt-secret"
    assert settings.data_dir == Path("/var/lib/core")
    assert settings.disk_dir == Path("/var/lib/core/data")
    assert settings.ffmpeg_binary == "/usr/bin/ffmpeg"
    assert settings.webrtc.max_peers_per_stream == 7


def test_environment_variables_of_unknown_settings_are_ignored() -> None:
    loaded = load_settings(None, environ={"CORE_NOT_A_THING": "x"}, stored_layer={})
    assert loaded.settings == Settings()


def test_datarhei_only_variable_names() -> None:
    environ = {"CORE_METRICS_RANGE_SECONDS": "600", "RS_USERNAME": "admin", "CORE_MIMETYPES_FILE": "/m"}
    loaded = load_settings(None, environ=environ, stored_layer={})
    assert loaded.settings.metrics.range_sec == 600
    assert loaded.settings.api.auth.username == "admin"
    assert loaded.settings.storage.mimetypes_file == "/m"
    assert {"metrics.range_sec", "api.auth.username"} <= set(loaded.overrides)


@pytest.mark.parametrize(
    "raw",
    [
        r"^file: \.\./  ^/etc/",
        r"^file:,\.\./,^/etc/",
        "^file:\n\t\\.\\./ ,, ^/etc/ ",
        json.dumps(["^file:", r"\.\./", "^/etc/"]),
    ],
    ids=["spaces", "commas", "mixed-whitespace", "json-array"],
)
def test_list_environment_values(raw: str) -> None:
    loaded = load_settings(None, environ={"CORE_FFMPEG_ACCESS_INPUT_BLOCK": raw})
    assert loaded.settings.ffmpeg.access.input.block == ["^file:", r"\.\./", "^/etc/"]
    assert loaded.sources["ffmpeg.access.input.block"] == "env"


def test_json_array_keeps_spaces_and_commas_inside_patterns() -> None:
    raw = json.dumps([r"^rtmp://a b/", r"^.{1,3}$"])
    settings = load_settings(None, environ={"CORE_FFMPEG_ACCESS_OUTPUT_ALLOW": raw}).settings
    assert settings.ffmpeg.access.output.allow == [r"^rtmp://a b/", r"^.{1,3}$"]


def test_empty_list_variable_clears_the_file_list(tmp_path: Path) -> None:
    config_file = write_json(tmp_path, {"webrtc": {"ice_servers": ["stun:127.0.0.1:3478"]}})
    settings = load_settings(config_file, environ={"CORE_WEBRTC_ICE_SERVERS": ""}).settings
    assert settings.webrtc.ice_servers == []


def test_space_separated_pattern_starting_with_a_character_class() -> None:
    """datarhei splits CORE_FFMPEG_ACCESS_* on spaces; a regex may start with ``[`` without being JSON."""
    raw = r"[0-9]+\.ts$ ^/etc/"
    settings = load_settings(None, environ={"CORE_FFMPEG_ACCESS_INPUT_BLOCK": raw}).settings
    assert settings.ffmpeg.access.input.block == [r"[0-9]+\.ts$", "^/etc/"]


# --- a datarhei Core config file ----------------------------------------------------------------------------


def test_datarhei_core_config_file_loads(tmp_path: Path) -> None:
    loaded = load_settings(write_json(tmp_path, DATARHEI_CONFIG), environ={})
    settings = loaded.settings

    assert settings.id == DATARHEI_CONFIG["id"]
    assert settings.name == "still-night-7342"
    assert settings.address == ":8080"
    assert settings.log.level == "info"
    assert settings.log.max_lines == 1000
    assert settings.db.dir == "./config"
    assert settings.storage.disk.dir == "./data"
    assert settings.storage.disk.max_size_mbytes == 0
    assert settings.storage.memory.auth.enable is True
    assert settings.storage.memory.auth.password == "x"
    assert settings.storage.memory.max_size_mbytes == 0
    assert settings.api.read_only is False
    assert settings.api.auth.enable is True
    assert settings.api.auth.username == "admin"
    assert settings.api.auth.password == "datarhei"
    assert settings.api.auth.jwt.secret == "k9fQv2s8Zp1LmT4w"
    assert settings.ffmpeg.binary == "ffmpeg"
    assert settings.ffmpeg.max_processes == 12
    assert settings.ffmpeg.access.input.allow == ["^rtmp://", "^srt://"]
    assert settings.ffmpeg.access.input.block == ["^file:"]
    assert settings.ffmpeg.access.output.block == ["^/etc/"]
    assert settings.ffmpeg.log.max_lines == 50
    assert settings.ffmpeg.log.max_history == 3
    assert settings.metrics.enable is False
    assert settings.metrics.enable_prometheus is False
    assert (settings.metrics.range_sec, settings.metrics.interval_sec) == (300, 2)
    assert settings.sessions.ip_ignorelist == ["127.0.0.1/32"]

    # keys of features dragonfork does not have are kept and echoed, not dropped
    assert loaded.ignored_file_keys == []
    assert settings.host.name == ["example.org"]
    assert settings.tls.address == ":8181"
    assert settings.storage.memory.auth.password == "x"
    assert settings.storage.disk.cache.ttl_seconds == 300
    assert settings.sessions.ip_ignorelist == ["127.0.0.1/32"]
    assert settings.router.blocked_prefixes == ["/api"]
    assert {"tls.address", "srt.log.enable", "host.auto"} <= set(kept_keys())
    assert "rtmp.enable" not in kept_keys() and "srt.address" not in kept_keys()  # those servers exist
    assert "webrtc.port_first" not in kept_keys()
    assert loaded.sources["api.auth.jwt.secret"] == "file"
    assert loaded.sources["ffmpeg.access.input.allow"] == "file"
    assert loaded.sources["webrtc.port_first"] == "default"


def test_environment_overrides_a_datarhei_config_file(tmp_path: Path) -> None:
    config_file = write_json(tmp_path, DATARHEI_CONFIG)
    environ = {"CORE_API_AUTH_ENABLE": "false", "CORE_FFMPEG_LOG_MAXHISTORY": "9"}
    loaded = load_settings(config_file, environ=environ)
    assert loaded.settings.api.auth.enable is False
    assert loaded.settings.ffmpeg.log.max_history == 9
    assert loaded.sources["api.auth.enable"] == "env"
    assert loaded.sources["ffmpeg.log.max_history"] == "env"
    assert loaded.sources["ffmpeg.log.max_lines"] == "file"


# --- errors name the variable or key and the value ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CORE_FFMPEG_MAXPROCESSES", "abc"),
        ("CORE_FFMPEG_MAX_PROCESSES", "-1"),
        ("CORE_API_AUTH_ENABLE", "maybe"),
        ("CORE_FFMPEG_LOG_MAXLINES", "0"),
        ("CORE_LOG_LEVEL", "chatty"),
        ("CORE_ADDRESS", "localhost"),
        ("CORE_ADDRESS", "127.0.0.1:99999"),
        ("CORE_ADDRESS", "127.0.0.1:http"),
        ("CORE_WEBRTC_PORT_FIRST", "80"),
    ],
)
def test_bad_environment_value_names_variable_and_value(name: str, value: str) -> None:
    message = config_error(**{name: value})
    assert message.startswith(f"{name}={value!r}")


def test_bad_regex_in_access_list_names_variable_and_pattern() -> None:
    message = config_error(CORE_FFMPEG_ACCESS_INPUT_BLOCK=r"^file: (unclosed")
    assert "CORE_FFMPEG_ACCESS_INPUT_BLOCK" in message
    assert "'(unclosed'" in message
    assert "regular expression" in message


def test_malformed_json_list_names_variable() -> None:
    message = config_error(CORE_WEBRTC_ICE_SERVERS='["stun:127.0.0.1:3478", ')
    assert message.startswith("CORE_WEBRTC_ICE_SERVERS=")
    assert "stun:127.0.0.1:3478" in message


def test_port_range_from_environment_names_variable_and_values() -> None:
    message = config_error(CORE_WEBRTC_PORT_FIRST="30000", CORE_WEBRTC_PORT_LAST="29000")
    assert "30000" in message and "29000" in message
    assert "CORE_WEBRTC_PORT_LAST" in message or "CORE_WEBRTC_PORT_FIRST" in message
    assert "None" not in message


def test_port_range_from_file_names_file_and_keys(tmp_path: Path) -> None:
    config_file = write_json(tmp_path, {"webrtc": {"port_first": 30000, "port_last": 30000}})
    message = config_error(config_file)
    assert str(config_file) in message
    assert "port_last (30000) must be above port_first (30000)" in message


@pytest.mark.parametrize(
    ("data", "key", "value"),
    [
        ({"ffmpeg": {"max_processes": "many"}}, "ffmpeg.max_processes", "'many'"),
        ({"api": {"auth": {"enable": "maybe"}}}, "api.auth.enable", "'maybe'"),
        ({"address": "8080"}, "address", "'8080'"),
        ({"ffmpeg": {"access": {"output": {"allow": ["*.ts"]}}}}, "ffmpeg.access.output.allow", "'*.ts'"),
    ],
)
def test_bad_file_value_names_key_file_and_value(tmp_path: Path, data: dict, key: str, value: str) -> None:
    config_file = write_json(tmp_path, data)
    message = config_error(config_file)
    assert message.startswith(f"{key} in {config_file}=")
    assert value in message


def test_environment_error_wins_attribution_over_file(tmp_path: Path) -> None:
    config_file = write_json(tmp_path, {"ffmpeg": {"max_processes": 2}})
    message = config_error(config_file, CORE_FFMPEG_MAXPROCESSES="abc")
    assert message.startswith("CORE_FFMPEG_MAXPROCESSES='abc'")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert str(missing) in config_error(missing)
    assert "cannot read" in config_error(missing)

    broken = tmp_path / "broken.json"
    broken.write_text('{"name": ')
    assert "not valid json" in config_error(broken)

    broken_toml = tmp_path / "broken.toml"
    broken_toml.write_text("name = ")
    assert "not valid toml" in config_error(broken_toml)

    top_level_list = write_json(tmp_path, [1, 2], name="list.json")
    assert "top level must be an object" in config_error(top_level_list)


# --- the command line ---------------------------------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """``python -m dragonfork ...`` with no CORE_* variable but the given ones."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CORE_")}
    env.update({"CORE_DB_DIR": str(tmp_path / "db"), **environ})
    return subprocess.run(
        [sys.executable, "-m", "dragonfork", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_cli_config_prints_values_and_sources(tmp_path: Path) -> None:
    config_file = write_json(tmp_path, DATARHEI_CONFIG)
    result = run_cli(
        tmp_path,
        "config",
        "--config",
        str(config_file),
        CORE_FFMPEG_MAXPROCESSES="5",
        CORE_API_AUTH_JWT_SECRET="do-not-print-me",
    )
    assert result.returncode == 0, result.stderr
    lines = {
        line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith("#")
    }
    assert lines["ffmpeg.max_processes"].endswith("5  [env]")
    assert lines["db.dir"].endswith(f"{str(tmp_path / 'db')!r}  [env]")
    assert lines["name"].endswith("'still-night-7342'  [file]")
    assert lines["webrtc.port_first"].endswith("20000  [default]")
    assert lines["api.auth.jwt.secret"].endswith("'********'  [env]")
    assert "do-not-print-me" not in result.stdout
    assert "datarhei" not in lines["api.auth.password"]
    assert f"# config file: {config_file}" in result.stdout
    assert lines["srt.enable"].endswith("False  [file]")
    assert lines["srt.log.enable"].endswith("False  [file, no effect here]")


def test_cli_serve_with_bad_environment_value_exits_2(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", CORE_FFMPEG_MAXPROCESSES="abc", CORE_ADDRESS="127.0.0.1:0")
    assert result.returncode == 2
    assert "CORE_FFMPEG_MAXPROCESSES='abc'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "db").exists()


# --- sessions -----------------------------------------------------------------------------------------------


def test_sessions_defaults_ignore_loopback_as_datarhei() -> None:
    sessions = load_settings(None, environ={}).settings.sessions
    assert sessions.enable is True
    assert sessions.ip_ignorelist == ["127.0.0.1/32", "::1/128"]
    assert sessions.session_timeout_sec == 30
    assert (sessions.max_sessions, sessions.max_bitrate_mbit, sessions.persist) == (0, 0, False)


def test_sessions_datarhei_variable_names() -> None:
    environ = {
        "CORE_SESSIONS_MAXBITRATE_MBIT": "250",
        "CORE_SESSIONS_MAXSESSIONS": "40",
        "CORE_SESSIONS_SESSION_TIMEOUT_SEC": "12",
        "CORE_SESSIONS_IP_IGNORELIST": "10.0.0.0/8,192.168.1.0/24",
    }
    sessions = load_settings(None, environ=environ).settings.sessions
    assert sessions.max_bitrate_mbit == 250
    assert sessions.max_sessions == 40
    assert sessions.session_timeout_sec == 12
    assert sessions.ip_ignorelist == ["10.0.0.0/8", "192.168.1.0/24"]


def test_sessions_bad_cidr_names_the_variable_and_value() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(None, environ={"CORE_SESSIONS_IP_IGNORELIST": "127.0.0.1/32 not-a-range"})
    assert "CORE_SESSIONS_IP_IGNORELIST" in str(error.value)
    assert "not-a-range" in str(error.value)


def test_srt_settings_use_datarhei_names_and_bound_the_passphrase() -> None:
    loaded = load_settings(
        None,
        environ={"CORE_SRT_ENABLE": "true", "CORE_SRT_ADDRESS": ":6001", "CORE_SRT_TOKEN": "abc"},
    )
    srt = loaded.settings.srt
    assert (srt.enable, srt.address, srt.token, srt.passphrase) == (True, ":6001", "abc", "")
    with pytest.raises(ConfigError, match="CORE_SRT_PASSPHRASE.*10 to 79 characters"):
        load_settings(None, environ={"CORE_SRT_PASSPHRASE": "short"})
    with pytest.raises(ConfigError, match="host:port"):
        load_settings(None, environ={"CORE_SRT_ADDRESS": "6000"})


def test_rtmp_settings_use_datarhei_names_and_need_a_certificate_for_rtmps() -> None:
    loaded = load_settings(
        None,
        environ={"CORE_RTMP_ENABLE": "true", "CORE_RTMP_APP": "/live/", "CORE_RTMP_ADDRESS_TLS": ":1937"},
    )
    rtmp = loaded.settings.rtmp
    assert (rtmp.enable, rtmp.app, rtmp.address, rtmp.address_tls) == (True, "/live", ":1935", ":1937")
    with pytest.raises(ConfigError, match="tls.cert_file and tls.key_file"):
        load_settings(None, environ={"CORE_RTMP_ENABLE": "true", "CORE_RTMP_ENABLETLS": "true"})
    with pytest.raises(ConfigError, match="app must be a path"):
        load_settings(None, environ={"CORE_RTMP_APP": "live"})
