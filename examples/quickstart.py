"""Quickstart: the example decoder compiled to C with 4-bit LUT-GEMV weights, verified, timed
against onnxruntime, and simulated on SAIL.

    python examples/quickstart.py [--preset small] [--workdir sail-quickstart] [--tokens 64]

Steps:

1. write the Llama-style example decoder (with a KV cache) as ONNX;
2. compile it for the ``c`` target with 4-bit weights (a standalone C library whose matmuls are
   the runtime's LUT-GEMV kernels) and verify it: the library's integer sums against the NumPy
   reference (``ref_exact``) and its outputs against onnxruntime on the float model;
3. decode ``--tokens`` tokens greedily with the C token loop and with onnxruntime (fp32, the same
   prompt, one thread each, in this run) and print both speeds;
4. compile it for ``pim-sim`` (the same 4-bit weights mapped onto a simulated SAIL machine) and
   print the simulated decode step against the Neoverse-N1 CPU and V100 GPU models.

Takes about a minute and a half on two cores. Forward-time comparisons of the llvm target are in
``benchmarks/forward.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import sail_compiler
from sail_compiler import CompileOptions, compile_model
from sail_compiler.quant import QuantScheme
from sail_compiler.targets.pim.report import markdown_table
from sail_compiler.targets.pim.run import simulate_run
from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model
from sail_compiler.verify import InputPlan, verify_model

PROMPT_TOKENS = 16


def onnxruntime_decode(model_path: Path, prompt: list[int], tokens: int
                       ) -> tuple[list[int], float]:
    """Greedy decoding with onnxruntime (fp32, one thread): the ids and the decode seconds (the
    runs after the prefill, as sail_generate times them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
            for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    ids, step_ids, out, seconds = list(prompt), list(prompt), [], 0.0
    for step in range(tokens):
        feeds = {"input_ids": np.array([step_ids], np.int64),
                 "attention_mask": np.ones((1, len(ids)), np.int64), **past}
        started = time.perf_counter()
        result = dict(zip(outputs, session.run(None, feeds), strict=True))
        if step > 0:
            seconds += time.perf_counter() - started
        token = int(np.argmax(result["logits"][0, -1]))
        out.append(token)
        ids.append(token)
        step_ids = [token]
        past = {name: result["present." + name.removeprefix("past_key_values.")]
                for name in past}
    return out, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--workdir", type=Path, default=Path("sail-quickstart"))
    parser.add_argument("--tokens", type=int, default=64, help="tokens to decode (default 64)")
    args = parser.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    cfg = PRESETS[args.preset]
    model_path = work / f"decoder_{args.preset}_kv.onnx"
    save_model(make_decoder(cfg, kv_cache=True), model_path)
    print(f"1. wrote {model_path}: Llama-style decoder, {cfg.num_params() / 1e6:.1f}M params, "
          f"{cfg.num_layers} layers, GQA {cfg.num_heads}/{cfg.num_kv_heads} heads, KV cache")

    c_dir = work / "c4"
    scheme = QuantScheme(4, 128)
    options = CompileOptions(target="c", quant=scheme)
    plans = [InputPlan(batch=1, seq_len=PROMPT_TOKENS, past_len=0),
             InputPlan(batch=1, seq_len=1, past_len=PROMPT_TOKENS)]
    report = verify_model(model_path, options, plans, artifact_dir=c_dir)
    quant, ref = report["quant"], report["reference"]
    print(f"2. compiled to C with {scheme.name} weights -> {c_dir} ({report['compile_seconds']:.0f}"
          f" s; weights {quant['float_size_bytes'] / 2**20:.0f} MiB -> "
          f"{quant['size_bytes'] / 2**20:.0f} MiB; every matmul a LUT-GEMV)")
    c_lut = ref["c_lut"]
    print(f"   NumPy reference: {ref['sums_checked'] - ref['sums_mismatched']}/"
          f"{ref['sums_checked']} group sums exact -> ref_exact {report['ref_exact']}; the C "
          f"library's LUT-GEMVs: {c_lut['elements'] - c_lut['mismatched']}/{c_lut['elements']} "
          "results equal to the reference")
    for entry in report["outputs"]:
        if entry["name"] == "logits":
            dims = ", ".join(f"{k}={v}" for k, v in entry["dims"].items())
            print(f"   logits vs onnxruntime on the float model [{dims}]: rel_l2_err "
                  f"{entry['rel_l2_err']:.3f}, cosine {entry['cosine']:.4f} (4-bit "
                  "quantization error)")

    model = sail_compiler.load(c_dir, threads=1)
    prompt = [int(i) for i in np.random.default_rng(0).integers(0, cfg.vocab_size,
                                                                PROMPT_TOKENS)]
    model.generate(prompt, 4)  # warm-up: the first run maps the weights
    ours = model.generate(prompt, args.tokens)
    _, seconds = onnxruntime_decode(model_path, prompt, args.tokens)
    theirs = (args.tokens - 1) / seconds
    print(f"3. greedy decode, {PROMPT_TOKENS}-token prompt, {args.tokens} tokens, one thread: "
          f"sail c {scheme.name} {ours.decode_tokens_per_second:.0f} tokens/s, onnxruntime fp32 "
          f"{theirs:.0f} tokens/s -> {ours.decode_tokens_per_second / theirs:.2f}x")
    print(f"   (from the shell: sail generate {c_dir} --prompt-ids {','.join(map(str, prompt))} "
          f"-n {args.tokens}; sail bench {c_dir})")

    pim_dir = work / "pim4"
    result = compile_model(model_path, pim_dir, CompileOptions(target="pim-sim", quant=scheme))
    steps = [simulate_run(pim_dir, batch, past_len=PROMPT_TOKENS).step for batch in (1, 16)]
    print(f"4. compiled for pim-sim -> {pim_dir} ({sum(result.stage_seconds.values()):.0f} s), "
          "one decode step simulated on SAIL (machine sail-n1) against the CPU and GPU models:")
    print("   " + markdown_table(steps).replace("\n", "\n   "))
    print(f"done in {time.perf_counter() - started:.0f} s. Next: sail generate, sail bench, "
          "sail simulate --report DIR; README.md")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
