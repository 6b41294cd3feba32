"""Sessions: who watches (or feeds) what, per collector, in datarhei Core's shape; limits for new viewers."""

from dragonfork.sessions.collector import Client, Collector, Session
from dragonfork.sessions.hls import FileRequest, HlsSessions, InvalidSession
from dragonfork.sessions.registry import COLLECTORS, SessionRefused, SessionRegistry

__all__ = [
    "COLLECTORS",
    "Client",
    "Collector",
    "FileRequest",
    "HlsSessions",
    "InvalidSession",
    "Session",
    "SessionRefused",
    "SessionRegistry",
]
