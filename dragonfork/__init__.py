"""dragonfork: supervised FFmpeg processes behind a REST API, served to browsers over WebRTC (WHEP)."""

__version__ = "0.1.0"

# The datarhei Core API version this server implements (``/api`` → ``version.number``): datarhei's clients
# enable their features by it (Restreamer UI requires ^16.11.0). 16.16.0 is the release whose API
# (../shared/reference/datarhei-core-v16-swagger.json) dragonfork follows.
DATARHEI_API_VERSION = "16.16.0"
