"""Files over HTTP: memfs at ``/memfs/*``, diskfs at ``/`` (after every route of the app), ``/api/v3/fs``.

- ``GET``/``HEAD /memfs/{path}`` are public, as in datarhei; ``PUT``/``POST``/``DELETE`` need HTTP Basic
  credentials when ``storage.memory.auth.enable`` is on (``{memfs}`` carries them for FFmpeg). A full memfs
  answers ``507``.
- diskfs is read-only at ``/``: a ``GET``/``HEAD`` that no route of the app claims (the admin UI at ``/``,
  ``/whep-player.html``, ``/ui/``, ``/api``, ``/ping``, ``/metrics``, ``/memfs``) is looked up in
  ``storage.disk.dir`` (a directory serves its ``index.html``).
- ``/api/v3/fs`` lists the filesystems, ``/api/v3/fs/{storage}`` their files (``glob``, ``sort``,
  ``order``), ``/api/v3/fs/{storage}/{path}`` reads, writes and deletes (behind API auth like all of
  ``/api/v3``).

Served files carry their content type, ``Cache-Control`` (``no-cache`` for playlists, a short ``max-age``
for segments), ``Last-Modified``, CORS headers for players on other origins, and honour single byte ranges.
Uploads are streamed into the filesystem chunk by chunk, bounded by the filesystem's size limit rather than
``api.max_body_bytes``.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import structlog
from quart import Blueprint, jsonify, request
from quart_trio.wrappers import TrioRequest
from quart_trio.wrappers import TrioResponse as Response

from dragonfork import metrics
from dragonfork.files.filesystem import (
    FileNotFound,
    Filesystem,
    InvalidPath,
    StorageFull,
    cache_control,
    clean_path,
    content_type,
)
from dragonfork.files.service import FileService, ServedFile
from dragonfork.http.errors import ApiError
from dragonfork.http.viewers import refused, request_client
from dragonfork.sessions import InvalidSession, SessionRefused

log = structlog.get_logger("dragonfork.files")

UPLOAD_PREFIXES = ("/memfs/", "/api/v3/fs/")
APP_PREFIXES = ("/api/", "/memfs/", "/ui/")  # never looked up in diskfs
SORT_KEYS = {
    "none": None,
    "name": lambda info: info.name,
    "size": lambda info: info.size_bytes,
    "lastmod": lambda info: info.last_modified,
}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges",
}


class FileUploadRequest(TrioRequest):
    """Uploads to a filesystem are not bounded by ``api.max_body_bytes`` but by the filesystem's size limit
    (checked as the body streams in), nor by ``api.body_timeout_seconds``: FFmpeg streams a segment while
    it encodes it, so a ``-hls_time 10`` segment's PUT lasts ten seconds. Other requests keep both bounds."""

    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        if method in ("PUT", "POST") and path.startswith(UPLOAD_PREFIXES):
            kwargs["max_content_length"] = None
            kwargs["body_timeout"] = None
        super().__init__(method, scheme, path, *args, **kwargs)


def _missing(filesystem: Filesystem, path: str) -> ApiError:
    return ApiError(404, str(FileNotFound(filesystem.name, path)), field="path")


def _path_refused(exc: InvalidPath) -> ApiError:
    return ApiError(400, f"path: {exc}", field="path")


def _filesystem_path(raw: str) -> str:
    try:
        return clean_path(raw)
    except InvalidPath as exc:
        raise _path_refused(exc) from None


def _byte_range(size: int) -> tuple[int, int] | None:
    """(start, stop) of a single ``Range: bytes=...`` request, None for the whole file; 416 when the range
    lies outside the file. Multiple ranges are answered with the whole file (RFC 9110 allows it)."""
    if "Range" not in request.headers:
        return None
    wanted = request.range
    if wanted is None or wanted.units != "bytes" or len(wanted.ranges) != 1:
        return None
    span = wanted.range_for_length(size)
    if span is None:
        raise ApiError(
            416, f"range {request.headers['Range']!r} is outside the file ({size} bytes)",
            headers={"Content-Range": f"bytes */{size}"},
        )  # fmt: skip
    return span


