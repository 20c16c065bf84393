"""The package version, importable without importing diffusers (the CLI's ``--version``)."""

__version__ = "0.1.0"
