"""sail's Relax passes, one per file; each is an ordinary ``tvm.transform.Pass``."""

from .analyze_lut_patterns import AnalyzeLUTPatterns
from .convert_pim_types import ConvertPIMTypes
from .expose_group_sums import ExposeGroupSums
from .fold_weight_transposes import FoldWeightTransposes
from .fuse_attention import FuseAttention
from .keep_last_logits import KeepLastLogits
from .lift_weights_to_params import LiftWeightsToParams
from .lower_to_lut_gemv import LowerToLUTGemv
from .quantize_embedding import QuantizeEmbedding
from .quantize_weights import QuantizeWeights
from .wrap_gather_indices import WrapGatherIndices

__all__ = ["AnalyzeLUTPatterns", "ConvertPIMTypes", "ExposeGroupSums", "FoldWeightTransposes",
           "FuseAttention",
           "KeepLastLogits", "LiftWeightsToParams", "LowerToLUTGemv", "QuantizeEmbedding",
           "QuantizeWeights", "WrapGatherIndices"]
