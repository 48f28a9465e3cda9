"""Functional + timing simulation of one step of a pim-sim artifact.

:func:`simulate_run` runs the artifact's model on generated inputs (:func:`~sail_compiler.inputs.
generate_inputs`: token ids inside the vocabulary, masks of ones) with one new token per
sequence: ``input_ids [batch, 1]``, and for models with a KV cache a past of ``past_len``
positions (generated, standard normal). The executor (:mod:`.target`) records every command and
host kernel that ran; each is then costed on the machine:

* QUANT: :func:`.cost.quantize_cost` (in the arrays or on the host, by its placement).
* LUTGEMV: :func:`.cost.lut_gemv_cost` with the instruction's mapping (its lane width) and the
  pattern reuse of *this run's* activations: the lookups' patterns go through the machine's
  reuse tables (:func:`~sail_compiler.quant.patterns.count_reuse`, schedule ``table``) or, for
  calls ``AnalyzeLUTPatterns`` marked ``lookup_schedule="dedup"``, the deduplicated schedule
  (:func:`~sail_compiler.quant.patterns.lookup_schedule`). The cost includes the dequantization
  (its DEQUANT is fused into the command, at the DEQUANT's placement); the same call without
  reuse gives the compute time the reuse tables save.
* HOST kernels: :func:`.cost.host_op_cost` on the CPU model. Assumption (a kernel's arithmetic
  is not analysed): every operand moves once and the kernel does 2 flops per element of its
  largest operand. Where an operand moves (:func:`host_traffic`) follows its reuse distance:
  the KV cache (the past inputs and present outputs, found by buffer identity at run time,
  :meth:`.target.Executor.mark_state`) is step-to-step state, touched last in the previous step,
  while the whole weight stream and every other layer's cache went through the LLC, so its
  first access in the step (the past's read, the present's write-back) is DRAM traffic at the
  machine's KV-cache width (``data.kv_cache_bits``, the width the analytic model reads it at;
  the program's tensors are float32, the functional stand-in); a later access in the same
  step (attention reading the present its concatenation just wrote) is LLC traffic when that
  buffer fits in the LLC, DRAM traffic otherwise. Every other operand is LLC traffic at its
  dtype's width. (Operand bytes alone would not do: a layer's past is far smaller than the
  LLC at batch 1 yet comes from DRAM each step, and a gather's table operand, the embedding,
  is far larger than the LLC although the kernel reads a few rows of it.)
  ``kv_in_place=True`` costs the KV cache as a runtime that appends to it in place would move
  it (the analytic model's assumption): a kernel that reads pasts and writes presents (the
  concatenation) writes only the new positions to DRAM and reads nothing of the past, and
  the present's first reader then reads it from DRAM; the program as compiled copies the
  past into the present every step instead.

Timing only (``functional=False``) keeps nothing that grows with the batch times the context
times the layers: the LUT-GEMVs return zeros without reading their weights (mapped from
``weights.bin``, so their pages are never touched), and a model with a KV cache is not run at
``past_len``. It runs at the past lengths :data:`PROBE_PAST_LENS` instead (the first with the
LUT-GEMVs' patterns counted, the other two recording only the host kernels' shapes), and every
host kernel's operand shapes at ``past_len`` are extrapolated from them, each dim an affine
function of the past length (checked on the third probe; an artifact where that fails is
refused with the advice to simulate functionally). The offload commands' shapes do not depend
on the past. The patterns of the made-up activations then come from the shortest past.

The same ops run on the baselines (:mod:`.baselines`) at the same bits and batch: each LUTGEMV
as a dequantize-GEMV on the N1 cores and a V100 kernel, host kernels as host ops. The result is
a :class:`~.simulate.StepResult` (so :mod:`.report` draws it) plus per-layer reuse counts.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError, OptionError
from .baselines import n1_op_cost, v100_fits, v100_op_cost
from .config import MachineConfig
from .cost import PIM_COMPUTE, Cost, host_op_cost, lut_gemv_cost, quantize_cost
from .isa import DEQUANT, LUTGEMV, QUANT
from .program import check_config
from .shapes import GemvOp, HostOp, Op, QuantizeOp
from .simulate import OpRecord, StepResult, Workload
from .target import HostCall

__all__ = ["HOST_FLOPS_PER_ELEMENT", "PROBE_PAST_LENS", "RunResult", "extrapolate_host_shapes",
           "host_traffic", "load_artifact", "simulate_run"]

#: Past lengths a timing-only run of a model with a KV cache executes at (module docstring).
PROBE_PAST_LENS = (1, 2, 3)

#: Flops a host kernel is charged per element of its largest operand (assumption: the model's
#: host ops are elementwise or small reductions; attention at a short context is close).
HOST_FLOPS_PER_ELEMENT = 2.0


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One simulated step.

    Attributes
    ----------
    step
        Costs on SAIL and the baselines (``step.batch`` is the tokens of the step).
    layer_reuse
        ``{layer: {"lookups", "reuse_hits", "hit_rate"}}`` of this run's activations.
    instructions
        Per executed command or kernel: ``id``, ``opcode``, ``name``, ``tokens``,
        ``total_ns``, ``energy_pj`` (and ``lookups``, ``reuse_hits`` for LUTGEMV).
    outputs
        The model's outputs (ONNX names).
    """

    step: StepResult
    layer_reuse: dict[str, dict[str, float]]
    instructions: list[dict[str, Any]]
    outputs: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.step.to_dict(per_layer=True), "layer_reuse": self.layer_reuse,
                "instructions": self.instructions}


