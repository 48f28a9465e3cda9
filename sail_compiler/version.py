"""The package version, in the lowest layer so that artifacts and targets can record it
without importing the package's public API (which loads every layer)."""

__version__ = "0.1.0"
