"""The media hub: publishers write whole frames into a ``Stream``'s tracks, readers subscribe to them.

``stream.py`` (Stream: tracks + the readers' nursery), ``track.py`` (fan-out over bounded channels, keyframe
cache, resync at a keyframe), ``directory.py`` (StreamDirectory: name → live Stream, wait-for-publisher) are
protocol-neutral. ``ingest/`` holds the publishers: ``rtp_udp.py`` reads FFmpeg's RTP legs on loopback
(ports, RTP parsing and the H.264 depacketizer beside it). Nothing here imports a layer above (process,
servers, webrtc, http). See docs/hub.md.
"""
