"""Quantization quality: our methods against onnxruntime's MatMulNBitsQuantizer, same inputs.

For each width and method the model's weights are quantized, and the relative L2 error of its
first output against the float model is measured on evaluation inputs that calibration never
saw (and, for decoder LMs given ``--text`` and ``--tokenizer``, the perplexity on that text).

* **ours** (``rtn``, ``search``, ``gptq``): our quantized weights, dequantized and swapped into the
  float model on onnxruntime, so only the weights differ from the float run (weight-only error,
  what onnxruntime's MatMulNBits computes at ``accuracy_level`` 0). ``ours a8`` is the model
  compiled by sail for llvm with ``--method`` search, i.e. with 8-bit activations as well.
* **ort** (``rtn``: the default quantizer; ``hqq`` when torch is installed; ``gptq`` at 4 bits, the
  only width its GPTQ supports): onnxruntime running the MatMulNBits model it wrote. It supports
  2, 4 and 8 bits; at other widths only ours are shown.

Calibration (our gptq and the search weighting, onnxruntime's gptq) uses the same inputs for both
sides: generated inputs with seeds 100.. (or text windows from the first half of the text);
evaluation uses seeds 0.. (or the second half).

Usage::

    python benchmarks/quant_quality.py                       # the tiny example decoder
    python benchmarks/quant_quality.py --model m.onnx --text eval.txt --tokenizer tok.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sail_compiler.frontend import load_checked
from sail_compiler.frontend.signature import signature_of
from sail_compiler.options import CompileOptions
from sail_compiler.quant.calibrate import WeightSwapper, feed_for_ids
from sail_compiler.quant.prepare import prepare_quantization
from sail_compiler.quant.reference import dequantize
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.verify import InputPlan, generate_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

ORT_WIDTHS = (2, 4, 8)


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual.astype(np.float64) - expected) /
                 np.linalg.norm(expected.astype(np.float64)))


def _session(model: onnx.ModelProto):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.i = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.feeds)

    def rewind(self) -> None:
        self.i = 0


def ort_quantized(model: onnx.ModelProto, bits: int, group: int, symmetric: bool, algo: str,
                  calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto | None:
    """onnxruntime's quantized model, or None when the algorithm does not run here."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if algo == "rtn":
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=group, is_symmetric=symmetric,
                                                  bits=bits, accuracy_level=0)
    elif algo == "hqq":
        try:
            import torch  # noqa: F401
        except ImportError:
            return None
        config = mnq.HQQWeightOnlyQuantConfig(block_size=group, bits=bits)
    elif algo == "gptq":
        if bits != 4:
            return None
        config = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(calib),
                                               block_size=32)
    else:
        raise ValueError(algo)
    quantizer = mnq.MatMulNBitsQuantizer(copy, bits=bits, block_size=group,
                                         is_symmetric=symmetric, algo_config=config)
    with contextlib.redirect_stdout(io.StringIO()):
        quantizer.process()
    return quantizer.model.model


@dataclasses.dataclass
class Inputs:
    calib: list[dict[str, np.ndarray]]
    evaluation: list[dict[str, np.ndarray]]
    ppl_ids: np.ndarray | None


def make_inputs(model: onnx.ModelProto, args: argparse.Namespace) -> Inputs:
    signature = signature_of(model)
    if args.text is None:
        calib = [generate_inputs(signature, InputPlan(seq_len=args.seq_len, past_len=0,
                                                      seed=100 + i))
                 for i in range(args.samples)]
        evaluation = [generate_inputs(signature, InputPlan(seq_len=args.seq_len, past_len=0,
                                                           seed=i))
                      for i in range(args.samples)]
        return Inputs(calib, evaluation, None)
    from sail_compiler.eval_ppl import load_tokens

    ids = load_tokens(args.text, args.tokenizer)
    half = len(ids) // 2
    n = args.seq_len

    def windows(part: np.ndarray) -> list[dict[str, np.ndarray]]:
        starts = np.linspace(0, len(part) - n, args.samples).astype(int)
        return [feed_for_ids(signature, part[s:s + n]) for s in starts]

    return Inputs(windows(ids[:half]), windows(ids[half:]), ids[half:half + args.ppl_tokens])


