"""Tokens per second of the example decoder: sail's C target against onnxruntime and llama.cpp.

Every arm runs the same model (``examples/make_decoder.py``, default preset ``135m``: the
SmolLM-135M shape, seeded random weights, KV cache) on the same prompt of random token ids and
decodes ``--tokens`` tokens greedily (argmax of the logits). Arms (``--arms``):

* ``ort-fp32``: onnxruntime on the float ONNX model, a Python loop feeding present -> past;
* ``ort-q4``: onnxruntime ``MatMulNBits`` 4-bit with ``accuracy_level=4`` (int8 activations,
  its fast path), every MatMul quantized as ``sail export-onnx --bits 4`` quantizes it (group
  ``--group-size``, zero points), same loop;
* ``llama.cpp``: llama-cpp-python on a GGUF of the same weights (:mod:`gguf_export`): F32, then
  llama.cpp's own quantization (``llama_model_quantize``) to ``--gguf-types`` (default Q4_0,
  Q8_0); the types it really used are read back from the files and from its load log;
* ``c``: sail's C target at each of ``--bits`` (``sail compile --target c``, ``sail build``,
  ``sail generate``: the token loop in C);
* ``llvm`` (not run by default): sail's llvm target (Relax VM) at each of ``--bits``, the same
  Python loop as onnxruntime.

Timing: prefill = the prompt's forward pass up to the first generated token; decode = the
remaining ``tokens - 1`` steps of one token each; decode tokens/s = ``(tokens - 1) / decode
seconds``. After a warm-up, arms run in ``--rounds`` interleaved rounds and the best round counts
(on a shared machine, load that comes and goes then hits every arm alike); ratios are against
onnxruntime fp32 in the same run.

Checks before the table: llama.cpp's logits on the F32 GGUF (float32 KV cache) against
onnxruntime fp32 for every prompt position (relative L2 error, should be ~1e-5: the GGUF is the
same model), and for every arm how many of its first greedy ids equal onnxruntime fp32's
(quantized arms may diverge: an argmax can change; this is reported, not failed).

Built models are kept in ``--workdir`` (keyed on preset, bits, group size and type) and reused
by later runs; ``--rebuild`` rebuilds them.

    python benchmarks/decode.py [--preset 135m] [--bits 2,3,4,8] [--tokens 64] [--threads 1,2]
                                [--arms ort-fp32,ort-q4,llama.cpp,c] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples")]

from gemv import busy_seconds, other_cpu_share, session  # noqa: E402
from gguf_export import tensor_types, type_summary, write_gguf  # noqa: E402
from make_decoder import PRESETS, DecoderConfig, make_decoder, save_model  # noqa: E402

from sail_compiler.driver import export_onnx_model  # noqa: E402
from sail_compiler.options import CompileOptions  # noqa: E402
from sail_compiler.quant.scheme import QuantScheme  # noqa: E402

ARMS = ("ort-fp32", "ort-q4", "llama.cpp", "c", "llvm")
DEFAULT_ARMS = ("ort-fp32", "ort-q4", "llama.cpp", "c")
REFERENCE = "ort-fp32"
#: llama.cpp file types accepted by --gguf-types (llama_cpp.LLAMA_FTYPE_MOSTLY_<NAME>).
GGUF_FILE_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M",
                   "Q6_K")
#: Relative L2 error below which llama.cpp's F32 logits count as the same model's.
LOGITS_TOLERANCE = 1e-4
ORT_ACCURACY_LEVEL = 4
PROMPT_SEED = 0
WARMUP_TOKENS = 4


def log(*parts: object) -> None:
    """Progress, on stderr (stdout carries the table or the JSON)."""
    print(*parts, file=sys.stderr, flush=True)


@dataclass
class Generation:
    """One greedy generation: ``ids`` are the generated tokens only (not the prompt); the
    prefill yields the first, each of ``decode_steps`` one-token steps one more."""

    ids: list[int]
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class Arm:
    """A subject to time: ``generate(prompt_ids, n, threads)``."""

    name: str
    weights: str
    weight_bytes: int
    generate: Callable[[list[int], int, int], Generation]
    thread_counts: tuple[int, ...] | None = None  # None: any


@dataclass
class Row:
    arm: str
    weights: str
    threads: int
    weight_mib: float
    prefill_ms: float
    decode_tokens_per_second: float
    agree: int
    ids: list[int] = field(repr=False)


# ---------------------------------------------------------------------------------------------
# ONNX-style models (onnxruntime, sail llvm): a Python loop feeding present -> past.

def _empty_past(cfg: DecoderConfig) -> dict[str, np.ndarray]:
    shape = (1, cfg.num_kv_heads, 0, cfg.head_dim)
    return {f"past_key_values.{i}.{kind}": np.zeros(shape, np.float32)
            for i in range(cfg.num_layers) for kind in ("key", "value")}


def _forward(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
             ids: list[int], past: dict[str, np.ndarray], cfg: DecoderConfig
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits [seq, V] of ``ids`` after ``past``, and the next past."""
    total = next(iter(past.values())).shape[2] + len(ids)
    out = run({"input_ids": np.array([ids], np.int64),
               "attention_mask": np.ones((1, total), np.int64), **past})
    new_past = {f"past_key_values.{i}.{kind}": out[f"present.{i}.{kind}"]
                for i in range(cfg.num_layers) for kind in ("key", "value")}
    return out["logits"][0], new_past


