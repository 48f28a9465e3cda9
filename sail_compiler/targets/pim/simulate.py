"""Timing-only simulation of decode steps on SAIL and its baselines.

:func:`simulate_step` costs every op of a decode step (:mod:`.shapes`) on SAIL (:mod:`.cost`),
on the N1 cores alone and on the V100 (:mod:`.baselines`) and sums them: ops run one after
another, so step times add. Identical ops (the same layer in every decoder block) are costed
once and counted. :func:`sweep` does this over models x weight bits x batch sizes with a progress
bar. One Llama-2-7B step takes milliseconds.

Throughput: a step of batch B yields B tokens, so ``tokens/s = B / step time`` and ``tokens/$ =
tokens/s * 3600 / (USD/hour)`` with the prices of ``config.price`` (SAIL: the CPU's price plus
its area overhead).

Pattern reuse (:class:`ReuseModel`): the fraction of lookups that skip their row read, per
layer and batch size, from ``sail analyze-patterns --json`` (matched to the simulated layers by
layer index and role in the name, else by role, else the lookup-weighted total), or a constant.
Between the analysed batch sizes the fraction is interpolated linearly in ``log2 B``; outside
them it is held at the nearest one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...errors import InputError, OptionError
from .baselines import n1_op_cost, v100_fits, v100_op_cost
from .config import MachineConfig
from .cost import (
    PIM_COMPUTE,
    Cost,
    best_lane_bits,
    host_op_cost,
    lut_gemv_cost,
    quantize_cost,
)
from .shapes import GemvOp, ModelShape, Op, QuantizeOp, decode_step

__all__ = [
    "OpRecord",
    "ReuseModel",
    "StepResult",
    "Workload",
    "simulate_step",
    "sweep",
]


@dataclasses.dataclass(frozen=True)
class Workload:
    """What a step computes with: the quantization attributes of every ``sail.lut_gemv``.

    Attributes
    ----------
    bits, act_bits, group_size
        Weight bits (1..8), activation bits (2..16), group size g.
    batch
        Tokens per step (independent sequences decoding together).
    nbw
        Weights per table; the machine's ``csram.nbw`` when None.
    placement
        Where the type conversions run: ``"pim"`` or ``"host"``.
    amortize_dequant
        The N1 baseline dequantizes each weight once per step (True) or once per token
        (False); None follows the machine's ``baseline.n1_dequant``.
    act_group
        Columns per activation scale (None: one per row; larger than a layer's K: the same).
    """

    bits: int
    batch: int
    act_bits: int = 8
    group_size: int = 128
    nbw: int | None = None
    placement: str = "pim"
    amortize_dequant: bool | None = None
    act_group: int | None = None


_LAYER = re.compile(r"layers\.(\d+)\.")


def _layer_index(name: str) -> int | None:
    match = _LAYER.search(name.replace("/", "."))
    return int(match.group(1)) if match else None


def _interpolate(points: dict[int, float], batch: int) -> float:
    """``points`` (batch -> fraction) at ``batch``: linear in log2 B, held beyond the ends."""
    xs = sorted(points)
    if batch <= xs[0]:
        return points[xs[0]]
    if batch >= xs[-1]:
        return points[xs[-1]]
    hi = next(i for i, x in enumerate(xs) if x >= batch)
    lo_b, hi_b = xs[hi - 1], xs[hi]
    w = (math.log2(batch) - math.log2(lo_b)) / (math.log2(hi_b) - math.log2(lo_b))
    return (1 - w) * points[lo_b] + w * points[hi_b]


class ReuseModel:
    """Fraction of lookups served by the reuse tables, per layer and batch size.

    Parameters
    ----------
    source
        Where the figures come from (printed in reports).
    total
        ``{B: fraction}`` for layers nothing more specific matches.
    per_role
        ``{role: {B: fraction}}`` (roles as in :mod:`.shapes`: ``q_proj``, ``down_proj``, ...).
    per_layer
        ``{(layer index, role): {B: fraction}}``.
    """

    def __init__(self, source: str, total: dict[int, float],
                 per_role: dict[str, dict[int, float]] | None = None,
                 per_layer: dict[tuple[int, str], dict[int, float]] | None = None) -> None:
        tables = [total, *(per_role or {}).values(), *(per_layer or {}).values()]
        bad = [f for table in tables for f in table.values() if not 0 <= f <= 1]
        if not total or bad or any(not table for table in tables):
            raise OptionError(f"reuse fractions must be non-empty tables of values in [0, 1]; "
                              f"got {bad or 'an empty table'}")
        self.source = source
        self.total = dict(total)
        self.per_role = dict(per_role or {})
        self.per_layer = dict(per_layer or {})

    @classmethod
    def constant(cls, fraction: float, source: str | None = None) -> ReuseModel:
        """The same fraction for every layer and batch."""
        return cls(source or f"constant {fraction:g}", {1: float(fraction)})

    @classmethod
    def from_analysis(cls, report: dict[str, Any], source: str = "analyze-patterns") -> ReuseModel:
        """From the output of ``sail analyze-patterns --json`` (its ``table_saved_fraction``).

        Raises
        ------
        InputError
            The report lacks ``layers`` or ``total``.
        """
        def fractions(figures: dict[str, Any]) -> dict[int, float]:
            return {int(b): float(v["table_saved_fraction"]) for b, v in figures.items()}

        try:
            total = fractions(report["total"])
            per_layer, by_role = {}, {}
            for layer in report["layers"]:
                for role in (r for r in _GEMV_ROLES if r in layer["layer"]):
                    by_role.setdefault(role, []).append(layer["batches"])
                    index = _layer_index(layer["layer"])
                    if index is not None:
                        per_layer[(index, role)] = fractions(layer["batches"])
            per_role = {  # lookup-weighted over the role's layers
                role: {int(b): sum(e[b]["table_saved_fraction"] * e[b]["lookups"] for e in entries)
                       / max(1, sum(e[b]["lookups"] for e in entries)) for b in entries[0]}
                for role, entries in by_role.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(f"not a `sail analyze-patterns --json` report: missing or bad "
                             f"{err}") from err
        return cls(f"{source}: {report.get('inputs', 'unknown inputs')}", total, per_role,
                   per_layer)

    @classmethod
    def load(cls, path: str | Path) -> ReuseModel:
        """:meth:`from_analysis` of a JSON file.

        Raises
        ------
        InputError
            The file is unreadable, not JSON or not such a report.
        """
        path = Path(path)
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read reuse figures {path}: {err}") from err
        return cls.from_analysis(report, source=str(path))

    def fraction(self, batch: int, role: str = "", name: str = "") -> float:
        """The saved fraction for a layer (``name``, ``role``) at ``batch``."""
        index = _layer_index(name)
        points = self.per_layer.get((index, role)) if index is not None else None
        return _interpolate(points or self.per_role.get(role) or self.total, batch)


_GEMV_ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
               "lm_head")


@dataclasses.dataclass(frozen=True)
class OpRecord:
    """One op of a step and its cost on each machine."""

    op: Op
    sail: Cost
    n1: Cost
    gpu: Cost
    reuse: float | None
    """Saved fraction of lookups used (GEMVs only)."""
    pim_compute_no_reuse_ns: float
    """The op's PIM compute time without the reuse tables."""


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One decode step of one model at one workload, on SAIL and the baselines."""

    model: str
    workload: Workload
    context_len: int
    config: MachineConfig
    reuse_source: str
    records: tuple[OpRecord, ...]
    sail: Cost
    n1: Cost
    gpu: Cost
    gpu_fits: bool

    @property
    def batch(self) -> int:
        return self.workload.batch

    def tokens_per_s(self, machine: str) -> float:
        """Tokens per second of ``"sail"``, ``"n1"`` or ``"gpu"`` (0 if it does not fit)."""
        if machine == "gpu" and not self.gpu_fits:
            return 0.0
        return self.batch / (getattr(self, machine).total_ns * 1e-9)

    def tokens_per_usd(self, machine: str) -> float:
        """Tokens per dollar of ``"sail"``, ``"n1"`` or ``"gpu"``."""
        price = self.config.price
        usd_per_hour = {"sail": price.sail_usd_per_hour, "n1": price.cpu_usd_per_hour,
                        "gpu": price.gpu_usd_per_hour}[machine]
        return self.tokens_per_s(machine) * 3600 / usd_per_hour

    @property
    def speedup_vs_n1(self) -> float:
        return self.tokens_per_s("sail") / self.tokens_per_s("n1")

    @property
    def tokens_per_usd_vs_n1(self) -> float:
        return self.tokens_per_usd("sail") / self.tokens_per_usd("n1")

    @property
    def tokens_per_usd_vs_gpu(self) -> float | None:
        """None when the model does not fit the GPU."""
        gpu = self.tokens_per_usd("gpu")
        return self.tokens_per_usd("sail") / gpu if gpu else None

    @property
    def pim_compute_ns(self) -> float:
        """Busy time of the arrays' own work (:data:`.cost.PIM_COMPUTE`)."""
        return sum(self.sail.time_ns.get(c, 0.0) for c in PIM_COMPUTE)

    @property
    def pim_compute_no_reuse_ns(self) -> float:
        return sum(r.pim_compute_no_reuse_ns for r in self.records)

    @property
    def reuse_saved_compute_fraction(self) -> float:
        """Fraction of the PIM compute time the reuse tables save."""
        base = self.pim_compute_no_reuse_ns
        return 1 - self.pim_compute_ns / base if base else 0.0

    def by_role(self) -> dict[str, dict[str, Any]]:
        """Per role (e.g. all ``q_proj`` layers): count, SAIL cost and baseline times."""
        roles: dict[str, dict[str, Any]] = {}
        for r in self.records:
            entry = roles.setdefault(r.op.role, {"count": 0, "sail": Cost(0.0), "n1_ns": 0.0,
                                                 "gpu_ns": 0.0, "reuse": r.reuse})
            entry["count"] += 1
            entry["sail"] += r.sail
            entry["n1_ns"] += r.n1.total_ns
            entry["gpu_ns"] += r.gpu.total_ns
        return roles

    def to_dict(self, per_layer: bool = False) -> dict[str, Any]:
        """JSON-able figures (cycles in host-core cycles)."""
        clock = self.config.host.clock_ghz
        out: dict[str, Any] = {
            "model": self.model, **dataclasses.asdict(self.workload),
            "context_len": self.context_len, "reuse_source": self.reuse_source,
            "sail": {**self.sail.to_dict(clock), "tokens_per_s": self.tokens_per_s("sail"),
                     "tokens_per_usd": self.tokens_per_usd("sail"),
                     "energy_per_token_j": self.sail.energy_total_pj * 1e-12 / self.batch,
                     "pim_compute_ns": self.pim_compute_ns,
                     "pim_compute_no_reuse_ns": self.pim_compute_no_reuse_ns},
            "n1": {**self.n1.to_dict(clock), "tokens_per_s": self.tokens_per_s("n1"),
                   "tokens_per_usd": self.tokens_per_usd("n1")},
            "gpu": {**self.gpu.to_dict(clock), "fits": self.gpu_fits,
                    "tokens_per_s": self.tokens_per_s("gpu"),
                    "tokens_per_usd": self.tokens_per_usd("gpu")},
            "speedup_vs_n1": self.speedup_vs_n1,
            "tokens_per_usd_vs_n1": self.tokens_per_usd_vs_n1,
            "tokens_per_usd_vs_gpu": self.tokens_per_usd_vs_gpu,
            "reuse_saved_compute_fraction": self.reuse_saved_compute_fraction,
            "roles": {role: {"count": e["count"], "reuse": e["reuse"],
                             "sail": e["sail"].to_dict(clock), "n1_ns": e["n1_ns"],
                             "gpu_ns": e["gpu_ns"]}
                      for role, e in self.by_role().items()},
        }
        if per_layer:
            out["layers"] = [{"name": r.op.name, "role": r.op.role, "reuse": r.reuse,
                              "sail_ns": r.sail.total_ns, "n1_ns": r.n1.total_ns,
                              "gpu_ns": r.gpu.total_ns} for r in self.records]
        return out


def _op_key(op: Op, reuse: float | None) -> tuple[Any, ...]:
    fields = dataclasses.astuple(op)[2:]  # everything but name and role
    return (type(op).__name__, *fields, reuse)


def _act_group(workload: Workload, k: int) -> int | None:
    """The workload's activation blocks for a layer of reduction ``k`` (at most K)."""
    return None if workload.act_group is None else min(workload.act_group, k)


def _cost_op(op: Op, workload: Workload, nbw: int, reuse: float | None,
             config: MachineConfig) -> OpRecord:
    w, batch = workload, workload.batch
    no_reuse_ns = 0.0
    if isinstance(op, GemvOp):
        kw = {"bits": w.bits, "act_bits": w.act_bits, "group_size": w.group_size, "nbw": nbw,
              "batch": batch, "config": config, "placement": w.placement,
              "act_group": _act_group(w, op.k)}
        lane = best_lane_bits(op.k, op.n, reuse=reuse, **kw)
        sail = lut_gemv_cost(op.k, op.n, reuse=reuse, lane_bits=lane, **kw)
        # the same layout without the reuse tables
        base = lut_gemv_cost(op.k, op.n, reuse=0.0, lane_bits=lane, **kw) if reuse else sail
        no_reuse_ns = sum(base.time_ns[c] for c in PIM_COMPUTE)
    elif isinstance(op, QuantizeOp):
        sail = quantize_cost(op.k, act_bits=w.act_bits, batch=batch, config=config,
                             placement=w.placement, act_group=w.act_group)
        no_reuse_ns = sum(sail.time_ns[c] for c in PIM_COMPUTE)
    else:
        sail = host_op_cost(config, flops=batch * op.flops, dram_bytes=batch * op.dram_bytes,
                            llc_bytes=batch * op.llc_bytes)
    n1 = n1_op_cost(op, bits=w.bits, act_bits=w.act_bits, group_size=w.group_size, batch=batch,
                    config=config, amortize_dequant=w.amortize_dequant)
    gpu = v100_op_cost(op, bits=w.bits, group_size=w.group_size, batch=batch, config=config)
    return OpRecord(op, sail, n1, gpu, reuse, no_reuse_ns)


def simulate_step(ops: list[Op], workload: Workload, config: MachineConfig, *,
                  reuse: ReuseModel | float = 0.0, model: str = "",
                  context_len: int = 0) -> StepResult:
    """Cost one decode step on SAIL, the N1 cores and the V100.

    Parameters
    ----------
    ops
        The step's ops in order (:func:`.shapes.decode_step`).
    workload
        Bits, batch and the other attributes of every GEMV.
    config
        The machine.
    reuse
        A :class:`ReuseModel`, or one saved fraction for every layer.
    model, context_len
        Labels for the result.

    Raises
    ------
    OptionError
        An attribute is out of range or a layer does not fit the machine (:mod:`.cost`).
    """
    if not isinstance(reuse, ReuseModel):
        reuse = ReuseModel.constant(reuse)
    nbw = config.csram.nbw if workload.nbw is None else workload.nbw
    costed: dict[tuple[Any, ...], OpRecord] = {}
    records = []
    for op in ops:
        fraction = reuse.fraction(workload.batch, op.role, op.name) \
            if isinstance(op, GemvOp) else None
        key = _op_key(op, fraction)
        if key not in costed:
            costed[key] = _cost_op(op, workload, nbw, fraction, config)
        records.append(dataclasses.replace(costed[key], op=op))
    counts = Counter(_op_key(r.op, r.reuse) for r in records)
    totals = {}
    for machine in ("sail", "n1", "gpu"):
        total = Cost(0.0)
        for key, count in counts.items():
            total += getattr(costed[key], machine).scaled(count)
        totals[machine] = total
    fits = v100_fits(ops, bits=workload.bits, group_size=workload.group_size,
                     batch=workload.batch, config=config)
    return StepResult(model, workload, context_len, config, reuse.source, tuple(records),
                      totals["sail"], totals["n1"], totals["gpu"], fits)


def sweep(models: Iterable[ModelShape], config: MachineConfig, *, bits: Iterable[int],
          batches: Iterable[int], context_len: int, reuse: ReuseModel | float = 0.0,
          progress: bool = True, **workload: Any) -> list[StepResult]:
    """:func:`simulate_step` over models x bits x batch sizes, with a progress bar on stderr.

    ``workload`` holds further :class:`Workload` fields (``act_bits``, ``group_size``, ...).
    """
    from tqdm import tqdm

    models, bits, batches = list(models), list(bits), list(batches)
    points = [(m, b, B) for m in models for b in bits for B in batches]
    steps = {m.name: decode_step(m, context_len, kv_cache_bits=config.data.kv_cache_bits,
                                 activation_bits=config.data.activation_bits) for m in models}
    results = []
    for model, b, batch in tqdm(points, desc="simulating decode steps", file=sys.stderr,
                                disable=not progress or len(points) < 2, leave=False):
        results.append(simulate_step(steps[model.name], Workload(bits=b, batch=batch, **workload),
                                     config, reuse=reuse, model=model.name,
                                     context_len=context_len))
    return results