def load_artifact(artifact_dir: str | Path) -> Any:
    """The :class:`~sail_compiler.artifact.Artifact` of a pim-sim output (:class:`OptionError`
    if it was compiled for another target)."""
    from ...artifact import Artifact

    artifact = Artifact(artifact_dir)
    if artifact.manifest.get("target") != "pim-sim":
        raise OptionError(f"{artifact_dir} was compiled for the {artifact.manifest.get('target')}"
                          " target; sail simulate needs: sail compile MODEL --target pim-sim")
    return artifact


def _role(name: str) -> str:
    return name.replace("/", ".").rsplit(".", 1)[-1]


def _record(op: Op, sail: Cost, *, bits: int, act_bits: int, group_size: int, tokens: int,
            config: MachineConfig, reuse: float | None = None,
            no_reuse_ns: float = 0.0) -> OpRecord:
    n1 = n1_op_cost(op, bits=bits, act_bits=act_bits, group_size=group_size, batch=tokens,
                    config=config)
    gpu = v100_op_cost(op, bits=bits, group_size=group_size, batch=tokens, config=config)
    return OpRecord(op, sail, n1, gpu, reuse, no_reuse_ns)


def _execute(artifact: Any, batch: int, past_len: int, seed: int, *, functional: bool,
             count_offload: bool = True) -> tuple[list[Any], dict[str, Any]]:
    """Run the artifact once on generated inputs with recording on: (the calls, the outputs)."""
    from ...inputs import InputPlan, generate_inputs

    inputs = generate_inputs(artifact.signature,
                             InputPlan(batch=batch, seq_len=1, past_len=past_len, seed=seed))
    executor = artifact.runner.executor
    executor.calls = []
    executor.record = True
    executor.functional = functional
    executor.count_offload = count_offload
    try:
        outputs = artifact.run(inputs)
    finally:
        executor.record = False
        executor.functional = True
        executor.count_offload = True
    calls, executor.calls = executor.calls, []
    return calls, outputs


def extrapolate_host_shapes(calls: list[Any], probes: list[list[Any]],
                            past_len: int) -> list[Any]:
    """``calls`` (recorded at ``PROBE_PAST_LENS[0]``) with every host kernel's operand shapes
    at ``past_len``: each dim is ``d0 + (d1 - d0) / (p1 - p0) * (past_len - p0)`` from its
    values at the first two probe lengths, after checking that the third lies on that line.

    Raises
    ------
    ArtifactError
        The probes ran different host kernels or operand ranks, or a dim is not affine in the
        past length (the message says to simulate without ``--timing-only``).
    """
    p0, p1, p2 = PROBE_PAST_LENS
    hosts = [c for c in calls if isinstance(c, HostCall)]
    others = [[c for c in probe if isinstance(c, HostCall)] for probe in probes]
    names = [c.instr.name for c in hosts]
    if any([c.instr.name for c in other] != names for other in others):
        raise ArtifactError("the program ran different host kernels at different past lengths; "
                            "simulate it without --timing-only")
    resized = []
    for call, *at in zip(hosts, *others, strict=True):
        def not_affine(c: HostCall = call, at: list[HostCall] = at) -> ArtifactError:
            return ArtifactError(
                f"host kernel {c.instr.name}: operand shapes {c.shapes}, {at[0].shapes}, "
                f"{at[1].shapes} at past lengths {p0}, {p1}, {p2} are not affine in the past "
                "length; simulate it without --timing-only")

        if len({tuple(map(len, c.shapes)) for c in (call, *at)}) != 1:
            raise not_affine()
        shapes = []
        for s0, s1, s2 in zip(call.shapes, *(c.shapes for c in at), strict=True):
            dims = []
            for d0, d1, d2 in zip(s0, s1, s2, strict=True):
                step = (d1 - d0) // (p1 - p0)
                dim = d0 + step * (past_len - p0)
                if d0 + step * (p1 - p0) != d1 or d0 + step * (p2 - p0) != d2 or dim < 0:
                    raise not_affine()
                dims.append(dim)
            shapes.append(tuple(dims))
        resized.append(dataclasses.replace(call, shapes=shapes))
    scaled = iter(resized)
    return [next(scaled) if isinstance(c, HostCall) else c for c in calls]


