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

Gemma 3 270M (``--gemma3``, a real trained LLM; see :func:`gemma3_main`): perplexity under the
project's protocol for each sail setting beside llama.cpp and onnxruntime at the same bits, each
row cached as JSON in ``--workdir`` so that an interrupted run resumes.

Usage::

    python benchmarks/quant_quality.py                       # the tiny example decoder
    python benchmarks/quant_quality.py --model m.onnx --text eval.txt --tokenizer tok.json
    python benchmarks/quant_quality.py --gemma3 --workdir ~/.cache/sail-bench \
        [--sail w4g32sym:rtn,w4g32sym:gptq,...] [--llama Q8_0,Q4_0,...] [--ort default:w4g32sym,...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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

sys.path[:0] = [str(Path(__file__).resolve().parent),
                str(Path(__file__).resolve().parents[1] / "examples")]

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
    _gemma3_options(parser.add_argument_group("Gemma 3 270M (--gemma3)"))
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
    if args.gemma3:
        return gemma3_main(args)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model

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


# ---------------------------------------------------------------------------------------------
# Gemma 3 270M: perplexity under the project's protocol, sail beside llama.cpp and onnxruntime

#: sail settings: ``<scheme>:<method>`` (scheme as ``QuantScheme.parse`` reads it) or
#: ``avg<X>g<G>[sym]:<method>`` (``--avg-bits X``).
GEMMA3_SAIL = ("w8g128sym:rtn", "w4g32sym:rtn", "w4g32sym:search", "w4g32sym:gptq",
               "w4g128sym:rtn", "w4g128sym:search", "w4g128sym:gptq", "w3g64sym:rtn",
               "w3g64sym:gptq", "w3g64:gptq", "w2g32sym:gptq", "w2g32:gptq",
               "avg3.5g32sym:gptq")
#: llama.cpp file types: the shipped Q4_K_M, the others re-quantized from it.
GEMMA3_LLAMA = ("Q8_0", "Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K")
#: onnxruntime's MatMulNBits quantizer: ``<algo>:<scheme>``; algo ``default`` (its RTN) or
#: ``hqq`` (asymmetric; needs torch: runs in the model's venv).
GEMMA3_ORT = ("default:w8g128sym", "default:w4g32sym", "default:w4g128sym", "hqq:w4g32",
              "hqq:w4g128", "default:w2g32sym", "hqq:w2g32")

_ORT_QUANTIZE = r"""
import sys, time
import onnx
from onnxruntime.quantization import matmul_nbits_quantizer as mnq
src, dst, algo, bits, block, sym = sys.argv[1:7]
bits, block, sym = int(bits), int(block), sym == "1"
started = time.perf_counter()
model = onnx.load(src)
if algo == "hqq":
    config = mnq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits)
else:
    config = mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=sym, bits=bits,
                                              accuracy_level=0)
quantizer = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=sym,
                                     algo_config=config)
quantizer.process()
quantizer.model.save_model_to_file(dst, use_external_data_format=True)
print(time.perf_counter() - started)
"""


def _gemma3_options(group: argparse._ArgumentGroup) -> None:
    import gemma3

    group.add_argument("--gemma3", action="store_true",
                       help="Gemma 3 270M under the protocol: the first 6000 characters of "
                            "GPL-3, <bos>, 1024 tokens, one window")
    group.add_argument("--model-dir", type=Path, default=gemma3.DEFAULT_DIR,
                       help=f"build.sh's output (default {gemma3.DEFAULT_DIR})")
    group.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "sail-bench",
                       help="built models and one JSON per row (default ~/.cache/sail-bench)")
    group.add_argument("--sail", default=",".join(GEMMA3_SAIL),
                       help="sail settings <scheme>:<method> or avg<X>g<G>[sym]:<method> "
                            "(method rtn, search, gptq, or awq+ one of them for --awq), "
                            f"comma-separated ('' for none; default {','.join(GEMMA3_SAIL)})")
    group.add_argument("--sail-extra", default="",
                       help="more sail eval-ppl options for every sail row, e.g. "
                            "'--act-bits 16' (part of the rows' cache keys)")
    group.add_argument("--llama", default=",".join(GEMMA3_LLAMA),
                       help=f"llama.cpp file types (default {','.join(GEMMA3_LLAMA)})")
    group.add_argument("--ort", default=",".join(GEMMA3_ORT),
                       help=f"onnxruntime quantizer rows <algo>:<scheme> (default "
                            f"{','.join(GEMMA3_ORT)})")
    group.add_argument("--calib-text", type=Path, default=gemma3.CALIB_TEXT,
                       help=f"calibration text of sail's search, gptq and --avg-bits (default "
                            f"{gemma3.CALIB_TEXT}; 'licenses': the licenses of "
                            f"{', '.join(gemma3.CALIB_LICENSES)} in one file; never the "
                            "evaluation text)")
    group.add_argument("--sail-chunk", type=int, default=128,
                       help="sail rows score the KV-cache export in pieces of this many tokens "
                            "(eval-ppl --chunk: the same perplexity, bounded memory; 0: the "
                            "no-cache export in one pass; default 128)")
    group.add_argument("--redo", action="store_true", help="recompute cached rows")
    group.add_argument("--threads", type=int, default=2,
                       help="onnxruntime / llama.cpp / sail threads (default 2)")


