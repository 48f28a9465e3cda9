"""sail's Relax passes, one per file; each is an ordinary ``tvm.transform.Pass``."""

from .wrap_gather_indices import WrapGatherIndices

__all__ = ["WrapGatherIndices"]
