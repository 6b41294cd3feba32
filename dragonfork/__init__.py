"""dragonfork: supervised FFmpeg processes behind a REST API, served to browsers over WebRTC (WHEP)."""

__version__ = "0.1.0"
