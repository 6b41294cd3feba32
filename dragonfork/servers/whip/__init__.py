"""WHIP ingest (RFC 9725): publishers (browsers, OBS, FFmpeg) push WebRTC into the hub; docs/whip.md."""

from dragonfork.servers.whip.publisher import PublisherSettings, WhipPublisher
from dragonfork.servers.whip.server import WhipRefused, WhipServer, WhipSettings

__all__ = ["PublisherSettings", "WhipPublisher", "WhipRefused", "WhipServer", "WhipSettings"]
