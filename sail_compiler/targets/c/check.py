"""The c artifact's own check against the NumPy reference, layer by layer.

``sail_main --dump-lut DIR`` writes the operands of every LUT-GEMV of a run: the int8
activations ``xq`` and scales ``sx`` that reached the layer in the C library, and its float
result ``y``. From the same ``xq`` and ``sx`` the reference (:mod:`sail_compiler.ops.sail_ops`)
recomputes the exact integer group sums and their dequantization in the reference's float order;
the runtime's kernels promise exactly that result (``sail_lut.h``), so every element must be
**equal**.

This checks the C library on its own activations. Comparing whole outputs with the llvm build
cannot be exact: the other kernels (normalization, softmax, ...) come from two compilers and
differ in the last bits, and a rare activation that lands on a rounding boundary then quantizes
one step apart, which later layers amplify.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...ops.sail_ops import reference_dequantize, reference_group_sums
from ...quant.prepare import Quantization
from ...quant.reference import ACT_GROUP_ROW, ActBlocks
from ...reference_check import rel_l2
from .target import MainRunner


def lut_reference_check(out_dir: Path, manifest: dict[str, Any], quant: Quantization,
                        runs: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Run the artifact on each input set with ``--dump-lut`` and check every LUT-GEMV.

    Parameters
    ----------
    out_dir, manifest
        A built c artifact (``sail_main`` present) and its manifest (``lut_layers``,
        ``act_group_size``).
    quant
        The compile's quantization (the reference weights, by layer name).
    runs
        Input sets (name -> array).

    Returns
    -------
    dict
        ``{"exact": bool, "calls": n, "elements": n, "mismatched": n, "max_rel_err": e,
        "layers": {layer: mismatched elements}}``; ``exact`` needs at least one call.
    """
    layers: list[str] = manifest.get("lut_layers", [])
    by_name = quant.by_name()
    runner = MainRunner(out_dir, manifest)
    calls = elements = mismatched = 0
    max_rel = 0.0
    per_layer: dict[str, int] = {}
    for inputs in runs:
        with tempfile.TemporaryDirectory(prefix="sail-c-lut-") as tmp:
            runner.run([inputs[spec.name] for spec in runner.signature.inputs],
                       ("--dump-lut", tmp))
            for index, layer in enumerate(layers):
                xq_path = Path(tmp) / f"lut{index}.xq.npy"
                if not xq_path.is_file():
                    continue  # not called (e.g. an empty batch)
                qw = by_name[layer].qw
                blocks = ActBlocks.resolve(manifest.get("act_group_size", ACT_GROUP_ROW), qw.k,
                                           qw.group_size)
                xq = np.load(xq_path)
                sx = np.load(Path(tmp) / f"lut{index}.sx.npy")
                y = np.load(Path(tmp) / f"lut{index}.y.npy")
                sums = reference_group_sums(xq, qw, blocks.act_group)
                expected = reference_dequantize(sums, sx, qw.scale, blocks)
                bad = int(np.count_nonzero(y != expected))
                calls += 1
                elements += expected.size
                mismatched += bad
                per_layer[layer] = per_layer.get(layer, 0) + bad
                max_rel = max(max_rel, rel_l2(y, expected))
    return {"exact": calls > 0 and mismatched == 0, "calls": calls, "elements": elements,
            "mismatched": mismatched, "max_rel_err": max_rel, "layers": per_layer}
