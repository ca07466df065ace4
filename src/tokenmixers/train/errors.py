"""The training configuration's error, in a module of its own so that the configuration
(:mod:`tokenmixers.train.config`) and the recipe presets (:mod:`tokenmixers.train.recipes`)
both raise it without importing each other."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad option name or value."""
