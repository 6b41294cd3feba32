"""WHEP egress: the service (signalling, per-stream cap, session table) the HTTP route calls."""

from dragonfork.servers.whep.server import PublisherStatus, WhepRefused, WhepServer, WhepSettings

__all__ = ["PublisherStatus", "WhepRefused", "WhepServer", "WhepSettings"]
