"""Configuration: model, loader, rules, and the embedded default."""

from ingress.config.loader import load_config, parse_config
from ingress.config.model import Config

__all__ = ["Config", "load_config", "parse_config"]
