"""edgeward audit: the release path, from the compiled executable to what an edge operator verifies."""

__version__ = "0.1.0"
