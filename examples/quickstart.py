"""Quickstart: generate the example decoder, compile it for llvm, verify it, print a report.

    python examples/quickstart.py [--preset small] [--workdir sail-quickstart]

Steps: write the Llama-style example decoder (with a KV cache) as ONNX; compile it once for llvm
(IR dumps in ``<workdir>/dump``, the artifact in ``<workdir>/artifact``); verify that artifact
against onnxruntime at a prefill and a decode shape; time a forward against onnxruntime; then
compile it with 4-bit weights and check the compiled integer arithmetic against the NumPy
reference (``ref_exact``), reporting the quantization error against the float model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from make_decoder import PRESETS, make_decoder, save_model

from sail_compiler import Artifact, CompileOptions
from sail_compiler.quant import QuantScheme
from sail_compiler.verify import (
    InputPlan,
    OnnxRuntimeReference,
    generate_inputs,
    report_line,
    verify_model,
)


def _best_of(fn, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--workdir", type=Path, default=Path("sail-quickstart"))
    args = parser.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)

    cfg = PRESETS[args.preset]
    model_path = work / f"decoder_{args.preset}_kv.onnx"
    save_model(make_decoder(cfg, kv_cache=True), model_path)
    print(f"1. wrote {model_path}: Llama-style decoder, {cfg.num_params() / 1e6:.2f}M params, "
          f"{cfg.num_layers} layers, GQA {cfg.num_heads}/{cfg.num_kv_heads} heads, KV cache")

    artifact_dir = work / "artifact"
    options = CompileOptions(target="llvm", dump_dir=work / "dump", force=True)
    plans = [InputPlan(batch=1, seq_len=16, past_len=0), InputPlan(batch=1, seq_len=1,
                                                                     past_len=16)]
    report = verify_model(model_path, options, plans, artifact_dir=artifact_dir)
    print(f"2. compiled -> {artifact_dir} in {report['compile_seconds']:.1f}s; IR after every "
          f"pass in {work / 'dump'} (read it with: sail inspect {work / 'dump'})")
    print("3. verify against onnxruntime (one artifact, prefill and decode shapes):")
    for entry in report["outputs"]:
        if entry["name"] == "logits":
            dims = ", ".join(f"{k}={v}" for k, v in entry["dims"].items())
            print(f"   [{dims}]")
            print(report_line(entry["name"], entry, report["tolerance"]))
    worst = max(e["rel_l2_err"] for e in report["outputs"])
    print(f"   all {len(report['outputs'])} outputs: worst rel_l2_err {worst:.2e} -> "
          f"{'OK' if report['ok'] else 'FAILED'}")

    artifact = Artifact(artifact_dir)
    inputs = generate_inputs(artifact.signature,
                             InputPlan(batch=1, seq_len=16, past_len=0))
    reference = OnnxRuntimeReference(model_path, threads=1)
    artifact.run(inputs)
    reference.run(inputs)
    ours = _best_of(lambda: artifact.run(inputs))
    theirs = _best_of(lambda: reference.run(inputs))
    print(f"4. forward, batch 1 x 16 tokens: sail llvm {ours * 1e3:.2f} ms, onnxruntime "
          f"(1 thread) {theirs * 1e3:.2f} ms, ratio {ours / theirs:.2f}x "
          "(see benchmarks/forward.py for a fuller comparison)")

    scheme = QuantScheme(4, 32)
    quantized = verify_model(model_path, CompileOptions(target="llvm", quant=scheme,
                                                        method="search"), plans[:1])
    quant, ref = quantized["quant"], quantized["reference"]
    logits = next(e for e in quantized["outputs"] if e["name"] == "logits")
    print(f"5. quantized {scheme} (method search; matmuls lowered to sail.lut_gemv, NBW 4): "
          f"weights {quant['float_size_bytes'] / 2**20:.1f} MiB -> "
          f"{quant['size_bytes'] / 2**20:.1f} MiB; logits vs the float model: rel_l2_err "
          f"{logits['rel_l2_err']:.3f}, cosine {logits['cosine']:.4f}")
    print(f"   NumPy reference: {ref['sums_checked'] - ref['sums_mismatched']}/"
          f"{ref['sums_checked']} LUT-GEMV group sums exact, layer results within "
          f"{ref['ref_max_rel_err']:.1e} -> ref_exact {quantized['ref_exact']}")
    return 0 if report["ok"] and quantized["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
