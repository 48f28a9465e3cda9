"""sail's Relax passes, one per file; each is an ordinary ``tvm.transform.Pass``."""

from .expose_group_sums import ExposeGroupSums
from .lift_weights_to_params import LiftWeightsToParams
from .quantize_embedding import QuantizeEmbedding
from .quantize_weights import QuantizeWeights
from .wrap_gather_indices import WrapGatherIndices

__all__ = ["ExposeGroupSums", "LiftWeightsToParams", "QuantizeEmbedding", "QuantizeWeights",
           "WrapGatherIndices"]