def onnx_generate(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                  cfg: DecoderConfig, prompt: list[int], n: int) -> Generation:
    started = time.perf_counter()
    logits, past = _forward(run, prompt, _empty_past(cfg), cfg)
    ids = [int(np.argmax(logits[-1]))]
    prefilled = time.perf_counter()
    for _ in range(n - 1):
        logits, past = _forward(run, ids[-1:], past, cfg)
        ids.append(int(np.argmax(logits[-1])))
    return Generation(ids, prefilled - started, time.perf_counter() - prefilled, n - 1)


class OrtModel:
    """An onnxruntime session per thread count, run as ``dict -> dict``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sessions: dict[int, ort.InferenceSession] = {}

    def run_fn(self, threads: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        if threads not in self._sessions:
            self._sessions[threads] = session(str(self.path), threads)
        sess = self._sessions[threads]
        names = [o.name for o in sess.get_outputs()]
        return lambda feed: dict(zip(names, sess.run(None, feed), strict=True))


# ---------------------------------------------------------------------------------------------
# llama.cpp

def _llama_cpp():  # type: ignore[no-untyped-def]
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


class LlamaCppModel:
    """One llama.cpp context on a GGUF file; ``load_log`` is what llama.cpp printed loading it."""

    def __init__(self, path: Path, n_ctx: int, *, f32_kv: bool = False,
                 logits_all: bool = False) -> None:
        llama_cpp = _llama_cpp()
        kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} \
            if f32_kv else {}
        captured = io.StringIO()
        # verbose=True sends llama.cpp's log through Python's sys.stderr, where it is captured;
        # afterwards only errors are logged.
        with contextlib.redirect_stderr(captured):
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx,
                                       n_ubatch=n_ctx, n_threads=1, n_threads_batch=1,
                                       logits_all=logits_all, verbose=True, **kv)
        self.llm.verbose = False
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self.load_log = captured.getvalue()
        self._llama_cpp = llama_cpp
        self.n_vocab = self.llm.n_vocab()

    def _set_threads(self, threads: int) -> None:
        self._llama_cpp.llama_set_n_threads(self.llm.ctx, threads, threads)

    def _last_logits(self) -> np.ndarray:
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def prompt_logits(self, prompt: list[int], threads: int) -> np.ndarray:
        """Logits [seq, V] of every prompt position (needs ``logits_all``)."""
        self._set_threads(threads)
        self.llm.reset()
        with contextlib.redirect_stderr(io.StringIO()):
            self.llm.eval(prompt)
        return np.array(self.llm.scores[:len(prompt)], np.float32)

    def generate(self, prompt: list[int], n: int, threads: int) -> Generation:
        self._set_threads(threads)
        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(prompt)
        ids = [int(np.argmax(self._last_logits()))]
        prefilled = time.perf_counter()
        for _ in range(n - 1):
            self.llm.eval(ids[-1:])
            ids.append(int(np.argmax(self._last_logits())))
        return Generation(ids, prefilled - started, time.perf_counter() - prefilled, n - 1)


def load_log_types(load_log: str) -> str:
    """The tensor types and weight buffers llama.cpp's load log reports, on one line."""
    types = re.findall(r"- type\s+(\w+):\s+(\d+) tensors", load_log)
    buffers = re.findall(r"(\w+) model buffer size =\s+([\d.]+) MiB", load_log)
    ftype = re.search(r"file type\s+=\s+(.+)", load_log)
    parts = [", ".join(f"{t} x{n}" for t, n in types)]
    if ftype:
        parts.append(f"file type {ftype.group(1).strip()}")
    if buffers:
        parts.append("buffers " + ", ".join(f"{b} {mib} MiB" for b, mib in buffers))
    return "; ".join(p for p in parts if p)