def _key(*parts: str) -> str:
    text = "_".join(parts)
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in text)
    return safe[:80] + "_" + hashlib.sha1(text.encode()).hexdigest()[:8]


def _cached(path: Path, redo: bool, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The row saved at ``path``, else ``compute()`` saved there. A failure is reported as
    ``{"failed": message}`` and not saved: a rerun tries the row again."""
    if path.exists() and not redo:
        return json.loads(path.read_text())
    try:
        row = compute()
    except Exception as err:  # a row that fails is reported, the others go on
        return {"failed": " ".join(str(err).split())[-400:] or type(err).__name__}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def _stderr_tail(proc: subprocess.CompletedProcess) -> str:
    """The end of a failed child's stderr without its log lines, and how it ended."""
    lines = [line for line in proc.stderr.splitlines()
             if "[INFO]" not in line and "Warning" not in line]
    how = f"exit {proc.returncode}" if proc.returncode >= 0 else \
        f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9
                                                  else "")
    return f"{how}: {' '.join(lines[-6:])[-400:]}"


def _sail_setting_args(setting: str, calib: list[str]) -> tuple[list[str], str, str]:
    """(eval-ppl options, bits label, method) of a sail setting."""
    from sail_compiler.errors import OptionError

    scheme_text, _, method = setting.partition(":")
    method = method or "rtn"
    awq = method.startswith("awq+")
    base_method = method.removeprefix("awq+")
    if scheme_text.startswith("avg"):
        avg, _, rest = scheme_text[3:].partition("g")
        group = rest.removesuffix("sym")
        args = ["--avg-bits", avg, "--group-size", group]
        if rest.endswith("sym"):
            args.append("--sym")
        label = avg
        needs_calib = True
    else:
        try:
            scheme = QuantScheme.parse(scheme_text)
        except OptionError as err:
            raise SystemExit(f"--sail {setting}: {err}") from None
        args = ["--bits", str(scheme.bits), "--group-size",
                "channel" if scheme.group_size is None else str(scheme.group_size)]
        if scheme.symmetric:
            args.append("--sym")
        label = str(scheme.bits)
        needs_calib = method != "rtn"
    args += ["--method", base_method] + (["--awq"] if awq else []) \
        + (calib if needs_calib else [])
    return args, label, method


def _ort_ppl(model: Path, ids: np.ndarray, threads: int) -> float:
    import gemma3
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
    feed = {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}}
    logits = sess.run(["logits"], feed)[0][0]
    return gemma3.nll_ppl(logits, ids)[0]


