"""The RTMP server: publishers push FLV (H.264 + AAC) into the hub, players read streams back as FLV.

``server.py`` owns the listeners, the nursery and the session table; ``session.py`` is one connection;
``handshake.py``, ``chunks.py`` (chunk stream codec), ``amf0.py``, ``messages.py`` and ``flv.py`` are the
wire format, each without I/O. See docs/rtmp.md.
"""

from dragonfork.servers.rtmp.server import PublisherInfo, RtmpServer, RtmpSettings
from dragonfork.servers.rtmp.session import RtmpSessionSettings

__all__ = ["PublisherInfo", "RtmpServer", "RtmpSessionSettings", "RtmpSettings"]
