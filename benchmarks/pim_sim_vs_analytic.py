"""``sail simulate`` of a compiled pim-sim program beside the analytic model of the same shapes.

Reads the ``stats.json`` that ``sail simulate ARTIFACT --batch ... --report DIR`` writes (one
point per batch) and costs, for every point, the analytic decode step that
``examples/reproduce_paper.py`` sweeps (:func:`~sail_compiler.targets.pim.simulate.sweep` of a
:data:`~sail_compiler.targets.pim.shapes.MODELS` shape) with the simulated program's own
workload: its weight and activation bits, group size, activation blocks, NBW, conversion
placement, context (past + 1) and the reuse hit rates the simulation measured per layer. Both
run on the same machine (the one in ``stats.json``). Prints, per batch, the step time and
tokens/s of SAIL, the N1 cores and the V100 from both, their ratio (simulated / analytic), and
SAIL's busy time per component from both, so that a difference is located.

    python benchmarks/pim_sim_vs_analytic.py DIR/stats.json [--model llama-2-7b]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sail_compiler.targets.pim import (
    MODELS,
    MachineConfig,
    ModelShape,
    ReuseModel,
    Workload,
    load_config,
    model_shape,
    sweep,
)
from sail_compiler.testing.decoders import PRESETS

MACHINES = ("sail", "n1", "gpu")
_LAYER = re.compile(r"layers\.(\d+)\.")


def measured_reuse(point: dict) -> ReuseModel:
    """The simulation's hit rate per (layer, role), at the point's batch; the lookup-weighted
    rate for layers without an index (the LM head)."""
    batch = point["batch"]
    per_layer: dict[tuple[int, str], dict[int, float]] = {}
    hits = lookups = 0.0
    for name, entry in point["layer_reuse"].items():
        hits += entry["reuse_hits"]
        lookups += entry["lookups"]
        found = _LAYER.search(name.replace("/", "."))
        if found:
            role = name.replace("/", ".").rsplit(".", 1)[-1]
            per_layer[(int(found.group(1)), role)] = {batch: entry["hit_rate"]}
    total = {batch: hits / lookups if lookups else 0.0}
    return ReuseModel("this simulation's hit rates", total, per_layer=per_layer or None)


def shape(name: str) -> ModelShape:
    """A shape of the analytic model (``llama-2-7b``) or of an example decoder preset (``7b``,
    ``tiny``: ``examples/make_decoder.py``'s sizes)."""
    if name in MODELS or name not in PRESETS:
        return model_shape(name)
    cfg = PRESETS[name]
    return ModelShape(name, hidden=cfg.hidden_size, intermediate=cfg.ffn_size,
                      layers=cfg.num_layers, heads=cfg.num_heads, kv_heads=cfg.num_kv_heads,
                      vocab=cfg.vocab_size)


def analytic_point(point: dict, model: ModelShape, config: MachineConfig) -> dict:
    """The analytic step of ``model`` with ``point``'s workload, as ``StepResult.to_dict``."""
    fields = {f: point[f] for f in ("act_bits", "group_size", "nbw", "placement", "act_group")}
    workload = Workload(bits=point["bits"], batch=point["batch"], **fields)
    (step,) = sweep([model], config, bits=[workload.bits],
                    batches=[workload.batch], context_len=point["context_len"],
                    reuse=measured_reuse(point), progress=False, act_bits=workload.act_bits,
                    group_size=workload.group_size, nbw=workload.nbw,
                    placement=workload.placement, act_group=workload.act_group)
    return step.to_dict()


def compare(stats: dict, model: ModelShape) -> str:
    """Markdown tables: totals per machine, then SAIL's components, simulated vs analytic."""
    config = load_config(stats["machine"]["name"])
    if config.to_dict() != stats["machine"]:
        raise SystemExit(f"the simulated machine is not the preset {config.name!r}; this script "
                         "compares on presets only")
    rows = ["| batch | machine | simulated step ms | analytic step ms | simulated tok/s | "
            "analytic tok/s | sim / analytic |", "|---:|---|---:|---:|---:|---:|---:|"]
    parts = ["| batch | SAIL component | simulated ms | analytic ms | sim / analytic |",
             "|---:|---|---:|---:|---:|"]
    for point in stats["points"]:
        ours = analytic_point(point, model, config)
        for machine in MACHINES:
            sim, ana = point[machine], ours[machine]
            rows.append(f"| {point['batch']} | {machine} | {sim['total_ns'] / 1e6:.2f} | "
                        f"{ana['total_ns'] / 1e6:.2f} | {sim['tokens_per_s']:.1f} | "
                        f"{ana['tokens_per_s']:.1f} | {sim['total_ns'] / ana['total_ns']:.3f} |")
        sim_parts, ana_parts = point["sail"]["components"], ours["sail"]["components"]
        for name in dict.fromkeys([*sim_parts, *ana_parts]):
            s = sim_parts.get(name, {}).get("time_ns", 0.0)
            a = ana_parts.get(name, {}).get("time_ns", 0.0)
            ratio = f"{s / a:.3f}" if a else "-"
            parts.append(f"| {point['batch']} | {name} | {s / 1e6:.3f} | {a / 1e6:.3f} | "
                         f"{ratio} |")
    return "\n".join(rows) + "\n\n" + "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stats", type=Path, help="stats.json of sail simulate --report")
    parser.add_argument("--model", default="llama-2-7b",
                        help="analytic shape: llama-2-7b (default: the 7b preset's), "
                             "llama-2-13b or an example decoder preset (tiny, 1b, ...)")
    args = parser.parse_args(argv)
    stats = json.loads(args.stats.read_text())
    print(f"{args.stats}: {stats.get('artifact', '?')} on machine {stats['machine']['name']}, "
          f"beside the analytic {args.model} step (same workload, context and reuse)\n")
    print(compare(stats, shape(args.model)))


if __name__ == "__main__":
    main()
