"""Gemma 3 270M for the benchmarks: its files, its evaluation ids and its peers' builds.

``bash ../shared/models/gemma3_270m/build.sh`` writes the model directory (default
``~/.cache/sail-models/gemma3_270m``, see :data:`DEFAULT_DIR`): ``gemma3_270m_kv.onnx`` (KV
cache), ``gemma3_270m.onnx`` (no cache), ``tokenizer.json`` (adds ``<bos>``), the shipped
``gemma-3-270m-q4_k_m.gguf`` and ``venv`` (torch and transformers, used here only to write a
Hugging Face directory for onnxruntime-genai's builder). This module prepares, in a work
directory and once (later runs reuse the files):

* llama.cpp files: the shipped GGUF re-quantized by llama.cpp's own ``llama_model_quantize`` with
  ``allow_requantize`` (:func:`requantize_gguf`);
* onnxruntime-genai's int4 CPU model of the same checkpoint (:func:`genai_model`): export.py's
  ``build_model`` (the GGUF dequantized to float32 by transformers) saved with
  ``save_pretrained``; ``rope_parameters``, which transformers 5 nests per layer type, flattened
  into ``rope_theta`` / ``rope_local_base_freq`` for the builder (in config.json and in the
  config transformers reads from it, which it nests again); then onnxruntime_genai's builder
  ``-p int4 -e cpu`` (float32 I/O, 4-bit MatMulNBits).

Evaluation ids follow the protocol of the project's quality measurements: the first 6000
characters of ``/usr/share/common-licenses/GPL-3``, tokenized with ``<bos>`` first (the
tokenizer adds it), the first 1024 ids (:func:`protocol_ids`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from make_genai_fixtures import GENAI_BUILDER  # noqa: E402

DEFAULT_DIR = Path(os.environ.get("SAIL_MODELS", Path.home() / ".cache" / "sail-models")) \
    / "gemma3_270m"
KV_MODEL = "gemma3_270m_kv.onnx"
NO_CACHE_MODEL = "gemma3_270m.onnx"
TOKENIZER = "tokenizer.json"
SHIPPED_GGUF = "gemma-3-270m-q4_k_m.gguf"
BUILD_HINT = "bash ../shared/models/gemma3_270m/build.sh (from the repository root's parent)"
#: Where export.py lives (it builds the torch model from the GGUF); SAIL_GEMMA3_EXPORT overrides.
EXPORT_SCRIPT = Path(os.environ.get(
    "SAIL_GEMMA3_EXPORT",
    Path(__file__).resolve().parents[2] / "shared" / "models" / "gemma3_270m" / "export.py"))

EVAL_TEXT = Path("/usr/share/common-licenses/GPL-3")
EVAL_CHARS = 6000
EVAL_TOKENS = 1024
#: A text that is not the evaluation text, to calibrate on.
CALIB_TEXT = Path("/usr/share/common-licenses/Apache-2.0")
#: More calibration text (91 KB, about 20k Gemma tokens): the licenses in /usr/share/common-licenses
#: that are neither GPL-3 nor of its family (GPL-1/2, LGPL, whose texts share passages with it).
CALIB_LICENSES = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "MPL-1.1", "MPL-2.0")


def calib_corpus(work: Path) -> Path:
    """``CALIB_LICENSES`` concatenated into ``work/calib_licenses.txt`` (what ``--calib-text
    licenses`` of the benchmarks means); never the evaluation text."""
    texts = [(EVAL_TEXT.parent / name).read_text() for name in CALIB_LICENSES]
    path = work / "calib_licenses.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(texts))  # as `cat` joins them
    return path

#: llama.cpp file types by name (llama_cpp.LLAMA_FTYPE_MOSTLY_<NAME>).
LLAMA_FTYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q3_K_M", "Q3_K_S",
                "Q3_K_L", "Q2_K", "Q6_K", "Q5_K_M", "IQ4_NL")


def log(*parts: object) -> None:
    """Progress, on stderr (stdout carries the tables or the JSON)."""
    print(*parts, file=sys.stderr, flush=True)


def repo_commit() -> str:
    """This repository's HEAD (``+dirty`` with uncommitted changes in sail_compiler/): the
    compiler a sail measurement was made with."""
    git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "sail_compiler"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def require(model_dir: Path, *names: str) -> dict[str, Path]:
    """The model's files by name; SystemExit naming the build script when one is missing."""
    paths = {name: model_dir / name for name in names}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: build Gemma 3 270M with {BUILD_HINT}, "
                         "or give --model-dir")
    return paths


