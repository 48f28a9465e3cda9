"""Tokens per second of a decoder: sail's C target against llama.cpp, onnxruntime(-genai).

Two models (``--model``):

* ``generated`` (default): the example decoder (``examples/make_decoder.py``, ``--preset``
  default ``135m``: the SmolLM-135M shape, seeded random weights, KV cache), random prompt ids.
  Arms: ``ort-fp32`` (onnxruntime on the float model, a Python loop feeding present -> past: the
  reference), ``ort-q4`` (onnxruntime ``MatMulNBits`` 4-bit, ``accuracy_level=4``, as ``sail
  export-onnx --bits 4`` quantizes it), ``llama.cpp`` (an F32 GGUF of the same weights written
  by :mod:`gguf_export`, then llama.cpp's own quantization to ``--gguf-types``), ``c`` (sail's
  C target at each of ``--bits``, ``--sail-args`` default ``--group-size G``) and, not by
  default, ``llvm`` (sail's llvm target, Relax VM). Ratios are against onnxruntime fp32.
  The ``7b`` and ``13b`` presets (Llama-2 shapes, 27 and 52 GB of float32: more than memory)
  are written one tensor at a time; their arms are ``llama.cpp`` (GGUFs written by
  :mod:`gguf_export` straight from the ONNX external data, ``--gguf-types`` default Q4_0) and
  ``c`` only, the ratios are against llama.cpp Q4_0 and so are the ids (``ids = Q4_0``).
* ``gemma3``: Gemma 3 270M, a real trained LLM (``--model-dir``, see :mod:`gemma3`), the prompt
  the first ``--prompt-lens`` ids (default 32 and 1024) of a real text (``<bos>`` first).
  Arms: ``c`` (``sail compile gemma3_270m_kv.onnx --target c --bits B`` + ``--sail-args``,
  default ``--group-size 32 --sym``; ``sail build``; ``sail generate``: the token loop in C;
  ``--kv f16``: its float16 KV cache, the cache type llama.cpp's arms use, ``--kv both``: an
  arm of each),
  ``llama.cpp`` (the shipped Q4_K_M GGUF re-quantized by llama.cpp's ``llama_model_quantize``
  with ``allow_requantize`` to ``--gguf-types``, default Q4_0 and Q8_0; its context holds the
  whole prompt + the generated tokens and its batch the whole prompt), ``ort-genai``
  (onnxruntime-genai's own int4 CPU build of the same checkpoint, its own KV cache), and, not by
  default, ``ort-fp32`` timed. Ratios are against llama.cpp Q4_0 and onnxruntime-genai int4 in
  the same run. onnxruntime fp32 always runs once, untimed, as the greedy reference.

Every arm generates ``--tokens`` tokens greedily (arg-max of the logits, no end-of-text stop).
Prefill = the prompt's forward pass up to the first generated token (prefill tokens/s = prompt
length / prefill seconds); decode = the remaining ``tokens - 1`` one-token steps (decode tokens/s
= steps / decode seconds). After a warm-up, arms run in ``--rounds`` interleaved rounds (every
arm once per round, per prompt length and thread count) and the median round counts, prefill and
decode separately. ``agree`` = how many of an arm's first ``--agree-ids`` (default 8) greedy ids
equal onnxruntime fp32's (quantized arms may diverge: an argmax can change; reported, not
failed). The share of CPU other processes used during the run is printed: on a shared machine,
numbers taken while it is well above 0 are preliminary.

Built models are kept in ``--workdir`` (default: a temporary directory; keyed on the model, bits,
options and type) and reused by later runs; ``--rebuild`` rebuilds them. ``--plot`` writes a bar
chart of decode tokens/s per arm (matplotlib); ``--profile`` adds ``sail_generate
--profile`` of each prompt for each sail arm: the prefill's kernels, then 16 decode steps'.

    python benchmarks/decode.py [--preset 135m] [--bits 2,3,4,8] [--tokens 64] [--threads 1,2]
    python benchmarks/decode.py --preset 7b --bits 4 --sail-args '--group-size 32 --sym' \\
        --threads 1,2 --prompt-lens 32 --tokens 48 --workdir ~/.cache/sail-bench
    python benchmarks/decode.py --model gemma3 --bits 4,8 --threads 1,2 --prompt-lens 32,1024 \\
        --workdir ~/.cache/sail-bench [--rounds 3] [--json] [--plot decode.png] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import statistics
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

import gemma3  # noqa: E402
from gemv import busy_seconds, other_cpu_share, session  # noqa: E402
from gguf_export import (  # noqa: E402
    TENSOR_TYPES,
    ExternalWeights,
    tensor_types,
    type_summary,
    write_gguf,
)

from sail_compiler.export_onnx import export_onnx_model  # noqa: E402
from sail_compiler.options import CompileOptions  # noqa: E402
from sail_compiler.quant.scheme import QuantScheme  # noqa: E402
from sail_compiler.testing.decoders import (  # noqa: E402
    IN_MEMORY_LIMIT_BYTES,
    PRESETS,
    DecoderConfig,
    make_decoder,
    save_model,
    write_decoder,
)

MODELS = ("generated", "gemma3")
ARMS = ("ort-fp32", "ort-q4", "llama.cpp", "c", "llvm", "ort-genai")
DEFAULT_ARMS = {"generated": ("ort-fp32", "ort-q4", "llama.cpp", "c"),
                "large": ("llama.cpp", "c"),
                "gemma3": ("c", "llama.cpp", "ort-genai")}
#: Arms that load the whole float model in memory: not run on a large preset.
FLOAT_ARMS = ("ort-fp32", "ort-q4", "llvm")
REFERENCE = "ort-fp32"
#: Arms the ratios are taken against, per model: (arm, weights).
BASELINES = {"generated": (("ort-fp32", "fp32"),),
             "large": (("llama.cpp", "GGUF Q4_0"),),
             "gemma3": (("llama.cpp", "GGUF Q4_0"), ("ort-genai", "int4"))}
#: llama.cpp file types accepted by --gguf-types (llama_cpp.LLAMA_FTYPE_MOSTLY_<NAME>).
GGUF_FILE_TYPES = gemma3.LLAMA_FTYPES
#: Relative L2 error below which llama.cpp's F32 logits count as the same model's.
LOGITS_TOLERANCE = 1e-4
ORT_ACCURACY_LEVEL = 4
PROMPT_SEED = 0
WARMUP_TOKENS = 4

log = gemma3.log


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

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.weights


@dataclass
class Row:
    arm: str
    weights: str
    threads: int
    prompt_len: int
    weight_mib: float
    prefill_ms: float
    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    agree: int
    ids: list[int] = field(repr=False)
    prefill_ms_rounds: list[float] = field(repr=False, default_factory=list)
    decode_tokens_per_second_rounds: list[float] = field(repr=False, default_factory=list)


# ---------------------------------------------------------------------------------------------
# ONNX-style models (onnxruntime, sail llvm): a Python loop feeding present -> past.

@dataclass(frozen=True)
class KVLayout:
    """How a decoder's KV cache is fed: past input and present output names (same order), the
    (kv heads, head dim) of each, and whether the model takes ``position_ids``."""

    past: tuple[str, ...]
    present: tuple[str, ...]
    heads_dim: tuple[int, int]
    positions: bool

    @classmethod
    def of_config(cls, cfg: DecoderConfig) -> KVLayout:
        names = [f"{i}.{kind}" for i in range(cfg.num_layers) for kind in ("key", "value")]
        return cls(tuple(f"past_key_values.{n}" for n in names),
                   tuple(f"present.{n}" for n in names), (cfg.num_kv_heads, cfg.head_dim), False)

    @classmethod
    def of_session(cls, sess: ort.InferenceSession) -> KVLayout:
        past = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
        shape = past[0].shape
        return cls(tuple(i.name for i in past),
                   tuple(i.name.replace("past_key_values.", "present.") for i in past),
                   (int(shape[1]), int(shape[3])),
                   any(i.name == "position_ids" for i in sess.get_inputs()))

    def empty(self) -> dict[str, np.ndarray]:
        shape = (1, self.heads_dim[0], 0, self.heads_dim[1])
        return {name: np.zeros(shape, np.float32) for name in self.past}


RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _forward(run: RunFn, ids: list[int], past: dict[str, np.ndarray], layout: KVLayout
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits [seq, V] of ``ids`` after ``past``, and the next past."""
    past_len = next(iter(past.values())).shape[2]
    total = past_len + len(ids)
    feed = {"input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, total), np.int64), **past}
    if layout.positions:
        feed["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None]
    out = run(feed)
    new_past = {p: out[q] for p, q in zip(layout.past, layout.present, strict=True)}
    return out["logits"][0], new_past


def onnx_generate(run: RunFn, layout: KVLayout, prompt: list[int], n: int) -> Generation:
    started = time.perf_counter()
    logits, past = _forward(run, prompt, layout.empty(), layout)
    ids = [int(np.argmax(logits[-1]))]
    prefilled = time.perf_counter()
    for _ in range(n - 1):
        logits, past = _forward(run, ids[-1:], past, layout)
        ids.append(int(np.argmax(logits[-1])))
    return Generation(ids, prefilled - started, time.perf_counter() - prefilled, n - 1)


class OrtModel:
    """An onnxruntime session per thread count, run as ``dict -> dict``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sessions: dict[int, ort.InferenceSession] = {}

    def _session(self, threads: int) -> ort.InferenceSession:
        if threads not in self._sessions:
            self._sessions[threads] = session(str(self.path), threads)
        return self._sessions[threads]

    def run_fn(self, threads: int) -> RunFn:
        sess = self._session(threads)
        names = [o.name for o in sess.get_outputs()]
        return lambda feed: dict(zip(names, sess.run(None, feed), strict=True))

    def layout(self, threads: int) -> KVLayout:
        return KVLayout.of_session(self._session(threads))


# ---------------------------------------------------------------------------------------------
# llama.cpp

class LlamaCppModel:
    """One llama.cpp context on a GGUF file; ``load_log`` is what llama.cpp printed loading it.
    The context holds ``n_ctx`` tokens and its batch takes them all at once."""

    def __init__(self, path: Path, n_ctx: int, *, f32_kv: bool = False,
                 logits_all: bool = False) -> None:
        llama_cpp = gemma3.llama_cpp_module()
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


# ---------------------------------------------------------------------------------------------
# onnxruntime-genai

class GenaiModel:
    """onnxruntime-genai on one of its model directories, one ``og.Model`` per thread count.
    The loop appends tokens and takes the arg-max of ``get_logits`` itself (greedy, no
    end-of-text stop), like the other arms."""

    def __init__(self, path: Path, max_length: int) -> None:
        import onnxruntime_genai as og

        # its KV buffer (shared by past and present) must hold a sliding window at least
        config = json.loads((path / "genai_config.json").read_text())
        window = (config["model"]["decoder"].get("sliding_window") or {}).get("window_size", 0)
        self.og, self.path, self.max_length = og, path, max(max_length, window)
        self._models: dict[int, object] = {}

    def _model(self, threads: int):  # type: ignore[no-untyped-def]
        if threads not in self._models:
            self._models[threads] = self.og.Model(str(gemma3.genai_threads_dir(self.path,
                                                                               threads)))
        return self._models[threads]

    def generate(self, prompt: list[int], n: int, threads: int) -> Generation:
        model = self._model(threads)
        params = self.og.GeneratorParams(model)
        params.set_search_options(max_length=self.max_length, do_sample=False)
        generator = self.og.Generator(model, params)
        started = time.perf_counter()
        generator.append_tokens(np.array([prompt], np.int32))
        ids = [int(np.argmax(generator.get_logits()[0, -1]))]
        prefilled = time.perf_counter()
        for _ in range(n - 1):
            generator.append_tokens(np.array([ids[-1:]], np.int32))
            ids.append(int(np.argmax(generator.get_logits()[0, -1])))
        return Generation(ids, prefilled - started, time.perf_counter() - prefilled, n - 1)


# ---------------------------------------------------------------------------------------------
# sail

def _sail(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """Run the ``sail`` command of this Python; uncaptured output goes to stderr (progress)."""
    streams = {"capture_output": True} if capture else {"stdout": sys.stderr}
    return subprocess.run([sys.executable, "-m", "sail_compiler", *args], check=False,
                          text=True, **streams)


def c_generate(artifact: Path, kv_f16: bool = False
               ) -> Callable[[list[int], int, int], Generation]:
    def generate(prompt: list[int], n: int, threads: int) -> Generation:
        proc = _sail("generate", str(artifact), "--prompt-ids", ",".join(map(str, prompt)),
                     "-n", str(n), "--threads", str(threads), "--json",
                     *(["--kv-f16"] if kv_f16 else []), capture=True)
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


def compile_c(model: Path, out: Path, bits: int, sail_args: list[str]) -> float:
    """``sail compile MODEL --target c --bits B *sail_args -o OUT`` and ``sail build OUT``;
    returns the seconds both took (the command, the commit and the seconds are kept in
    ``OUT.command``)."""
    started = time.perf_counter()
    command = ["compile", str(model), "--target", "c", "--bits", str(bits), *sail_args, "-o",
               str(out)]
    log(f"  sail {' '.join(command)} (minutes) ...")
    if out.exists():
        shutil.rmtree(out)
    if _sail(*command).returncode != 0:
        raise RuntimeError(f"sail {' '.join(command)} failed")
    log(f"  building {out} (sail build) ...")
    if _sail("build", str(out)).returncode != 0:
        raise RuntimeError(f"sail build {out} failed")
    seconds = time.perf_counter() - started
    out.with_suffix(".command").write_text(json.dumps(
        {"command": shlex.join(["sail", *command]), "commit": gemma3.repo_commit(),
         "seconds": seconds}))
    log(f"  c w{bits}: {seconds:.0f} s")
    return seconds


def c_built(out: Path, notes: list[str]) -> bool:
    """Whether ``out`` holds a built artifact; a note when it was built by another commit."""
    if not ((out / "manifest.json").exists() and (out / "sail_main").exists()):
        return False
    record = out.with_suffix(".command")
    built = json.loads(record.read_text()).get("commit") if record.exists() \
        and record.read_text().startswith("{") else None
    now = gemma3.repo_commit()
    if built != now:
        notes.append(f"{out.name} was built at commit {built or 'unknown'}, now {now}: "
                     "--rebuild measures the current compiler")
    return True


def profile_generate(artifact: Path, prompt: list[int], threads: int, steps: int = 16) -> str:
    """``sail_generate --profile`` of the benchmark's own prompt: the per-kernel times of its
    prefill, then of ``steps`` decode steps after it (the KV cache in place, as timed)."""
    proc = subprocess.run([str(artifact / "sail_generate"), str(artifact / "weights.bin"),
                           "--prompt-ids", ",".join(map(str, prompt)), "-n", str(steps + 1),
                           "--threads", str(threads), "--profile"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return f"sail_generate --profile failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
    return proc.stderr.strip()


def sail_c_arms(args: argparse.Namespace, model: Path, work: Path,
                prompts: dict[int, list[int]], notes: list[str], extra: dict[str, object],
                sail_args_list: list[str]) -> list[Arm]:
    """sail's C target at each of ``args.bits`` per entry of ``sail_args_list`` (options of
    ``sail compile`` besides ``--target`` and ``--bits``; one that says ``--bits B`` is built
    at B only), built in ``work`` unless there; with ``args.profile``, ``sail_generate
    --profile`` of each prompt goes to ``extra["profiles"]``."""
    arms: list[Arm] = []
    for text in sail_args_list:
        sail_args = shlex.split(text)
        only = None
        if "--bits" in sail_args:  # this arm at its own width only
            at = sail_args.index("--bits")
            if at + 1 >= len(sail_args) or not sail_args[at + 1].isdigit():
                raise SystemExit(f"--sail-args {text!r}: --bits needs a width")
            only = int(sail_args[at + 1])
            del sail_args[at:at + 2]
        tag = hashlib.sha1(" ".join(sail_args).encode()).hexdigest()[:8]
        for bits in [only] if only else args.bits:
            out = work / f"c_w{bits}_{tag}"
            if args.rebuild or not c_built(out, notes):
                try:
                    compile_c(model, out, bits, sail_args)
                except RuntimeError as err:
                    notes.append(f"sail c w{bits} skipped: {err}")
                    log("NOTE: " + notes[-1])
                    continue
            label = f"w{bits} {' '.join(sail_args)}".strip()
            for kv_f16 in [False, True] if args.kv == "both" else [args.kv == "f16"]:
                arms.append(Arm("sail c", label + (" [kv f16]" if kv_f16 else ""),
                                _file_bytes(out / "weights.bin"), c_generate(out, kv_f16)))
            if args.profile:
                extra.setdefault("profiles", {})[label] = {
                    len(prompt): profile_generate(out, prompt, 1) for prompt in prompts.values()}
    return arms


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
              ) -> dict[tuple[str, str], list[Generation]]:
    """Every round of every arm, arms interleaved within a round (after one warm-up each)."""
    for arm in arms:
        arm.generate(prompt, WARMUP_TOKENS, threads)
    runs: dict[tuple[str, str], list[Generation]] = {a.key: [] for a in arms}
    for r in range(rounds):
        for arm in arms:
            g = arm.generate(prompt, n, threads)
            log(f"  round {r + 1}/{rounds}, prompt {len(prompt)}, {threads} thread(s), "
                f"{arm.name} [{arm.weights}]: prefill {g.prefill_seconds * 1e3:.1f} ms, decode "
                f"{g.decode_tokens_per_second:.1f} tok/s")
            runs[arm.key].append(g)
    return runs


def make_row(arm: Arm, runs: list[Generation], threads: int, prompt_len: int,
             reference: list[int] | None, agree_ids: int) -> Row:
    """The median round's prefill and decode (separately), ids of the last round."""
    prefill = statistics.median(g.prefill_seconds for g in runs)
    decode = statistics.median(g.decode_tokens_per_second for g in runs)
    ids = runs[-1].ids
    agree = agreement(ids[:agree_ids], reference) if reference is not None else -1
    return Row(arm.name, arm.weights, threads, prompt_len, arm.weight_bytes / 2**20,
               prefill * 1e3, prompt_len / prefill if prefill > 0 else 0.0, decode, agree, ids,
               [g.prefill_seconds * 1e3 for g in runs],
               [g.decode_tokens_per_second for g in runs])


def markdown_table(rows: list[Row], baselines: tuple[tuple[str, str], ...], agree_ids: int,
                   reference: str = "fp32") -> str:
    """One line per arm, prompt length and thread count; ``x NAME``: the arm's speed over the
    baseline's in the same run (higher is faster); ``ids = REFERENCE``: leading greedy ids equal
    to the reference arm's."""
    names = [w.removeprefix("GGUF ") if a == "llama.cpp" else a.removeprefix("ort-")
             + ("" if w in a else " " + w) for a, w in baselines]
    head = ["arm", "weights", "prompt", "threads", "weights MiB", "prefill tok/s",
            *[f"x {b}" for b in names], "decode tok/s", *[f"x {b}" for b in names],
            f"ids = {reference} (of {agree_ids})"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        base = [next((b for b in rows if (b.arm, b.weights) == key and b.threads == r.threads
                      and b.prompt_len == r.prompt_len), None) for key in baselines]
        pre = [f"{r.prefill_tokens_per_second / b.prefill_tokens_per_second:.2f}" if b else "-"
               for b in base]
        dec = [f"{r.decode_tokens_per_second / b.decode_tokens_per_second:.2f}" if b else "-"
               for b in base]
        lines.append(f"| {r.arm} | {r.weights} | {r.prompt_len} | {r.threads} | "
                     f"{r.weight_mib:.0f} | {r.prefill_tokens_per_second:.1f} | "
                     + " | ".join(pre) + f" | {r.decode_tokens_per_second:.1f} | "
                     + " | ".join(dec) + f" | {r.agree if r.agree >= 0 else '-'} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Bars of decode tokens/s per arm, one group per (prompt length, threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.prompt_len, r.threads) for r in rows})
    arms = list(dict.fromkeys(f"{r.arm} {r.weights}" for r in rows))
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * len(arms) / 3), 4.5))
    for i, arm in enumerate(arms):
        values = [next((r.decode_tokens_per_second for r in rows if f"{r.arm} {r.weights}" == arm
                        and (r.prompt_len, r.threads) == g), 0.0) for g in groups]
        bars = ax.bar([x + i * width for x in range(len(groups))], values, width, label=arm)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([x + width * (len(arms) - 1) / 2 for x in range(len(groups))],
                  [f"prompt {p}\n{t} thread{'s' if t > 1 else ''}" for p, t in groups])
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line

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
    parser.add_argument("--model", choices=MODELS, default="generated",
                        help="generated: the example decoder (--preset); gemma3: Gemma 3 270M "
                             "from --model-dir")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="135m")
    parser.add_argument("--model-dir", type=Path, default=gemma3.DEFAULT_DIR,
                        help=f"gemma3: the build.sh output (default {gemma3.DEFAULT_DIR})")
    parser.add_argument("--bits", type=_ints,
                        help="widths of the sail arms (default 2,3,4,8; gemma3: 4,8)")
    parser.add_argument("--group-size", type=int,
                        help="generated: group size of sail's and onnxruntime's weights "
                             "(default 128)")
    parser.add_argument("--sail-args", action="append",
                        help="options of sail compile besides --target and --bits (default "
                             "gemma3: '--group-size 32 --sym'; generated: '--group-size G' of "
                             "--group-size); repeat for more sail arms in the same run; one "
                             "that says --bits B is built at B only")
    parser.add_argument("--gguf-types", type=_names(GGUF_FILE_TYPES),
                        help="llama.cpp file types to quantize to (default Q4_0,Q8_0; the 7b "
                             "and 13b presets: Q4_0, written by gguf_export)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--prompt-lens", type=_ints,
                        help="prompt lengths (default 16; gemma3: 32,1024)")
    parser.add_argument("--prompt-text", type=Path, default=gemma3.EVAL_TEXT,
                        help=f"gemma3: the text the prompt is cut from (default "
                             f"{gemma3.EVAL_TEXT})")
    parser.add_argument("--threads", type=_ints, default=[1], help="e.g. 1,2 (default 1)")
    parser.add_argument("--arms", type=_names(ARMS),
                        help=f"of {', '.join(ARMS)} (default generated: "
                             f"{','.join(DEFAULT_ARMS['generated'])}; gemma3: "
                             f"{','.join(DEFAULT_ARMS['gemma3'])})")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds; the median counts (default 3)")
    parser.add_argument("--agree-ids", type=int, default=8,
                        help="leading greedy ids compared with onnxruntime fp32's (default 8)")
    parser.add_argument("--workdir", type=Path,
                        help="keep built models here and reuse them (default: a temporary dir)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild models in --workdir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, help="write a bar chart of decode tokens/s here "
                        "(default: decode_<model>.png in --workdir, if given)")
    parser.add_argument("--kv", choices=("f32", "f16", "both"), default="f32",
                        help="the sail c arms' KV cache: float32 (default), float16 (sail "
                             "generate --kv-f16; llama.cpp's default cache type, which its arms "
                             "use) or an arm of each")
    parser.add_argument("--profile", action="store_true",
                        help="sail_generate --profile of each prompt per sail arm "
                             "(1 thread; the prefill's kernels, then 16 decode steps')")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    large = args.model == "generated" and is_large(PRESETS[args.preset])
    args.arms = args.arms or list(DEFAULT_ARMS["large" if large else args.model])
    args.gguf_types = args.gguf_types or (["Q4_0"] if large else ["Q4_0", "Q8_0"])
    if large:
        refused = [a for a in args.arms if a in FLOAT_ARMS]
        if refused:
            raise SystemExit(f"--preset {args.preset}: arms {', '.join(refused)} load the whole "
                             f"float model ({4 * PRESETS[args.preset].num_params() / 1e9:.0f} GB); "
                             f"choose from {', '.join(DEFAULT_ARMS['large'])}")
        unwritable = [t for t in args.gguf_types if t not in TENSOR_TYPES]
        if unwritable:
            raise SystemExit(f"--preset {args.preset}: GGUFs are written by gguf_export, which "
                             f"writes {', '.join(TENSOR_TYPES)}, not {', '.join(unwritable)}")
    if args.model == "gemma3":
        args.bits = args.bits or [4, 8]
        args.prompt_lens = args.prompt_lens or [32, 1024]
    else:
        args.bits = args.bits or [2, 3, 4, 8]
        args.prompt_lens = args.prompt_lens or [16]
        args.group_size = args.group_size or 128
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work = root / (args.preset if args.model == "generated" else args.model)
        work.mkdir(parents=True, exist_ok=True)
        if args.plot is None and args.workdir is not None:
            args.plot = work / f"decode_{args.model}.png"
        busy = busy_seconds()
        if args.model == "gemma3":
            result = run_gemma3(args, work)
        else:
            result = run_generated(args, PRESETS[args.preset], work)
        result["other_cpu_share"] = other_cpu_share(busy)
        report(args, result)
    return 0


