"""``sail simulate OUT --batch 1,4,16 [--config FILE.toml] [--preset NAME] --report DIR``.

Runs one step of a pim-sim artifact per batch size (:func:`.run.simulate_run`) on the machine the
program was mapped for (or the given one, which must be the same machine) and writes the report:
``stats.json`` (every point, per layer and per instruction), ``report.md`` (the table of
:func:`.report.markdown_table` and the per-layer reuse hit rates) and, with matplotlib,
``cycle_breakdown.png``, ``speedup.png`` (speedup and tokens/$ against the N1 and the V100 over
batch) and ``reuse_per_layer.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ...errors import OptionError
from .config import load_config, preset
from .report import (
    READINGS,
    markdown_table,
    plot_cycle_breakdown,
    plot_reuse_per_layer,
    plot_speedup,
    plots_available,
    stats_dict,
)
from .run import RunResult, load_artifact, simulate_run

__all__ = ["add_parser", "parse_batches", "run", "write_report"]


def parse_batches(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; :class:`OptionError` unless positive integers."""
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise OptionError(f"--batch takes positive integers separated by commas, got {text!r}")
    return batches


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``simulate`` sub-command to ``subparsers``."""
    p = subparsers.add_parser("simulate", help="simulate a pim-sim artifact on SAIL and its "
                              "baselines (cycles, energy, tokens/$)",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("artifact", type=Path, help="a sail compile --target pim-sim output")
    p.add_argument("--batch", default="1,4,16", help="batch sizes, e.g. 1,4,16")
    p.add_argument("--config", type=Path, help="machine TOML: overrides on --preset (or on "
                   "the file's own preset = ..., else sail-n1)")
    p.add_argument("--preset", help="machine preset (default: the program's machine)")
    p.add_argument("--past-len", type=int, default=7, help="KV-cache positions before the "
                   "step (models with a KV cache)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    p.add_argument("--report", type=Path, help="write stats.json, report.md and plots here")
    p.add_argument("--json", action="store_true", help="print stats as JSON")
    p.add_argument("--timing-only", action="store_true", help="do not compute the offload "
                   "commands (zeros of the right shapes): for programs too large to execute "
                   "functionally; the reuse figures then come from made-up activations")
    p.add_argument("--kv-in-place", action="store_true", help="cost the KV cache as a "
                   "runtime that appends to it in place would move it (as the analytic model "
                   "does), not as the program's copy of the past into the present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def write_report(results: list[RunResult], out: Path,
                 extra: dict[str, Any] | None = None) -> list[Path]:
    """Write the report files for ``results`` (one per batch) into ``out``; return them."""
    out.mkdir(parents=True, exist_ok=True)
    steps = [r.step for r in results]
    stats = stats_dict(steps, per_layer=True, extra=extra)
    for point, r in zip(stats["points"], results, strict=True):
        point["layer_reuse"] = r.layer_reuse
        point["instructions"] = r.instructions
    written = [out / "stats.json", out / "report.md"]
    written[0].write_text(json.dumps(stats, indent=1) + "\n")
    rates = {layer: {r.step.batch: r.layer_reuse[layer]["hit_rate"] for r in results
                     if layer in r.layer_reuse} for layer in results[0].layer_reuse}
    lines = [f"# SAIL simulation of `{steps[0].model}` on machine `{steps[0].config.name}`", "",
             markdown_table(steps), "",
             "Tokens per dollar two ways: " + "; ".join(
                 f"{'tok/$ vs X' if k == 'same_batch' else 'tok/$ vs X at B=1'}: {v}"
                 for k, v in READINGS.items()) + " (n/a without --batch 1).", "",
             f"Pattern reuse from {steps[0].reuse_source}.", "",
             "| layer | " + " | ".join(f"hit rate B={r.step.batch}" for r in results) + " |",
             "|---|" + "---:|" * len(results)]
    for layer, by_batch in rates.items():
        lines.append(f"| {layer} | " + " | ".join(f"{100 * by_batch.get(r.step.batch, 0):.1f}%"
                                                  for r in results) + " |")
    written[1].write_text("\n".join(lines) + "\n")
    if plots_available():
        written.append(plot_cycle_breakdown(steps, out / "cycle_breakdown.png"))
        written.append(plot_speedup(steps, out / "speedup.png"))
        if rates:
            written.append(plot_reuse_per_layer(rates, out / "reuse_per_layer.png"))
    return written


def run(args: argparse.Namespace) -> int:
    """Run ``sail simulate``; 0 on success (errors are raised as SailError)."""
    from tqdm import tqdm

    batches = parse_batches(args.batch)
    config = None
    if args.config is not None:
        config = load_config(args.preset or "sail-n1", args.config)
    elif args.preset is not None:
        config = preset(args.preset)
    artifact = load_artifact(args.artifact)  # loaded once for every batch
    results = []
    for batch in tqdm(batches, desc="simulating", file=sys.stderr, leave=False,
                      disable=args.no_progress or len(batches) < 2):
        results.append(simulate_run(args.artifact, batch, config=config,
                                    past_len=args.past_len, seed=args.seed,
                                    functional=not args.timing_only, keep_outputs=False,
                                    artifact=artifact, kv_in_place=args.kv_in_place))
    extra = {"artifact": str(args.artifact)}
    if args.report is not None:
        for path in write_report(results, args.report, extra):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(stats_dict([r.step for r in results], extra=extra), indent=1))
    else:
        print(markdown_table([r.step for r in results]))
    return 0

