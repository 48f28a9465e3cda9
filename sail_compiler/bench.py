"""``sail bench OUT [-p 32,512] [-n 64] [--threads 1,2] [-r 3] [--json]``, as llama-bench.

Per setting (threads) it measures, on a decoder with a KV cache:

* ``pp<P>`` (prompt processing): one forward of ``P`` prompt tokens (the prefill); tokens/s is
  ``P`` over its time;
* ``tg<N>`` (text generation): ``N`` decode steps after a one-token prompt, one token per step
  (greedy, no end-of-sequence stop); tokens/s is ``N`` over their time.

Prompts are random token ids (seeded), as llama-bench's are. Each test runs once to warm up and
then ``-r`` times; the table gives the mean tokens/s and its standard deviation over the runs.
Times are of the model's runs only: the c target times them in C (``sail_generate --repeat``),
llvm in Python around each Relax VM call.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OptionError
from .model import Model


def run_bench(model: Model, prompt_lengths: list[int], gen_lengths: list[int],
              threads: list[int | None], repetitions: int = 3, seed: int = 0
              ) -> dict[str, Any]:
    """Measure every ``pp`` and ``tg`` test at every thread count.

    Parameters
    ----------
    model
        A loaded decoder artifact (target c or llvm).
    prompt_lengths, gen_lengths
        Prompt tokens of the ``pp`` tests and generated tokens of the ``tg`` tests (0 skips).
    threads
        Thread counts (c artifacts); ``[None]``: the artifact's default.
    repetitions
        Measured runs per test (after one warm-up run).
    seed
        Seed of the random prompt ids.

    Returns
    -------
    dict
        ``model``, ``target``, ``quant``, ``size_bytes``, ``repetitions`` and ``results``: one
        entry per test and thread count with ``test``, ``threads``, ``n_prompt``, ``n_gen``,
        ``seconds`` (each run), ``tokens_per_second`` (mean of the runs') and ``stddev``.
    """
    if model.target == "pim-sim":
        raise OptionError("sail bench times real execution; a pim-sim artifact runs on the "
                          "functional simulator: use sail simulate OUT for SAIL's timing")
    if not 1 <= repetitions <= 100:
        raise OptionError(f"-r must lie in [1, 100], not {repetitions}")
    tests = [(p, 0) for p in prompt_lengths if p > 0] + [(0, n) for n in gen_lengths if n > 0]
    if not tests:
        raise OptionError("nothing to measure: give -p or -n values above 0")
    context = model.context_length
    longest = max(max(p + 1, n + 1) for p, n in tests)
    if context is not None and longest > context:
        raise OptionError(f"a test needs {longest} positions; the model's context holds "
                          f"{context}: lower -p / -n")
    bound = model.vocab_bound or 2
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in rng.integers(0, bound, size=max(p for p, _ in tests) or 1)]
    results = []
    for count in threads:
        for n_prompt, n_gen in tests:
            if n_prompt:
                runs = model.time_generation(ids[:n_prompt], 1, repetitions + 1, count)[1:]
                seconds = [r["prefill_seconds"] for r in runs]
                tokens, test = n_prompt, f"pp{n_prompt}"
            else:
                runs = model.time_generation(ids[:1], n_gen + 1, repetitions + 1, count)[1:]
                seconds = [r["decode_seconds"] for r in runs]
                tokens, test = n_gen, f"tg{n_gen}"
            rates = [tokens / s if s > 0 else math.inf for s in seconds]
            mean = float(np.mean(rates))
            stddev = float(np.std(rates, ddof=1)) if len(rates) > 1 else 0.0
            results.append({"test": test, "threads": count, "n_prompt": n_prompt,
                            "n_gen": n_gen, "seconds": seconds, "tokens_per_second": mean,
                            "stddev": stddev})
    weights = model.manifest.get("weights")
    size = (model.path / weights).stat().st_size if weights else None
    return {"model": Path(model.manifest["model"]["path"]).name, "target": model.target,
            "quant": model.manifest.get("quant") or "float", "size_bytes": size,
            "repetitions": repetitions, "results": results}


def format_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table, one row per test and thread count."""
    size = report["size_bytes"]
    size_text = f"{size / 2**20:.1f} MiB" if size is not None else "?"
    lines = ["| model | quant | size | target | threads | test | t/s |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in report["results"]:
        threads = "default" if r["threads"] is None else str(r["threads"])
        lines.append(f"| {report['model']} | {report['quant']} | {size_text} | "
                     f"{report['target']} | {threads} | {r['test']} | "
                     f"{r['tokens_per_second']:.2f} ± {r['stddev']:.2f} |")
    return "\n".join(lines)