def time_all(args: argparse.Namespace, arms: list[Arm], prompts: dict[int, list[int]],
             references: dict[int, list[int]]) -> list[Row]:
    rows: list[Row] = []
    for prompt_len, prompt in prompts.items():
        for threads in args.threads:
            subjects = [a for a in arms if a.thread_counts is None or threads in a.thread_counts]
            log(f"timing {len(subjects)} arm(s), prompt {prompt_len} ids, {threads} thread(s), "
                f"{args.tokens} tokens, {args.rounds} rounds")
            runs = time_arms(subjects, prompt, args.tokens, threads, args.rounds)
            for arm in subjects:
                rows.append(make_row(arm, runs[arm.key], threads, prompt_len,
                                     references.get(prompt_len), args.agree_ids))
    return rows


# ---------------------------------------------------------------------------------------------
# The generated example decoder

def _file_bytes(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def is_large(cfg: DecoderConfig) -> bool:
    """Whether the preset's float32 weights pass ``IN_MEMORY_LIMIT_BYTES`` (the 7B and 13B
    presets): it is written one tensor at a time, no arm loads the float model
    (:data:`FLOAT_ARMS`) and llama.cpp's GGUFs are written straight from the ONNX weights."""
    return 4 * cfg.num_params() > IN_MEMORY_LIMIT_BYTES


def prepare_float(cfg: DecoderConfig, work: Path) -> Path:
    path = work / "decoder_kv.onnx"
    if not path.exists():
        log(f"  writing {path} ...")
        if is_large(cfg):
            write_decoder(cfg, path, kv_cache=True, seed=0)
        else:
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
    if rebuild:
        for path in paths.values():
            path.unlink(missing_ok=True)
    if not paths["F32"].exists():
        log(f"  writing {paths['F32']} (gguf package) ...")
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(
            str(model)).graph.initializer}
        write_gguf(weights, cfg, paths["F32"])
    for t in file_types:
        gemma3.requantize_gguf(paths["F32"], paths[t], t)
    return paths


