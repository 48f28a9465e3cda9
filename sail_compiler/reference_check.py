"""``sail verify``'s check of a quantized compile against the NumPy reference (``ref_exact``).

A *probe build* of the same model and quantized weights (:class:`~.passes.ExposeGroupSums`)
records, for every quantized layer, the activations ``x`` that reach it in the compiled model,
the int32 group sums its first kernel computed and the float result of its second. For each
record the NumPy reference (:mod:`.quant.reference`) recomputes, from the same ``x``:

* the activation quantization (one scale per row and activation block of the compile's
  ``act_group_size``) and the sums per sum block, which must be **equal** (integers);
* ``y = quantized_matmul(x, qw, act_bits, act_group)``, which must agree within
  :data:`Y_TOLERANCE` relative L2 (DESIGN.md section 3);

and, with the layer's float weights, the layer's quantization error ``||y - x W|| / ||x W||``
(what ``--per-layer`` reports beside bits and size). ``ref_exact`` is true when every record of
every layer passes both checks. The probe build's model outputs are also compared with the
artifact's: they run the same kernels, so they must agree to float rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .passes.expose_group_sums import RESULT, SUMS
from .quant.prepare import Quantization
from .quant.reference import (
    ACT_GROUP_ROW,
    ActBlocks,
    block_sums,
    quantize_activations,
    quantized_matmul,
)

#: Largest relative L2 error of a layer's result against the reference (DESIGN.md section 3).
Y_TOLERANCE = 1e-5


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    denom = float(np.linalg.norm(expected.astype(np.float64)))
    diff = float(np.linalg.norm(actual.astype(np.float64) - expected))
    return diff / denom if denom else diff


@dataclasses.dataclass
class LayerCheck:
    """Accumulated results for one layer over all recorded calls."""

    calls: int = 0
    sums_checked: int = 0
    sums_mismatched: int = 0
    y_rel_err: float = 0.0
    float_rel_err: float = 0.0

    @property
    def exact(self) -> bool:
        return self.calls > 0 and self.sums_mismatched == 0 and self.y_rel_err <= Y_TOLERANCE


class ReferenceCheck:
    """Feed it the probe build's records run by run; read :meth:`report`.

    Parameters
    ----------
    quant
        The compile's quantization (every layer's quantized weight).
    layer_names
        The probe build's ``probe_layers`` (record index -> layer name).
    float_weights
        ``{layer name: W[K, N]}`` float weights for the quantization error (may be partial).
    act_bits
        The activation width the model was compiled with.
    act_group
        Its ``act_group_size`` (resolved per layer by :meth:`ActBlocks.resolve`).
    """

    def __init__(self, quant: Quantization, layer_names: list[str],
                 float_weights: dict[str, np.ndarray], act_bits: int,
                 act_group: int | str = ACT_GROUP_ROW) -> None:
        self.by_name = quant.by_name()
        self.names = layer_names
        self.float_weights = float_weights
        self.act_bits = act_bits
        self.act_group = act_group
        self.layers: dict[str, LayerCheck] = {}
        self.unchecked: set[str] = set()

    def add(self, records: list[tuple[int, int, np.ndarray, np.ndarray]]) -> None:
        """Check one run's records ``(layer index, kind, value, x)``."""
        for index, kind, value, x in records:
            name = self.names[index]
            layer = self.by_name.get(name)
            if layer is None or layer.qw is None:
                self.unchecked.add(name)
                continue
            qw = layer.qw
            check = self.layers.setdefault(name, LayerCheck())
            rows = x.reshape(-1, x.shape[-1])
            blocks = ActBlocks.resolve(self.act_group, qw.k, qw.group_size)
            if kind == SUMS:
                xq, _ = quantize_activations(rows, self.act_bits, blocks.act_group)
                expected = block_sums(xq, qw, blocks)
                got = value.reshape(expected.shape)
                check.sums_checked += expected.size
                check.sums_mismatched += int(np.count_nonzero(got != expected))
            elif kind == RESULT:
                check.calls += 1
                y = value.reshape(-1, qw.n)
                want = quantized_matmul(rows, qw, self.act_bits, blocks.act_group)
                check.y_rel_err = max(check.y_rel_err, rel_l2(y, want))
                w = self.float_weights.get(name)
                if w is not None:
                    check.float_rel_err = max(check.float_rel_err,
                                              rel_l2(y, rows.astype(np.float64) @ w))

    @property
    def exact(self) -> bool:
        """Every quantized matmul was recorded and passed both checks (embedding lookups are
        exact dequantizations, checked by their own tests, not recorded here)."""
        quantized = {n for n, q in self.by_name.items()
                     if q.qw is not None and q.layer.op_type != "Gather"}
        return not self.unchecked and quantized <= set(self.layers) and \
            all(c.exact for c in self.layers.values())

    def report(self) -> dict[str, Any]:
        """``{"ref_exact", "ref_max_rel_err", "sums_checked", "sums_mismatched", "layers"}``;
        ``layers`` holds one entry per layer, float ones included (bits None)."""
        checks = self.layers.values()
        layers = []
        for name, q in self.by_name.items():
            entry = q.report()
            c = self.layers.get(name)
            if c is not None:
                entry.update({"sums_exact": c.sums_mismatched == 0 and c.sums_checked > 0,
                              "y_rel_err": c.y_rel_err, "output_rel_err": c.float_rel_err,
                              "calls": c.calls})
            layers.append(entry)
        return {"ref_exact": self.exact,
                "ref_max_rel_err": max((c.y_rel_err for c in checks), default=None),
                "sums_checked": sum(c.sums_checked for c in checks),
                "sums_mismatched": sum(c.sums_mismatched for c in checks),
                "unchecked_layers": sorted(self.unchecked),
                "layers": layers}
