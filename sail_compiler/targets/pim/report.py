"""Reports of simulated decode steps: stats.json, markdown tables and plots.

Plots need matplotlib, imported only when a plot is drawn (``sail_compiler`` itself never needs
it); :func:`plots_available` says whether it is installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cost import COMPONENTS
from .simulate import StepResult

__all__ = [
    "READINGS",
    "headline",
    "markdown_table",
    "plot_cycle_breakdown",
    "plot_reuse_per_layer",
    "plot_speedup",
    "plots_available",
    "stats_dict",
    "vs_batch1",
    "write_stats",
]


#: The two readings of tokens per dollar (and of speedup) every report gives.
READINGS = {
    "same_batch": "SAIL and the baseline at the same batch",
    "vs_batch1": "SAIL at this batch (headline: its best batch) against the baseline at batch 1",
}


def _batch1(results: Sequence[StepResult]) -> dict[tuple[str, int], StepResult]:
    """The batch-1 point of every (model, bits) series."""
    return {(r.model, r.workload.bits): r for r in results if r.batch == 1}


def vs_batch1(r: StepResult, base: StepResult | None) -> dict[str, float | None]:
    """SAIL's ratios at ``r`` against each baseline at batch 1 (``base``, the batch-1 point of the
    same model and bits); None when there is no such point (or the model does not fit the GPU)."""
    if base is None:
        return {"speedup_vs_n1": None, "tokens_per_usd_vs_n1": None,
                "tokens_per_usd_vs_gpu": None}
    gpu = base.tokens_per_usd("gpu")
    return {"speedup_vs_n1": r.tokens_per_s("sail") / base.tokens_per_s("n1"),
            "tokens_per_usd_vs_n1": r.tokens_per_usd("sail") / base.tokens_per_usd("n1"),
            "tokens_per_usd_vs_gpu": r.tokens_per_usd("sail") / gpu if gpu else None}


def stats_dict(results: Sequence[StepResult], *, per_layer: bool = False,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything about a sweep as one JSON-able dict: the machine, every point (with both
    readings of its ratios), the headline."""
    if not results:
        raise ValueError("no results to report")
    firsts = _batch1(results)
    points = []
    for r in results:
        point = r.to_dict(per_layer=per_layer)
        point["vs_batch1"] = vs_batch1(r, firsts.get((r.model, r.workload.bits)))
        points.append(point)
    return {"machine": results[0].config.to_dict(), **(extra or {}), "readings": READINGS,
            "headline": headline(results), "points": points}


