"""The package version, in a module of its own: ``weights`` and ``cli`` need it, and importing
it from the package root would make them import the whole package they are part of."""

__version__ = "0.1.0"
