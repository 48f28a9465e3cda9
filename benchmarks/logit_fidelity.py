"""How close a quantized Gemma 3 build's logits stay to float: KL divergence and top-1 agreement
against onnxruntime fp32, sail's C target beside llama.cpp, the way ``llama-perplexity
--kl-divergence`` reports it.

Perplexity averages the error away: two 8-bit builds with the same perplexity can differ 3x in
how far their next-token distributions move from float's, and that distance decides whether
greedy decoding follows float's choices. For each arm this prints, over the quality protocol's
1024 ids (:func:`gemma3.protocol_ids`, one window, every position predicted):

* ``KLD``: mean and 99th percentile of ``KL(p_fp32 || p_arm)`` per position (nats);
* ``top-1``: the share of positions whose arg-max equals fp32's;
* ``RMS dlogit``: the root-mean-square logit difference per position, averaged;
* ``gap err``: median |change of fp32's top-2 logit gap| (a greedy choice flips when it exceeds
  the gap).

Then greedy agreement over ``--prompts`` 32-token prompts (prompt i: ``<bos>`` and 31 ids of
the evaluation text from id ``1 + 31 i``; prompt 0 is the decode benchmark's): fp32's greedy
path is extended by 8 tokens and every arm is run teacher-forced along it, in one forward
pass. It counts the prompts where the arm's arg-max equals fp32's next id at all 8 steps, and
the mean number of leading steps where it does. Until the first difference a greedy loop has
the same contexts, so this stands in for "the first 8 greedy ids equal fp32's" without 8
decode steps per arm. It is not the loop itself: the loop computes each step as a decode step
with a KV cache, whose rounding differs, and int8 activations turn rounding-level differences
into logit changes of the size of a near-tie. One prompt decides such a comparison by the sign
of an error at its closest choice; the count over prompts says how often a build's error does
that, every arm measured the same way.

Last, the near-tie view of prompt 0: fp32's top-2 gap at each of the 8 choices beside the
arm's gap for the same two tokens (negative: the arm prefers fp32's second choice there).

Arms: ``--sail 'ARGS'`` (repeatable) compiles ``gemma3_270m_kv.onnx --target c ARGS --logits
all`` into ``--workdir`` (kept and reused, keyed on ARGS) and runs it through the Python API;
``--gguf-types`` (default Q8_0,Q4_0) are llama.cpp's re-quantizations of the shipped GGUF
(llama-cpp-python, ``logits_all``).

    python benchmarks/logit_fidelity.py --workdir ~/.cache/sail-bench \\
        --sail '--bits 8 --group-size 32 --sym' --sail '--bits 8 --group-size 128 --sym' \\
        [--gguf-types Q8_0,Q4_0] [--prompts 32] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemma3  # noqa: E402

#: Tokens of the near-tie prompt (the decode benchmark's short prompt) and greedy steps after it.
PROMPT_TOKENS = 32
PATH_STEPS = 8

LogitsFn = Callable[[np.ndarray], np.ndarray]  # int64 ids [L] -> float32 logits [L, V]


def _feeds(specs: list[tuple[str, list]], ids: np.ndarray) -> dict[str, np.ndarray]:
    """A no-past forward's inputs: ids, an all-ones mask, positions 0..L-1, empty pasts."""
    feeds = {}
    for name, dims in specs:
        if name == "input_ids":
            feeds[name] = ids[None]
        elif name == "attention_mask":
            feeds[name] = np.ones((1, len(ids)), np.int64)
        elif name == "position_ids":
            feeds[name] = np.arange(len(ids), dtype=np.int64)[None]
        else:  # a past: [batch, heads, 0, head_dim]
            feeds[name] = np.zeros([1, dims[1], 0, dims[3]], np.float32)
    return feeds


def ort_fp32(model: Path, threads: int) -> LogitsFn:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    specs = [(i.name, list(i.shape)) for i in session.get_inputs()]
    return lambda ids: session.run(["logits"], _feeds(specs, ids))[0][0]


def sail_c(artifact: Path, threads: int) -> LogitsFn:
    from sail_compiler.model import Model

    model = Model(artifact, threads=threads)
    specs = [(s.name, list(s.dims)) for s in model.signature.inputs]
    return lambda ids: model(**_feeds(specs, ids))["logits"][0]