def write_ggufs(model: Path, cfg: DecoderConfig, work: Path, file_types: list[str],
                rebuild: bool) -> dict[str, Path]:
    """GGUFs of each of ``file_types`` written by :mod:`gguf_export` straight from the model's
    external data, one tensor at a time (a large preset: no F32 file, no copy of the floats)."""
    paths = {t: work / "gguf" / f"{t.lower()}_gguf_export.gguf" for t in file_types}
    for t, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not rebuild:
            continue
        log(f"  writing {path} (gguf package, {t}) ...")
        partial = path.with_suffix(".partial")
        write_gguf(ExternalWeights(model), cfg, partial, t)
        partial.rename(path)
    return paths


def run_generated(args: argparse.Namespace, cfg: DecoderConfig, work: Path) -> dict:
    n = args.tokens
    if max(args.prompt_lens) + n > cfg.max_positions:
        raise SystemExit(f"prompt {max(args.prompt_lens)} + {n} tokens exceed the model's "
                         f"{cfg.max_positions} positions")
    rng = np.random.default_rng(PROMPT_SEED)
    prompts = {p: [int(i) for i in rng.integers(3, cfg.vocab_size, p)] for p in args.prompt_lens}
    notes: list[str] = []
    large = is_large(cfg)
    log(f"preparing models in {work}")
    model = prepare_float(cfg, work)
    layout = KVLayout.of_config(cfg)
    arms: list[Arm] = []
    if not large:
        fp32 = OrtModel(model)
        arms.append(Arm(REFERENCE, "fp32", _file_bytes(model),
                        lambda p, k, t: onnx_generate(fp32.run_fn(t), layout, p, k)))
    if "ort-q4" in args.arms:
        q4_path = prepare_ort_q4(model, work, args.group_size, args.rebuild)
        q4 = OrtModel(q4_path)
        arms.append(Arm("ort-q4", f"MatMulNBits w4g{args.group_size} acc4", _file_bytes(q4_path),
                        lambda p, k, t: onnx_generate(q4.run_fn(t), layout, p, k)))
    checks: dict[str, object] = {}
    gguf_types: dict[str, dict[str, str]] = {}
    if "llama.cpp" in args.arms:
        llama_cpp = gemma3.llama_cpp_module()
        if llama_cpp is None:
            notes.append("llama.cpp arm skipped: llama_cpp is not importable (pip install "
                         "llama-cpp-python)")
        else:
            n_ctx = max(args.prompt_lens) + n
            if large:
                ggufs = write_ggufs(model, cfg, work, args.gguf_types, args.rebuild)
                notes.append("llama.cpp's GGUFs written straight from the ONNX weights by "
                             f"gguf_export ({', '.join(args.gguf_types)} linear weights, "
                             "float32 embedding and norms; no F32 file, no logits check)")
            else:
                ggufs = prepare_ggufs(model, cfg, work, args.gguf_types, args.rebuild)
                first = prompts[args.prompt_lens[0]]
                checks["llama.cpp F32 logits"] = check_f32_logits(ggufs["F32"], fp32, layout,
                                                                  first, n_ctx, args.threads[0])
            for name, path in ggufs.items():
                llm = LlamaCppModel(path, n_ctx)
                gguf_types[name] = {"file": type_summary(tensor_types(path)),
                                    "load_log": load_log_types(llm.load_log)}
                arms.append(Arm("llama.cpp", f"GGUF {name}", _file_bytes(path), llm.generate))
            notes.append(f"llama.cpp {llama_cpp.__version__}: f16 KV cache (its default) in "
                         "the timed arms" + ("" if large else
                                             "; float32 KV cache in the F32 logits check"))
    extra: dict[str, object] = {}
    if "c" in args.arms:
        arms += sail_c_arms(args, model, work, prompts, notes, extra,
                            args.sail_args or [f"--group-size {args.group_size}"])
    if "llvm" in args.arms:
        arms += llvm_arms(model, work, args, layout, notes)
    # onnxruntime fp32 (timed with the others) or, on a large preset, llama.cpp's first GGUF:
    # its ids are the reference of every arm
    reference = next((a for a in arms if a.name == (
        "llama.cpp" if large else REFERENCE)), None)
    references = {}
    for p, prompt in prompts.items():
        if reference is not None:
            references[p] = reference.generate(prompt, args.agree_ids, args.threads[0]).ids
    rows = time_all(args, arms, prompts, references)
    return {"model": f"generated {args.preset}", "params": cfg.num_params(),
            "prompt_ids": prompts, "rows": rows, "reference_ids": references, "checks": checks,
            "gguf_types": gguf_types, "notes": notes, **extra,
            "reference": "fp32" if not large else
            reference.weights.removeprefix("GGUF ") if reference else "-",
            "baselines": BASELINES["large" if large else "generated"],
            "title": f"example decoder '{args.preset}' ({cfg.num_params() / 1e6:.1f}M "
                     f"parameters), random prompt ids"}


