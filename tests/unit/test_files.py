"""memfs, diskfs, paths, globs and cleanup rules, on the real classes (no server)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from dragonfork.files.cleanup import Cleaner, CleanupPattern
from dragonfork.files.diskfs import DiskFS
from dragonfork.files.filesystem import (
    InvalidPath,
    StorageFull,
    cache_control,
    clean_path,
    compile_glob,
    content_type,
)
from dragonfork.files.memfs import MemFS
from dragonfork.process.placeholders import expand

KIB = 1024


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await trio.sleep(0)
        yield part


async def read_all(fs: MemFS | DiskFS, path: str, start: int = 0, length: int = 1 << 30) -> bytes:
    return b"".join([chunk async for chunk in fs.read(path, start, length)])


# --- paths, globs, content types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("x.m3u8", "/x.m3u8"), ("/a//b/./c.ts", "/a/b/c.ts"), ("/", "/"), ("dir/", "/dir")],
)
def test_clean_path(raw: str, clean: str) -> None:
    assert clean_path(raw) == clean


@pytest.mark.parametrize(
    "raw", ["../x", "/a/../../x", "a/..", "a\\..\\x", "x\x00.ts", "x\n.ts", "\x7f", "a" * 1025]
)
def test_clean_path_refuses(raw: str) -> None:
    with pytest.raises(InvalidPath):
        clean_path(raw)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/cam_*.ts", "/cam_0001.ts", True),
        ("/cam_*.ts", "/cam.m3u8", False),
        ("/cam_*.ts", "/sub/cam_0001.ts", False),
        ("/*.ts", "/sub/a.ts", False),
        ("/**.ts", "/sub/deeper/a.ts", True),
        ("/sub/**", "/sub/x/y.jpg", True),
        ("/cam_????.ts", "/cam_0001.ts", True),
        ("/cam_[0-4]*.ts", "/cam_5.ts", False),
        ("/cam.{m3u8,ts}", "/cam.ts", True),
        ("/a.b", "/aXb", False),
    ],
)
def test_glob_is_datarheis(pattern: str, path: str, matches: bool) -> None:
    assert bool(compile_glob(pattern).match(path)) is matches


def test_content_types_and_cache_control() -> None:
    assert content_type("/x.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type("/x_0001.ts") == "video/mp2t"
    assert content_type("/x.m4s") == "video/iso.segment"
    assert content_type("/x.JPG") == "image/jpeg"
    assert content_type("/noext") == "application/octet-stream"
    assert cache_control("/x.m3u8") == "no-cache"
    assert cache_control("/x.jpg") == "no-cache"  # a snapshot is rewritten in place
    assert cache_control("/x_0001.ts").startswith("public, max-age=")


def test_escaped_placeholders_as_datarhei() -> None:
    """datarhei v16's replace tests, transcribed: ``^c`` escapes c with two backslashes, a backslash with
    three."""
    value = ";:.,-_$\\£!^"
    values = {"memfs": value}
    assert expand("{memfs}", values) == value
    assert expand("{memfs^:}", values) == ";\\\\:.,-_$\\\\\\£!^"
    assert expand("{fs:mem^:}x{memfs^:}", values) == ";\\\\:.,-_$\\\\\\£!^x;\\\\:.,-_$\\\\\\£!^"
    assert expand("{memfs^^}", values) == ";:.,-_$\\\\\\£!\\\\^"
    assert expand("{memfs^\\}", values) == ";:.,-_$\\\\\\£!^"
    assert expand("{memfs^:.}", values) == "{memfs^:.}"
    assert expand("{memfs^}", values) == "{memfs^}"
    assert (
        expand("{memfs^:}", {"memfs": "http://127.0.0.1:8080/memfs"}) == "http\\\\://127.0.0.1\\\\:8080/memfs"
    )


# --- memfs --------------------------------------------------------------------------------------------------


async def test_memfs_write_read_replace_delete() -> None:
    fs = MemFS(0, purge=False)
    assert await fs.write("/a.ts", chunks(b"12", b"34")) is True
    assert await read_all(fs, "/a.ts") == b"1234"
    assert await read_all(fs, "/a.ts", 1, 2) == b"23"
    assert await fs.write("a.ts", chunks(b"x")) is False  # replaced, same file
    assert fs.stat("/a.ts") is not None and fs.stat("/a.ts").size_bytes == 1  # type: ignore[union-attr]
    assert fs.used_bytes() == 1
    assert fs.delete("/a.ts") is True and fs.delete("/a.ts") is False
    assert fs.used_bytes() == 0


async def test_memfs_full_refuses_and_keeps_old_content() -> None:
    fs = MemFS(10 * KIB, purge=False)
    await fs.write("/a.ts", chunks(b"a" * 6 * KIB))
    with pytest.raises(StorageFull, match="storage.memory.purge is off"):
        await fs.write("/b.ts", chunks(b"b" * 3 * KIB, b"b" * 3 * KIB))
    assert fs.stat("/b.ts") is None
    assert fs.used_bytes() == 6 * KIB  # the refused upload released what it held
    assert fs.exhausted  # until something is freed, the HTTP layer refuses writes up front
    assert await fs.write("/a.ts", chunks(b"c" * 9 * KIB)) is False  # replacing a file frees its old size
    with pytest.raises(StorageFull, match="larger than"):
        await fs.write("/big.ts", chunks(b"x" * 11 * KIB))
    fs.delete("/a.ts")
    assert not fs.exhausted


async def test_memfs_purge_drops_the_oldest_files_first() -> None:
    purged: list[int] = []
    fs = MemFS(10 * KIB, purge=True, on_purge=purged.append)
    for name in ("/1.ts", "/2.ts", "/3.ts"):
        await fs.write(name, chunks(b"x" * 3 * KIB))
    await fs.write("/1.ts", chunks(b"y" * 3 * KIB))  # rewritten: now the newest
    await fs.write("/4.ts", chunks(b"z" * 3 * KIB))
    assert sorted(info.name for info in fs.list()) == ["/1.ts", "/3.ts", "/4.ts"]
    assert fs.used_bytes() <= 10 * KIB and sum(purged) == 1


async def test_memfs_counts_uploads_in_flight() -> None:
    """Two uploads streaming at once can never hold more than the limit together."""
    fs = MemFS(8 * KIB, purge=False)
    gate = trio.Event()
    results: dict[str, str] = {}

    async def slow(name: str) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 3 * KIB
            await gate.wait()
            yield b"x" * 3 * KIB

        try:
            await fs.write(name, body())
            results[name] = "stored"
        except StorageFull:
            results[name] = "full"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow, "/a.ts")
        nursery.start_soon(slow, "/b.ts")
        await trio.sleep(0.01)
        assert fs.used_bytes() == 6 * KIB
        gate.set()
    assert sorted(results.values()) == ["full", "stored"]
    assert fs.used_bytes() == 6 * KIB


# --- diskfs -------------------------------------------------------------------------------------------------


async def test_diskfs_is_created_and_stays_inside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "disk" / "data"
    fs = DiskFS(root, 0)
    assert root.is_dir()
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(tmp_path, root / "up")
    for path in ("/link.txt", "/up/secret.txt", "../secret.txt"):
        with pytest.raises(InvalidPath):
            fs.local_path(path)
    assert [info.name for info in fs.list()] == []  # symlinks leading out are not listed
    assert await fs.write("/sub/a.m3u8", chunks(b"#EXTM3U\n")) is True
    assert await read_all(fs, "/sub/a.m3u8") == b"#EXTM3U\n"
    assert [info.name for info in fs.list("/**.m3u8")] == ["/sub/a.m3u8"]
    assert not [name for name in os.listdir(root / "sub") if name.startswith(".upload-")]
    assert fs.delete("/sub/a.m3u8") is True and fs.delete("/sub/a.m3u8") is False


async def test_diskfs_max_size_bounds_uploads(tmp_path: Path) -> None:
    fs = DiskFS(tmp_path, 10 * KIB)
    await fs.write("/a.bin", chunks(b"a" * 6 * KIB))
    with pytest.raises(StorageFull):
        await fs.write("/b.bin", chunks(b"b" * 3 * KIB, b"b" * 3 * KIB))
    assert sorted(os.listdir(tmp_path)) == ["a.bin"]  # no partial file, no temp file


# --- cleanup rules ------------------------------------------------------------------------------------------


async def test_cleanup_max_files_age_and_purge(tmp_path: Path) -> None:
    mem, disk = MemFS(0, purge=False), DiskFS(tmp_path, 0)
    cleaner = Cleaner({"mem": mem, "disk": disk})
    for index in range(6):
        await mem.write(f"/cam_{index}.ts", chunks(b"x"))
        await disk.write(f"/cam_{index}.ts", chunks(b"x"))
    await mem.write("/cam.m3u8", chunks(b"#EXTM3U"))
    keep_three = CleanupPattern("mem", "/cam_*.ts", max_files=3)
    assert cleaner.enforce([keep_three]) == 3
    assert sorted(info.name for info in mem.list()) == ["/cam.m3u8", "/cam_3.ts", "/cam_4.ts", "/cam_5.ts"]
    assert len(disk.list()) == 6  # a rule touches only its own filesystem

    old = CleanupPattern("disk", "/cam_*.ts", max_file_age_seconds=60)
    assert cleaner.enforce([old]) == 0
    os.utime(tmp_path / "cam_0.ts", (1, 1))
    assert cleaner.enforce([old]) == 1

    purge = [
        CleanupPattern("mem", "/cam_*.ts", purge_on_delete=True),
        CleanupPattern("mem", "/cam.m3u8"),  # no purge_on_delete: stays
    ]
    assert cleaner.purge(purge, "cam") == 3
    assert [info.name for info in mem.list()] == ["/cam.m3u8"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("s3:/x_*.ts", "must be <filesystem>:<glob>"),
        ("/x_*.ts", "must be <filesystem>:<glob>"),
        ("memfs:/x_[0-9.ts", "'[' without ']'"),
    ],
)
def test_cleanup_pattern_names_its_filesystem(pattern: str, message: str) -> None:
    from pydantic import ValidationError

    from dragonfork.process.schema import ProcessConfig

    output = {"id": "hls", "address": "-", "options": ["-f", "null"], "cleanup": [{"pattern": pattern}]}
    with pytest.raises(ValidationError) as caught:
        ProcessConfig.model_validate({"id": "p", "input": [{"id": "in", "address": "x"}], "output": [output]})
    error = caught.value.errors()[0]
    assert error["loc"] == ("output", 0, "cleanup", 0, "pattern") and message in error["msg"]


@pytest.mark.parametrize(
    ("address", "base"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        (":8080", "http://127.0.0.1:8080"),
        ("0.0.0.0:80", "http://127.0.0.1:80"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("192.0.2.7:8080", "http://192.0.2.7:8080"),  # listening there only: reach it there
    ],
)
def test_memfs_url_is_the_servers_own(address: str, base: str) -> None:
    from dragonfork.core import loopback_base_url

    assert loopback_base_url(address) == base


async def test_the_files_service_takes_new_storage_settings_at_a_reload(tmp_path: Path) -> None:
    from dragonfork.config import StorageSettings
    from dragonfork.files.service import FileService

    def storage(**memory: object) -> StorageSettings:
        return StorageSettings.model_validate({"memory": {"max_size_mbytes": 1, **memory}})

    files = FileService(storage(), disk_dir=tmp_path / "disk", http_base="http://127.0.0.1:8080")
    random_password = files.memfs_auth.password
    assert random_password and files.memfs_base.startswith(f"http://admin:{random_password}@127.0.0.1")
    await files.mem.write("/a.ts", chunks(b"a" * 700 * KIB))
    with pytest.raises(StorageFull):
        await files.mem.write("/b.ts", chunks(b"b" * 700 * KIB))
    cleaner = files.cleaner

    files.configure(storage(max_size_mbytes=2, auth={"enable": False}), disk_dir=tmp_path / "moved")

    await files.mem.write("/b.ts", chunks(b"b" * 700 * KIB))  # the higher limit holds for the next write
    assert await read_all(files.mem, "/a.ts") == b"a" * 700 * KIB  # stored files stay
    assert files.memfs_base == "http://127.0.0.1:8080/memfs" and not files.memfs_auth.enable
    assert files.diskfs_base == str((tmp_path / "moved").resolve()) and files.get("disk") is files.disk
    assert cleaner is files.cleaner and cleaner.filesystems["disk"] is files.disk  # rules clean the new dir
    files.configure(storage(max_size_mbytes=2, auth={"enable": True}), disk_dir=tmp_path / "moved")
    assert files.memfs_auth.password == random_password  # still "" in the settings: the same random one
