"""The one place carl's version is written (a leaf: imports nothing from carl)."""

__version__ = "0.1.0"
