"""The SAIL instruction set the pim-sim target lowers to.

SAIL adds one instruction to the CPU (arXiv 2509.25853): a descriptor-driven LUT-GEMV the cores
issue to the C-SRAM arrays of every last-level-cache slice. We model it and the two in-memory
type conversions as three offload commands, and everything else as host work:

``LUTGEMV``
    One ``sail.lut_gemv``: the descriptor (layer, K, N, weight bits, activation bits, group size
    g, NBW, output kind, where the dequantization runs, the lookup schedule) plus its operands
    and its **mapping** (:class:`Mapping`), which is :func:`.cost.plan_tiling` of the layer on the
    machine it was compiled for: output columns in column tiles of ``entries_per_row`` columns,
    K in chunks of NBW rows (``chunks_per_group`` per group); a *unit* is ``blocks_per_unit``
    consecutive chunks of one column tile, the table blocks one array holds. Units in
    column-tile-major order fill the machine ``A = slices * arrays_per_slice`` at a time (a
    *wave*); in a wave of ``U_w`` units each slice takes ``q_w = ceil(U_w / slices)``
    consecutive units (``arrays_per_slice`` for a full wave), so unit ``x`` runs on slice
    ``(x mod A) // q_w``, array ``(x mod A) mod q_w`` (:meth:`Mapping.units`). Partial outputs
    of one tile are reduced first inside each slice over the slice bus (a tree of
    ``intra_levels`` float adds), then across the slices holding the tile over the NoC to the
    slice of the tile's first unit (``cross_levels`` levels).
``QUANT``
    One ``sail.quantize``: float32 rows -> ``act_bits`` integers and a scale per row and block of
    ``act_group`` values, in the arrays (bit-serial, lane-parallel; :func:`.cost.quantize_cost`)
    or on the host.
``DEQUANT``
    One ``sail.dequantize``: int32 sums (one per sum block: a weight group, split at
    activation-block boundaries) -> float32 outputs. The LUT-GEMV whose sums it
    reads does it as the last phase of the same command (its cost includes it: ``fused_into``
    names that instruction), in the arrays or on the host by its ``placement``.
``HOST``
    A kernel of the host program (a fused TIR function of the llvm lowering), run by the cores.

Operands are named by the Relax variables of the lowered ``main`` (weights by their parameter
names, ``weight_<i>``). :class:`Instruction` round-trips through JSON (:meth:`to_json`,
:meth:`from_json`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

from ...errors import ArtifactError
from .config import MachineConfig
from .cost import Tiling

__all__ = ["DEQUANT", "HOST", "LUTGEMV", "OPCODES", "QUANT", "Instruction", "Mapping"]

LUTGEMV = "LUTGEMV"
QUANT = "QUANT"
DEQUANT = "DEQUANT"
HOST = "HOST"
OPCODES = (LUTGEMV, QUANT, DEQUANT, HOST)
#: Units listed one per line in ``program.txt``; beyond this the listing shows the first ones.
_LISTED_UNITS = 8


@dataclasses.dataclass(frozen=True)
class Mapping:
    """Where a LUT-GEMV's table blocks go: :class:`.cost.Tiling` plus the machine's shape.

    Attributes
    ----------
    tiling
        :func:`.cost.plan_tiling` of the layer with the chosen lane width.
    slices, arrays_per_slice
        The machine the tiling was made for.
    n
        Output columns N.
    """

    tiling: Tiling
    slices: int
    arrays_per_slice: int
    n: int

    @classmethod
    def of(cls, tiling: Tiling, config: MachineConfig, n: int) -> Mapping:
        return cls(tiling, config.llc.slices, config.csram.arrays_per_slice, n)

    def units(self) -> Iterator[dict[str, int]]:
        """Every unit in issue order: ``{"unit", "tile", "col_lo", "col_hi", "chunk_lo",
        "chunk_hi", "wave", "slice", "array"}`` (column and chunk ranges half-open)."""
        t = self.tiling
        n_arrays = self.slices * self.arrays_per_slice
        last_wave = t.units - (t.waves - 1) * n_arrays
        for x in range(t.units):
            tile, part = divmod(x, t.units_per_tile)
            wave, pos = divmod(x, n_arrays)
            per_slice = (self.arrays_per_slice if wave < t.waves - 1
                         else -(-last_wave // self.slices))
            chunk_lo = part * t.blocks_per_unit
            yield {"unit": x, "tile": tile, "col_lo": tile * t.entries_per_row,
                   "col_hi": min((tile + 1) * t.entries_per_row, self.n),
                   "chunk_lo": chunk_lo, "chunk_hi": min(chunk_lo + t.blocks_per_unit,
                                                         t.n_chunks),
                   "wave": wave, "slice": pos // per_slice, "array": pos % per_slice}

    def to_json(self) -> dict[str, Any]:
        return {"tiling": dataclasses.asdict(self.tiling), "slices": self.slices,
                "arrays_per_slice": self.arrays_per_slice, "n": self.n}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mapping:
        return cls(Tiling(**data["tiling"]), int(data["slices"]), int(data["arrays_per_slice"]),
                   int(data["n"]))

    def describe(self) -> list[str]:
        """Lines of the text listing: the tiling, the reduction and the first units."""
        t = self.tiling
        lines = [f"tiling: lane {t.lane_bits} b, {t.entries_per_row} cols/row, {t.col_tiles} "
                 f"col tiles x {t.n_chunks} chunks ({t.chunks_per_group}/group) = {t.blocks} "
                 f"blocks; {t.blocks_per_unit} blocks/unit, {t.units} units on {t.arrays_busy} "
                 f"arrays of {t.slices_used} slices in {t.waves} wave(s), "
                 f"{t.arrays_per_feeder} arrays/feeder",
                 f"reduce: slice bus tree of {t.intra_levels} level(s) "
                 f"({t.intra_columns_total} partial columns), then NoC tree of "
                 f"{t.cross_levels} level(s) to each tile's home slice "
                 f"({t.cross_columns} columns)"]
        for i, u in enumerate(self.units()):
            if i == _LISTED_UNITS:
                lines.append(f"... {t.units - _LISTED_UNITS} more units (same rule)")
                break
            lines.append(f"unit {u['unit']}: cols {u['col_lo']}..{u['col_hi'] - 1} chunks "
                         f"{u['chunk_lo']}..{u['chunk_hi'] - 1} -> wave {u['wave']} slice "
                         f"{u['slice']} array {u['array']}")
        return lines


@dataclasses.dataclass
class Instruction:
    """One entry of a SAIL program.

    Attributes
    ----------
    id
        Position in the program (also the id the compiled host code passes to the simulator
        for offload commands).
    opcode
        One of :data:`OPCODES`.
    name
        The layer (LUTGEMV, DEQUANT), the layers a QUANT feeds, or the host kernel.
    attrs
        The descriptor: for LUTGEMV ``k, n, bits, act_bits, group_size, act_group, nbw, output,
        placement, dequant_placement, schedule``; QUANT ``k, act_bits, act_group, placement``;
        DEQUANT ``n, groups, k, group_size, act_group, placement, fused_into``.
    inputs, outputs
        Operand names (Relax variables of the lowered ``main``).
    mapping
        LUTGEMV only: where its blocks go.
    """

    KEYS: ClassVar[tuple[str, ...]] = ("id", "opcode", "name", "attrs", "inputs", "outputs")

    id: int
    opcode: str
    name: str
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: list[str] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)
    mapping: Mapping | None = None

    def to_json(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.KEYS}
        if self.mapping is not None:
            out["mapping"] = self.mapping.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instruction:
        """Raises :class:`ArtifactError` on a malformed entry."""
        try:
            if data["opcode"] not in OPCODES:
                raise ValueError(f"unknown opcode {data['opcode']!r}")
            mapping = Mapping.from_json(data["mapping"]) if "mapping" in data else None
            return cls(int(data["id"]), str(data["opcode"]), str(data["name"]),
                       dict(data["attrs"]), list(data["inputs"]), list(data["outputs"]), mapping)
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"malformed program instruction {str(data)[:120]}: {err}; "
                                "recompile the model with --target pim-sim") from err

    def line(self) -> str:
        """The instruction's line in ``program.txt`` (without its mapping)."""
        attrs = " ".join(f"{k}={v}" for k, v in self.attrs.items())
        return (f"{self.id:4d}  {self.opcode:<8} {self.name}  {attrs}  "
                f"({', '.join(self.inputs)}) -> ({', '.join(self.outputs)})")
