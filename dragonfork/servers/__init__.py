"""Protocol services, one folder each (``whep/``, ``rtmp/``): signalling, session table, caps, read model.

A service asks a ``Stream`` of the hub to start its readers (in the stream's nursery); it owns sessions, not
reader tasks. HTTP routes call a service's small API and never wire objects together themselves.
"""


class ListenFailed(Exception):
    """A service cannot listen on its configured address (in use, not ours); the message names the key."""
