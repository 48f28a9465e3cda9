"""Machine configuration of the simulated SAIL system and its baselines.

A :class:`MachineConfig` is a tree of frozen dataclasses, one per part of the machine:
``host`` (the CPU cores), ``llc`` (the last-level-cache slices), ``csram`` (the compute-capable
SRAM arrays beside each slice and their data-feeding modules), ``noc`` (the on-chip network),
``dram``, ``energy`` (energy per event), ``gpu`` (the V100 baseline), ``price`` ($/hour for
tokens per dollar), ``data`` (storage formats of scales and the KV cache) and ``baseline`` (the
N1 baseline's software model: unpack per token or per step, its own DRAM efficiency).

Every field carries its unit and its source in its metadata (``unit``, ``source``); a source
that starts with "assumption" is a value the SAIL paper (arXiv 2509.25853) does not publish, with
the reason for the value chosen. :func:`describe` prints them as a table.

Presets (:func:`preset`, :data:`PRESETS`, :func:`register_preset`):

* ``sail-n1``: a Neoverse-N1 server like the paper's baseline (64 cores, one 1 MiB LLC slice per
  core, DDR4-3200 x 8 channels), with 8 KiB 256 x 256 C-SRAM arrays filling every slice.
* ``tiny``: a two-slice toy with round numbers, small enough to compute the tests' expected
  costs by hand.

:func:`load_config` starts from a preset and applies a TOML file's overrides
(``[section] field = value``; a top-level ``preset = "..."`` picks the base). Every
configuration is validated when it is built: an impossible value raises
:class:`ConfigError` (an :class:`~sail_compiler.errors.OptionError`) naming every offending
field with its valid range.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ...errors import OptionError, valid_choices

__all__ = [
    "PRESETS",
    "N1_DEQUANT",
    "BaselineConfig",
    "ConfigError",
    "CsramConfig",
    "DataConfig",
    "DramConfig",
    "EnergyConfig",
    "GpuConfig",
    "HostConfig",
    "LlcConfig",
    "MachineConfig",
    "NocConfig",
    "PriceConfig",
    "describe",
    "load_config",
    "preset",
    "register_preset",
]


class ConfigError(OptionError):
    """An impossible machine configuration; ``problems`` lists every offending field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid machine configuration: " + "; ".join(self.problems))