def gemma3_main(args: argparse.Namespace) -> int:
    """Perplexity rows for Gemma 3 270M (the no-cache export) under the protocol: the first
    6000 characters of GPL-3, ``<bos>`` + tokens, the first 1024 ids, one window,
    exp(mean NLL of tokens 1..1023).

    * float: onnxruntime fp32;
    * sail: ``sail eval-ppl MODEL --chars 6000 --window 1024 --max-tokens 1024`` with the
      setting (llvm target, 8-bit activations unless ``--sail-extra`` says otherwise), on the
      KV-cache export in chunks of ``--sail-chunk`` tokens (the same perplexity);
      calibration on ``--calib-text`` (8 windows of 128 tokens); seconds = the compile
      (quantization included);
    * llama.cpp: llama-cpp-python's logits of every position (``logits_all``) in one batch of
      1024, float32 NLL from them; seconds = ``llama_model_quantize``;
    * onnxruntime: its MatMulNBits quantizer (``default``: RTN; ``hqq``), then onnxruntime
      (``accuracy_level`` 0: weights-only) on the quantized model; seconds = the quantizer.
    """
    import gemma3

    files = gemma3.require(args.model_dir, gemma3.NO_CACHE_MODEL, gemma3.KV_MODEL,
                           gemma3.TOKENIZER)
    model, tokenizer = files[gemma3.NO_CACHE_MODEL], files[gemma3.TOKENIZER]
    # one 1024-token pass of a compiled g32 model needs more than 20 GB: chunks of the KV export
    sail_model, chunking = (files[gemma3.KV_MODEL], ["--chunk", str(args.sail_chunk)]) \
        if args.sail_chunk else (model, [])
    if args.calib_text.resolve() == gemma3.EVAL_TEXT.resolve():
        raise SystemExit("--calib-text must not be the evaluation text")
    ids = gemma3.protocol_ids(args.model_dir)
    work = args.workdir / "gemma3"
    rows_dir = work / "quality"
    rows: list[dict[str, Any]] = []

    def add(kind: str, setting: str, bits: str, method: str,
            compute: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        gemma3.log(f"{kind} {setting} ...")
        row = _cached(rows_dir / f"{_key(kind, setting)}.json", args.redo, compute)
        row.update(engine=kind, setting=setting, bits=bits, method=method)
        gemma3.log(f"  {json.dumps(row)} ({time.perf_counter() - started:.0f} s)")
        rows.append(row)

    def float_row() -> dict[str, Any]:
        started = time.perf_counter()
        return {"ppl": _ort_ppl(model, ids, args.threads),
                "seconds": time.perf_counter() - started}

    add("float", "onnxruntime fp32", "32", "-", float_row)
    if str(args.calib_text) == "licenses":
        args.calib_text = gemma3.calib_corpus(work)
    calib = ["--calib-text", str(args.calib_text), "--tokenizer", str(tokenizer)]
    extra = shlex.split(args.sail_extra)
    for setting in [s for s in args.sail.split(",") if s]:
        options, bits, method = _sail_setting_args(setting, calib)
        options += extra + chunking + ["--threads", str(args.threads)]

        def sail_row(options: list[str] = options) -> dict[str, Any]:
            command = [sys.executable, "-m", "sail_compiler", "eval-ppl", str(sail_model),
                       "--text",
                       str(gemma3.EVAL_TEXT), "--tokenizer", str(tokenizer), "--chars",
                       str(gemma3.EVAL_CHARS), "--window", str(gemma3.EVAL_TOKENS),
                       "--max-tokens", str(gemma3.EVAL_TOKENS), *options, "--json"]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"sail eval-ppl: {_stderr_tail(proc)}")
            report = json.loads(proc.stdout.strip().splitlines()[-1])
            compiled = report["compiled"]
            return {"ppl": compiled["ppl"], "float_ppl": report["float"]["ppl"],
                    "commit": gemma3.repo_commit(),
                    "seconds": compiled["compile_seconds"], "score_seconds": compiled["seconds"],
                    "description": compiled.get("description"), "warnings": report["warnings"],
                    "activations": f"int{compiled.get('act_bits')}, groups "
                                   f"{compiled.get('act_group_size', 'row')}",
                    "command": shlex.join(["sail", *command[3:]])}

        add("sail", setting + (f" {args.sail_extra}" if extra else ""), bits, method, sail_row)
    for file_type in [t for t in args.llama.split(",") if t]:
        def llama_row(file_type: str = file_type) -> dict[str, Any]:
            path = gemma3.llama_gguf(args.model_dir, work, file_type)
            return {"ppl": _llama_ppl(path, ids, args.threads),
                    "seconds": gemma3.quantize_seconds(path),
                    "file_mib": path.stat().st_size / 2**20}

        bits = file_type[1] if file_type[0] == "Q" else "-"
        add("llama.cpp", file_type + (" (shipped)" if file_type == "Q4_K_M" else ""), bits,
            "k-quant" if "_K" in file_type else "rtn", llama_row)
    for spec in [t for t in args.ort.split(",") if t]:
        algo, _, scheme_text = spec.partition(":")
        scheme = QuantScheme.parse(scheme_text)

        def ort_row(algo: str = algo, scheme: QuantScheme = scheme) -> dict[str, Any]:
            out = work / "ort" / f"{algo}_{scheme.name}.onnx"
            seconds = None
            if not out.exists():
                seconds = _ort_quantize(model, out, algo, scheme, args.model_dir)
            data = out.with_name(out.stem + ".tmp.onnx.data")
            return {"ppl": _ort_ppl(out, ids, args.threads), "seconds": seconds,
                    "file_mib": (out.stat().st_size + (data.stat().st_size if data.exists()
                                                        else 0)) / 2**20}

        add("onnxruntime", f"{algo} {scheme.name}", str(scheme.bits),
            "rtn" if algo == "default" else algo, ort_row)
    _print_gemma3(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"protocol": _PROTOCOL, "rows": rows}, indent=1))
    return 0


