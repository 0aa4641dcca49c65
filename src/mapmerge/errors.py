"""Errors every layer raises: kept apart so that no module imports the config loader for its error type."""

from __future__ import annotations


class ConfigError(ValueError):
    """The config is invalid; the message names the key or file and the problem."""
