"""The media hub: RTP in from FFmpeg on loopback, whole frames out to every subscriber.

Flow inside one process run: ``ports`` reserves an adjacent UDP pair, one ``RtpSource`` per kind reads its
socket, validates and depacketizes RTP into ``MediaFrame`` objects, and fans them out over bounded Trio memory
channels. The video source keeps a ``KeyframeCache`` so a new subscriber starts on the latest IDR at once.
"""