def host_traffic(calls: list[Any], config: MachineConfig, *,
                 kv_in_place: bool = False) -> list[tuple[float, float]]:
    """Per host kernel call of ``calls`` (one step, in order): its (DRAM bytes, LLC bytes)
    (module docstring: the KV cache's first access in the step is DRAM traffic at
    ``config.data.kv_cache_bits``, a later one LLC traffic if the buffer fits in the LLC;
    every other operand LLC traffic at its dtype's width; ``kv_in_place``: a cache update
    writes only the new positions)."""
    llc_capacity = config.llc.slices * config.llc.slice_kib * 1024
    kv_bytes = config.data.kv_cache_bits / 8
    seen: set[int | None] = set()
    traffic = []
    for call in calls:
        if not isinstance(call, HostCall):
            continue
        dram = llc = 0.0
        state = call.state or ("",) * len(call.shapes)
        buffers = call.buffers or (None,) * len(call.shapes)
        sizes = [float(np.prod(shape, dtype=np.float64)) for shape in call.shapes]
        update = kv_in_place and "past" in state and "present" in state
        if update:  # append in place: the new positions only, the past is not read
            kv = [(n, role) for n, role in zip(sizes, state, strict=True) if role]
            dram += (sum(n for n, role in kv if role == "present")
                     - sum(n for n, role in kv if role == "past")) * kv_bytes
        for elements, dtype, ptr, role in zip(sizes, call.dtypes, buffers, state, strict=True):
            if not role:
                llc += elements * np.dtype(dtype).itemsize
            elif update:
                continue
            elif ptr in seen and elements * kv_bytes <= llc_capacity:
                llc += elements * kv_bytes
            else:
                dram += elements * kv_bytes
                seen.add(ptr)
        traffic.append((dram, llc))
    return traffic


