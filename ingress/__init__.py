"""edgeward ingress: the request path of the edge server."""

__version__ = "0.1.0"
