"""The SRT server: publishers send MPEG-TS over SRT to one UDP port, readers request it by stream id.

``server.py`` owns the socket, the connection table and the channels; ``connection.py`` is one peer in live
mode (receiver or sender); ``packet.py`` and ``handshake.py`` are the wire format and ``crypto.py`` the
encryption, without I/O; ``streamid.py`` reads the stream id. See docs/srt.md.
"""

from dragonfork.servers.srt.server import SrtServer, SrtSettings

__all__ = ["SrtServer", "SrtSettings"]