async def send_file(
    files: FileService, filesystem: Filesystem, raw_path: str, *, to_players: bool = True
) -> Response:
    """A file of ``filesystem`` as the response to this GET or HEAD (404 JSON when there is none).

    ``to_players``: served where players fetch it (``/memfs``, diskfs at ``/``), so an HLS playlist goes
    through the HLS session collector, whole (a range of a playlist rewritten per client means nothing;
    FFmpeg asks for ``bytes=0-``: Range is ignored, as RFC 9110 allows). ``/api/v3/fs`` sends files as
    they are."""
    path = _filesystem_path(raw_path)
    try:
        info = filesystem.stat(path)
    except InvalidPath as exc:
        raise _path_refused(exc) from None
    if info is None:
        raise _missing(filesystem, path)
    to_sessions = to_players and request.method == "GET" and path.endswith(".m3u8")
    span = None if to_sessions else _byte_range(info.size_bytes)
    start, stop = span if span is not None else (0, info.size_bytes)
    headers = {
        "Content-Type": content_type(path),
        "Cache-Control": cache_control(path),
        "Last-Modified": formatdate(info.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
        **CORS_HEADERS,
    }
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{info.size_bytes}"
    status = 206 if span is not None else 200
    if request.method == "HEAD":
        response = Response(b"", status=status, headers=headers)
        response.content_length = stop - start
        return response
    try:
        chunks = filesystem.read(path, start, stop - start)
        first = await anext(chunks, b"")  # a file deleted since the stat is still a 404
    except FileNotFound:
        raise _missing(filesystem, path) from None

    client = request_client()
    event = ServedFile(
        filesystem.name, path, client.address, stop - start, url=request.path,
        query=request.query_string.decode("latin-1"), user_agent=client.user_agent, referrer=client.referrer,
    )  # fmt: skip
    if to_sessions:
        playlist = first + b"".join([chunk async for chunk in chunks])  # playlists are small
        try:
            rewritten = files.playlist(event, playlist)
        except SessionRefused as exc:
            raise refused(exc) from None
        except InvalidSession as exc:
            raise ApiError(403, str(exc), field="session") from None
        if rewritten is not None:
            headers["Cache-Control"] = "private"  # this client's own session ids are in it
            playlist = rewritten
        files.served(dataclasses.replace(event, bytes_sent=len(playlist)))
        return Response(playlist, status=status, headers=headers)

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    whole = len(first) == stop - start  # memfs, and small disk files: one piece, sent as it is
    if whole:
        await chunks.aclose()
    response = Response(first if whole else body(), status=status, headers=headers)
    response.content_length = stop - start
    files.served(event)
    return response


async def _receive(filesystem: Filesystem, raw_path: str) -> Response:
    """PUT/POST: store the streamed body; 201 when the file is new, 204 when it replaced one."""
    path = _filesystem_path(raw_path)
    declared = request.content_length
    try:
        if filesystem.limit_bytes and declared is not None and declared > filesystem.limit_bytes:
            raise StorageFull(f"{declared} bytes do not fit into {filesystem.limit_bytes} bytes")
        created = await filesystem.write(path, aiter(request.body))
    except StorageFull as exc:
        metrics.FILES_REFUSED.labels(filesystem.name, "full").inc()
        log.warning("write refused", filesystem=filesystem.name, path=path, reason=str(exc))
        raise ApiError(507, f"{path}: {exc}", field="body") from None
    except InvalidPath as exc:
        metrics.FILES_REFUSED.labels(filesystem.name, "path").inc()
        raise _path_refused(exc) from None
    response = Response(b"", status=201 if created else 204)
    response.headers["Content-Location"] = request.path
    return response


def _remove(filesystem: Filesystem, raw_path: str) -> Response:
    path = _filesystem_path(raw_path)
    try:
        deleted = filesystem.delete(path)
    except InvalidPath as exc:
        raise _path_refused(exc) from None
    if not deleted:
        raise _missing(filesystem, path)
    return Response(f"Deleted: {path}", status=200, content_type="text/plain")


def _require_memfs_credentials(files: FileService) -> None:
    auth = files.memfs_auth
    if not auth.enable:
        return
    given = request.authorization
    if (
        given is not None
        and given.type == "basic"
        and hmac.compare_digest((given.username or "").encode(), auth.username.encode())
        and hmac.compare_digest((given.password or "").encode(), auth.password.encode())
    ):
        return
    metrics.FILES_REFUSED.labels("mem", "auth").inc()
    raise ApiError(
        401,
        "writing to /memfs needs the storage.memory.auth credentials (HTTP Basic)",
        field="Authorization",
        headers={"WWW-Authenticate": 'Basic realm="memfs"'},
    )


async def serve_from_diskfs(files: FileService) -> Response | None:
    """diskfs at ``/``: the file a GET/HEAD that no route claimed names, or None when it is not one."""
    if request.method not in ("GET", "HEAD") or request.path.startswith(APP_PREFIXES):
        return None
    try:
        path = clean_path(request.path)
        local = files.disk.local_path(path)
    except InvalidPath:
        return None
    if local.is_dir():
        path = f"{path.rstrip('/')}/index.html"
    if files.disk.stat(path) is None:
        return None
    return await send_file(files, files.disk, path)


def files_blueprint(files: FileService) -> Blueprint:
    bp = Blueprint("files", __name__)

    def storage(name: str) -> Filesystem:
        filesystem = files.get(name)
        if filesystem is None:
            known = ", ".join(files.filesystems)
            raise ApiError(404, f"unknown filesystem {name!r} (known: {known})", field="storage")
        return filesystem

    # --- /memfs ---------------------------------------------------------------------------------------

    @bp.route("/memfs/<path:path>", methods=["GET", "HEAD"], provide_automatic_options=False)
    async def memfs_get(path: str):  # type: ignore[no-untyped-def]
        return await send_file(files, files.mem, path)

    @bp.route("/memfs/<path:path>", methods=["PUT", "POST"], provide_automatic_options=False)
    async def memfs_put(path: str):  # type: ignore[no-untyped-def]
        if files.mem.exhausted:
            # Refused before the credentials: FFmpeg reads the answer to its first (challenge) request
            # before sending the body, so this 507 becomes its "HTTP error 507" in the process log.
            metrics.FILES_REFUSED.labels("mem", "full").inc()
            raise ApiError(
                507,
                "memfs is full and nothing was freed since the last refused write "
                "(storage.memory.max_size_mbytes; storage.memory.purge is off)",
                field="body",
            )
        _require_memfs_credentials(files)
        return await _receive(files.mem, path)

    @bp.delete("/memfs/<path:path>", provide_automatic_options=False)
    async def memfs_delete(path: str):  # type: ignore[no-untyped-def]
        _require_memfs_credentials(files)
        return _remove(files.mem, path)

    @bp.route("/memfs/<path:path>", methods=["OPTIONS"])
    async def memfs_preflight(path: str):  # type: ignore[no-untyped-def]
        return Response(b"", status=204, headers={**CORS_HEADERS, "Access-Control-Max-Age": "600"})

    # --- /api/v3/fs -----------------------------------------------------------------------------------

    @bp.get("/api/v3/fs")
    async def list_filesystems():  # type: ignore[no-untyped-def]
        return jsonify(
            [{"name": fs.name, "type": fs.type, "mount": fs.mount} for fs in files.filesystems.values()]
        )

    @bp.get("/api/v3/fs/<storage_name>")
    async def list_files(storage_name: str):  # type: ignore[no-untyped-def]
        filesystem = storage(storage_name)
        sort = request.args.get("sort", "none")
        order = request.args.get("order", "asc")
        if sort not in SORT_KEYS:
            raise ApiError(400, f"sort: must be one of {', '.join(SORT_KEYS)}", field="sort")
        if order not in ("asc", "desc"):
            raise ApiError(400, "order: must be asc or desc", field="order")
        try:
            found = filesystem.list(request.args.get("glob", ""))
        except ValueError as exc:
            raise ApiError(400, f"glob: {exc}", field="glob") from None
        key = SORT_KEYS[sort]
        if key is not None:
            found.sort(key=key, reverse=order == "desc")
        return jsonify([info.as_json() for info in found])

    @bp.route("/api/v3/fs/<storage_name>/<path:path>", methods=["GET", "HEAD"])
    async def api_get(storage_name: str, path: str):  # type: ignore[no-untyped-def]
        return await send_file(files, storage(storage_name), path, to_players=False)

    @bp.put("/api/v3/fs/<storage_name>/<path:path>")
    async def api_put(storage_name: str, path: str):  # type: ignore[no-untyped-def]
        return await _receive(storage(storage_name), path)

    @bp.delete("/api/v3/fs/<storage_name>/<path:path>")
    async def api_delete(storage_name: str, path: str):  # type: ignore[no-untyped-def]
        return _remove(storage(storage_name), path)

    return bp
