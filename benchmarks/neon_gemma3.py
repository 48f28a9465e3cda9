"""Gemma 3 270M built for AArch64 (NEON kernels) and run under qemu: every LUT-GEMV against the
NumPy reference, and against the x86-64 (AVX2) build of the same artifact.

For each weight width (default 2, 3, 4, 8; symmetric RTN, group 128, one activation scale per
token row) it compiles ``gemma3_270m_kv.onnx`` for the c target, builds it once for this
machine and once with ``--cross`` (default ``aarch64-dotprod``), and runs both ``sail_main``
with ``--dump-lut`` on the same seeded input (a prompt of ``--seq-len`` tokens, empty cache);
the aarch64 one under ``qemu-aarch64`` (targets/c/cross.py). It reports:

* ``exact``: every LUT-GEMV of the aarch64 run equals the reference (``targets.c.check``:
  the exact integer sums dequantized in the reference's float order) element for element;
* ``same_inputs`` / ``same_y``: the LUT-GEMV calls whose int8 activations and scales were the
  same in both runs, and how many of those had bit-identical results (they must all: the two
  builds' kernels compute the reference's result);
* the logits of the two builds against each other (rel L2; TVM's other kernels come from two
  compilers, so not judged) and qemu's wall time (meaningless as a speed: an emulator).

    python benchmarks/neon_gemma3.py [--bits 2,3,4,8] [--cross aarch64-dotprod] [--seq-len 4]

Heavy (a compile and two builds per width, minutes each); a benchmark, not a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.inputs import InputPlan, generate_inputs
from sail_compiler.ops.sail_ops import reference_dequantize, reference_group_sums
from sail_compiler.quant.reference import ACT_GROUP_ROW, ActBlocks
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.reference_check import rel_l2
from sail_compiler.targets.c.target import MainRunner, build_library

MODEL = Path(os.environ.get("SAIL_MODELS", Path.home() / ".cache" / "sail-models")) \
    / "gemma3_270m" / "gemma3_270m_kv.onnx"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def dump(out: Path, manifest: dict, inputs: dict[str, np.ndarray], where: Path
         ) -> tuple[dict[str, np.ndarray], float]:
    runner = MainRunner(out, manifest)
    started = time.perf_counter()
    outputs = runner.run([inputs[s.name] for s in runner.signature.inputs],
                         ("--dump-lut", str(where)))
    return dict(zip((s.name for s in runner.signature.outputs), outputs, strict=True)), \
        time.perf_counter() - started


def reference_check(where: Path, layers: list[str], by_name: dict) -> dict[str, object]:
    """Every dumped LUT-GEMV against the reference (as ``targets.c.check``, on a given dump)."""
    calls = elements = mismatched = 0
    for i, layer in enumerate(layers):
        if not (where / f"lut{i}.xq.npy").is_file():
            continue
        qw = by_name[layer].qw
        blocks = ActBlocks.resolve(ACT_GROUP_ROW, qw.k, qw.group_size)
        xq, sx, y = (np.load(where / f"lut{i}.{n}.npy") for n in ("xq", "sx", "y"))
        expected = reference_dequantize(reference_group_sums(xq, qw, blocks.act_group), sx,
                                        qw.scale, blocks)
        calls += 1
        elements += expected.size
        mismatched += int(np.count_nonzero(y != expected))
    return {"exact": calls > 0 and mismatched == 0, "calls": calls, "elements": elements,
            "mismatched": mismatched}


def compare_dumps(a: Path, b: Path, n_layers: int) -> dict[str, int]:
    calls = same_inputs = same_y = 0
    for i in range(n_layers):
        if not (a / f"lut{i}.xq.npy").is_file():
            continue
        calls += 1
        xa, xb = (np.load(d / f"lut{i}.xq.npy") for d in (a, b))
        sa, sb = (np.load(d / f"lut{i}.sx.npy") for d in (a, b))
        if np.array_equal(xa, xb) and np.array_equal(sa, sb):
            same_inputs += 1
            same_y += int(np.array_equal(np.load(a / f"lut{i}.y.npy"),
                                         np.load(b / f"lut{i}.y.npy")))
    return {"calls": calls, "same_inputs": same_inputs, "same_y": same_y}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="2,3,4,8")
    parser.add_argument("--cross", default="aarch64-dotprod",
                        choices=["aarch64", "aarch64-dotprod"])
    parser.add_argument("--seq-len", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--work", type=Path, help="keep the artifacts here")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not MODEL.is_file():
        log(f"no {MODEL}: build Gemma 3 270M first (see benchmarks/gemma3.py)")
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="sail-neon-") as tmp:
        work = args.work or Path(tmp)
        for bits in map(int, args.bits.split(",")):
            out = work / f"gemma3_c_w{bits}"
            started = time.perf_counter()
            result = compile_model(MODEL, out, CompileOptions(
                target="c", quant=QuantScheme(bits, args.group_size), act_group_size="row"))
            compile_s = time.perf_counter() - started
            artifact = Artifact(out)
            inputs = generate_inputs(artifact.signature, InputPlan(seq_len=args.seq_len,
                                                                   past_len=0))
            layers = artifact.manifest["lut_layers"]
            by_name = result.quantization.by_name()
            # x86-64 build and run
            build_library(out)
            native_dir = work / f"dump_native_w{bits}"
            native_dir.mkdir(exist_ok=True)
            native_out, native_s = dump(out, artifact.manifest, inputs, native_dir)
            # aarch64 build, run under qemu, checked against the reference
            build_library(out, cross=args.cross)
            cross_dir = work / f"dump_{args.cross}_w{bits}"
            cross_dir.mkdir(exist_ok=True)
            cross_out, cross_s = dump(out, artifact.manifest, inputs, cross_dir)
            checked = {name: reference_check(d, layers, by_name)
                       for name, d in (("native", native_dir), (args.cross, cross_dir))}
            rows.append({"bits": bits, "cross": args.cross, "compile_s": round(compile_s, 1),
                         "native_run_s": round(native_s, 2), "qemu_run_s": round(cross_s, 2),
                         "exact": checked[args.cross]["exact"],
                         "reference": checked,
                         "logits_rel_l2": rel_l2(cross_out["logits"], native_out["logits"]),
                         **compare_dumps(cross_dir, native_dir, len(layers))})
            log(json.dumps(rows[-1]))
    print(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["exact"] and r["same_y"] == r["same_inputs"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