def llama(path: Path, threads: int) -> LogitsFn:
    llama_cpp = gemma3.llama_cpp_module()
    if llama_cpp is None:
        raise SystemExit("llama-cpp-python is not installed (pip install -e '.[bench]')")

    def run(ids: np.ndarray) -> np.ndarray:
        n = max(len(ids), 64)
        with contextlib.redirect_stderr(io.StringIO()):
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=n, n_batch=n, n_ubatch=n,
                                  n_threads=threads, n_threads_batch=threads, logits_all=True,
                                  verbose=False)
            llm.eval(ids.tolist())
        out = np.array(llm.scores[:len(ids)], np.float32)
        del llm
        return out
    return run


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def fidelity(ref: np.ndarray, arm: np.ndarray) -> dict[str, float]:
    """KLD / top-1 / RMS / top-2-gap statistics of ``arm`` against ``ref`` (both ``[L, V]``)."""
    kld, rms, gap_err, top1 = [], [], [], 0
    for a in range(0, len(ref), 64):
        r, x = ref[a:a + 64].astype(np.float64), arm[a:a + 64].astype(np.float64)
        lr, lx = _log_softmax(r), _log_softmax(x)
        kld += list((np.exp(lr) * (lr - lx)).sum(-1))
        top1 += int((r.argmax(-1) == x.argmax(-1)).sum())
        rms += list(np.sqrt(((r - x) ** 2).mean(-1)))
        two = np.argsort(r, -1)[:, -2:]
        rows = np.arange(len(r))
        gap_err += list(np.abs((x[rows, two[:, 1]] - x[rows, two[:, 0]])
                               - (r[rows, two[:, 1]] - r[rows, two[:, 0]])))
    return {"kld_mean": float(np.mean(kld)), "kld_p99": float(np.percentile(kld, 99)),
            "top1": top1 / len(ref), "rms_dlogit": float(np.mean(rms)),
            "gap_err_median": float(np.median(gap_err))}


def near_ties(ref: np.ndarray, arm: np.ndarray, first: int) -> list[tuple[float, float]]:
    """(fp32's top-2 gap, the arm's gap between the same two tokens) at rows ``first..``."""
    pairs = []
    for t in range(first, len(ref)):
        second, best = np.argsort(ref[t])[-2:]
        pairs.append((float(ref[t][best] - ref[t][second]),
                      float(arm[t][best] - arm[t][second])))
    return pairs


def prompt_paths(fp32: LogitsFn, ids: np.ndarray, count: int) -> list[np.ndarray]:
    """fp32's greedy paths: prompt i (``<bos>`` and ``ids[1 + 31 i: 32 + 31 i]``) and the
    ``PATH_STEPS`` ids fp32 chooses after it."""
    body = PROMPT_TOKENS - 1
    if count < 1 or 1 + body * count > len(ids):
        raise SystemExit(f"--prompts must be 1..{(len(ids) - 1) // body}, got {count}")
    paths = []
    for i in range(count):
        path = [int(ids[0]), *map(int, ids[1 + body * i: 1 + body * (i + 1)])]
        for _ in range(PATH_STEPS):
            path.append(int(fp32(np.array(path, np.int64))[-1].argmax()))
        paths.append(np.array(path, np.int64))
    return paths


def leading_matches(path: np.ndarray, logits: np.ndarray) -> int:
    """How many of the path's last ``PATH_STEPS`` ids the arm's teacher-forced arg-maxes give
    before the first difference (= its first greedy ids equal to fp32's)."""
    choices = logits[PROMPT_TOKENS - 1: PROMPT_TOKENS - 1 + PATH_STEPS].argmax(-1)
    same = choices == path[PROMPT_TOKENS:]
    return PATH_STEPS if same.all() else int(np.argmin(same))


