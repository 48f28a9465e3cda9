"""The c target: a standalone C library + weight file, built with cc (:mod:`.target`)."""

from .target import CTarget

__all__ = ["CTarget"]
