"""HLS sessions: a player fetching a process's playlist and segments from /memfs or diskfs, as datarhei does.

HTTP has no connection that lasts as long as a viewer, so the session id travels in the URLs:

1. A player asks for ``/memfs/demo.m3u8`` without ``?session=``. It gets a one-line master playlist that
   points at ``demo.m3u8?session=<new id>`` (22 characters of the short-uuid alphabet, as datarhei).
2. It asks for ``demo.m3u8?session=ID``: the session is registered (pending, reference ``demo``: the
   playlist's name), and every segment line of the playlist gets ``?session=ID`` too.
3. It fetches ``demo_0001.ts?session=ID``: the bytes count as the session's egress and make it active.

A session whose player sent no request for ``sessions.session_timeout_sec`` ends; one that never fetched a
segment is dropped after 5 s. Limits are checked when a new session id would be handed out or registered, so
a player already watching is never cut off. A client in ``sessions.ip_ignorelist`` gets the files unchanged.

The file-serving route calls ``playlist`` with a playlist it is about to send (and sends what it returns
instead, with ``Cache-Control: private``), and ``served`` for every file it sent.
"""

from __future__ import annotations

import re
import secrets
from pathlib import PurePosixPath
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dragonfork.sessions.collector import Client
from dragonfork.sessions.registry import SessionRegistry

SESSION_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # short-uuid's, as datarhei
SESSION_ID = re.compile(f"^[{SESSION_ALPHABET}]{{22}}$")
PLAYLIST_SUFFIXES = (".m3u8",)
SEGMENT_SUFFIXES = (".ts", ".m4s", ".mp4", ".aac")


class InvalidSession(Exception):
    """A ``session`` query value that is not one this server hands out (the route answers 403)."""


class FileRequest(Protocol):
    """A GET of a file, as the file-serving route describes it."""

    @property
    def url(self) -> str:
        """The URL path, e.g. /memfs/demo.m3u8."""

    @property
    def query(self) -> str:
        """The raw query string; ``session`` is read from it."""

    @property
    def client(self) -> str:
        """The client's address."""

    @property
    def user_agent(self) -> str: ...

    @property
    def referrer(self) -> str:
        """The host of the Referer header."""

    @property
    def bytes_sent(self) -> int: ...


def _session_id(request: FileRequest) -> str:
    return dict(parse_qsl(request.query)).get("session", "")


def _client(request: FileRequest) -> Client:
    return Client(request.client, user_agent=request.user_agent, referrer=request.referrer)


def new_session_id() -> str:
    return "".join(secrets.choice(SESSION_ALPHABET) for _ in range(22))


class HlsSessions:
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.collector = registry["hls"]

    def playlist(self, request: FileRequest, body: bytes) -> bytes | None:
        """The playlist to send instead of ``body`` (None: send it unchanged); raises ``SessionRefused``
        (503) for a new viewer over a limit, ``InvalidSession`` (403) for a session id never handed out."""
        if not request.url.endswith(PLAYLIST_SUFFIXES) or not self.registry.collectable(request.client):
            return None
        session_id = _session_id(request)
        if session_id and not SESSION_ID.match(session_id):
            raise InvalidSession(f"session: {session_id!r} is not a session id this server hands out")
        if not (session_id and self.collector.get(session_id)):
            self.registry.check_admission("hls")  # a new viewer; one already watching is never cut off
        if session_id:
            self.collector.register(
                session_id,
                reference=PurePosixPath(request.url).stem,
                location=request.url,
                client=_client(request),
                idle_timeout=self.registry.settings.session_timeout_sec,
            )
        served = _rewrite(body.decode("utf-8", "replace"), request.url, request.query, session_id)
        self.collector.egress(session_id, len(served), activate=False)
        return served

    def served(self, request: FileRequest) -> None:
        """A file was sent: a segment's bytes count for its session, and its first make the session active."""
        session_id = _session_id(request)
        if not (session_id and request.url.endswith(SEGMENT_SUFFIXES)):
            return
        if self.registry.collectable(request.client):
            self.collector.egress(session_id, request.bytes_sent)


def _with_session(uri: str, session_id: str) -> str:
    parts = urlsplit(uri)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "session"]
    query.append(("session", session_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _rewrite(text: str, path: str, query: str, session_id: str) -> bytes:
    """The playlist with the session in every media URI; a new session id when it has none yet.

    A master playlist gives each variant playlist a session of its own (a player watches one variant at a
    time); a media playlist asked for without a session becomes a master playlist of itself with a new one.
    A variant that refers to the playlist itself is commented out (it would loop).
    """
    lines: list[str] = []
    is_master = False
    for line in text.splitlines():
        uri = line.strip()
        if not uri or uri.startswith("#") or urlsplit(uri).scheme:
            lines.append(line)
            continue
        target = urlsplit(uri).path
        if target.endswith(PLAYLIST_SUFFIXES):
            is_master = True
            resolved = str(PurePosixPath(path).parent / target) if not target.startswith("/") else target
            rewritten = _with_session(uri, new_session_id())
            lines.append(f"# m3u8 is referencing itself: {rewritten}" if resolved == path else rewritten)
        elif target.endswith(SEGMENT_SUFFIXES) and session_id:
            lines.append(_with_session(uri, session_id))
        else:
            lines.append(line)
    if not is_master and not session_id:
        own = PurePosixPath(path).name + (f"?{query}" if query else "")
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-STREAM-INF:BANDWIDTH=1024"]
        lines.append(_with_session(own, new_session_id()))
    return ("\n".join(lines) + "\n").encode()
