"""``api.read_only``: which API requests change state, refused with 403 while it is set.

datarhei Core leaves its mutating ``/api/v3`` routes out in read-only mode (process add/update/delete/command,
metadata, files, config PUT and reload). dragonfork refuses the same requests with a 403 that says why, by
method, so a route added later is covered without being listed. Requests that only read stay open although
they are POSTs: a metrics query, and WebRTC sessions (a viewer or a publisher changes no configuration, as
RTMP and SRT publishing is not covered in datarhei).
"""

from __future__ import annotations

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READING_POSTS = ("/api/v3/metrics",)
SESSION_PREFIXES = ("/api/v3/whep/", "/api/v3/whip/")
MUTATING_GETS = ("/api/v3/config/reload",)


def changes_state(method: str, path: str) -> bool:
    """Whether ``method path`` is one of the API requests ``api.read_only`` refuses."""
    if not path.startswith("/api/v3/") and path != "/api/v3":
        return False
    if path.startswith(SESSION_PREFIXES):
        return False
    method = method.upper()
    if method == "GET":
        return path in MUTATING_GETS
    return method in MUTATING_METHODS and path not in READING_POSTS
