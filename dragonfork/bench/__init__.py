"""The benchmark suite (``nox -s bench``, ``dragonfork bench``): dragonfork and Janus, same viewers."""
