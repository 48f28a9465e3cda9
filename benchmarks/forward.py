"""Time per forward of the example decoder: sail's llvm target against onnxruntime (fp32).

Both run in this process on the same inputs, one thread each by default; the ratio is what to
read (these machines are shared, absolute times drift). Shapes: a prefill (no past) and a decode
step (one token after a past).

    python benchmarks/forward.py [--preset small] [--prefill 32] [--past 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from make_decoder import PRESETS, make_decoder, save_model  # noqa: E402

from sail_compiler import Artifact, CompileOptions, compile_model  # noqa: E402
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
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when the runtime starts its pool

    cfg = PRESETS[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "decoder.onnx"
        save_model(make_decoder(cfg, kv_cache=True), model_path)
        started = time.perf_counter()
        compile_model(model_path, Path(tmp) / "out", CompileOptions(num_threads=args.threads))
        compile_seconds = time.perf_counter() - started
        artifact = Artifact(Path(tmp) / "out")
        reference = OnnxRuntimeReference(model_path, threads=args.threads)
        print(f"preset {args.preset} ({cfg.num_params() / 1e6:.1f}M params), "
              f"{args.threads} thread(s), compile {compile_seconds:.1f}s")
        print(f"{'shape':<28} {'sail llvm ms':>12} {'ort ms':>10} {'sail/ort':>9}")
        for label, plan in [(f"prefill seq={args.prefill}", InputPlan(seq_len=args.prefill,
                                                                      past_len=0)),
                            (f"decode seq=1 past={args.past}", InputPlan(seq_len=1,
                                                                         past_len=args.past))]:
            inputs = generate_inputs(artifact.signature, plan)
            ours = _median_seconds(lambda i=inputs: artifact.run(i), args.repeats)
            theirs = _median_seconds(lambda i=inputs: reference.run(i), args.repeats)
            print(f"{label:<28} {ours * 1e3:>12.2f} {theirs * 1e3:>10.2f} "
                  f"{ours / theirs:>8.2f}x")


if __name__ == "__main__":
    main()
