"""Telemetry: access log and operational logs, kept off the request path."""
