"""Sockets, processes and signals: the only I/O of the request path."""