def write_stats(path: str | Path, results: Sequence[StepResult], *, per_layer: bool = False,
                extra: dict[str, Any] | None = None) -> Path:
    """Write :func:`stats_dict` as JSON to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(stats_dict(results, per_layer=per_layer, extra=extra), indent=1))
    return path


def _where(r: StepResult) -> dict[str, Any]:
    return {"model": r.model, "bits": r.workload.bits, "batch": r.batch}


_RATIOS = ("speedup_vs_n1", "tokens_per_usd_vs_n1", "tokens_per_usd_vs_gpu")


def headline(results: Sequence[StepResult]) -> dict[str, Any]:
    """The sweep's maxima (speedup and tokens/$ against each baseline, with where they occur)
    under both readings (:data:`READINGS`: ``key`` at the same batch, ``key + "_vs_batch1"``
    SAIL at any batch against the baseline at batch 1, where a batch-1 point exists) and the
    PIM compute time the reuse tables save, over all points and per batch size."""
    best: dict[str, Any] = {}
    firsts = _batch1(results)
    for key in _RATIOS:
        for name, value in ((key, lambda r, key=key: getattr(r, key)),
                            (f"{key}_vs_batch1", lambda r, key=key: vs_batch1(
                                r, firsts.get((r.model, r.workload.bits)))[key])):
            scored = [(value(r), r) for r in results if value(r) is not None]
            if scored:
                top, where = max(scored, key=lambda s: s[0])
                best[name] = {"value": top, **_where(where)}
            else:
                best[name] = None
    base = sum(r.pim_compute_no_reuse_ns for r in results)
    saved = sum(r.pim_compute_no_reuse_ns - r.pim_compute_ns for r in results)
    per_batch: dict[int, list[float]] = {}
    for r in results:
        per_batch.setdefault(r.batch, []).append(r.reuse_saved_compute_fraction)
    best["reuse_saved_compute_fraction"] = {
        "overall": saved / base if base else 0.0,
        "per_batch": {b: sum(v) / len(v) for b, v in sorted(per_batch.items())}}
    return best


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def markdown_table(results: Sequence[StepResult]) -> str:
    """One row per point: tokens/s of each machine, SAIL's ratios under both readings
    (:data:`READINGS`; "n/a" without a batch-1 point of the series) and its reuse saving."""
    lines = ["| model | bits | batch | SAIL tok/s | N1 tok/s | V100 tok/s | speedup vs N1 | "
             "tok/$ vs N1 | tok/$ vs V100 | tok/$ vs N1 at B=1 | tok/$ vs V100 at B=1 | "
             "reuse saves |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    firsts = _batch1(results)
    for r in results:
        cross = vs_batch1(r, firsts.get((r.model, r.workload.bits)))
        v100 = f"{r.tokens_per_s('gpu'):.1f}" if r.gpu_fits else "does not fit"
        lines.append(
            f"| {r.model} | {r.workload.bits} | {r.batch} | {r.tokens_per_s('sail'):.1f} | "
            f"{r.tokens_per_s('n1'):.1f} | {v100} | {r.speedup_vs_n1:.2f}x | "
            f"{r.tokens_per_usd_vs_n1:.2f}x | {_x(r.tokens_per_usd_vs_gpu)} | "
            f"{_x(cross['tokens_per_usd_vs_n1'])} | {_x(cross['tokens_per_usd_vs_gpu'])} | "
            f"{100 * r.reuse_saved_compute_fraction:.1f}% |")
    return "\n".join(lines)


def plots_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_cycle_breakdown(results: Sequence[StepResult], path: str | Path) -> Path:
    """SAIL's busy cycles per component, one stacked bar per point, as shares of the summed busy
    time (components overlap, so they may add up to more than the step); the critical path in
    host cycles per token on a log axis beside them."""
    plt = _pyplot()
    labels = [f"{r.model}\n{r.workload.bits}b B={r.batch}" for r in results]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(results)), 4.5))
    busy = [sum(r.sail.time_ns.get(c, 0.0) for c in COMPONENTS) or 1.0 for r in results]
    bottom = [0.0] * len(results)
    for component in COMPONENTS:
        shares = [r.sail.time_ns.get(component, 0.0) / b for r, b in zip(results, busy,
                                                                         strict=True)]
        ax.bar(range(len(results)), shares, bottom=bottom, label=component)
        bottom = [b + v for b, v in zip(bottom, shares, strict=True)]
    ax.set_ylabel("share of busy cycles")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(len(results)), labels, rotation=90, fontsize=6)
    path_ax = ax.twinx()
    path_ax.plot(range(len(results)),
                 [r.sail.cycles(r.config.host.clock_ghz) / r.batch for r in results], "ko",
                 markersize=3, label="critical path per token")
    path_ax.set_yscale("log")
    path_ax.set_ylabel("host cycles per token (critical path)")
    ax.set_title("SAIL: busy cycles per component")
    handles, names = ax.get_legend_handles_labels()
    extra_handles, extra_names = path_ax.get_legend_handles_labels()
    ax.legend(handles + extra_handles, names + extra_names, fontsize=6, ncol=3,
              loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return _save(plt, fig, path)


def plot_speedup(results: Sequence[StepResult], path: str | Path) -> Path:
    """Speedup and tokens/$ of SAIL against the N1 and the V100 over batch size, one line per
    model and weight width."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    series: dict[tuple[str, int], list[StepResult]] = {}
    for r in results:
        series.setdefault((r.model, r.workload.bits), []).append(r)
    panels = (("speedup vs N1 (tokens/s)", lambda r: r.speedup_vs_n1),
              ("tokens/$ vs N1", lambda r: r.tokens_per_usd_vs_n1),
              ("tokens/$ vs V100", lambda r: r.tokens_per_usd_vs_gpu))
    for ax, (title, value) in zip(axes, panels, strict=True):
        for (model, bits), points in series.items():
            points = sorted(points, key=lambda r: r.batch)
            xs = [r.batch for r in points if value(r) is not None]
            ax.plot(xs, [value(r) for r in points if value(r) is not None], marker="o",
                    markersize=3, label=f"{model} {bits}-bit")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_reuse_per_layer(rates: dict[str, dict[int, float]], path: str | Path,
                         title: str = "reuse-table hit rate per layer") -> Path:
    """Bars of the fraction of lookups served by the reuse tables, per layer and batch size.

    ``rates`` maps a layer name to ``{batch: fraction}``.
    """
    plt = _pyplot()
    names = list(rates)
    batches = sorted({b for r in rates.values() for b in r})
    width = 0.8 / max(1, len(batches))
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.08 * len(names) * len(batches))), 4.5))
    for i, b in enumerate(batches):
        ax.bar([x + i * width for x in range(len(names))],
               [rates[n].get(b, 0.0) for n in names], width, label=f"B={b}")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=90,
                  fontsize=6)
    ax.set_ylabel("fraction of lookups hitting the reuse table")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