def check_f32_logits(path: Path, fp32: OrtModel, layout: KVLayout, prompt: list[int],
                     n_ctx: int, threads: int) -> dict[str, object]:
    """llama.cpp on the F32 GGUF (float32 KV cache) against onnxruntime fp32, every position."""
    llm = LlamaCppModel(path, n_ctx, f32_kv=True, logits_all=True)
    theirs = llm.prompt_logits(prompt, threads)
    ours, _ = _forward(fp32.run_fn(threads), prompt, layout.empty(), layout)
    rel = float(np.linalg.norm(theirs - ours) / np.linalg.norm(ours))
    same_argmax = int((theirs.argmax(-1) == ours.argmax(-1)).sum())
    ok = rel <= LOGITS_TOLERANCE
    log(f"check: llama.cpp F32 GGUF logits vs onnxruntime fp32: rel L2 {rel:.2e}, argmax equal "
        f"at {same_argmax}/{len(prompt)} positions -> {'PASS' if ok else 'FAIL'}")
    return {"rel_l2": rel, "max_abs": float(np.abs(theirs - ours).max()),
            "argmax_equal": same_argmax, "positions": len(prompt), "tolerance": LOGITS_TOLERANCE,
            "ok": ok}


def llvm_arms(model: Path, work: Path, args: argparse.Namespace, layout: KVLayout,
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
                        lambda p, k, t, a=artifact: onnx_generate(a.run, layout, p, k),
                        thread_counts=(threads,)))
    return arms


