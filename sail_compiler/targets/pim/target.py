"""The ``pim-sim`` target: host ops on the Relax VM, SAIL commands on the functional simulator.

Lowering: :class:`~.program.LowerToSAILProgram` replaces every ``sail.quantize``,
``sail.lut_gemv`` and ``sail.dequantize`` by a call of the global function ``sail.pim.exec``
(:data:`~.program.EXEC_FUNC`) with the command's slot and operands; the shared CPU lowering
(:func:`~sail_compiler.lowering.pipeline.lowering_passes`) builds everything else;
:class:`~sail_compiler.passes.LiftWeightsToParams` lifts the weights out (into ``main``'s
``"params"`` attribute, for ``weights.bin``); and the build lists the program
(:func:`~.program.list_program`) from the commands the lowering left in ``main``: it reads
nothing but the module. The machine is ``options.pim_config``: a preset name or a TOML file
(:func:`resolve_config`; default ``sail-n1``).

Execution (:class:`Executor`): ``sail.pim.exec`` runs each command in NumPy, exactly as the
hardware computes it. QUANT is :func:`~sail_compiler.ops.sail_ops.reference_quantize` (one
scale per row and activation block). LUTGEMV builds the SAIL weight tables of its layer
(:func:`build_tables`, equal to :func:`~sail_compiler.quant.lut.sail_tables`, per sum block: the
weight groups, split at activation-block boundaries by
:func:`~sail_compiler.quant.reference.split_groups`) one block of output columns at a time, and
reads them with the deduplicated lookup schedule of the call's activations
(:func:`~sail_compiler.quant.patterns.lookup_schedule`), shift-accumulating the bit planes (the
fan-out of the reads as one exact float64 product per sum block, :class:`_FanOut`): the int32
sums equal :func:`~sail_compiler.ops.sail_ops.reference_group_sums`. Tables are not kept between
calls, so the simulator's memory does not grow with the weights times the batch. DEQUANT (and the
fused dequantization of ``output="float"``) is
:func:`~sail_compiler.ops.sail_ops.reference_dequantize`: ``sum_j (s * sx) * float32(S)`` in
float32, sum block by sum block from 0, each product rounded before the add (the in-memory,
per-group dequantization: each sum meets its group's and its block's scale); the llvm kernels
compute
exactly that (``llvm.arithmetic.fence`` keeps LLVM from contracting them into FMAs), so outputs
are bit-identical to the llvm target's.
With recording on, the executor also keeps every command's token count
and, for a LUTGEMV, its lookup count and the fraction its reuse tables (or its deduplicated
schedule) save, and through the VM's instrument hook every host kernel call's operand shapes,
for :mod:`.run` to cost.

Artifact files, beside ``manifest.json``: ``model.so`` and ``weights.bin`` (as the llvm target),
``program.json`` and ``program.txt`` (:mod:`.program`). Manifest fields: ``pim_config`` (the
machine's name), ``pim_config_fingerprint``, ``program``, ``program_listing`` and the count of
each opcode.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import relax

from ...errors import ArtifactError, OptionError
from ...frontend.signature import ModelSignature
from ...lowering import build_pipeline, host_target, lowering_passes
from ...ops.sail_ops import reference_dequantize, reference_quantize
from ...passes import LiftWeightsToParams
from ...passes.lift_weights_to_params import detach_weights
from ...quant.lut import activation_patterns, chunk_layout
from ...quant.packing import unpack_bits
from ...quant.patterns import ReuseConfig, count_reuse, lookup_schedule
from ...quant.reference import ActBlocks, QuantizedWeight, split_groups
from ...weights_file import read_weights, write_weights
from ..base import Runner, TargetBackend, register_target
from .config import PRESETS, MachineConfig, load_config
from .isa import DEQUANT, HOST, LUTGEMV, QUANT, Instruction
from .program import (
    EXEC_FUNC,
    PROGRAM_JSON,
    PROGRAM_TXT,
    LowerToSAILProgram,
    Program,
    list_program,
    load_program,
)

if TYPE_CHECKING:
    from ...options import CompileOptions

__all__ = ["Executor", "HostCall", "OffloadCall", "PIMSimTarget", "build_tables",
           "resolve_config"]

LIBRARY = "model.so"
WEIGHTS = "weights.bin"
DEFAULT_CONFIG = "sail-n1"


def resolve_config(spec: str | None) -> MachineConfig:
    """The machine named by ``--pim-config``: a preset name or a TOML file (None: sail-n1).

    Raises
    ------
    OptionError
        Neither a preset nor a readable TOML file (the presets are listed), or an invalid
        configuration (:class:`~.config.ConfigError`).
    """
    if spec is None or spec in PRESETS:
        return load_config(spec or DEFAULT_CONFIG)
    if not Path(spec).is_file():
        raise OptionError(f"--pim-config {spec!r} is neither a machine preset ("
                          f"{', '.join(sorted(PRESETS))}) nor a TOML file")
    return load_config(DEFAULT_CONFIG, spec)


@register_target("pim-sim")
class PIMSimTarget(TargetBackend):
    description = "SAIL program on the functional PIM simulator; host ops on the Relax VM"

    def lowering_passes(self, options: CompileOptions) -> list[tvm.transform.Pass]:
        if options.probe:
            raise OptionError("the pim-sim target cannot record group sums (the reference "
                              "check builds its probe for llvm)")
        config = resolve_config(getattr(options, "pim_config", None))
        return [LowerToSAILProgram(config), *lowering_passes(host_target(options.num_threads)),
                LiftWeightsToParams()]

    def build(self, mod: tvm.IRModule, signature: ModelSignature, out_dir: Path,
              options: CompileOptions) -> dict[str, Any]:
        program = list_program(mod)
        target = host_target(options.num_threads)
        mod, weights = detach_weights(mod)
        executable = relax.build(mod, target=target, relax_pipeline=build_pipeline(target))
        executable.export_library(str(out_dir / LIBRARY))
        write_weights(out_dir / WEIGHTS, weights)
        program.write(out_dir)
        counts = {op: sum(i.opcode == op for i in program.instructions)
                  for op in (LUTGEMV, QUANT, DEQUANT, HOST)}
        return {"library": LIBRARY, "weights": WEIGHTS, "num_weights": len(weights),
                "tvm_target": str(target), "program": PROGRAM_JSON,
                "program_listing": PROGRAM_TXT, "pim_config": program.config.name,
                "pim_config_fingerprint": program.fingerprint, "instructions": counts}

    def load(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        return PIMRunner(out_dir, manifest)


@dataclasses.dataclass
class OffloadCall:
    """One executed offload command: its instruction, the tokens it processed and, for a
    LUTGEMV, what the statistics need of its lookups: their count and the fraction the reuse
    tables (or the deduplicated schedule, for ``schedule="dedup"``) serve without a row read.
    The patterns themselves are not kept (the simulator's memory must not grow with the
    program times the batch)."""

    instr: Instruction
    tokens: int
    lookups: int = 0
    reuse_saved: float | None = None


@dataclasses.dataclass
class HostCall:
    """One executed host kernel: its instruction and the shapes and dtypes of its operands."""

    instr: Instruction
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    buffers: tuple[int, ...] = ()
    """Per operand, its buffer's address in this run (which operands are the same buffer)."""
    state: tuple[str, ...] = ()
    """Per operand: ``"past"`` (a past input's buffer), ``"present"`` (a present output's) or
    ``""`` (:meth:`Executor.mark_state`); empty: no operand is KV-cache state."""

    @property
    def bytes(self) -> int:
        """Bytes of all operands (inputs and the output buffer)."""
        return sum(int(np.prod(s)) * np.dtype(d).itemsize
                   for s, d in zip(self.shapes, self.dtypes, strict=True))

    @property
    def elements(self) -> int:
        """Elements of the largest operand."""
        return max((int(np.prod(s)) for s in self.shapes), default=0)


