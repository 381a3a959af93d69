"""Protocol cores: bytes in, version-neutral events out. No sockets here."""
