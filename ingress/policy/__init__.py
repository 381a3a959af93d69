"""Access policy: who may reach what, decided before any backend work."""
