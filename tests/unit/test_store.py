"""``db.json`` persistence: atomic replacement, round trips, refusing a corrupt database, surviving SIGKILL.

Run as a script (``python test_store.py DIR FIRST``), this module is the writer the crash test kills: it saves
database versions FIRST, FIRST+1, ... until it is killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dragonfork.process.store import DB_VERSION, DatabaseError, Store

# Large enough that writing a version takes a while, so kills land in the middle of writes.
PADDING_BYTES = 256 * 1024
KILLS = 20
# About one kill in five lands inside a write; a run with none in its 20 goes on, up to this many.
MAX_KILLS = 100


def database_version(number: int) -> dict[str, Any]:
    """Version ``number`` of a database; every version differs in content and size."""
    return {
        "processes": [
            {"config": {"id": f"p{index}", "input": [{"id": "in", "address": "x"}]}, "order": "start"}
            for index in range(number % 7)
        ],
        "metadata": {"number": number, "padding": "x" * (PADDING_BYTES + number % 4096)},
    }


def stray_temp_files(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if path.name != "db.json"]


def test_load_without_a_database(tmp_path: Path) -> None:
    store = Store(tmp_path / "missing")
    assert not store.exists()
    assert store.load() == {"version": DB_VERSION, "processes": [], "metadata": {}}
    assert not (tmp_path / "missing").exists()


def test_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    data = {
        "processes": [{"config": {"id": "cam1"}, "order": "stop", "metadata": {"ui": {"title": "Lobby ✓"}}}],
        "metadata": {"restreamer-ui": {"version": "1.0"}},
    }
    store.save(data)
    assert store.exists()
    assert store.load() == {**data, "version": DB_VERSION}
    assert Store(tmp_path / "db").load() == {**data, "version": DB_VERSION}


def test_metadata_defaults_to_empty(tmp_path: Path) -> None:
    (tmp_path / "db.json").write_text('{"version": 1, "processes": []}')
    assert Store(tmp_path).load()["metadata"] == {}


def test_save_replaces_the_file_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(database_version(1))
    with store.path.open("rb") as first:
        for number in range(2, 12):
            store.save(database_version(number))
        # A rename puts a new file in place and the open one keeps version 1; writing in place would change it
        # (and could tear on a crash).
        assert os.fstat(first.fileno()).st_ino != store.path.stat().st_ino
        assert json.loads(first.read())["metadata"]["number"] == 1
    assert stray_temp_files(tmp_path) == []
    assert store.load() == {**database_version(11), "version": DB_VERSION}


def test_failed_save_keeps_the_old_database(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(database_version(1))
    before = store.path.read_bytes()
    with pytest.raises(TypeError):
        store.save({"processes": [], "metadata": {"not json": object()}})
    assert store.path.read_bytes() == before
    assert stray_temp_files(tmp_path) == []


@pytest.mark.parametrize(
    "content",
    [
        "",
        '{"processes": [',
        "\x00\x00\x00\x00",
        "[]",
        '{"version": 1}',
        '{"version": 1, "processes": {}}',
        "null",
    ],
    ids=["empty", "truncated", "zeros", "list", "no-processes", "processes-not-list", "null"],
)
def test_corrupt_database_raises_and_is_left_alone(tmp_path: Path, content: str) -> None:
    store = Store(tmp_path)
    store.path.write_text(content)
    with pytest.raises(DatabaseError) as caught:
        store.load()
    assert str(store.path) in str(caught.value)
    assert store.path.read_text() == content


def test_server_refuses_to_start_on_a_corrupt_database(tmp_path: Path) -> None:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    corrupt = '{"processes": [{"config": {"id": "cam1"'
    (db_dir / "db.json").write_text(corrupt)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CORE_")}
    env.update({"CORE_DB_DIR": str(db_dir), "CORE_ADDRESS": "127.0.0.1:0", "CORE_DEMO": "false"})
    env["CORE_STORAGE_DISK_DIR"] = str(tmp_path / "disk")  # created at start, like the database directory
    result = subprocess.run(
        [sys.executable, "-m", "dragonfork", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert f"{db_dir / 'db.json'}: cannot read the database" in result.stderr
    assert "Traceback" not in result.stderr
    assert (db_dir / "db.json").read_text() == corrupt
    assert stray_temp_files(db_dir) == []


def test_sigkill_during_saves_leaves_a_complete_version(tmp_path: Path) -> None:
    """Kill a writer at random moments; each time db.json must be one complete version, never older.

    The writer reports each version it saved; it is killed after one to three reports (and a random few
    milliseconds more), so every round saves something and the kill lands among the writes however slowly a
    loaded machine runs the writer, instead of after a wall-clock delay it may have spent waiting for a CPU.
    """
    store = Store(tmp_path)
    store.save(database_version(0))
    rng = random.Random()
    newest = 0
    kills_during_a_write = 0
    kills = 0
    while kills < KILLS or (kills_during_a_write == 0 and kills < MAX_KILLS):
        kills += 1
        writer = subprocess.Popen(
            [sys.executable, __file__, str(tmp_path), str(newest + 1)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None
            saved = [int(writer.stdout.readline()) for _ in range(rng.randint(1, 3))]
            time.sleep(rng.uniform(0.0, 0.005))
            writer.send_signal(signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait(timeout=10)
            writer.stdout.close()
        assert writer.returncode == -signal.SIGKILL

        kills_during_a_write += bool(stray_temp_files(tmp_path))
        data = store.load()
        assert not stray_temp_files(tmp_path), "load() leaves the interrupted write's temp file behind"
        number = data["metadata"]["number"]
        assert data == {**database_version(number), "version": DB_VERSION}
        assert number >= saved[-1], "a version the writer had saved was lost"
        newest = number
    assert kills_during_a_write > 0, "no kill landed during a write"
    print(f"{kills} kills, {kills_during_a_write} during a write, {newest} versions saved")


def _write_versions_until_killed(directory: Path, first: int) -> None:
    """Save versions ``first``, ``first + 1``, ... and print each number once it is saved."""
    store = Store(directory)
    for number in range(first, first + 1_000_000):
        store.save(database_version(number))
        print(number, flush=True)


if __name__ == "__main__":
    _write_versions_until_killed(Path(sys.argv[1]), int(sys.argv[2]))
