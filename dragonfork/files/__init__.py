"""Files out: the in-memory filesystem (memfs), the disk filesystem (diskfs) and the cleanup rules.

FFmpeg writes into these (``{memfs}`` over HTTP PUT/DELETE to this server, ``{diskfs}`` as local files); the
HTTP layer serves them at ``/memfs/*`` and ``/`` and through ``/api/v3/fs``. Nothing here imports the process
or HTTP layers.
"""