def _param(default: Any, unit: str, source: str, *, lo: float | None = None,
           hi: float | None = None, lo_open: bool = False, integer: bool = False,
           choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default, unit, source and valid range (``lo_open``: ``lo`` excluded)."""
    return dataclasses.field(default=default, metadata={
        "unit": unit, "source": source, "lo": lo, "hi": hi, "lo_open": lo_open,
        "integer": integer, "choices": choices})


def _range_text(meta: dict[str, Any]) -> str:
    if meta["choices"]:
        return valid_choices(meta["choices"])
    kind = "an integer" if meta["integer"] else "a number"
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and hi is not None:
        low = f"({lo}" if meta["lo_open"] else f"[{lo}"
        return f"{kind} in {low}, {hi}]"
    if lo is not None:
        return f"{kind} {'>' if meta['lo_open'] else '>='} {lo}"
    return kind


def _field_problem(section: str, field: dataclasses.Field, value: Any) -> str | None:
    meta = field.metadata
    name = f"{section}.{field.name}"
    if meta["choices"]:
        ok = value in meta["choices"]
    elif isinstance(value, bool) or not isinstance(value, int | float):
        ok = False
    elif meta["integer"] and not (isinstance(value, int) or float(value).is_integer()):
        ok = False
    elif not math.isfinite(value):
        ok = False
    else:
        lo, hi = meta["lo"], meta["hi"]
        ok = (lo is None or (value > lo if meta["lo_open"] else value >= lo)) \
            and (hi is None or value <= hi)
    if ok:
        return None
    unit = f" ({meta['unit']})" if meta["unit"] else ""
    return f"{name}{unit} must be {_range_text(meta)}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class _Section:
    """Base of the config sections: validates every field against its metadata on creation."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        for field in dataclasses.fields(self):  # store integral ints as int (TOML gives 2.0)
            value = getattr(self, field.name)
            if field.metadata["integer"] and isinstance(value, float):
                object.__setattr__(self, field.name, int(value))

    def problems(self) -> list[str]:
        """Every field outside its valid range, then the section's own consistency checks."""
        found = [_field_problem(self.SECTION, f, getattr(self, f.name))
                 for f in dataclasses.fields(self)]
        found = [p for p in found if p]
        return found or self._consistency()

    def _consistency(self) -> list[str]:
        return []


@dataclasses.dataclass(frozen=True)
class HostConfig(_Section):
    """The CPU cores: they run the host ops (norms, attention, ...) and the N1 baseline."""

    SECTION: ClassVar[str] = "host"
    cores: int = _param(64, "cores", "issue spec: the paper's Neoverse-N1 server (as AWS "
                        "Graviton2: 64 N1 cores)", lo=1, hi=4096, integer=True)
    clock_ghz: float = _param(2.5, "GHz", "AWS Graviton2 runs its Neoverse-N1 cores at 2.5 GHz",
                              lo=0, hi=10, lo_open=True)
    simd_pipes: int = _param(2, "128-bit pipes per core", "Arm Neoverse-N1 TRM: two ASIMD "
                             "pipelines (V0, V1)", lo=1, hi=16, integer=True)
    simd_bits: int = _param(128, "bits", "Neoverse-N1: 128-bit Advanced SIMD, no SVE",
                            lo=32, hi=2048, integer=True)
    vector_efficiency: float = _param(0.8, "fraction of SIMD peak", "assumption: sustained "
                                      "fraction of peak of well-tuned multi-threaded kernels",
                                      lo=0, hi=1, lo_open=True)
    sync_ns: float = _param(1000.0, "ns per parallel op", "assumption: fork/join barrier of a "
                            "thread pool over all cores, paid by every host op", lo=0)

    @property
    def fp32_flops_per_cycle(self) -> int:
        """FP32 flops per cycle per core: pipes x lanes x 2 (fused multiply-add)."""
        return self.simd_pipes * (self.simd_bits // 32) * 2


@dataclasses.dataclass(frozen=True)
class LlcConfig(_Section):
    """The last-level cache: one slice per core on the mesh."""

    SECTION: ClassVar[str] = "llc"
    slices: int = _param(64, "slices", "issue spec: one LLC slice per core", lo=1, hi=4096,
                         integer=True)
    slice_kib: int = _param(1024, "KiB", "issue spec: 1 MiB per slice", lo=1, integer=True)
    read_bytes_per_cycle: int = _param(32, "bytes per core cycle per slice", "assumption: one "
                                       "32-byte data flit per cycle per slice (CMN-class mesh)",
                                       lo=1, integer=True)


@dataclasses.dataclass(frozen=True)
class CsramConfig(_Section):
    """Compute-capable SRAM arrays in each slice and their data-feeding modules.

    Tables are stored row-wise: row ``p`` of a table block holds entry ``p`` of
    ``columns // entry_bits`` output columns, so one row read serves all of them (see
    :mod:`.cost`). Bit-serial steps (adds, conversions) process every bit-line of an array at
    once, one bit per cycle.
    """

    SECTION: ClassVar[str] = "csram"
    #: Rows an in-memory type conversion needs: an int32 or float32 input, the float32 result
    #: and 32 temporaries, one bit per row in transposed layout (:mod:`.cost`).
    CONVERSION_ROWS: ClassVar[int] = 96

    arrays_per_slice: int = _param(128, "arrays", "assumption: every 8 KiB array of the 1 MiB "
                                   "slice is compute-capable (1 MiB / 8 KiB)", lo=1, hi=65536,
                                   integer=True)
    rows: int = _param(256, "rows (word lines)", "assumption: 8 KiB 256 x 256 sub-arrays, the "
                       "LLC array size used by Neural Cache (ISCA 2018)", lo=CONVERSION_ROWS,
                       hi=65536, integer=True)
    columns: int = _param(256, "columns (bit lines)", "assumption: as rows", lo=16, hi=65536,
                          integer=True)
    clock_ghz: float = _param(2.0, "GHz", "assumption: a bit-line compute cycle (two word lines "
                              "and write-back) is slower than the 2.5 GHz core clock", lo=0,
                              hi=10, lo_open=True)
    row_read_cycles: int = _param(2, "array cycles", "assumption: precharge + sense of one table "
                                  "row", lo=1, integer=True)
    row_write_cycles: int = _param(1, "array cycles", "assumption", lo=1, integer=True)
    add_cycles_per_bit: int = _param(1, "array cycles per bit", "assumption: bit-serial carry "
                                     "propagation, as Neural Cache's (n + 1)-cycle n-bit add",
                                     lo=1, integer=True)
    add_overhead_cycles: int = _param(1, "array cycles per add", "Neural Cache: an n-bit add "
                                      "takes n + 1 cycles", lo=0, integer=True)
    shift_accumulate_cycles: int = _param(1, "array cycles per lookup", "assumption: a "
                                          "peripheral shifter and adder take one read row per "
                                          "cycle, not overlapped with the next read", lo=1,
                                          integer=True)
    nbw: int = _param(4, "weights per table", "paper's NBW example and the compiler's --nbw "
                      "default; the largest NBW the data-feeding modules index", lo=1, hi=8,
                      integer=True)
    feeders_per_slice: int = _param(16, "data-feeding modules", "assumption: each holds a "
                                    "32-entry reuse table of 256-bit rows (1 KiB); 16 per 1 MiB "
                                    "slice is 1.6% of its SRAM, within the paper's 2% overhead",
                                    lo=1, integer=True)
    reuse_table_entries: int = _param(32, "entries per feeder", "paper: 32-entry pattern reuse "
                                      "table", lo=1, hi=65536, integer=True)
    chunks_per_stream: int = _param(8, "tables per feeder stream", "assumption, as "
                                    "quant.patterns.ReuseConfig (the paper gives no figure)",
                                    lo=1, integer=True)
    slice_bus_bytes_per_cycle: int = _param(64, "bytes per array cycle", "assumption: the "
                                            "slice's internal bus moving partial sums between "
                                            "its arrays", lo=1, integer=True)
    launch_ns: float = _param(200.0, "ns per SAIL instruction", "assumption: issue the new "
                              "instruction, broadcast it to every slice, collect completion",
                              lo=0)

    def _consistency(self) -> list[str]:
        problems = []
        if 1 << self.nbw > self.rows:
            problems.append(f"csram.nbw = {self.nbw} needs tables of {1 << self.nbw} rows but "
                            f"csram.rows = {self.rows}; valid nbw: 1..{self.rows.bit_length() - 1}")
        if self.feeders_per_slice > self.arrays_per_slice:
            problems.append(f"csram.feeders_per_slice must be in 1..arrays_per_slice "
                            f"({self.arrays_per_slice}), got {self.feeders_per_slice}")
        return problems

    @property
    def arrays_per_feeder(self) -> int:
        """Arrays one data-feeding module serves (its lookups to them are serial)."""
        return -(-self.arrays_per_slice // self.feeders_per_slice)


@dataclasses.dataclass(frozen=True)
class NocConfig(_Section):
    """The mesh between slices: reductions across slices and activation broadcasts."""

    SECTION: ClassVar[str] = "noc"
    clock_ghz: float = _param(2.0, "GHz", "assumption: CMN-class mesh clock", lo=0, hi=10,
                              lo_open=True)
    link_bytes_per_cycle: int = _param(32, "bytes per cycle per link", "assumption: 256-bit "
                                       "data links", lo=1, integer=True)
    hop_cycles: int = _param(2, "NoC cycles per hop", "assumption: router + link", lo=0,
                             integer=True)


@dataclasses.dataclass(frozen=True)
class DramConfig(_Section):
    """Main memory: weights stream from here every decode step."""

    SECTION: ClassVar[str] = "dram"
    channels: int = _param(8, "channels", "issue spec: DDR4-3200 x 8 channels", lo=1, hi=64,
                           integer=True)
    mt_per_s: int = _param(3200, "MT/s", "DDR4-3200", lo=1, integer=True)
    bus_bytes: int = _param(8, "bytes per transfer per channel", "DDR4: 64-bit channel", lo=1,
                            integer=True)
    efficiency: float = _param(0.8, "fraction of peak", "assumption: sustained streaming reads "
                               "reach ~80% of DDR4 peak", lo=0, hi=1, lo_open=True)
    latency_ns: float = _param(90.0, "ns", "assumption: loaded DDR4 latency, paid once per "
                               "streamed operand", lo=0)

    @property
    def peak_gbps(self) -> float:
        """Peak bandwidth in GB/s (1e9 bytes/s): channels x MT/s x bytes per transfer."""
        return self.channels * self.mt_per_s * self.bus_bytes / 1000

    @property
    def effective_gbps(self) -> float:
        """Sustained bandwidth in GB/s: peak x efficiency. Bytes / GB/s = ns."""
        return self.peak_gbps * self.efficiency


@dataclasses.dataclass(frozen=True)
class EnergyConfig(_Section):
    """Energy per event."""

    SECTION: ClassVar[str] = "energy"
    dram_pj_per_byte: float = _param(160.0, "pJ/byte", "assumption: ~20 pJ/bit for a DDR4 "
                                     "access with I/O (Horowitz, ISSCC 2014: 1.3-2.6 nJ per "
                                     "64-bit access)", lo=0)
    sram_read_pj_per_bit: float = _param(0.04, "pJ/bit", "assumption: Horowitz 2014 gives "
                                         "10 pJ per 64-bit read of an 8 KB SRAM at 45 nm "
                                         "(0.16 pJ/bit); / 4 for a 7 nm-class node", lo=0)
    sram_write_pj_per_bit: float = _param(0.05, "pJ/bit", "assumption: a little above a read",
                                          lo=0)
    bitline_op_pj_per_bit: float = _param(0.08, "pJ/bit-line/cycle", "assumption: two word "
                                          "lines and a write-back, about two reads", lo=0)
    accumulate_pj_per_lane: float = _param(0.1, "pJ per lane per lookup", "assumption: a 32-bit "
                                           "shift and add (Horowitz 2014: 0.1 pJ per 32-bit add "
                                           "at 45 nm)", lo=0)
    noc_pj_per_byte_hop: float = _param(1.0, "pJ/byte/hop", "assumption: ~0.1 pJ/bit per mm "
                                        "over ~1 mm hops", lo=0)
    core_active_w: float = _param(1.8, "W per busy core", "assumption: a ~115 W 64-core N1 "
                                  "package", lo=0)
    static_w: float = _param(30.0, "W", "assumption: uncore, LLC and C-SRAM leakage of the "
                             "whole chip, paid for the whole time", lo=0)


@dataclasses.dataclass(frozen=True)
class GpuConfig(_Section):
    """The GPU baseline, modelled as a roofline per kernel plus a launch overhead."""

    SECTION: ClassVar[str] = "gpu"
    hbm_gbps: float = _param(900.0, "GB/s", "NVIDIA V100 SXM2 datasheet", lo=0, lo_open=True)
    memory_gib: float = _param(16.0, "GiB", "V100 16 GB (AWS p3.2xlarge)", lo=0, lo_open=True)
    peak_tflops: float = _param(31.4, "TFLOPS", "V100 SXM2 datasheet, FP16 on CUDA cores: "
                                "weight-only dequantizing kernels at decode batch sizes do not "
                                "use the tensor cores (assumption)", lo=0, lo_open=True)
    mem_efficiency: float = _param(0.8, "fraction of peak", "assumption", lo=0, hi=1,
                                   lo_open=True)
    compute_efficiency: float = _param(0.7, "fraction of peak", "assumption", lo=0, hi=1,
                                       lo_open=True)
    launch_ns: float = _param(4000.0, "ns per kernel", "assumption: launch and tail of a "
                              "decode-sized kernel without CUDA graphs", lo=0)
    weights: str = _param("quantized", "", "assumption: the GPU runs the same quantized "
                          "weights with dequantizing kernels ('fp16': unquantized)",
                          choices=("quantized", "fp16"))
    dequant_ops_per_weight: float = _param(4.0, "ops per weight per call", "assumption: unpack, "
                                           "subtract the zero point, convert, scale", lo=0)


@dataclasses.dataclass(frozen=True)
class PriceConfig(_Section):
    """Rental prices for tokens per dollar."""

    SECTION: ClassVar[str] = "price"
    cpu_usd_per_hour: float = _param(2.176, "USD/hour", "AWS c6g.16xlarge on-demand (64 "
                                     "Graviton2 Neoverse-N1 vCPUs), us-east-1", lo=0,
                                     lo_open=True)
    sail_overhead: float = _param(0.02, "fraction of the CPU price", "paper: 2% hardware "
                                  "overhead; assumption: the price grows with the area", lo=0,
                                  hi=10)
    gpu_usd_per_hour: float = _param(3.06, "USD/hour", "AWS p3.2xlarge on-demand (one V100 "
                                     "16 GB), us-east-1", lo=0, lo_open=True)

    @property
    def sail_usd_per_hour(self) -> float:
        """The CPU's price plus the SAIL overhead."""
        return self.cpu_usd_per_hour * (1 + self.sail_overhead)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """Storage formats that set the bytes moved."""

    SECTION: ClassVar[str] = "data"
    scale_bits: int = _param(16, "bits per group scale in DRAM", "assumption: fp16 scales, as "
                             "GPTQ/AWQ checkpoints store them", lo=8, hi=32, integer=True)
    kv_cache_bits: int = _param(16, "bits per KV-cache element", "assumption: fp16 KV cache "
                                "(llama.cpp's default)", lo=4, hi=32, integer=True)
    activation_bits: int = _param(32, "bits per float activation", "the compiler's float32 "
                                  "activations", lo=16, hi=32, integer=True)


#: The N1 baseline's software models (:func:`.baselines.n1_gemv_cost`).
N1_DEQUANT = ("per_token", "per_step")


@dataclasses.dataclass(frozen=True)
class BaselineConfig(_Section):
    """The N1 baseline's software: how CPU-only decoding runs the quantized model. Only the
    baseline reads it, so it is not part of a program's fingerprint (a pim-sim artifact can be
    simulated against another baseline model without recompiling)."""

    SECTION: ClassVar[str] = "baseline"
    n1_dequant: str = _param(
        "per_token", "", "measured (docs/reproduction/cpu_calibration.json): llama.cpp's "
        "batched decode of Gemma 3 270M Q4_0 on this project's 2-core machine, whose step time "
        "grows with the batch as unpacking every weight block again for every token predicts; "
        "per_step: a GEMM kernel that unpacks a weight tile once and reuses it for the batch",
        choices=N1_DEQUANT)
    n1_dram_efficiency: float = _param(
        0.8, "fraction of DRAM peak", "the cores' streaming weight reads in the N1 baseline, "
        "separate from dram.efficiency (SAIL's weight stream); default equal, see "
        "docs/reproduction/cpu_calibration.json for what this machine measures", lo=0, hi=1,
        lo_open=True)


_SECTIONS: dict[str, type[_Section]] = {
    "host": HostConfig, "llc": LlcConfig, "csram": CsramConfig, "noc": NocConfig,
    "dram": DramConfig, "energy": EnergyConfig, "gpu": GpuConfig, "price": PriceConfig,
    "data": DataConfig, "baseline": BaselineConfig,
}


@dataclasses.dataclass(frozen=True)
class MachineConfig:
    """A whole simulated machine: its name and one instance of every section."""

    name: str = "sail-n1"
    host: HostConfig = dataclasses.field(default_factory=HostConfig)
    llc: LlcConfig = dataclasses.field(default_factory=LlcConfig)
    csram: CsramConfig = dataclasses.field(default_factory=CsramConfig)
    noc: NocConfig = dataclasses.field(default_factory=NocConfig)
    dram: DramConfig = dataclasses.field(default_factory=DramConfig)
    energy: EnergyConfig = dataclasses.field(default_factory=EnergyConfig)
    gpu: GpuConfig = dataclasses.field(default_factory=GpuConfig)
    price: PriceConfig = dataclasses.field(default_factory=PriceConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    baseline: BaselineConfig = dataclasses.field(default_factory=BaselineConfig)

    def __post_init__(self) -> None:
        problems = _machine_problems(self)
        if problems:
            raise ConfigError(problems)

    @property
    def arrays(self) -> int:
        """C-SRAM arrays in the whole machine."""
        return self.llc.slices * self.csram.arrays_per_slice

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able ``{"name", section: {field: value}}``."""
        return dataclasses.asdict(self)


def _machine_problems(config: MachineConfig) -> list[str]:
    problems = []
    for name, cls in _SECTIONS.items():
        if not isinstance(getattr(config, name), cls):
            problems.append(f"{name} must be a {cls.__name__}, got "
                            f"{type(getattr(config, name)).__name__}")
    if problems:
        return problems
    cs, slice_bytes = config.csram, config.llc.slice_kib * 1024
    array_bytes = cs.rows * cs.columns // 8
    if cs.arrays_per_slice * array_bytes > slice_bytes:
        problems.append(f"csram.arrays_per_slice must be in 1..{slice_bytes // array_bytes}: "
                        f"{cs.arrays_per_slice} arrays of {cs.rows} x {cs.columns} bits do not "
                        f"fit a slice of llc.slice_kib = {config.llc.slice_kib} KiB")
    return problems


# ---------------------------------------------------------------------------------------------
# Presets

PRESETS: dict[str, Callable[[], MachineConfig]] = {}


def register_preset(name: str) -> Callable[[Callable[[], MachineConfig]],
                                           Callable[[], MachineConfig]]:
    """Decorator registering a function that builds a preset (duplicates are rejected)."""

    def wrap(build: Callable[[], MachineConfig]) -> Callable[[], MachineConfig]:
        if name in PRESETS:
            raise ValueError(f"machine preset '{name}' is already registered")
        PRESETS[name] = build
        return build

    return wrap


@register_preset("sail-n1")
def _sail_n1() -> MachineConfig:
    return MachineConfig()


@register_preset("tiny")
def _tiny() -> MachineConfig:
    """Two slices of four 128 x 32 arrays; round numbers so costs can be derived by hand."""
    return MachineConfig(
        name="tiny",
        host=HostConfig(cores=2, clock_ghz=1.0, simd_pipes=1, simd_bits=128,
                        vector_efficiency=1.0, sync_ns=100.0),
        llc=LlcConfig(slices=2, slice_kib=2, read_bytes_per_cycle=16),
        csram=CsramConfig(arrays_per_slice=4, rows=128, columns=32, clock_ghz=1.0,
                          row_read_cycles=2, row_write_cycles=1, add_cycles_per_bit=1,
                          add_overhead_cycles=1, shift_accumulate_cycles=1, nbw=2,
                          feeders_per_slice=2, reuse_table_entries=4, chunks_per_stream=2,
                          slice_bus_bytes_per_cycle=8, launch_ns=10.0),
        noc=NocConfig(clock_ghz=1.0, link_bytes_per_cycle=8, hop_cycles=1),
        dram=DramConfig(channels=1, mt_per_s=1000, bus_bytes=8, efficiency=1.0,
                        latency_ns=100.0),
        energy=EnergyConfig(dram_pj_per_byte=10.0, sram_read_pj_per_bit=0.03125,
                            sram_write_pj_per_bit=0.0625, bitline_op_pj_per_bit=0.0625,
                            accumulate_pj_per_lane=0.5, noc_pj_per_byte_hop=1.0,
                            core_active_w=1.0, static_w=1.0),
        gpu=GpuConfig(hbm_gbps=100.0, memory_gib=1.0, peak_tflops=1.0, mem_efficiency=1.0,
                      compute_efficiency=1.0, launch_ns=1000.0, dequant_ops_per_weight=4.0),
        price=PriceConfig(cpu_usd_per_hour=1.0, sail_overhead=0.02, gpu_usd_per_hour=2.0),
        data=DataConfig(scale_bits=16, kv_cache_bits=16, activation_bits=32),
    )


def preset(name: str) -> MachineConfig:
    """The named preset; :class:`OptionError` listing the valid names if unknown."""
    if name not in PRESETS:
        raise OptionError(f"unknown machine preset {name!r}; {valid_choices(tuple(PRESETS))}")
    return PRESETS[name]()


def load_config(preset_name: str = "sail-n1", toml_path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> MachineConfig:
    """A preset with the overrides of a TOML file and then of ``overrides`` applied.

    Parameters
    ----------
    preset_name
        The base preset, unless the file has a top-level ``preset = "..."``.
    toml_path
        A TOML file: optional top-level ``preset`` and ``name``, then ``[section]`` tables of
        ``field = value`` (sections and fields as in :class:`MachineConfig`).
    overrides
        The same structure as a dict, applied after the file.

    Raises
    ------
    OptionError
        The preset, a section or a field is unknown (the valid names are listed), the file is
        not valid TOML, or a value is out of range (every such field with its valid range).
    """
    data: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as err:
            raise OptionError(f"cannot read machine configuration {path}: {err}") from err
        except tomllib.TOMLDecodeError as err:
            raise OptionError(f"{path} is not valid TOML: {err}") from err
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    base = preset(data.pop("preset", preset_name))
    name = data.pop("name", base.name if not data else f"{base.name}+overrides")
    problems, sections = [], {}
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        problems.append(f"unknown section(s) {unknown}; "
                        f"{valid_choices(('preset', 'name', *_SECTIONS))}")
    for section, cls in _SECTIONS.items():
        values = data.get(section, {})
        if not isinstance(values, dict):
            problems.append(f"{section} must be a table of fields, got {values!r}")
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - fields)
        if bad:
            problems.append(f"unknown field(s) {[f'{section}.{b}' for b in bad]}; "
                            f"{valid_choices(tuple(fields))}")
            continue
        try:
            sections[section] = dataclasses.replace(getattr(base, section), **values)
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError(problems)
    return MachineConfig(name=str(name), **sections)


def describe(config: MachineConfig) -> str:
    """A markdown table of every field: value, unit and source."""
    lines = [f"machine `{config.name}`", "", "| field | value | unit | source |",
             "|---|---|---|---|"]
    for section in _SECTIONS:
        obj = getattr(config, section)
        for field in dataclasses.fields(obj):
            meta = field.metadata
            lines.append(f"| {section}.{field.name} | {getattr(obj, field.name)} | "
                         f"{meta['unit']} | {meta['source']} |")
    return "\n".join(lines)
