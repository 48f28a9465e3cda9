"""Time per forward of the example decoder: sail's llvm target against onnxruntime (fp32).

All arms run in this process on the same inputs, one thread each by default; the ratios are what
to read (these machines are shared, absolute times drift). Shapes: a prefill (no past) and a
decode step (one token after a past). Arms: the float compile, and for each ``--bits`` width
(group 128 by default) the quantized compile with the sail stage (``sail.lut_gemv``, the default)
and without it (``--no-sail``: the dequantize-and-multiply ``sail.quant_matmul``).

    python benchmarks/forward.py [--preset small] [--prefill 32] [--past 32] [--threads 1]
                                 [--bits 2,4] [--group-size 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from sail_compiler import Artifact, CompileOptions, compile_model  # noqa: E402
from sail_compiler.quant.scheme import QuantScheme  # noqa: E402
from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model  # noqa: E402
from sail_compiler.verify import InputPlan, OnnxRuntimeReference, generate_inputs  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--prefill", type=int, default=32)
    parser.add_argument("--past", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--bits", default="", help="quantized arms, e.g. 2,4 (default none)")
    parser.add_argument("--group-size", type=int, default=128)
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when the runtime starts its pool

    cfg = PRESETS[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "decoder.onnx"
        save_model(make_decoder(cfg, kv_cache=True), model_path)
        arms = {"float": CompileOptions(num_threads=args.threads)}
        for bits in (int(b) for b in args.bits.split(",") if b):
            scheme = QuantScheme(bits, args.group_size)
            arms[f"w{bits} lut"] = CompileOptions(num_threads=args.threads, quant=scheme)
            arms[f"w{bits} no-sail"] = CompileOptions(num_threads=args.threads, quant=scheme,
                                                      sail=False)
        artifacts, compile_seconds = {}, {}
        for name, options in arms.items():
            started = time.perf_counter()
            out = Path(tmp) / name.replace(" ", "_")
            compile_model(model_path, out, options)
            compile_seconds[name] = time.perf_counter() - started
            artifacts[name] = Artifact(out)
        reference = OnnxRuntimeReference(model_path, threads=args.threads)
        print(f"preset {args.preset} ({cfg.num_params() / 1e6:.1f}M params), "
              f"{args.threads} thread(s), compile "
              + ", ".join(f"{k} {v:.1f}s" for k, v in compile_seconds.items()))
        print(f"{'shape':<24} {'ort fp32 ms':>11} "
              + " ".join(f"{name + ' ms':>16} {'/ort':>6}" for name in arms))
        for label, plan in [(f"prefill seq={args.prefill}", InputPlan(seq_len=args.prefill,
                                                                      past_len=0)),
                            (f"decode seq=1 past={args.past}", InputPlan(seq_len=1,
                                                                         past_len=args.past))]:
            inputs = generate_inputs(reference_signature(artifacts), plan)
            theirs = _median_seconds(lambda i=inputs: reference.run(i), args.repeats)
            cells = []
            for artifact in artifacts.values():
                ours = _median_seconds(lambda i=inputs, a=artifact: a.run(i), args.repeats)
                cells.append(f"{ours * 1e3:>16.2f} {ours / theirs:>5.2f}x")
            print(f"{label:<24} {theirs * 1e3:>11.2f} " + " ".join(cells))


def reference_signature(artifacts: dict):  # type: ignore[no-untyped-def]
    """The input signature (every arm compiles the same model)."""
    return next(iter(artifacts.values())).signature


if __name__ == "__main__":
    main()