def text_ids(tokenizer: Path, text: Path, chars: int | None, n: int) -> list[int]:
    """The first ``n`` ids of the first ``chars`` characters of ``text`` (``<bos>`` first: the
    tokenizer's post-processor adds it)."""
    from tokenizers import Tokenizer

    body = text.read_text(encoding="utf-8")
    ids = Tokenizer.from_file(str(tokenizer)).encode(body if chars is None else body[:chars]).ids
    if len(ids) < n:
        raise SystemExit(f"{text} gives {len(ids)} tokens, fewer than {n}")
    return [int(i) for i in ids[:n]]


def protocol_ids(model_dir: Path) -> np.ndarray:
    """int64 ``[1024]``: the evaluation ids of the quality protocol."""
    tok = require(model_dir, TOKENIZER)[TOKENIZER]
    return np.array(text_ids(tok, EVAL_TEXT, EVAL_CHARS, EVAL_TOKENS), np.int64)


def nll_ppl(logits: np.ndarray, ids: np.ndarray) -> tuple[float, float]:
    """(perplexity, mean NLL) of tokens 1..n-1 from logits ``[n, V]`` (float64 log-softmax)."""
    total = 0.0
    for a in range(0, len(ids) - 1, 128):
        b = min(a + 128, len(ids) - 1)
        z = logits[a:b].astype(np.float64)
        z -= z.max(-1, keepdims=True)
        total += float((np.log(np.exp(z).sum(-1)) - z[np.arange(b - a), ids[a + 1:b + 1]]).sum())
    nll = total / (len(ids) - 1)
    return float(np.exp(nll)), nll


# ---------------------------------------------------------------------------------------------
# llama.cpp

def llama_cpp_module():  # type: ignore[no-untyped-def]
    """llama_cpp, or None when llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


def requantize_gguf(source: Path, target: Path, file_type: str) -> Path:
    """llama.cpp's own quantization of ``source`` to ``file_type`` (``llama_model_quantize``,
    ``allow_requantize``: the source may itself be quantized); reused when ``target`` exists."""
    if target.exists():
        return target
    started = time.perf_counter()
    llama_cpp = llama_cpp_module()
    if llama_cpp is None:
        raise RuntimeError("llama_cpp is not importable (pip install llama-cpp-python)")
    log(f"  quantizing {target.name} (llama_model_quantize {file_type}, allow_requantize) ...")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.nthread = os.cpu_count() or 1
    params.allow_requantize = True
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with contextlib.redirect_stderr(io.StringIO()):
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                            ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {file_type} failed (return code {rc})")
    tmp.replace(target)
    quantize_record(target).write_text(json.dumps(
        {"source": str(source), "file_type": file_type,
         "seconds": time.perf_counter() - started, "threads": params.nthread}))
    return target


def quantize_record(gguf: Path) -> Path:
    """Where :func:`requantize_gguf` notes how long the quantization took."""
    return gguf.with_name(gguf.name + ".quantize.json")


def quantize_seconds(gguf: Path) -> float | None:
    """The seconds llama_model_quantize took to write ``gguf``, if recorded."""
    record = quantize_record(gguf)
    return json.loads(record.read_text())["seconds"] if record.exists() else None


def llama_gguf(model_dir: Path, work: Path, file_type: str) -> Path:
    """The GGUF llama.cpp runs for ``file_type``: the shipped file for Q4_K_M, else a
    re-quantization of it."""
    shipped = require(model_dir, SHIPPED_GGUF)[SHIPPED_GGUF]
    if file_type == "Q4_K_M":
        return shipped
    return requantize_gguf(shipped, work / "gguf" / f"{file_type.lower()}.gguf", file_type)


# ---------------------------------------------------------------------------------------------
# onnxruntime-genai

_SAVE_HF = r"""
import json, sys
export_py, model_dir, out = sys.argv[1:4]
sys.argv = [export_py, "hf", model_dir]          # export.py reads its model directory here
sys.path.insert(0, str(__import__("pathlib").Path(export_py).parent))
import export
model = export.build_model()
model.save_pretrained(out)
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(model_dir, gguf_file=export.GGUF).save_pretrained(out)
"""


def flatten_rope(config: dict) -> dict:
    """A Gemma 3 config with ``rope_parameters`` (per layer type, transformers 5) flattened
    into what onnxruntime-genai's builder reads: ``rope_theta`` (full attention),
    ``rope_local_base_freq`` (sliding attention) and ``rope_scaling`` (None for the default
    rope)."""
    params = config.get("rope_parameters")
    if not params:
        return config
    config = dict(config)
    full = params.get("full_attention", params)
    local = params.get("sliding_attention", full)
    config["rope_theta"] = full["rope_theta"]
    config["rope_local_base_freq"] = local["rope_theta"]
    kind = full.get("rope_type", "default")
    config["rope_scaling"] = None if kind == "default" else \
        {k: v for k, v in full.items() if k != "rope_theta"}
    return config


def hf_directory(model_dir: Path, work: Path) -> Path:
    """A Hugging Face directory of the same weights (export.py's ``build_model``), written once
    by the model's own venv (torch, transformers)."""
    out = work / "hf"
    if (out / "config.json").exists():
        return out
    python = model_dir / "venv" / "bin" / "python"
    if not python.exists() or not EXPORT_SCRIPT.exists():
        raise RuntimeError(f"need {python} and {EXPORT_SCRIPT} ({BUILD_HINT})")
    log(f"  writing the Hugging Face directory {out} (export.py build_model, save_pretrained) ...")
    tmp = work / "hf.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run([str(python), "-c", _SAVE_HF, str(EXPORT_SCRIPT), str(model_dir),
                           str(tmp)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"save_pretrained failed: {proc.stderr.strip()[-1500:]}")
    path = tmp / "config.json"
    path.write_text(json.dumps(flatten_rope(json.loads(path.read_text())), indent=1))
    tmp.replace(out)
    return out