def simulate_run(artifact_dir: str | Path, batch: int, *, config: MachineConfig | None = None,
                 past_len: int = 7, seed: int = 0, functional: bool = True,
                 keep_outputs: bool = True, artifact: Any = None,
                 kv_in_place: bool = False) -> RunResult:
    """Run and cost one step of a pim-sim artifact (module docstring).

    Parameters
    ----------
    artifact_dir
        A ``sail compile --target pim-sim`` output.
    batch
        Sequences decoding together (one new token each).
    config
        The machine; None uses the one the program was mapped for.
    past_len
        Positions already in the KV cache (models with past inputs only).
    seed
        Seed of the generated inputs.
    functional
        False: timing only. The offload commands are not computed (zeros of the right shapes;
        the host code still runs, so every call's shapes and the patterns of the activations
        that reach it are still costed, but activations after the first LUT-GEMV are not the
        model's, so the reuse figures are those of made-up activations and ``outputs`` is
        empty). A model with a KV cache runs at :data:`PROBE_PAST_LENS`, not at ``past_len``
        (module docstring).
    keep_outputs
        Keep the model's outputs in the result (``sail simulate`` does not need them).
    artifact
        The loaded :class:`~sail_compiler.artifact.Artifact` of ``artifact_dir``, to simulate
        several batches without loading the weights again.
    kv_in_place
        Cost the KV cache as updated in place, not copied (module docstring).

    Raises
    ------
    OptionError
        Not a pim-sim artifact, a batch that is not a positive integer or a negative
        ``past_len``.
    ConfigError
        ``config`` is not the machine the program was mapped for.
    ArtifactError
        The artifact or its program is missing or damaged, or (timing only) a host kernel's
        shapes are not affine in the past length.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise OptionError(f"batch sizes must be positive integers, got {batch!r}")
    if isinstance(past_len, bool) or not isinstance(past_len, int) or past_len < 0:
        raise OptionError(f"--past-len takes a non-negative integer, got {past_len!r}")
    artifact = load_artifact(artifact_dir) if artifact is None else artifact
    program = artifact.runner.program
    config = program.config if config is None else config
    check_config(program, config)
    has_past = bool(artifact.signature.inputs_of("past"))
    if functional or not has_past:
        calls, outputs = _execute(artifact, batch, past_len, seed, functional=functional)
    else:
        calls, _ = _execute(artifact, batch, PROBE_PAST_LENS[0], seed, functional=False)
        probes = [_execute(artifact, batch, p, seed, functional=False, count_offload=False)[0]
                  for p in PROBE_PAST_LENS[1:]]
        calls = extrapolate_host_shapes(calls, probes, past_len)
        outputs = {}
    if not (keep_outputs and functional):
        outputs = {}

    luts = [c.instr for c in calls if c.instr.opcode == LUTGEMV]
    bits = Counter(i.attrs["bits"] for i in luts).most_common(1)[0][0] if luts else 8
    act_bits = luts[0].attrs["act_bits"] if luts else 8
    group_size = luts[0].attrs["group_size"] if luts else 128
    tokens = batch
    traffic = iter(host_traffic(calls, config, kv_in_place=kv_in_place))
    records: list[OpRecord] = []
    reuse: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for call in calls:
        instr, a = call.instr, call.instr.attrs
        row: dict[str, Any] = {"id": instr.id, "opcode": instr.opcode, "name": instr.name}
        if instr.opcode == QUANT:
            op: Op = QuantizeOp(instr.name, "quantize", a["k"])
            sail = quantize_cost(a["k"], act_bits=a["act_bits"], batch=call.tokens,
                                 config=config, placement=a["placement"],
                                 act_group=a.get("act_group"))
            base_ns = sum(sail.time_ns[c] for c in PIM_COMPUTE)
            records.append(_record(op, sail, bits=bits, act_bits=a["act_bits"],
                                   group_size=group_size, tokens=call.tokens, config=config,
                                   no_reuse_ns=base_ns))
        elif instr.opcode == LUTGEMV:
            op = GemvOp(instr.name, _role(instr.name), a["k"], a["n"])
            pattern_reuse = call.reuse_saved
            kw = {"bits": a["bits"], "act_bits": a["act_bits"], "group_size": a["group_size"],
                  "nbw": a["nbw"], "batch": call.tokens, "config": config,
                  "placement": a["dequant_placement"], "act_group": a.get("act_group"),
                  "lane_bits": instr.mapping.tiling.lane_bits}
            sail = lut_gemv_cost(a["k"], a["n"], reuse=pattern_reuse, **kw)
            base = lut_gemv_cost(a["k"], a["n"], reuse=0.0, **kw)
            hits, lookups = sail.events["reuse_hits"], sail.events["lookups"]
            records.append(_record(op, sail, bits=a["bits"], act_bits=a["act_bits"],
                                   group_size=a["group_size"], tokens=call.tokens,
                                   config=config, reuse=hits / lookups,
                                   no_reuse_ns=sum(base.time_ns[c] for c in PIM_COMPUTE)))
            entry = reuse.setdefault(instr.name, {"lookups": 0.0, "reuse_hits": 0.0})
            entry["lookups"] += lookups
            entry["reuse_hits"] += hits
            row.update(lookups=lookups, reuse_hits=hits)
        elif instr.opcode == DEQUANT:
            continue  # costed with the LUTGEMV it is fused into
        else:
            flops = HOST_FLOPS_PER_ELEMENT * call.elements
            dram, llc = next(traffic)
            op = HostOp(instr.name, instr.name, flops=flops / tokens, dram_bytes=dram / tokens,
                        llc_bytes=llc / tokens)
            sail = host_op_cost(config, flops=flops, dram_bytes=dram, llc_bytes=llc)
            records.append(_record(op, sail, bits=bits, act_bits=act_bits,
                                   group_size=group_size, tokens=tokens, config=config))
        row.update(tokens=getattr(call, "tokens", tokens), total_ns=sail.total_ns,
                   energy_pj=sail.energy_total_pj)
        rows.append(row)
    for entry in reuse.values():
        entry["hit_rate"] = entry["reuse_hits"] / entry["lookups"] if entry["lookups"] else 0.0

    totals = {}
    for machine in ("sail", "n1", "gpu"):
        total = Cost(0.0)
        for r in records:
            total += getattr(r, machine)
        totals[machine] = total
    placement = luts[0].attrs["dequant_placement"] if luts else "pim"
    workload = Workload(bits=bits, batch=tokens, act_bits=act_bits, group_size=group_size,
                        act_group=luts[0].attrs.get("act_group") if luts else None,
                        nbw=luts[0].attrs["nbw"] if luts else None, placement=placement)
    fits = v100_fits([r.op for r in records], bits=bits, group_size=group_size, batch=tokens,
                     config=config)
    cs = config.csram
    source = (f"this run's activations ({cs.reuse_table_entries}-entry reuse tables, "
              f"{cs.chunks_per_stream} chunks per feeder)")
    if not functional:
        source = "timing only: made-up activations after the first LUT-GEMV; " + source
        if has_past:
            source += (f"; patterns at a past of {PROBE_PAST_LENS[0]}, host kernels' shapes at "
                       f"{past_len} from pasts of {', '.join(map(str, PROBE_PAST_LENS))}")
    if has_past and kv_in_place:
        source += "; KV cache costed as updated in place (not the program's copy)"
    step = StepResult(Path(artifact_dir).name, workload, past_len + 1 if has_past else 1,
                      config, source, tuple(records), totals["sail"], totals["n1"],
                      totals["gpu"], fits)
    return RunResult(step, reuse, rows, outputs)