def build_tables(q: np.ndarray, zero: np.ndarray, *, group_size: int, nbw: int) -> np.ndarray:
    """:func:`~sail_compiler.quant.lut.sail_tables` (equal to it), built the way the arrays do:
    entry ``p`` is entry ``p`` without its highest bit plus that bit's weight ``q - z`` (one add
    per entry), in int32 instead of an int64 product with the subset matrix."""
    k_pad, n = q.shape
    layout = chunk_layout(k_pad, group_size, nbw)
    w = np.zeros((layout.n_groups, layout.chunks_per_group * nbw, n), np.int32)
    w[:, :group_size] = (q.astype(np.int32) - np.repeat(zero.astype(np.int32), group_size,
                                                         axis=0)).reshape(layout.n_groups,
                                                                          group_size, n)
    w = w.reshape(layout.n_chunks, nbw, n)
    tables = np.zeros((layout.n_chunks, 1 << nbw, n), np.int32)
    for j in range(nbw):
        half = 1 << j
        np.add(tables[:, :half], w[:, j][:, None], out=tables[:, half:2 * half])
    return tables


class _FanOut:
    """The group sums of one call from its deduplicated reads (as ``LookupSchedule.apply``):
    every read fetches one table row once; lookup ``(t, c, i)`` adds its read's row times
    ``2**i`` (the sign plane subtracted). The per-token weight of every read is gathered once
    (``coef[t, r]``), then each sum block's reads meet their rows in one float64 matrix product:
    exact, as every product and partial sum is an integer below 2**53 (checked; otherwise the
    schedule's own integer fan-out)."""

    def __init__(self, schedule: Any, act_bits: int, nbw: int, bits: int) -> None:
        self.schedule = schedule
        b, c_total, b_a = schedule.source.shape
        weight = (1 << np.arange(b_a)).astype(np.float64)
        weight[-1] = -weight[-1]
        coef = np.zeros((b, schedule.reads), np.float64)
        tokens = np.repeat(np.arange(b), c_total)
        for i in range(b_a):
            np.add.at(coef, (tokens, schedule.source[:, :, i].ravel()), weight[i])
        self.coef = coef
        self.bound = float(2 ** act_bits) * nbw * (2 ** bits) * max(1, schedule.reads)

    def __call__(self, tables: np.ndarray, chunks_per_group: int) -> np.ndarray:
        s = self.schedule
        b, c_total, _ = s.source.shape
        if self.bound >= 2.0 ** 53:
            return s.apply(tables, chunks_per_group=chunks_per_group)
        groups = c_total // chunks_per_group
        rows = tables[s.read_chunk, s.read_pattern].astype(np.float64)  # [R, N], one read each
        edges = np.searchsorted(s.read_chunk, np.arange(groups + 1) * chunks_per_group)
        out = np.empty((b, groups, tables.shape[2]), np.float64)
        for g in range(groups):
            lo, hi = edges[g], edges[g + 1]
            out[:, g] = self.coef[:, lo:hi] @ rows[lo:hi]
        return out


