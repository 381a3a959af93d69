"""Handlers: what a routed request turns into."""