def quantize_gguf(source: Path, target: Path, file_type: str) -> None:
    """llama.cpp's own quantization of an F32 GGUF (``llama_model_quantize``)."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.nthread = os.cpu_count() or 1
    tmp = target.with_suffix(".tmp")
    with contextlib.redirect_stderr(io.StringIO()):
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                            ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {file_type} failed (return code {rc})")
    tmp.replace(target)


# ---------------------------------------------------------------------------------------------
# sail

def _sail(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """Run the ``sail`` command of this Python; uncaptured output goes to stderr (progress)."""
    streams = {"capture_output": True} if capture else {"stdout": sys.stderr}
    return subprocess.run([sys.executable, "-m", "sail_compiler", *args], check=False,
                          text=True, **streams)


def sail_generate_available() -> bool:
    proc = _sail("generate", "--help", capture=True)
    return proc.returncode == 0


def c_generate(artifact: Path) -> Callable[[list[int], int, int], Generation]:
    def generate(prompt: list[int], n: int, threads: int) -> Generation:
        proc = _sail("generate", str(artifact), "--prompt-ids", ",".join(map(str, prompt)),
                     "-n", str(n), "--threads", str(threads), "--json", capture=True)
        if proc.returncode != 0:
            raise RuntimeError(f"sail generate {artifact} failed: "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        ids = [int(i) for i in data["ids"]]
        if len(ids) == len(prompt) + n and ids[:len(prompt)] == prompt:
            ids = ids[len(prompt):]
        return Generation(ids, float(data["prefill_seconds"]), float(data["decode_seconds"]),
                          int(data.get("decode_steps", n - 1)))
    return generate


def _compile_c(model: Path, out: Path, bits: int, group_size: int) -> None:
    started = time.perf_counter()
    log(f"  compiling c w{bits}g{group_size} -> {out} (sail compile; minutes for 135m) ...")
    if out.exists():
        shutil.rmtree(out)
    proc = _sail("compile", str(model), "--bits", str(bits), "--group-size", str(group_size),
                 "--target", "c", "-o", str(out))
    if proc.returncode != 0:
        raise RuntimeError(f"sail compile --bits {bits} --target c failed")
    log(f"  building {out} (sail build) ...")
    if _sail("build", str(out)).returncode != 0:
        raise RuntimeError(f"sail build {out} failed")
    log(f"  c w{bits}: {time.perf_counter() - started:.0f} s")


# ---------------------------------------------------------------------------------------------
# Preparing the models in the work directory

def _file_bytes(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def prepare_float(cfg: DecoderConfig, work: Path) -> Path:
    path = work / "decoder_kv.onnx"
    if not path.exists():
        log(f"  writing {path} ...")
        save_model(make_decoder(cfg, kv_cache=True, seed=0), path)
    return path


def prepare_ort_q4(model: Path, work: Path, group_size: int, rebuild: bool) -> Path:
    """``sail export-onnx --bits 4`` of the model, with ``accuracy_level=4`` set on every
    MatMulNBits node (the export writes level 0)."""
    path = work / f"ort_w4g{group_size}_acc{ORT_ACCURACY_LEVEL}.onnx"
    if path.exists() and not rebuild:
        return path
    log(f"  exporting {path} (sail export-onnx --bits 4) ...")
    tmp = work / "ort_export.tmp.onnx"
    export_onnx_model(model, tmp, CompileOptions(quant=QuantScheme(4, group_size)))
    exported = onnx.load(str(tmp))
    for node in exported.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(onnx.helper.make_attribute("accuracy_level",
                                                             ORT_ACCURACY_LEVEL))
    onnx.save_model(exported, str(path))
    tmp.unlink()
    return path


def prepare_ggufs(model: Path, cfg: DecoderConfig, work: Path, file_types: list[str],
                  rebuild: bool) -> dict[str, Path]:
    """F32 GGUF written by :mod:`gguf_export`, the others quantized by llama.cpp."""
    paths = {"F32": work / "gguf" / "f32.gguf"}
    paths.update({t: work / "gguf" / f"{t.lower()}.gguf" for t in file_types})
    paths["F32"].parent.mkdir(parents=True, exist_ok=True)
    if rebuild or not paths["F32"].exists():
        log(f"  writing {paths['F32']} (gguf package) ...")
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(
            str(model)).graph.initializer}
        write_gguf(weights, cfg, paths["F32"])
    for t in file_types:
        if rebuild or not paths[t].exists():
            log(f"  quantizing {paths[t]} (llama.cpp llama_model_quantize {t}) ...")
            quantize_gguf(paths["F32"], paths[t], t)
    return paths


# ---------------------------------------------------------------------------------------------
# Timing

def agreement(ids: list[int], reference: list[int]) -> int:
    """Leading ids equal to the reference's."""
    n = 0
    for a, b in zip(ids, reference, strict=False):
        if a != b:
            break
        n += 1
    return n