def _zeros(shape: tuple[int, ...], dtype: type) -> tvm.runtime.Tensor:
    """A TVM tensor of zeros whose pages are never touched here: NumPy's zeroed allocation
    (large ones are fresh pages of the OS), shared with TVM at a 64-byte aligned offset. A
    timing-only LUTGEMV's int32 sums (tokens x groups x N) then cost address space, not RAM,
    until something reads them."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    array = raw[start:start + nbytes].view(dtype).reshape(shape)
    if array.size == 0 or array.ndim == 0:
        return tvm.runtime.tensor(np.zeros(shape, dtype))
    return tvm.runtime.from_dlpack(array)


class Executor:
    """Runs a program's offload commands in NumPy (module docstring) and records what ran.

    Memory: a LUTGEMV's tables are built for one block of output columns at a time, read with
    the call's lookup schedule and dropped (nothing is cached between calls), so the executor
    holds at most about ``block_bytes`` of tables and partial sums whatever the model's size and
    the batch. ``functional=False`` (timing only) skips the tables and returns zeros of the
    right shapes: the host code still runs, the patterns of each call are still counted, but
    outputs after the first LUTGEMV are meaningless; a LUTGEMV's weights are then never read
    (with the runner's weights mapped from ``weights.bin``, their pages are never touched).
    ``count_offload = False`` also skips the patterns: only the host kernels' shapes are
    recorded.
    """

    #: Bytes of tables and int64 partial sums one column block may take.
    BLOCK_BYTES = 64 * 2**20

    def __init__(self, program: Program, *, functional: bool = True,
                 block_bytes: int | None = None) -> None:
        self.program = program
        self.by_slot = {int(i.attrs["slot"]): i for i in program.offload()}
        self.host_kernels = {i.name: i for i in program.instructions if i.opcode == HOST}
        self.record = False
        self.functional = functional
        self.count_offload = True
        self.block_bytes = self.BLOCK_BYTES if block_bytes is None else int(block_bytes)
        self.calls: list[OffloadCall | HostCall] = []
        cs = program.config.csram
        self._reuse = ReuseConfig(size=cs.reuse_table_entries,
                                  chunks_per_stream=cs.chunks_per_stream)

    def __call__(self, slot: int, *args: Any) -> Any:
        instr = self.by_slot[int(slot)]
        a = instr.attrs
        act_group = a.get("act_group", a["k"])  # programs without it: one scale per row
        if instr.opcode == QUANT:
            x = args[0].numpy()
            xq, sx = reference_quantize(x, a["act_bits"], act_group)
            self._note(OffloadCall(instr, int(np.prod(x.shape[:-1]))))
            return [tvm.runtime.tensor(xq), tvm.runtime.tensor(sx)]
        blocks = ActBlocks(a["k"], a["group_size"], act_group)
        if instr.opcode == DEQUANT:
            if not self.functional:  # sums [..., S, N] -> zeros [..., N], nothing read
                return _zeros((*args[0].shape[:-2], int(args[0].shape[-1])), np.float32)
            return tvm.runtime.tensor(reference_dequantize(args[0].numpy(), args[1].numpy(),
                                                           args[2].numpy(), blocks))
        x = args[0].numpy()  # the weights (args[1:]) are read only when computed
        n = int(args[2].shape[1])
        if not self.functional:
            # the statistics of the call, then zeros: its weights are never touched
            self._lut_gemv_stats(instr, blocks, x.reshape(-1, x.shape[-1]))
            if a["output"] == "float":
                return _zeros((*x.shape[:-1], n), np.float32)
            return _zeros((*x.shape[:-1], blocks.n_sums, n), np.int32)
        sums = self._lut_gemv(instr, blocks, x.reshape(-1, x.shape[-1]), args[1].numpy(),
                              args[2].numpy())
        sums = sums.reshape(*x.shape[:-1], *sums.shape[1:])
        if a["output"] == "float":
            return tvm.runtime.tensor(reference_dequantize(sums, args[3].numpy(),
                                                           args[4].numpy(), blocks))
        return tvm.runtime.tensor(sums)

    def _note(self, call: OffloadCall) -> None:
        if self.record:
            self.calls.append(call)

    def _lut_gemv_stats(self, instr: Instruction, blocks: ActBlocks, xq: np.ndarray) -> Any:
        """The lookup schedule of a LUTGEMV's activations ``xq [T, K]``; with recording on, the
        call's lookups and the fraction its reuse tables (or schedule) save are noted. With
        ``count_offload`` off (the timing-only context probes of :mod:`.run`) nothing is
        computed and None returned."""
        if not self.count_offload or xq.shape[0] == 0:
            return None
        a = instr.attrs
        patterns = activation_patterns(xq, group_size=blocks.sum_size, nbw=a["nbw"],
                                       act_bits=a["act_bits"])
        schedule = lookup_schedule(patterns)
        if self.record:
            saved = (1.0 - schedule.reads / schedule.lookups if a["schedule"] == "dedup"
                     else count_reuse(patterns, a["nbw"], self._reuse).table_saved_fraction)
            self._note(OffloadCall(instr, xq.shape[0], int(patterns.size), saved))
        return schedule

    def _lut_gemv(self, instr: Instruction, blocks: ActBlocks, xq: np.ndarray,
                  packed: np.ndarray, zero: np.ndarray) -> np.ndarray:
        a = instr.attrs
        size = blocks.sum_size  # the tables are laid out per sum block
        layout = chunk_layout(a["k"], size, a["nbw"])
        n = zero.shape[1]
        if xq.shape[0] == 0:
            return np.zeros((0, blocks.n_sums, n), np.int32)
        schedule = self._lut_gemv_stats(instr, blocks, xq)
        fan_out = _FanOut(schedule, a["act_bits"], a["nbw"], a["bits"])
        # Per column: the tables (int32 [C, 2**NBW]) and their float64 read rows [R].
        per_column = layout.n_chunks * (1 << a["nbw"]) * (4 + 8) + 8 * xq.shape[0] * 2
        step = max(1, min(n, self.block_bytes // per_column))
        k_pad = zero.shape[0] * a["group_size"]
        out = np.empty((xq.shape[0], blocks.n_sums, n), np.int32)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            q = unpack_bits(packed[:, lo:hi], a["bits"], k_pad, axis=0)
            qw = split_groups(QuantizedWeight(q, np.ones((zero.shape[0], hi - lo), np.float32),
                                              zero[:, lo:hi].astype(np.uint8), a["bits"],
                                              a["group_size"], a["k"]), blocks)
            tables = build_tables(qw.q, qw.zero_points(), group_size=size, nbw=a["nbw"])
            out[:, :, lo:hi] = fan_out(tables, layout.chunks_per_group)
        return out

    def instrument(self, _func: Any, symbol: str, before: bool, _ret: Any, *args: Any) -> int:
        """The VM's instrument hook: records host kernel calls (before they run)."""
        if before and self.record and symbol in self.host_kernels:
            tensors = [a for a in args if hasattr(a, "shape") and hasattr(a, "dtype")]
            self.calls.append(HostCall(self.host_kernels[symbol],
                                       [tuple(int(d) for d in t.shape) for t in tensors],
                                       [str(t.dtype) for t in tensors],
                                       tuple(int(t.data_ptr()) for t in tensors)))
        return 0

    def mark_state(self, pasts: list[int], presents: list[int]) -> None:
        """Flag the recorded host calls' KV-cache operands (:attr:`HostCall.state`): those whose
        buffer is one of ``pasts`` (the run's past inputs), and those whose buffer is one of
        ``presents`` (its present outputs) from the last call that wrote that buffer on (a
        buffer freed earlier in the run may have had the same address). A call's outputs are
        its last ``len(instr.outputs)`` tensor operands (destination passing)."""
        hosts = [c for c in self.calls if isinstance(c, HostCall)]
        since = {}
        for i, call in enumerate(hosts):
            n_out = len(call.instr.outputs)
            for ptr in call.buffers[len(call.buffers) - n_out:]:
                if ptr in presents:
                    since[ptr] = i
        past_set = set(pasts)
        for i, call in enumerate(hosts):
            call.state = tuple("past" if p in past_set
                               else "present" if since.get(p, len(hosts)) <= i else ""
                               for p in call.buffers)


_ACTIVE = threading.local()


def _exec(slot: int, *args: Any) -> Any:
    executor = getattr(_ACTIVE, "executor", None)
    assert executor is not None, "sail.pim.exec called outside a pim-sim run"
    return executor(slot, *args)


tvm.register_global_func(EXEC_FUNC, _exec, override=True)


def _mapped_tensor(array: np.ndarray) -> tvm.runtime.Tensor:
    """A TVM tensor over a read-only view of the mapped weight file, without a copy (DLPack
    1.0 carries the read-only flag; the VM's kernels only read their weights). Empty, 0-d and
    unaligned arrays (TVM takes 64-byte aligned data only) are copied."""
    if array.size and array.ndim and array.flags.c_contiguous and array.ctypes.data % 64 == 0:
        return tvm.runtime.from_dlpack(array.__dlpack__(max_version=(1, 0)))
    return tvm.runtime.tensor(np.ascontiguousarray(array))


class PIMRunner(Runner):
    """A loaded pim-sim artifact; :attr:`executor` holds the program and what ran. The VM's
    weights are TVM tensors over the memory-mapped ``weights.bin`` (checked, then mapped page
    by page as the kernels read them), not a copy."""

    def __init__(self, out_dir: Path, manifest: dict[str, Any]) -> None:
        self.program = load_program(out_dir)
        if self.program.fingerprint != manifest.get("pim_config_fingerprint"):
            raise ArtifactError(f"{out_dir / PROGRAM_JSON} does not belong to this artifact "
                                "(its machine fingerprint differs from the manifest's); "
                                "recompile the model with --target pim-sim")
        arrays = read_weights(out_dir / manifest["weights"])
        if len(arrays) != manifest["num_weights"]:
            raise ArtifactError(f"{out_dir / manifest['weights']} holds {len(arrays)} tensors, "
                                f"the model needs {manifest['num_weights']}; recompile the model")
        self.weights = [_mapped_tensor(a) for a in arrays]
        self.vm = relax.VirtualMachine(
            tvm.runtime.load_module(str(out_dir / manifest["library"])), tvm.cpu())
        self.executor = Executor(self.program)
        self.vm.set_instrument(self.executor.instrument)
        signature = ModelSignature.from_json(manifest["signature"])
        self._pasts = [(i, s.present) for i, s in enumerate(signature.inputs)
                       if s.role == "past"]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        args = [tvm.runtime.tensor(np.asarray(x, order="C")) for x in inputs]
        _ACTIVE.executor = self.executor
        try:
            result = self.vm["main"](*args, *self.weights)
        finally:
            _ACTIVE.executor = None
        results = [result] if hasattr(result, "numpy") else list(result)
        if self.executor.record and self._pasts:
            self.executor.mark_state(
                [int(args[i].data_ptr()) for i, _ in self._pasts],
                [int(results[j].data_ptr()) for _, j in self._pasts if j is not None])
        return [r.numpy() for r in results]
