"""The built-in demo site served by the embedded default config."""

from pathlib import Path

SITE = Path(__file__).resolve().parent / "site"