def time_arms(arms: list[Arm], prompt: list[int], n: int, threads: int, rounds: int
              ) -> dict[str, Generation]:
    """Best prefill and best decode of each arm over interleaved rounds (ids of the last)."""
    for arm in arms:
        arm.generate(prompt, WARMUP_TOKENS, threads)
    best: dict[str, Generation] = {}
    for r in range(rounds):
        for arm in arms:
            g = arm.generate(prompt, n, threads)
            log(f"  round {r + 1}/{rounds} {threads} thread(s) {arm.name} [{arm.weights}]: "
                f"prefill {g.prefill_seconds * 1e3:.1f} ms, decode "
                f"{g.decode_tokens_per_second:.1f} tok/s")
            old = best.get(arm.name + arm.weights)
            if old is not None:
                g = Generation(g.ids, min(g.prefill_seconds, old.prefill_seconds),
                               min(g.decode_seconds, old.decode_seconds), g.decode_steps)
            best[arm.name + arm.weights] = g
    return best


def markdown_table(rows: list[Row], prompt_len: int, n: int) -> str:
    ref = {r.threads: r for r in rows if r.arm == REFERENCE}
    lines = [f"| arm | weights | threads | weights MiB | prefill ms ({prompt_len} tok) | "
             f"x fp32 | decode tok/s | x fp32 | greedy ids = fp32 (of {n}) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = ref.get(r.threads)
        pre = f"{base.prefill_ms / r.prefill_ms:.2f}" if base else "-"
        dec = f"{r.decode_tokens_per_second / base.decode_tokens_per_second:.2f}" \
            if base else "-"
        lines.append(f"| {r.arm} | {r.weights} | {r.threads} | {r.weight_mib:.0f} | "
                     f"{r.prefill_ms:.1f} | {pre} | {r.decode_tokens_per_second:.1f} | {dec} | "
                     f"{r.agree if base else '-'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _names(valid: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in names if v not in valid]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from "
                                             f"{', '.join(valid)}")
        return names
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="135m")
    parser.add_argument("--bits", type=_ints, default=[2, 3, 4, 8],
                        help="widths of the sail arms (default 2,3,4,8)")
    parser.add_argument("--group-size", type=int, default=128,
                        help="group size of sail's and onnxruntime's 4-bit weights (default 128)")
    parser.add_argument("--gguf-types", type=_names(GGUF_FILE_TYPES), default=["Q4_0", "Q8_0"],
                        help="llama.cpp file types to quantize to (default Q4_0,Q8_0)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--threads", type=_ints, default=[1], help="e.g. 1,2 (default 1)")
    parser.add_argument("--arms", type=_names(ARMS), default=list(DEFAULT_ARMS),
                        help=f"of {', '.join(ARMS)} (default {','.join(DEFAULT_ARMS)}); "
                             f"{REFERENCE} always runs (the reference)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds; the best counts (default 3)")
    parser.add_argument("--workdir", type=Path,
                        help="keep built models here and reuse them (default: a temporary dir)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild models in --workdir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = PRESETS[args.preset]
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work = root / args.preset
        work.mkdir(parents=True, exist_ok=True)
        return run(args, cfg, work)


def run(args: argparse.Namespace, cfg: DecoderConfig, work: Path) -> int:
    busy = busy_seconds()
    n, prompt_len = args.tokens, args.prompt_len
    if prompt_len + n > cfg.max_positions:
        raise SystemExit(f"prompt {prompt_len} + {n} tokens exceed the model's "
                         f"{cfg.max_positions} positions")
    prompt = [int(i) for i in np.random.default_rng(PROMPT_SEED).integers(
        3, cfg.vocab_size, prompt_len)]
    notes: list[str] = []
    log(f"preparing models in {work}")
    model = prepare_float(cfg, work)
    arms: list[Arm] = []
    fp32 = OrtModel(model)
    arms.append(Arm(REFERENCE, "fp32", _file_bytes(model),
                    lambda p, k, t: onnx_generate(fp32.run_fn(t), cfg, p, k)))
    if "ort-q4" in args.arms:
        q4_path = prepare_ort_q4(model, work, args.group_size, args.rebuild)
        q4 = OrtModel(q4_path)
        arms.append(Arm("ort-q4", f"MatMulNBits w4g{args.group_size} acc4", _file_bytes(q4_path),
                        lambda p, k, t: onnx_generate(q4.run_fn(t), cfg, p, k)))

    checks: dict[str, object] = {}
    gguf_types: dict[str, dict[str, str]] = {}
    if "llama.cpp" in args.arms:
        llama_cpp = _llama_cpp()
        if llama_cpp is None:
            notes.append("llama.cpp arm skipped: llama_cpp is not importable (pip install "
                         "llama-cpp-python)")
        else:
            ggufs = prepare_ggufs(model, cfg, work, args.gguf_types, args.rebuild)
            n_ctx = prompt_len + n
            checks["llama.cpp F32 logits"] = check_f32_logits(ggufs["F32"], fp32, cfg, prompt,
                                                              n_ctx, args.threads[0])
            for name, path in ggufs.items():
                llm = LlamaCppModel(path, n_ctx)
                gguf_types[name] = {"file": type_summary(tensor_types(path)),
                                    "load_log": load_log_types(llm.load_log)}
                arms.append(Arm("llama.cpp", f"GGUF {name}", _file_bytes(path), llm.generate))
            notes.append(f"llama.cpp {llama_cpp.__version__}: f16 KV cache (its default) in "
                         "the timed arms; float32 KV cache in the F32 logits check")

    if "c" in args.arms:
        if not sail_generate_available():
            notes.append("c arm skipped: this sail has no 'sail generate' (the C token loop "
                         "of issue 5); the arm runs `sail generate OUT --prompt-ids ... -n N "
                         "--threads T --json` once it exists")
            log("NOTE: " + notes[-1])
        else:
            for bits in args.bits:
                out = work / f"c_w{bits}g{args.group_size}"
                if args.rebuild or not (out / "manifest.json").exists() \
                        or not (out / "sail_main").exists():
                    _compile_c(model, out, bits, args.group_size)
                arms.append(Arm("sail c", f"w{bits}g{args.group_size}",
                                _file_bytes(out / "weights.bin"), c_generate(out)))

    if "llvm" in args.arms:
        arms += llvm_arms(model, work, args, cfg, notes)

    rows: list[Row] = []
    for threads in args.threads:
        subjects = [a for a in arms if a.thread_counts is None or threads in a.thread_counts]
        log(f"timing {len(subjects)} arm(s), {threads} thread(s), prompt {prompt_len} ids, "
            f"{n} tokens, {args.rounds} rounds")
        best = time_arms(subjects, prompt, n, threads, args.rounds)
        reference = best[REFERENCE + "fp32"].ids
        for arm in subjects:
            g = best[arm.name + arm.weights]
            rows.append(Row(arm.name, arm.weights, threads, arm.weight_bytes / 2**20,
                            g.prefill_seconds * 1e3, g.decode_tokens_per_second,
                            agreement(g.ids, reference), g.ids))
    other = other_cpu_share(busy)
    report(args, cfg, prompt, rows, checks, gguf_types, notes, other)
    return 0


def check_f32_logits(path: Path, fp32: OrtModel, cfg: DecoderConfig, prompt: list[int],
                     n_ctx: int, threads: int) -> dict[str, object]:
    """llama.cpp on the F32 GGUF (float32 KV cache) against onnxruntime fp32, every position."""
    llm = LlamaCppModel(path, n_ctx, f32_kv=True, logits_all=True)
    theirs = llm.prompt_logits(prompt, threads)
    ours, _ = _forward(fp32.run_fn(threads), prompt, _empty_past(cfg), cfg)
    rel = float(np.linalg.norm(theirs - ours) / np.linalg.norm(ours))
    same_argmax = int((theirs.argmax(-1) == ours.argmax(-1)).sum())
    ok = rel <= LOGITS_TOLERANCE
    log(f"check: llama.cpp F32 GGUF logits vs onnxruntime fp32: rel L2 {rel:.2e}, argmax equal "
        f"at {same_argmax}/{len(prompt)} positions -> {'PASS' if ok else 'FAIL'}")
    return {"rel_l2": rel, "max_abs": float(np.abs(theirs - ours).max()),
            "argmax_equal": same_argmax, "positions": len(prompt), "tolerance": LOGITS_TOLERANCE,
            "ok": ok}


def llvm_arms(model: Path, work: Path, args: argparse.Namespace, cfg: DecoderConfig,
              notes: list[str]) -> list[Arm]:
    """sail's llvm target (Relax VM) at each width, run by the Python loop. TVM sizes its thread
    pool once per process, so these arms run at the first thread count only."""
    from sail_compiler import Artifact, compile_model

    threads = args.threads[0]
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read when the runtime starts its pool
    if len(args.threads) > 1:
        notes.append(f"llvm arms ran with {threads} thread(s) only (TVM's pool is per process)")
    arms = []
    for bits in args.bits:
        out = work / f"llvm_w{bits}g{args.group_size}_t{threads}"
        if args.rebuild or not (out / "manifest.json").exists():
            log(f"  compiling llvm w{bits}g{args.group_size} -> {out} ...")
            started = time.perf_counter()
            if out.exists():
                shutil.rmtree(out)
            compile_model(model, out, CompileOptions(
                num_threads=threads, quant=QuantScheme(bits, args.group_size)))
            log(f"  llvm w{bits}: {time.perf_counter() - started:.0f} s")
        artifact = Artifact(out)
        arms.append(Arm("sail llvm", f"w{bits}g{args.group_size}",
                        sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
                        lambda p, k, t, a=artifact: onnx_generate(a.run, cfg, p, k),
                        thread_counts=(threads,)))
    return arms


def report(args: argparse.Namespace, cfg: DecoderConfig, prompt: list[int], rows: list[Row],
           checks: dict[str, object], gguf_types: dict[str, dict[str, str]], notes: list[str],
           other_cpu: float) -> None:
    reference = {r.threads: r.ids for r in rows if r.arm == REFERENCE}
    if args.json:
        print(json.dumps({
            "preset": args.preset, "params": cfg.num_params(), "prompt_ids": prompt,
            "tokens": args.tokens, "threads": args.threads, "onnxruntime": ort.__version__,
            "rows": [asdict(r) for r in rows], "reference_ids": reference, "checks": checks,
            "gguf_types": gguf_types, "notes": notes, "other_cpu_share": other_cpu}))
        return
    print(f"\nexample decoder '{args.preset}' ({cfg.num_params() / 1e6:.1f}M parameters), "
          f"prompt {len(prompt)} random ids, {args.tokens} greedy tokens, onnxruntime "
          f"{ort.__version__}; best of {args.rounds} interleaved rounds; x fp32 = onnxruntime "
          "fp32's time over the arm's (higher is faster)\n")
    print(markdown_table(rows, len(prompt), args.tokens))
    if gguf_types:
        print("\nllama.cpp tensor types (file / load log):")
        for name, t in gguf_types.items():
            print(f"  {name}: file {t['file']}\n  {' ' * len(name)}  load log: {t['load_log']}")
    for name, check in checks.items():
        print(f"\ncheck {name}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float)
                                               else f"{k} {v}" for k, v in check.items()))
    for note in notes:
        print(f"note: {note}")
    print(f"other processes used {other_cpu:.0%} of one CPU during the run (this machine has "
          f"{os.cpu_count()}; much above 0% and the times are not clean)")


if __name__ == "__main__":
    sys.exit(main())
