"""SAIL's cost model and the baselines (targets/pim/cost.py, targets/pim/baselines.py).

The golden figures are derived by hand below from the formulas in the module docstrings, for the
``tiny`` preset: 2 slices x 4 arrays of 128 x 32 bits at 1 GHz, 2 feeders per slice, reads 2
cycles, writes 1, adds ``lane + 1`` cycles, shift-accumulate 1; DRAM 8 GB/s (1000 MT/s x 8 B,
efficiency 1) with 100 ns latency; NoC 8 B/cycle at 1 GHz, 1 cycle per hop; launch 10 ns;
energies 10 pJ/B DRAM, 1/32 pJ/bit read, 1/16 pJ/bit write and bit-line cycle, 0.5 pJ per
accumulated lane, 1 pJ/B/hop, 1 W static, 1 W per core (2 cores at 1 GHz, one 128-bit pipe).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail_compiler.errors import OptionError
from sail_compiler.quant.patterns import ReuseConfig, count_reuse, lookup_schedule
from sail_compiler.targets.pim.baselines import dequantize_ops, n1_gemv_cost, v100_op_cost
from sail_compiler.targets.pim.config import load_config, preset
from sail_compiler.targets.pim.cost import (
    COMPONENTS,
    EVENTS,
    best_lane_bits,
    dequantize_pass_cycles,
    fp_add_cycles,
    fp_mul_cycles,
    host_op_cost,
    lut_gemv_cost,
    plan_tiling,
    quantize_cost,
    quantize_pass_cycles,
    table_entry_bits,
)
from sail_compiler.targets.pim.shapes import GemvOp

TINY = preset("tiny")
N1 = preset("sail-n1")


def test_bit_serial_building_blocks() -> None:
    assert table_entry_bits(4, 4) == 4 + 1 + 2      # |sum of 4 values q - z| <= 60 < 2**6
    assert table_entry_bits(1, 1) == 2
    assert table_entry_bits(8, 8) == 8 + 1 + 3
    assert fp_mul_cycles() == 24 * 25               # 24 shift-adds of 25 cycles
    assert fp_add_cycles() == 5 * 24 + 25 + 5 * 24  # align, add, normalise
    # write 32 rows, int -> float (32 + 5 * 32), multiply by the scale, add into the output
    assert dequantize_pass_cycles(TINY) == 32 + (32 + 160) + 600 + 265 == 1089
    # write 32 rows, max search 31, multiply 5 * 25, align 5 * 5, round/clamp/sign 3 * 5,
    # read 4 bit planes at 2 cycles
    assert quantize_pass_cycles(4, TINY) == 32 + 31 + 125 + 25 + 15 + 8 == 236


def test_tiling_by_hand() -> None:
    # K = 128 in groups of 32, NBW 2: 4 groups x 16 chunks = 64 chunks. 4-bit weights: entries
    # of 6 bits, 32 // 6 = 5 per row, so 16 outputs make 4 column tiles (5, 5, 5, 1). 128 rows
    # hold 32 tables of 4 rows: a unit is 32 chunks, 2 per tile, 8 units on the 8 arrays
    # (1 wave). Each slice gets ceil(8 / 2) = 4 consecutive units: tiles 0 and 1 in slice 0,
    # tiles 2 and 3 in slice 1, so no tile crosses slices; each tile's 2 partials meet on its
    # slice bus: slice 0 moves 5 + 5 columns, slice 1 moves 5 + 1. A slice's 4 arrays over
    # 2 feeders: 2 arrays per feeder. Each unit spans 2 whole groups.
    t = plan_tiling(128, 16, bits=4, group_size=32, nbw=2, config=TINY)
    assert (t.n_groups, t.chunks_per_group, t.n_chunks) == (4, 16, 64)
    assert (t.lane_bits, t.entries_per_row, t.col_tiles) == (6, 5, 4)
    assert (t.blocks_per_unit, t.units_per_tile, t.units, t.waves) == (32, 2, 8, 1)
    assert (t.arrays_busy, t.slices_used, t.arrays_per_feeder) == (8, 2, 2)
    assert t.unit_groups == 2 + 2
    assert (t.intra_columns_busiest_slice, t.intra_columns_total, t.cross_columns) == (10, 16, 0)
    assert (t.intra_levels, t.cross_levels) == (1, 0)


def test_tiling_across_waves_and_slices_by_hand() -> None:
    # K = 192: 6 groups x 16 = 96 chunks, 3 units per tile, 12 units: a full wave of 8 (4 per
    # slice) then 4 spread 2 per slice. Units 0-3 slice 0, 4-7 slice 1, 8-9 slice 0, 10-11
    # slice 1. Tile 0 = units 0-2 (slice 0); tile 1 = 3 (s0), 4-5 (s1); tile 2 = 6-7 (s1),
    # 8 (s0); tile 3 = 9 (s0), 10-11 (s1). Intra-slice: tile 0 moves 2 x 5 columns in slice 0,
    # tile 1 moves 5 in slice 1, tile 2 moves 5 in slice 1, tile 3 (1 column) moves 1 in slice
    # 1; across slices tiles 1, 2, 3 send one vector each: 5 + 5 + 1 columns.
    t = plan_tiling(192, 16, bits=4, group_size=32, nbw=2, config=TINY)
    assert (t.units, t.waves, t.arrays_per_feeder) == (12, 2, 2)
    assert t.intra_columns_busiest_slice == 11 and t.intra_columns_total == 21
    assert t.cross_columns == 11
    assert (t.intra_levels, t.cross_levels) == (2, 1)


def test_lut_gemv_golden_by_hand() -> None:
    c = lut_gemv_cost(128, 16, bits=4, act_bits=4, group_size=32, nbw=2, batch=2, config=TINY,
                      reuse=0.25, lane_bits=6)
    # Layer: 4 tiles x 64 chunks = 256 blocks; lookups 256 x B 2 x b_a 4 = 2048, a quarter hit;
    # 256 x (2**2 - 1) = 768 adds of 6 + 1 cycles, 256 x (2 + 1) = 768 row writes.
    assert c.events == {"lookups": 2048, "reuse_hits": 512, "row_reads": 1536,
                        "row_writes": 768, "bitline_adds": 768, "converted_values": 128,
                        "table_blocks": 256}
    # Busiest array: 1/8 of the table work; busiest feeder: 2/8 of the lookups.
    construct = (768 * 7 + 768 * 1) / 8                    # 768 ns
    reads = 1536 * 2 * 2 / 8                               # 768 ns
    accumulate = 2048 * 1 * 2 / 8                          # 512 ns
    # Weights: 128 x 16 x 4 bits + 4 groups x 16 x (16-bit scale + 4-bit zero) = 1184 bytes.
    fetch = 100 + 1184 / 8                                 # 248 ns
    # Sums: B 2 x (2 + 2 groups over a tile's units) x N 16 = 128 on 8 x 32 lanes: 1 pass.
    dequant = 1089.0
    # Activations: 2 x 128 x 4 bits = 128 bytes at 8 B/ns; 2 slices: a 2 x 2 mesh, 2 hops.
    broadcast = 128 / 8 + 2 * 1 * 1                        # 18 ns
    # Busiest slice bus: 10 columns x 4 bytes x B 2 at 8 B/ns, then one level of float add
    # (2 x 5 lanes: 1 pass of 265 cycles).
    reduction = 10 * 8 / 8 + 1 * 265                       # 275 ns
    final = 1 * 600                                        # 2 x 16 values on 4 x 32 lanes
    stages = 256 / 8
    pipeline = max(fetch, construct + reads + accumulate) + min(fetch, 2048) / stages
    total = 10 + broadcast + pipeline + dequant + reduction + final
    assert c.total_ns == pytest.approx(total) == pytest.approx(4047.75)
    assert c.time_ns == pytest.approx({
        "weight_fetch": fetch, "table_construction": construct, "lookups": reads,
        "shift_accumulate": accumulate, "type_conversion": dequant + final,
        "activation_broadcast": broadcast, "reduction": reduction, "host": 0.0})
    assert c.energy_pj == pytest.approx({
        "weight_fetch": 1184 * 10,
        "table_construction": 32 * (768 * 7 / 16 + 768 / 16),        # 12288
        "lookups": 1536 * 32 / 32,
        "shift_accumulate": 2048 * 5 * 0.5,
        "type_conversion": 128 * 1089 / 16 + 2 * 16 * 600 / 16,      # 8712 + 1200
        "activation_broadcast": 128 * 2 * 1,
        "reduction": (16 * 8 + 0) * 1 + 16 * 2 * 265 / 16,          # bytes + float adds
        "host": 0.0,
        "static": 1.0 * 4047.75 * 1000})
    assert c.bytes == pytest.approx({"dram": 1184, "noc": 256, "slice_bus": 128, "llc": 0})


def test_per_block_scales_golden_by_hand() -> None:
    """Per-block activation scales: each sum is also multiplied by its block's sx in the arrays
    (dequantize passes of 1089 + 600 cycles) and the final per-token scaling goes away; blocks
    smaller than the groups split the sums (more of them), the tables stay the same size."""
    kw = {"bits": 4, "act_bits": 4, "group_size": 32, "nbw": 2, "batch": 2, "config": TINY,
          "reuse": 0.25, "lane_bits": 6}
    row = lut_gemv_cost(128, 16, **kw)
    same = lut_gemv_cost(128, 16, act_group=128, **kw)  # one block of K: per row
    assert same.total_ns == row.total_ns and same.energy_pj == row.energy_pj
    for act_group, sums in ((32, 128), (64, 128), (16, 256)):
        c = lut_gemv_cost(128, 16, act_group=act_group, **kw)
        # A = 32, 64: a sum per group (2 + 2 per tile's units); A = 16: sums of 16 rows, 4 + 4
        assert c.events["converted_values"] == sums
        assert c.events["table_blocks"] == row.events["table_blocks"] == 256
        # one pass either way (at most 256 sums on 8 x 32 lanes), no final scaling
        assert c.time_ns["type_conversion"] == pytest.approx(1089 + 600)
        assert c.energy_pj["type_conversion"] == pytest.approx(sums * (1089 + 600) / 16)
        # here the same total: one pass of 1089 + 600 cycles replaces one of 1089 and the
        # final scaling pass of 600
        assert c.total_ns == pytest.approx(row.total_ns)
    host = lut_gemv_cost(128, 16, act_group=32, **{**kw, "placement": "host"})
    host_row = lut_gemv_cost(128, 16, **{**kw, "placement": "host"})
    assert host.time_ns["host"] > host_row.time_ns["host"]  # 4 flops per sum instead of 3
    # quantization: a block of 32 values lies in one array: no max-combining tree
    assert quantize_cost(128, act_bits=4, batch=2, config=TINY, act_group=32).total_ns == \
        pytest.approx(10 + 236)
    assert quantize_cost(128, act_bits=4, batch=2, config=TINY, act_group=64).total_ns == \
        pytest.approx(10 + 236 + 1)


def test_layout_choice_is_the_fastest_lane() -> None:
    kw = {"bits": 4, "act_bits": 4, "group_size": 32, "nbw": 2, "batch": 2, "config": TINY,
          "reuse": 0.25}
    lanes = range(6, 8 + 1 + 1 + 1)                         # e .. entry of 8-bit weights
    times = {lane: lut_gemv_cost(128, 16, lane_bits=lane, **kw).total_ns for lane in lanes}
    assert lut_gemv_cost(128, 16, **kw).total_ns == min(times.values())
    assert times[best_lane_bits(128, 16, **kw)] == min(times.values())


def test_quantize_golden_by_hand() -> None:
    c = quantize_cost(128, act_bits=4, batch=2, config=TINY)
    # 256 values on 8 x 32 lanes: one pass of 236 cycles; a token spans 128 / 32 = 4 arrays:
    # a 2-level max tree of 1-cycle hops.
    assert c.total_ns == pytest.approx(10 + 236 + 2)
    assert c.energy_pj["type_conversion"] == pytest.approx(256 * 236 / 16)
    assert c.events["converted_values"] == 256


def test_host_op_golden_by_hand() -> None:
    c = host_op_cost(TINY, flops=1000, dram_bytes=800, llc_bytes=320)
    # compute 1000 / (2 cores x 1 GHz x 8 flops) = 62.5; DRAM 100 + 800 / 8 = 200;
    # LLC 320 / (2 slices x 16 B) = 10: the DRAM bound after a 100 ns sync.
    assert c.total_ns == pytest.approx(300.0)
    assert c.energy_pj["host"] == pytest.approx(2 * 1.0 * 300 * 1000 + 800 * 10)


def test_baselines_golden_by_hand() -> None:
    c = n1_gemv_cost(128, 16, bits=4, act_bits=8, group_size=32, batch=2, config=TINY)
    # 128 x 16 / 16 = 128 vectors; 2 ops/ns. Per token: dequant 2 + 1, dot 1 + 0.5 overhead,
    # scale 3 x 16 / 32.
    assert dequantize_ops(4) == 3 and dequantize_ops(3) == 2 * 2 + 2 + 1
    assert dequantize_ops(8) == 1
    assert c.time_ns["dequantize"] == pytest.approx(128 * 3 * 2 / 2)
    assert c.time_ns["dot"] == pytest.approx(128 * 2 * 1.5 / 2)
    assert c.time_ns["scale"] == pytest.approx(128 * 2 * 1.5 / 2)
    assert c.total_ns == pytest.approx(100 + 384 + 192 + 192)   # compute-bound (fetch 248)
    g = v100_op_cost(GemvOp("x", "q_proj", 128, 16), bits=4, group_size=32, batch=2,
                     config=TINY)
    # 1184 weight bytes + fp16 activations 2 x 2 x (128 + 16) at 100 GB/s; 2 x 2 x 128 x 16
    # + 4 x 128 x 16 flops at 1 TFLOPS; launch 1000 ns.
    assert g.total_ns == pytest.approx(1000 + max((1184 + 576) / 100, 16384 / 1000))


@st.composite
def layers(draw: st.DrawFn) -> dict:
    config = draw(st.sampled_from([TINY, N1]))
    nbw = draw(st.integers(1, config.csram.nbw))
    return {"k": draw(st.sampled_from([1, 7, 32, 100, 512, 4096, 11008])),
            "n": draw(st.sampled_from([1, 5, 64, 1000, 4096, 32000])),
            "group_size": draw(st.sampled_from([8, 32, 128, 4096])), "nbw": nbw,
            "config": config, "reuse": draw(st.floats(0, 1)),
            "placement": draw(st.sampled_from(["pim", "host"]))}


@settings(max_examples=40, deadline=None)
@given(layers(), st.integers(1, 8), st.integers(2, 16), st.integers(1, 64))
def test_energy_is_the_sum_of_its_parts_and_hits_never_exceed_lookups(
        layer: dict, bits: int, act_bits: int, batch: int) -> None:
    c = lut_gemv_cost(bits=bits, act_bits=act_bits, batch=batch, **layer)
    assert set(c.energy_pj) == {*COMPONENTS, "static"} and set(c.events) == set(EVENTS)
    assert c.energy_total_pj == pytest.approx(sum(c.energy_pj.values()))
    assert all(v >= 0 for v in (*c.energy_pj.values(), *c.time_ns.values()))
    assert c.energy_pj["static"] == pytest.approx(layer["config"].energy.static_w
                                                  * c.total_ns * 1000)
    assert 0 <= c.events["reuse_hits"] <= c.events["lookups"]
    assert c.events["reuse_hits"] + c.events["row_reads"] == pytest.approx(c.events["lookups"])
    both = c + c
    assert both.energy_total_pj == pytest.approx(2 * c.energy_total_pj)


@settings(max_examples=25, deadline=None)
@given(layers(), st.integers(2, 16), st.integers(1, 48))
def test_cycles_never_fall_when_weight_bits_grow(layer: dict, act_bits: int,
                                                 batch: int) -> None:
    times = [lut_gemv_cost(bits=b, act_bits=act_bits, batch=batch, **layer).total_ns
             for b in range(1, 9)]
    assert times == sorted(times)


@settings(max_examples=25, deadline=None)
@given(layers(), st.integers(1, 8), st.integers(1, 48))
def test_cycles_never_fall_when_activation_bits_grow(layer: dict, bits: int,
                                                     batch: int) -> None:
    times = [lut_gemv_cost(bits=bits, act_bits=a, batch=batch, **layer).total_ns
             for a in range(2, 17)]
    assert times == sorted(times)
    q = [quantize_cost(layer["k"], act_bits=a, batch=batch, config=layer["config"]).total_ns
         for a in range(2, 17)]
    assert q == sorted(q)


@settings(max_examples=25, deadline=None)
@given(layers(), st.integers(1, 8), st.integers(2, 16))
def test_more_batch_never_lowers_throughput(layer: dict, bits: int, act_bits: int) -> None:
    per_token = [lut_gemv_cost(bits=bits, act_bits=act_bits, batch=b, **layer).total_ns / b
                 for b in range(1, 65)]
    assert all(later <= earlier * (1 + 1e-12)
               for earlier, later in zip(per_token, per_token[1:], strict=False))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(2, 8), st.integers(0, 2**32 - 1))
def test_reuse_inputs_agree(batch: int, groups: int, act_bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    nbw, group_size = 2, 8
    n_chunks = groups * group_size // nbw
    patterns = rng.integers(0, rng.integers(1, 5), size=(batch, n_chunks, act_bits))
    kw = {"k": groups * group_size, "n": 40, "bits": 3, "act_bits": act_bits,
          "group_size": group_size, "nbw": nbw, "batch": batch, "config": TINY}
    table = count_reuse(patterns, nbw, ReuseConfig(size=4, chunks_per_stream=2))
    by_patterns = lut_gemv_cost(reuse=patterns, **kw)
    assert by_patterns.total_ns == lut_gemv_cost(reuse=table, **kw).total_ns
    assert by_patterns.events["reuse_hits"] == pytest.approx(
        table.table_saved_fraction * by_patterns.events["lookups"])
    schedule = lookup_schedule(patterns)
    by_schedule = lut_gemv_cost(reuse=schedule, **kw)
    assert by_schedule.events["reuse_hits"] == pytest.approx(
        (1 - schedule.reads / schedule.lookups) * by_schedule.events["lookups"])
    assert by_schedule.total_ns <= lut_gemv_cost(reuse=0.0, **kw).total_ns


def test_reuse_saves_only_row_reads() -> None:
    kw = {"bits": 4, "act_bits": 8, "group_size": 128, "nbw": 4, "batch": 16, "config": N1,
          "lane_bits": 7}
    none, half = (lut_gemv_cost(4096, 4096, reuse=h, **kw) for h in (0.0, 0.5))
    assert half.time_ns["lookups"] == pytest.approx(none.time_ns["lookups"] / 2)
    for component in ("table_construction", "shift_accumulate", "type_conversion",
                      "weight_fetch", "reduction"):
        assert half.time_ns[component] == none.time_ns[component]


def test_a_tile_larger_than_the_machine_is_a_clear_error() -> None:
    with pytest.raises(OptionError, match=r"NBW 3 needs tables of 8 rows indexed by 3 bits, "
                                          r"but the data-feeding modules index csram.nbw = 2 "
                                          r"bits; valid nbw: 1..2"):
        lut_gemv_cost(128, 16, bits=4, act_bits=8, group_size=32, nbw=3, batch=1, config=TINY)
    with pytest.raises(OptionError, match=r"lane_bits must be an integer 6..32, got 40"):
        lut_gemv_cost(128, 16, bits=4, act_bits=8, group_size=32, nbw=2, batch=1, config=TINY,
                      lane_bits=40)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"bits": 9}, "weight bits must be an integer 1..8, got 9"),
    ({"act_bits": 1}, "act_bits must be an integer 2..16, got 1"),
    ({"batch": 0}, "batch must be an integer >= 1, got 0"),
    ({"reuse": 1.5}, "saved fraction of lookups must be in [0, 1], got 1.5"),
    ({"placement": "gpu"}, "unknown placement 'gpu'; valid choices are: host, pim"),
])
def test_bad_attributes_are_option_errors(kwargs: dict, fragment: str) -> None:
    args = {"bits": 4, "act_bits": 8, "group_size": 32, "nbw": 2, "batch": 1, "config": TINY,
            **kwargs}
    with pytest.raises(OptionError) as info:
        lut_gemv_cost(128, 16, **args)
    assert fragment in str(info.value)


def test_schedule_of_the_wrong_call_is_rejected() -> None:
    schedule = lookup_schedule(np.zeros((2, 3, 4), np.int64))
    with pytest.raises(ValueError, match=r"this call makes \[B, C, b_a\] = \[1, 64, 8\]"):
        lut_gemv_cost(128, 16, bits=4, act_bits=8, group_size=32, nbw=2, batch=1,
                      config=TINY, reuse=schedule)


def test_more_feeders_or_faster_reads_never_slow_the_machine() -> None:
    kw = {"bits": 4, "act_bits": 8, "group_size": 128, "nbw": 4, "batch": 16, "reuse": 0.3}
    base = lut_gemv_cost(4096, 4096, config=N1, **kw).total_ns
    more = load_config("sail-n1", overrides={"csram": {"feeders_per_slice": 32}})
    fast = load_config("sail-n1", overrides={"csram": {"row_read_cycles": 1}})
    assert lut_gemv_cost(4096, 4096, config=more, **kw).total_ns < base
    assert lut_gemv_cost(4096, 4096, config=fast, **kw).total_ns < base