def sail_artifact(model: Path, work: Path, args: str) -> Path:
    key = hashlib.sha256(args.encode()).hexdigest()[:8]
    out = work / f"fidelity_c_{key}"
    if (out / "manifest.json").exists():
        return out
    command = [sys.executable, "-m", "sail_compiler", "compile", str(model), "--target", "c",
               *shlex.split(args), "--logits", "all", "-o", str(out)]
    gemma3.log(f"  {shlex.join(command[2:])} ...")
    if subprocess.run(command, stdout=sys.stderr, check=False).returncode != 0:
        raise SystemExit(f"sail compile failed for {args!r}")
    (work / f"fidelity_c_{key}.command").write_text(json.dumps(
        {"args": args, "commit": gemma3.repo_commit()}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=gemma3.DEFAULT_DIR)
    parser.add_argument("--workdir", type=Path, help="keep builds here (default: a temporary "
                        "directory)")
    parser.add_argument("--sail", action="append", default=[], metavar="ARGS",
                        help="sail compile options of one arm, e.g. '--bits 8 --group-size 32 "
                        "--sym' (repeatable)")
    parser.add_argument("--gguf-types", default="Q8_0,Q4_0",
                        help="llama.cpp arms, comma-separated ('' for none)")
    parser.add_argument("--prompts", type=int, default=32,
                        help="32-token prompts of the greedy-agreement count (default 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object per arm")
    args = parser.parse_args(argv)
    paths = gemma3.require(args.model_dir, gemma3.KV_MODEL, gemma3.TOKENIZER)
    with contextlib.ExitStack() as stack:
        work = args.workdir / "gemma3" if args.workdir else Path(
            stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        ids = gemma3.protocol_ids(args.model_dir)
        fp32 = ort_fp32(paths[gemma3.KV_MODEL], args.threads)
        ref = fp32(ids)
        prompts = prompt_paths(fp32, ids, args.prompts)
        path_ids = prompts[0]
        ref_path = fp32(path_ids)
        arms: list[tuple[str, Callable[[], LogitsFn]]] = [
            (f"sail c {a}", lambda a=a: sail_c(sail_artifact(paths[gemma3.KV_MODEL], work, a),
                                               args.threads)) for a in args.sail]
        for t in filter(None, args.gguf_types.split(",")):
            arms.append((f"llama.cpp {t.upper()}", lambda t=t: llama(
                gemma3.llama_gguf(args.model_dir, work, t.upper()), args.threads)))
        rows = []
        for name, make in arms:
            gemma3.log(f"{name} ...")
            run = make()
            row = {"arm": name, **fidelity(ref, run(ids)),
                   "near_ties": near_ties(ref_path[:-1], run(path_ids)[:-1], PROMPT_TOKENS - 1)}
            row["path_agree"] = sum(1 for _, g in row["near_ties"] if g > 0)
            lead = [leading_matches(p, run(p)) for p in prompts]
            row["greedy_8_of_8"] = sum(n == PATH_STEPS for n in lead)
            row["greedy_leading_mean"] = float(np.mean(lead))
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(f"Gemma 3 270M, {len(ids)} ids of the quality protocol, against onnxruntime fp32 "
              f"(commit {gemma3.repo_commit()})\n")
        print("| arm | KLD mean | KLD p99 | top-1 | RMS dlogit | gap err | path top-1 | "
              f"prompts with {PATH_STEPS} greedy ids = fp32 | mean leading ids = fp32 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['arm']} | {r['kld_mean']:.4f} | {r['kld_p99']:.4f} | "
                  f"{100 * r['top1']:.1f}% | {r['rms_dlogit']:.3f} | {r['gap_err_median']:.3f} "
                  f"| {r['path_agree']}/{PATH_STEPS} | {r['greedy_8_of_8']}/{len(prompts)} | "
                  f"{r['greedy_leading_mean']:.2f} |")
        print(f"\nfp32's top-2 gap at each greedy choice after the {PROMPT_TOKENS}-token prompt, "
              "and each arm's gap between the same two tokens (negative: a different choice):")
        print("| arm | " + " | ".join(str(i + 1) for i in range(PATH_STEPS)) + " |")
        print("|---|" + "---:|" * PATH_STEPS)
        print("| fp32 | " + " | ".join(f"{g:.3f}" for g, _ in rows[0]["near_ties"]) + " |"
              if rows else "")
        for r in rows:
            print(f"| {r['arm']} | " + " | ".join(f"{q:.3f}" for _, q in r["near_ties"]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