_PROTOCOL = ("Gemma 3 270M; the first 6000 characters of GPL-3, <bos> + tokens, the first 1024 "
             "ids, one window, perplexity = exp(mean NLL of tokens 1..1023)")


def _llama_ppl(path: Path, ids: np.ndarray, threads: int) -> float:
    import gemma3

    llama_cpp = gemma3.llama_cpp_module()
    if llama_cpp is None:
        raise RuntimeError("llama_cpp is not importable (pip install llama-cpp-python)")
    n = len(ids)
    with contextlib.redirect_stderr(io.StringIO()):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n, n_batch=n, n_ubatch=n,
                              n_threads=threads, n_threads_batch=threads, logits_all=True,
                              verbose=False)
        llm.eval(ids.tolist())
    logits = np.array(llm.scores[:n], np.float32)
    del llm
    return gemma3.nll_ppl(logits, ids)[0]


def _ort_quantize(model: Path, out: Path, algo: str, scheme: QuantScheme,
                  model_dir: Path) -> float:
    """onnxruntime's quantizer on ``model`` into ``out`` (external data); its seconds. HQQ
    runs in the model's venv (it needs torch)."""
    python = sys.executable
    if algo == "hqq":
        python = str(model_dir / "venv" / "bin" / "python")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.onnx")
    proc = subprocess.run([python, "-c", _ORT_QUANTIZE, str(model), str(tmp), algo,
                           str(scheme.bits), str(scheme.group_size or 0),
                           "1" if scheme.symmetric else "0"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"onnxruntime quantizer {algo} {scheme.name}: {_stderr_tail(proc)}")
    # the data file keeps the name it was written with; the .onnx refers to it by that name
    tmp.replace(out)
    return float(proc.stdout.strip().splitlines()[-1])


def _print_gemma3(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import gemma3

    base = next((r["ppl"] for r in rows if r["engine"] == "float" and "ppl" in r), None)
    print(f"\n{_PROTOCOL}; calibration (sail search/gptq/avg-bits): {args.calib_text}, 8 windows "
          "of 128 tokens; sail: llvm target, 8-bit activations unless the setting says "
          "otherwise; onnxruntime: weights only (accuracy_level 0)\n")
    print("| bits | engine | setting | method | activations | perplexity | x float | seconds | "
          "file MiB |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")

    def order(r: dict[str, Any]) -> tuple:
        try:
            bits = -float(r["bits"])
        except ValueError:
            bits = 0.0
        return bits, ["float", "sail", "llama.cpp", "onnxruntime"].index(r["engine"])

    for r in sorted(rows, key=order):
        if "failed" in r:
            cells = f"failed: {r['failed'][:120]} | - | - | -"
        else:
            ratio = f"{r['ppl'] / base:.3f}" if base else "-"
            seconds = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-"
            size = f"{r['file_mib']:.0f}" if r.get("file_mib") is not None else "-"
            cells = f"{r['ppl']:.3f} | {ratio} | {seconds} | {size}"
        acts = r.get("activations") or {"float": "float", "onnxruntime": "float",
                                         "llama.cpp": "q8 blocks of 32 (k-quants: q8_K)"
                                         }.get(r["engine"], "-")
        print(f"| {r['bits']} | {r['engine']} | {r['setting']} | {r['method']} | {acts} | "
              f"{cells} |")
    commits = sorted({r["commit"] for r in rows if r.get("commit")})
    if commits:
        now = gemma3.repo_commit()
        print(f"sail rows measured at commit(s) {', '.join(commits)}; now {now}"
              + ("" if commits == [now] else ": cached rows may predate compiler changes "
                 "(--redo, or delete their JSON in the workdir, to measure them again)"))
    warned = [r for r in rows if r.get("warnings")]
    for r in warned:
        print(f"warning ({r['setting']}): {'; '.join(r['warnings'])}")


if __name__ == "__main__":
    sys.exit(main())