def _ppl(logits_fn, ids: np.ndarray, window: int) -> float:  # type: ignore[no-untyped-def]
    from sail_compiler.eval_ppl import perplexity

    return float(perplexity(logits_fn, ids, window, window // 2)["ppl"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="an ONNX model (default: the tiny example "
                        "decoder, generated)")
    parser.add_argument("--text", type=Path)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--sym", action="store_true")
    parser.add_argument("--bits", default="2,3,4,5,6,7,8")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--ppl-window", type=int, default=128)
    parser.add_argument("--compiled", action="store_true",
                        help="also compile with sail (8-bit activations) and report its error")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from make_decoder import PRESETS, make_decoder, save_model

            args.model = Path(tmp) / "tiny.onnx"
            save_model(make_decoder(PRESETS["tiny"]), args.model)
        model = load_checked(args.model)
        signature = signature_of(model)
        inputs = make_inputs(model, args)
        widths = [int(b) for b in args.bits.split(",")]
        from sail_compiler.quant.calibrate import CalibrationSpec

        # our calibration goes through the driver's path: write the feeds as .npz files
        calib_files = []
        for i, feed in enumerate(inputs.calib):
            path = Path(tmp) / f"calib{i}.npz"
            np.savez(path, **feed)
            calib_files.append(path)
        spec = CalibrationSpec(files=tuple(calib_files))
        from sail_compiler.quant.plan import find_layers

        layers = find_layers(model)
        results: list[dict[str, Any]] = []
        with WeightSwapper(model, layers) as swapper:
            base = [swapper.run(f) for f in inputs.evaluation]
            output = model.graph.output[0].name

            def ours_logits(weights: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
                return lambda ids: swapper.run(feed_for_ids(signature, ids[0]), weights)

            float_ppl = None
            if inputs.ppl_ids is not None:
                float_ppl = _ppl(ours_logits({}), inputs.ppl_ids, args.ppl_window)
                print(f"float perplexity {float_ppl:.3f} ({len(inputs.ppl_ids)} tokens, window "
                      f"{args.ppl_window}, stride {args.ppl_window // 2})")
            for bits in widths:
                scheme = QuantScheme(bits, args.group_size, args.sym)
                for method in ("rtn", "search", "gptq"):
                    started = time.perf_counter()
                    options = CompileOptions(quant=scheme, method=method,
                                             calib=spec if method != "rtn" else None)
                    quant = prepare_quantization(model, signature, options)
                    weights = {q.layer.name: dequantize(q.qw) for q in quant.layers
                               if q.qw is not None}
                    err = float(np.mean([_rel(swapper.run(f, weights), b)
                                         for f, b in zip(inputs.evaluation, base, strict=True)]))
                    row = {"bits": bits, "who": "ours", "method": method, "rel_err": err,
                           "seconds": time.perf_counter() - started}
                    if inputs.ppl_ids is not None:
                        row["ppl"] = _ppl(ours_logits(weights), inputs.ppl_ids, args.ppl_window)
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr)
                if bits not in ORT_WIDTHS:
                    continue
                for algo in ("rtn", "hqq", "gptq"):
                    started = time.perf_counter()
                    try:
                        quantized = ort_quantized(model, bits, args.group_size, args.sym, algo,
                                                  inputs.calib)
                        if quantized is None:
                            continue
                        session = _session(quantized)
                        outs = [session.run([output], f)[0] for f in inputs.evaluation]
                    except Exception as err:  # report and go on: a competitor failing here
                        first = str(err).strip().splitlines()[0][:300]
                        print(f"ort {algo} at {bits} bits failed: {first}", file=sys.stderr)
                        results.append({"bits": bits, "who": "ort", "method": algo,
                                        "failed": first})
                        continue
                    err = float(np.mean([_rel(o, b) for o, b in zip(outs, base, strict=True)]))
                    row = {"bits": bits, "who": "ort", "method": algo, "rel_err": err,
                           "seconds": time.perf_counter() - started}
                    if inputs.ppl_ids is not None:
                        row["ppl"] = _ppl(
                            lambda ids, s=session: s.run(
                                [output], feed_for_ids(signature, ids[0]))[0],
                            inputs.ppl_ids, args.ppl_window)
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr)
        if args.compiled:
            from sail_compiler.verify import verify_model

            for bits in widths:
                report = verify_model(args.model, CompileOptions(
                    quant=QuantScheme(bits, args.group_size, args.sym), method="search"),
                    [InputPlan(seq_len=args.seq_len, past_len=0)])
                results.append({"bits": bits, "who": "ours a8", "method": "search",
                                "rel_err": report["outputs"][0]["rel_l2_err"],
                                "ref_exact": report["ref_exact"]})

    _print_table(results, widths, float_ppl)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "group_size": args.group_size,
                                         "symmetric": args.sym, "float_ppl": float_ppl,
                                         "results": results}, indent=1))
    return 0


def _print_table(results: list[dict[str, Any]], widths: list[int],
                 float_ppl: float | None) -> None:
    columns = sorted({(r["who"], r["method"]) for r in results},
                     key=lambda c: (c[0] != "ours", c[0], ["rtn", "search", "gptq", "hqq"]
                                    .index(c[1]) if c[1] in ("rtn", "search", "gptq", "hqq")
                                    else 9))
    head = "bits  " + "  ".join(f"{w + ' ' + m:>14}" for w, m in columns)
    print("relative L2 error of the first output against the float model (lower is better)")
    print(head)
    for bits in widths:
        cells = []
        for who, method in columns:
            row = next((r for r in results if r["bits"] == bits and r["who"] == who
                        and r["method"] == method), None)
            cells.append(f"{'-':>14}" if row is None else f"{'failed':>14}" if "failed" in row
                         else f"{row['rel_err']:>14.4g}")
        print(f"{bits:>4}  " + "  ".join(cells))
    if float_ppl is not None:
        print(f"\nperplexity (float {float_ppl:.3f})")
        print(head)
        for bits in widths:
            cells = []
            for who, method in columns:
                row = next((r for r in results if r["bits"] == bits and r["who"] == who
                            and r["method"] == method and "ppl" in r), None)
                cells.append(f"{row['ppl']:>14.4f}" if row else f"{'-':>14}")
            print(f"{bits:>4}  " + "  ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
