"""Configuration at runtime, as datarhei Core's ``/api/v3/config``: read, update, store and reload.

``document()`` is datarhei's config document (``created_at``, ``loaded_at``, ``updated_at``, ``config``,
``overrides``). ``update()`` merges a full or partial v3 config over the stored one (objects key by key, lists
and values replaced, as datarhei's JSON decoding does), validates it with the environment on top, writes the
keys that differ from the config file atomically to ``config.json`` in the data directory and makes it the
pending configuration. ``reload()`` applies the pending configuration to the running server.

Services declare which settings they depend on (``depend``, ``run_scoped``); a reload calls only the ones
whose keys changed, so processes and viewers keep running unless their own settings changed. Keys that no
service reads at run time are reported as taking effect at the next start.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import trio

from dragonfork import metrics
from dragonfork.atomic_file import write_atomically
from dragonfork.config import (
    CONFIG_VERSION,
    DOCUMENT_KEYS,
    REDACTED,
    STORED_CONFIG_NAME,
    ConfigError,
    LoadedSettings,
    Settings,
    auth_problem,
    is_secret,
    kept_keys,
    known_subset,
    layer_difference,
    leaf_paths,
    merged_layers,
    redacted,
    settings_value,
    unsafe_bind,
    validated,
    with_stored_layer,
)

log = structlog.get_logger("dragonfork.settings")

Apply = Callable[[Settings], Awaitable[None] | None]
ScopedRun = Callable[..., Awaitable[None]]


class ConfigRejected(Exception):
    """A config update that cannot be decoded into settings (400): ``details`` name each key and value."""

    def __init__(self, message: str, details: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigConflict(Exception):
    """A config update whose values contradict each other (datarhei's 409: key → messages)."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{key}: {', '.join(messages)}" for key, messages in errors.items()))
        self.errors = errors


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _covers(prefixes: Iterable[str], key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The dotted leaf keys whose values differ."""
    return [
        key
        for key in (".".join(path) for path in leaf_paths(Settings))
        if settings_value(old, key) != settings_value(new, key)
    ]


@dataclass
class Dependent:
    """A service's declaration: the settings it reads and how it takes new ones (None: reads them live)."""

    name: str
    keys: tuple[str, ...]
    apply: Apply | None = None


@dataclass
class ScopedService:
    """A service that runs in a cancel scope of its own and restarts when one of its settings changes.

    ``run(settings, task_status=...)`` serves until cancelled (a disabled service calls
    ``task_status.started()`` and returns); it calls ``task_status.started()`` when it is up, so a reload
    waits for the new instance to listen. A failure before that is the starter's (start-up, or the reload
    reports it); after it, the failure is logged with the service's name and ends only that service.
    """

    name: str
    keys: tuple[str, ...]
    run: ScopedRun
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)
    up: bool = False
    error: str | None = None  # why it is down (a failed restart, or a failure while it served)


@dataclass
class _MarksUp:
    """The task status a scoped service reports to: marks it up at the moment it says so."""

    service: ScopedService
    status: trio.TaskStatus[Any]

    def started(self, value: Any = None) -> None:
        self.service.up = True
        self.status.started(value)


@dataclass
class ReloadReport:
    changed: list[str]
    applied: list[str]  # services that took new settings
    failed: list[str]  # services whose apply failed (logged with the cause; the others carry on)
    at_next_start: list[str]  # keys no running service reads


class SettingsService:
    def __init__(self, loaded: LoadedSettings) -> None:
        self.active = loaded  # what the running services use
        self.pending = loaded  # the stored configuration a reload applies
        self.started = loaded.settings  # what the keys bound at start (no service takes them) still hold
        started = datetime.now(UTC)
        stored = loaded.settings.data_dir / STORED_CONFIG_NAME
        self.created_at = datetime.fromtimestamp(stored.stat().st_mtime, UTC) if stored.exists() else started
        self.updated_at = self.created_at
        self.loaded_at = started
        self._dependents: list[Dependent] = []
        self._scoped: list[ScopedService] = []
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()

    @property
    def settings(self) -> Settings:
        return self.active.settings

    @property
    def path(self) -> Path:
        return self.active.settings.data_dir / STORED_CONFIG_NAME

    # -- declarations -------------------------------------------------------------------------------------

    def depend(self, name: str, keys: Iterable[str], apply: Apply | None = None) -> None:
        """Declare that service ``name`` uses ``keys`` (dotted prefixes); ``apply`` takes new values."""
        self._dependents.append(Dependent(name, tuple(keys), apply))

    async def run_scoped(self, name: str, keys: Iterable[str], run: ScopedRun) -> None:
        """Start a service in a scope of its own (in ``run``'s nursery), restarted when ``keys`` change."""
        service = ScopedService(name, tuple(keys), run)
        self._scoped.append(service)
        await self._start(service, self.settings)

    async def run(self, *, task_status: trio.TaskStatus[SettingsService] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery of the scoped services (RTMP, SRT ... as they arrive)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    async def _start(self, service: ScopedService, settings: Settings) -> None:
        assert self._nursery is not None, "SettingsService.run has not started"
        service.scope, service.stopped, service.up = trio.CancelScope(), trio.Event(), False

        async def scoped(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            assert service.scope is not None
            try:
                with service.scope:
                    await service.run(settings, task_status=_MarksUp(service, task_status))
            except Exception as exc:
                if not service.up:
                    raise
                log.exception("service failed; it stays down until its settings change", service=service.name)
                metrics.FAILURES.labels(service.name, type(exc).__name__).inc()
                service.error = str(exc) or type(exc).__name__
            finally:
                service.stopped.set()

        await self._nursery.start(scoped)

    def failure(self, name: str) -> str | None:
        """Why the scoped service ``name`` is down, or None while it runs (or was never declared)."""
        return next((service.error for service in self._scoped if service.name == name), None)

    # -- the API ------------------------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """datarhei's ``api.Config``: pending config (secrets redacted), keys fixed by the environment."""
        return {
            "created_at": rfc3339(self.created_at),
            "loaded_at": rfc3339(self.loaded_at),
            "updated_at": rfc3339(self.updated_at),
            "config": config_data(self.pending.settings, self.created_at),
            "overrides": self.pending.overrides,
            "restart_required": self.restart_required(),
        }

    def restart_required(self) -> list[str]:
        """Keys whose stored value differs from the one the server runs with and that no reload applies
        (dragonfork's addition to the document: the running server still uses their value at start)."""
        return self._bound_at_start(changed_keys(self.started, self.pending.settings))

    def _bound_at_start(self, keys: Iterable[str]) -> list[str]:
        declared = [prefix for item in self._dependents for prefix in item.keys]
        declared += [prefix for service in self._scoped for prefix in service.keys]
        without_effect = set(kept_keys())
        return [key for key in keys if not _covers(declared, key) and key not in without_effect]

    async def update(self, body: Any) -> None:
        """PUT: merge, validate, store ``config.json`` atomically and make it the pending configuration."""
        if not isinstance(body, dict):
            raise ConfigRejected("Invalid JSON", ["body: must be a JSON object (a datarhei v3 config)"])
        version = body.get("version", 0)
        if version != CONFIG_VERSION:
            raise ConfigRejected(
                "Invalid config version", [f"version: only version 3 is supported (value {version!r})"]
            )
        update = {key: value for key, value in body.items() if key not in DOCUMENT_KEYS}
        update, unknown = known_subset(update, Settings)
        if unknown:
            raise ConfigRejected(
                "Invalid JSON",
                [_unknown_key(key) for key in unknown],
            )
        async with self._lock:
            pending = self.pending
            moved = _moved_data_dir(update, pending.settings)
            if moved:
                raise ConfigConflict(moved)
            current = merged_layers(pending.file_layer, pending.stored_layer)
            candidate = merged_layers(current, _without_redacted_secrets(update))
            try:
                stored_layer = layer_difference(_settings_tree(candidate), _settings_tree(pending.file_layer))
                loaded = with_stored_layer(pending, stored_layer)
            except ConfigError as exc:
                raise ConfigRejected("Invalid JSON", exc.details) from None
            conflicts = _conflicts(loaded.settings)
            if conflicts:
                raise ConfigConflict(conflicts)
            now = datetime.now(UTC)
            await trio.to_thread.run_sync(_write_stored, self.path, stored_layer, now)
            self.pending, self.created_at, self.updated_at = loaded, now, now
        log.info("config stored", path=str(self.path), keys=sorted(_dotted(stored_layer)))

    async def reload(self) -> ReloadReport:
        """Apply the pending configuration to the services whose settings changed."""
        async with self._lock:
            old, new = self.active.settings, self.pending.settings
            changed = changed_keys(old, new)
            self.active, self.loaded_at = self.pending, datetime.now(UTC)
            report = ReloadReport(changed=changed, applied=[], failed=[], at_next_start=[])
            # servers first: a process restarted for a new RTMP token finds the new server listening
            for service in self._scoped:
                if any(_covers(service.keys, key) for key in changed):
                    await self._restart(service, new, report)
            for dependent in self._dependents:
                if any(_covers(dependent.keys, key) for key in changed):
                    await self._apply(dependent, new, report)
            report.at_next_start = self._bound_at_start(changed)
        log.info(
            "config reloaded",
            changed=changed,
            applied=report.applied,
            failed=report.failed,
            at_next_start=report.at_next_start,
        )
        return report

    async def _apply(self, dependent: Dependent, settings: Settings, report: ReloadReport) -> None:
        if dependent.apply is None:  # reads its settings live
            report.applied.append(dependent.name)
            return
        try:
            result = dependent.apply(settings)
            if result is not None:
                await result
        except Exception as exc:
            log.exception("service could not take the new settings", service=dependent.name)
            metrics.FAILURES.labels(dependent.name, type(exc).__name__).inc()
            report.failed.append(dependent.name)
        else:
            report.applied.append(dependent.name)

    async def _restart(self, service: ScopedService, settings: Settings, report: ReloadReport) -> None:
        if service.scope is not None:
            service.scope.cancel()
            await service.stopped.wait()
        try:
            await self._start(service, settings)
        except Exception as exc:
            log.exception("service could not restart with the new settings", service=service.name)
            metrics.FAILURES.labels(service.name, type(exc).__name__).inc()
            service.error = str(exc) or type(exc).__name__
            report.failed.append(service.name)
        else:
            service.error = None
            report.applied.append(service.name)


def config_data(settings: Settings, created_at: datetime) -> dict[str, Any]:
    """datarhei's ``api.ConfigData``: every datarhei key, nested as datarhei nests it, and dragonfork's."""
    tree = settings.model_dump(mode="json")
    for path in leaf_paths(Settings):
        key = ".".join(path)
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = redacted(key, parent[path[-1]])
    return {"created_at": rfc3339(created_at), "version": CONFIG_VERSION, **tree}


def _settings_tree(layer: dict[str, Any]) -> dict[str, Any]:
    """Every key's value (defaults filled in) of a layer without the environment: what gets compared."""
    return validated(layer).model_dump(mode="json")


def _without_redacted_secrets(update: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Secrets sent back as ``********`` (as ``GET`` shows them) keep their current value."""
    kept: dict[str, Any] = {}
    for key, value in update.items():
        dotted = prefix + key
        if isinstance(value, dict) and not is_secret(dotted):
            kept[key] = _without_redacted_secrets(value, dotted + ".")
        elif not (value == REDACTED and is_secret(dotted)):
            kept[key] = value
    return kept


def _unknown_key(path: tuple[str, ...]) -> str:
    """``"rtmp: unknown key \"bogus\""``: the section it is in, then the key as sent (JSON-quoted)."""
    return f"{'.'.join(path[:-1]) or 'config'}: unknown key {json.dumps(path[-1])}"


def _moved_data_dir(update: dict[str, Any], current: Settings) -> dict[str, list[str]]:
    """``db.dir`` is where config.json lives: the API may send it back unchanged, never move it."""
    db = update.get("db")
    if not isinstance(db, dict) or "dir" not in db:
        return {}  # nothing sent, or not an object: validation names it
    sent = db.pop("dir")
    if sent == current.db.dir:
        return {}
    return {
        "db.dir": [
            f"{sent!r}: cannot be moved through the API (config.json lives there); set it in the config file "
            f"or CORE_DB_DIR (it is {current.db.dir!r})"
        ]
    }


def _conflicts(settings: Settings) -> dict[str, list[str]]:
    """datarhei's cross-key checks (409) for what dragonfork implements."""
    errors: dict[str, list[str]] = {}
    auth = settings.api.auth
    if auth.enable and not (auth.username and auth.password):
        errors["api.auth.enable"] = ["api.auth.username and api.auth.password must be set"]
    elif (problem := auth_problem(auth)) is not None:  # what start-up would refuse (a short JWT secret)
        errors["api.auth.jwt.secret"] = [problem]
    if (problem := unsafe_bind(settings)) is not None:
        errors["address"] = [problem]
    return errors


def _dotted(tree: dict[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def _write_stored(path: Path, stored_layer: dict[str, Any], created_at: datetime) -> None:
    """config.json in datarhei's layout (a partial v3 config), replaced atomically."""
    document = {"version": CONFIG_VERSION, "created_at": rfc3339(created_at), **stored_layer}
    write_atomically(path, json.dumps(document, indent=4).encode())