def genai_model(model_dir: Path, work: Path, precision: str = "int4") -> Path:
    """onnxruntime-genai's own CPU build (``-p precision -e cpu``: MatMulNBits, block 32,
    symmetric, accuracy level 4 by the builder's defaults) of the checkpoint, cached in
    ``work``. The builder needs torch: it runs in the model's venv, with this Python's
    onnxruntime_genai put on its path when the venv has none."""
    import onnxruntime_genai

    out = work / f"genai_{precision}_cpu"
    if (out / "genai_config.json").exists():
        return out
    hf = hf_directory(model_dir, work)
    python = model_dir / "venv" / "bin" / "python"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if subprocess.run([str(python), "-c", "import onnxruntime_genai"],
                      capture_output=True).returncode != 0:
        shim = work / "genai_shim"
        shim.mkdir(parents=True, exist_ok=True)
        link = shim / "onnxruntime_genai"
        if not link.exists():
            link.symlink_to(Path(onnxruntime_genai.__file__).parent)
        env["PYTHONPATH"] = str(shim)
    log(f"  building {out} (onnxruntime_genai.models.builder -p {precision} -e cpu) ...")
    tmp = work / f"genai_{precision}_cpu.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    command = [str(python), "-c", GENAI_BUILDER, "-i", str(hf), "-o", str(tmp), "-p", precision,
               "-e", "cpu", "-c", str(work / "genai_cache")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (tmp / "genai_config.json").exists():
        raise RuntimeError(f"onnxruntime-genai builder failed: "
                           f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
    (tmp / "builder.log").write_text(proc.stdout + proc.stderr)
    tmp.replace(out)
    shutil.rmtree(work / "genai_cache", ignore_errors=True)
    return out


def genai_threads_dir(model: Path, threads: int) -> Path:
    """A view of a genai model directory whose genai_config.json sets ``threads`` intra-op
    threads (the other files are symlinks)."""
    out = model.parent / f"{model.name}_t{threads}"
    out.mkdir(exist_ok=True)
    for f in model.iterdir():
        if f.name != "genai_config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    config = json.loads((model / "genai_config.json").read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    (out / "genai_config.json").write_text(json.dumps(config, indent=1))
    return out


def matmulnbits_summary(model: Path) -> str:
    """The MatMulNBits nodes of an onnxruntime-genai model: bits, block sizes, accuracy
    levels."""
    import onnx

    path = next(model.glob("*.onnx"))
    graph = onnx.load(str(path), load_external_data=False).graph
    seen: dict[tuple, int] = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            key = (attrs.get("bits", 4), attrs.get("block_size"), attrs.get("accuracy_level", 0))
            seen[key] = seen.get(key, 0) + 1
    others = sum(n.op_type == "MatMul" for n in graph.node)
    parts = [f"{n} x {b}-bit block {bs} acc{acc}" for (b, bs, acc), n in sorted(seen.items())]
    return "MatMulNBits " + ", ".join(parts) + f"; {others} float MatMul"