# ---------------------------------------------------------------------------------------------
# Gemma 3 270M

def gemma3_reference(model: Path, prompts: dict[int, list[int]], n: int, threads: int,
                     work: Path) -> dict[int, list[int]]:
    """onnxruntime fp32's greedy ids (the first ``n``) per prompt, cached in ``work``."""
    references: dict[int, list[int]] = {}
    fp32 = None
    for p, prompt in prompts.items():
        digest = hashlib.sha1(json.dumps(prompt).encode()).hexdigest()[:12]
        path = work / f"reference_fp32_{p}_{digest}.json"
        if path.exists() and len(json.loads(path.read_text())) >= n:
            references[p] = json.loads(path.read_text())[:n]
            continue
        log(f"  onnxruntime fp32 greedy reference, prompt {p} ...")
        fp32 = fp32 or OrtModel(model)
        references[p] = onnx_generate(fp32.run_fn(threads), fp32.layout(threads), prompt, n).ids
        path.write_text(json.dumps(references[p]))
    return references


def run_gemma3(args: argparse.Namespace, work: Path) -> dict:
    files = gemma3.require(args.model_dir, gemma3.KV_MODEL, gemma3.TOKENIZER)
    model, n = files[gemma3.KV_MODEL], args.tokens
    longest = max(args.prompt_lens)
    ids = gemma3.text_ids(files[gemma3.TOKENIZER], args.prompt_text, None, longest)
    prompts = {p: ids[:p] for p in args.prompt_lens}
    notes: list[str] = [f"prompt: the first ids of {args.prompt_text} (<bos> first)"]
    log(f"preparing models in {work}")
    if args.rebuild:
        for stale in ("gguf", "genai_int4_cpu", "hf"):
            shutil.rmtree(work / stale, ignore_errors=True)
    references = gemma3_reference(model, prompts, max(args.agree_ids, 1), args.threads[0], work)
    arms: list[Arm] = []
    extra: dict[str, object] = {}
    if "ort-fp32" in args.arms:
        fp32 = OrtModel(model)
        arms.append(Arm(REFERENCE, "fp32", _file_bytes(model),
                        lambda p, k, t: onnx_generate(fp32.run_fn(t), fp32.layout(t), p, k)))
    if "llama.cpp" in args.arms:
        llama_cpp = gemma3.llama_cpp_module()
        if llama_cpp is None:
            notes.append("llama.cpp arm skipped: llama_cpp is not importable (pip install "
                         "llama-cpp-python)")
        else:
            gguf_types = {}
            for t in args.gguf_types:
                path = gemma3.llama_gguf(args.model_dir, work, t)
                llm = LlamaCppModel(path, longest + n)
                gguf_types[t] = {"file": type_summary(tensor_types(path)),
                                 "load_log": load_log_types(llm.load_log)}
                arms.append(Arm("llama.cpp", f"GGUF {t}", _file_bytes(path), llm.generate))
            extra["gguf_types"] = gguf_types
            notes.append(f"llama.cpp {llama_cpp.__version__} (llama-cpp-python): the shipped "
                         "Q4_K_M re-quantized with allow_requantize; f16 KV cache (its default); "
                         f"context {longest + n}, batch = context")
    if "ort-genai" in args.arms:
        try:
            import onnxruntime_genai as og
            genai_dir = gemma3.genai_model(args.model_dir, work)
        except (ImportError, RuntimeError) as err:
            notes.append(f"ort-genai arm skipped: {str(err).strip()[-600:]}")
            log("NOTE: " + notes[-1])
        else:
            genai = GenaiModel(genai_dir, longest + n)
            summary = gemma3.matmulnbits_summary(genai_dir)
            extra["genai_model"] = {"dir": str(genai_dir), "matmuls": summary}
            arms.append(Arm("ort-genai", "int4", _file_bytes(*genai_dir.iterdir()),
                            genai.generate))
            notes.append(f"onnxruntime-genai {og.__version__}: builder -p int4 -e cpu of the "
                         f"same checkpoint ({summary}); its own KV cache")
    if "c" in args.arms:
        arms += sail_c_arms(args, model, work, prompts, notes, extra,
                            args.sail_args or ["--group-size 32 --sym"])
    rows = time_all(args, arms, prompts, references)
    return {"model": "gemma3 270m", "model_dir": str(args.model_dir), "prompt_ids": prompts,
            "rows": rows, "reference_ids": references, "notes": notes,
            "baselines": BASELINES["gemma3"], **extra,
            "title": "Gemma 3 270M (real weights), prompt from "
                     f"{args.prompt_text.name}"}


# ---------------------------------------------------------------------------------------------
# Report

def report(args: argparse.Namespace, result: dict) -> None:
    rows: list[Row] = result.pop("rows")
    baselines = result.pop("baselines")
    title = result.pop("title")
    other = result["other_cpu_share"]
    if args.plot is not None and rows:
        plot(rows, args.plot, f"{title}\n{args.tokens} greedy tokens, median of {args.rounds} "
             f"rounds; other processes' CPU load {other:.0%}")
        log(f"plot: {args.plot}")
    if args.json:
        print(json.dumps({**result, "tokens": args.tokens, "threads": args.threads,
                          "rounds": args.rounds, "onnxruntime": ort.__version__,
                          "baselines": baselines, "rows": [asdict(r) for r in rows],
                          "plot": str(args.plot) if args.plot else None}))
        return
    print(f"\n{title}, {args.tokens} greedy tokens, onnxruntime {ort.__version__}; median of "
          f"{args.rounds} interleaved rounds; x NAME = the arm's speed over NAME's in this run "
          "(higher is faster)\n")
    print(markdown_table(rows, baselines, args.agree_ids, result.get("reference", "fp32")))
    for name, t in result.get("gguf_types", {}).items():
        print(f"\nllama.cpp {name}: file {t['file']}\n  load log: {t['load_log']}")
    for name, check in result.get("checks", {}).items():
        print(f"\ncheck {name}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float)
                                               else f"{k} {v}" for k, v in check.items()))
    for label, profiles in result.get("profiles", {}).items():
        for prompt_len, text in profiles.items():
            print(f"\nsail c {label}: sail_generate --profile, prompt {prompt_len}, 1 thread "
                  f"(the prefill, then 16 decode steps):\n{text}")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"other processes used {other:.0%} of one CPU during the run (this machine has "
          f"{os.cpu_count()}; much above 0% and the times are not clean)")


if __name__ == "__main__":
    sys.exit(main())
