"""Simulator fidelity (issue 18) and memory (issue 21): bounds no machine model may break,
monotonicity in every resource for SAIL, the N1 and the V100, the documented non-monotonic N1
case, both readings of tokens per dollar, the column-blocked executor, and a pin of the
reproduction's headline figures against the README."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tvm

from sail_compiler.errors import OptionError
from sail_compiler.ops.sail_ops import reference_group_sums
from sail_compiler.quant.lut import activation_patterns, chunk_layout, sail_tables
from sail_compiler.quant.patterns import lookup_schedule
from sail_compiler.quant.reference import ActBlocks, quantize_weights_rtn
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets.pim import (
    ModelShape,
    Workload,
    decode_step,
    load_config,
    model_shape,
    preset,
    simulate_step,
)
from sail_compiler.targets.pim.isa import LUTGEMV, Instruction
from sail_compiler.targets.pim.program import Program, config_fingerprint
from sail_compiler.targets.pim.report import headline, markdown_table, stats_dict, vs_batch1
from sail_compiler.targets.pim.shapes import GemvOp
from sail_compiler.targets.pim.simulate import sweep
from sail_compiler.targets.pim.target import Executor, _FanOut, build_tables

ROOT = Path(__file__).resolve().parents[3]
N1 = preset("sail-n1")
TINY = preset("tiny")
TOY = ModelShape("toy", hidden=64, intermediate=128, layers=2, heads=2, kv_heads=2, vocab=96)
CASES = [(N1, model_shape("llama-2-7b"), 128), (TINY, TOY, 32)]


def _weight_bytes(ops, bits: int, group: int, scale_bits: int) -> float:
    """Bytes of every quantized weight of a step, from the shapes alone: codes of the padded K,
    plus one scale and one zero point per group and column."""
    total = 0.0
    for op in ops:
        if isinstance(op, GemvOp):
            groups = -(-op.k // group)
            total += (groups * group * op.n * bits + groups * op.n * (scale_bits + bits)) / 8
    return total


def _step(config, model, bits, batch, group, **workload):
    return simulate_step(decode_step(model, 64), Workload(bits=bits, batch=batch,
                                                          group_size=group, **workload),
                         config, reuse=0.3, model=model.name)


@pytest.mark.parametrize(("config", "model", "group"), CASES, ids=["n1-7b", "tiny-toy"])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("batch", [1, 4, 32])
def test_no_machine_beats_its_peak_bandwidth(config, model, group, bits, batch):
    """A step takes at least the weights' bytes over the peak bandwidth of the memory they
    stream from (DRAM for SAIL and the N1, HBM for the V100)."""
    step = _step(config, model, bits, batch, group)
    need = _weight_bytes(decode_step(model, 64), bits, group, config.data.scale_bits)
    assert need > 0
    assert step.sail.total_ns >= need / config.dram.peak_gbps
    assert step.n1.total_ns >= need / config.dram.peak_gbps
    assert step.gpu.total_ns >= need / config.gpu.hbm_gbps
    # and the bytes each model says it moved are at least the weights
    assert step.sail.bytes["dram"] >= need * (1 - 1e-12)
    assert step.n1.bytes["dram"] >= need * (1 - 1e-12)


def _variants(config, section: str, field: str, values):
    return [load_config(config.name, overrides={section: {field: v}}) for v in values]


RESOURCES = {
    # (section, field, increasing values) per machine preset
    "arrays": {"sail-n1": ("csram", "arrays_per_slice", (16, 32, 64, 128)),
               "tiny": ("csram", "arrays_per_slice", (2, 4))},
    "slices": {"sail-n1": ("llc", "slices", (8, 16, 32, 64, 128)),
               "tiny": ("llc", "slices", (1, 2, 4, 8))},
    "dram": {"sail-n1": ("dram", "mt_per_s", (1600, 2400, 3200, 6400)),
             "tiny": ("dram", "mt_per_s", (250, 500, 1000, 2000))},
    "hbm": {"sail-n1": ("gpu", "hbm_gbps", (300.0, 600.0, 900.0, 1800.0)),
            "tiny": ("gpu", "hbm_gbps", (25.0, 50.0, 100.0, 200.0))},
}


#: The one known exception, allowed for SAIL and more arrays only: the pipeline fill
#: ``min(F, P) / n`` (cost.py) grows when doubling the arrays halves the blocks n each busy array
#: works through, so a DRAM-bound step can get slower by a hair (7B, 2 bits, batch 1: 64 -> 128
#: arrays per slice, +0.02%). A mapper that leaves arrays idle would avoid it; the model does
#: not search for that. Not doublings (2 -> 3 arrays on the tiny machine) can cost up to 1.7%
#: through placement granularity, so only doublings are tested.
ARRAYS_TOLERANCE = 1e-3


@pytest.mark.parametrize(("config", "model", "group"), CASES, ids=["n1-7b", "tiny-toy"])
@pytest.mark.parametrize("resource", sorted(RESOURCES))
def test_more_of_a_resource_never_slows_a_machine(config, model, group, resource):
    section, field, values = RESOURCES[resource][config.name]
    for bits in (2, 3, 4):
        for batch in (1, 8, 32):
            steps = [_step(c, model, bits, batch, group)
                     for c in _variants(config, section, field, values)]
            for machine in ("sail", "n1", "gpu"):
                times = [getattr(s, machine).total_ns for s in steps]
                slack = ARRAYS_TOLERANCE if (machine, resource) == ("sail", "arrays") else 1e-12
                assert all(b <= a * (1 + slack) for a, b in zip(times, times[1:], strict=False)), \
                    (machine, resource, bits, batch, times)


@pytest.mark.parametrize(("config", "model", "group"), CASES, ids=["n1-7b", "tiny-toy"])
@pytest.mark.parametrize("dequant", ["per_token", "per_step"])
def test_more_batch_never_lowers_any_machines_tokens_per_second(config, model, group, dequant):
    config = load_config(config.name, overrides={"baseline": {"n1_dequant": dequant}})
    for bits in (2, 3, 4):
        steps = [_step(config, model, bits, b, group) for b in (1, 2, 3, 4, 8, 16, 24, 32)]
        for machine in ("sail", "n1", "gpu"):
            tps = [s.tokens_per_s(machine) for s in steps]
            assert all(b >= a * (1 - 1e-12) for a, b in zip(tps, tps[1:], strict=False)), \
                (machine, bits, tps)


def test_n1_at_3_bits_is_slower_than_at_4_once_simd_bound():
    """The intended non-monotonic case: a 3-bit code is two fields (2 + 1) to extract and
    merge, a 4-bit code one, so once the N1 is SIMD bound (per-token unpacking at a large batch)
    3 bits are slower than 4; at batch 1 it is DRAM bound and fewer bits are faster. Unpacking
    once per step removes most of it."""
    model = model_shape("llama-2-7b")
    three, four = (_step(N1, model, b, 32, 128) for b in (3, 4))
    assert three.n1.total_ns > four.n1.total_ns
    assert three.n1.time_ns["dequantize"] > four.n1.time_ns["dequantize"]
    three, four = (_step(N1, model, b, 1, 128) for b in (3, 4))
    assert three.n1.total_ns < four.n1.total_ns
    # SAIL is monotonic in bits at the same batch (it fetches fewer bytes and builds narrower
    # tables with fewer bits)
    for batch in (1, 32):
        assert _step(N1, model, 3, batch, 128).sail.total_ns \
            <= _step(N1, model, 4, batch, 128).sail.total_ns


def test_n1_software_model_is_a_named_choice_with_its_own_dram_efficiency():
    model = model_shape("llama-2-7b")
    per_step = load_config("sail-n1", overrides={"baseline": {"n1_dequant": "per_step"}})
    token, step = _step(N1, model, 4, 32, 128), _step(per_step, model, 4, 32, 128)
    assert step.n1.total_ns < token.n1.total_ns and step.sail.total_ns == token.sail.total_ns
    # the Workload flag overrides the machine's choice
    assert _step(N1, model, 4, 32, 128, amortize_dequant=True).n1.total_ns == step.n1.total_ns
    # the N1's DRAM efficiency moves the N1 at batch 1 (DRAM bound) and not SAIL
    slow = load_config("sail-n1", overrides={"baseline": {"n1_dram_efficiency": 0.4}})
    base, half = _step(N1, model, 4, 1, 128), _step(slow, model, 4, 1, 128)
    assert half.sail.total_ns == base.sail.total_ns
    assert half.n1.time_ns["weight_fetch"] > 1.9 * base.n1.time_ns["weight_fetch"]
    # the baseline is not part of a program's machine: no recompile to change it
    assert config_fingerprint(slow) == config_fingerprint(N1)
    assert config_fingerprint(load_config("sail-n1", overrides={"dram": {"efficiency": 0.5}})) \
        != config_fingerprint(N1)
    with pytest.raises(OptionError, match="baseline.n1_dequant"):
        load_config("sail-n1", overrides={"baseline": {"n1_dequant": "sometimes"}})


def test_tokens_per_dollar_both_readings():
    """Same batch: tokens/$ vs N1 is the speedup over the price ratio. Against batch 1: SAIL's
    tokens/$ at B over the baseline's at batch 1, computed here from tokens/s and prices."""
    model = model_shape("llama-2-7b")
    results = sweep([model], N1, bits=[3], batches=[1, 8, 32], context_len=64, reuse=0.3,
                    progress=False)
    price = N1.price
    for r in results:
        assert r.tokens_per_usd_vs_n1 == pytest.approx(
            r.speedup_vs_n1 * price.cpu_usd_per_hour / price.sail_usd_per_hour)
        cross = vs_batch1(r, results[0])
        sail = r.batch / (r.sail.total_ns * 1e-9) / price.sail_usd_per_hour
        n1 = 1 / (results[0].n1.total_ns * 1e-9) / price.cpu_usd_per_hour
        gpu = 1 / (results[0].gpu.total_ns * 1e-9) / price.gpu_usd_per_hour
        assert cross["tokens_per_usd_vs_n1"] == pytest.approx(sail / n1)
        assert cross["tokens_per_usd_vs_gpu"] == pytest.approx(sail / gpu)
    best = headline(results)
    assert best["tokens_per_usd_vs_n1_vs_batch1"]["batch"] == 32
    assert best["tokens_per_usd_vs_n1_vs_batch1"]["value"] > best["tokens_per_usd_vs_n1"]["value"]
    stats = stats_dict(results)
    assert set(stats["readings"]) == {"same_batch", "vs_batch1"}
    assert stats["points"][2]["vs_batch1"]["tokens_per_usd_vs_n1"] == pytest.approx(
        vs_batch1(results[2], results[0])["tokens_per_usd_vs_n1"])
    rows = markdown_table(results).splitlines()
    assert "tok/$ vs N1 at B=1" in rows[0] and len(rows) == 5
    # without a batch-1 point the cross reading is n/a, not a wrong figure
    assert "n/a" in markdown_table(results[1:]).splitlines()[2]


@pytest.mark.parametrize(("bits", "nbw", "group", "k", "act_bits", "batch"),
                         [(4, 4, 128, 640, 8, 3), (3, 3, 32, 100, 6, 5), (2, 2, 16, 64, 8, 1),
                          (8, 4, 128, 256, 8, 32), (1, 1, 8, 24, 16, 2)])
def test_fast_tables_and_fan_out_equal_the_reference(bits, nbw, group, k, act_bits, batch):
    rng = np.random.default_rng(bits * 100 + nbw)
    n, k_pad = 13, -(-k // group) * group
    q = rng.integers(0, 2**bits, (k_pad, n)).astype(np.uint8)
    zero = rng.integers(0, 2**bits, (k_pad // group, n)).astype(np.uint8)
    tables = build_tables(q, zero, group_size=group, nbw=nbw)
    reference = sail_tables(q, zero, group_size=group, nbw=nbw)
    assert tables.dtype == reference.dtype and np.array_equal(tables, reference)
    xq = rng.integers(-(2 ** (act_bits - 1)), 2 ** (act_bits - 1), (batch, k))
    schedule = lookup_schedule(activation_patterns(xq, group_size=group, nbw=nbw,
                                                   act_bits=act_bits))
    cpg = chunk_layout(k, group, nbw).chunks_per_group
    got = _FanOut(schedule, act_bits, nbw, bits)(tables, cpg)
    assert np.array_equal(got.astype(np.int64), schedule.apply(reference, chunks_per_group=cpg))


@pytest.mark.parametrize("act_group", [48, 16, 8], ids=["per-row", "a16", "a8"])
@pytest.mark.parametrize("block_bytes", [1, 3000, None], ids=["column", "blocks", "whole"])
def test_executor_in_column_blocks_equals_the_reference(act_group, block_bytes):
    """Whatever the block size (one column at a time, a few columns, the whole layer), the sums
    are the exact integer group sums, and the call keeps its lookup count and reuse fraction
    (not its patterns)."""
    rng = np.random.default_rng(act_group)
    k, n, g = 48, 37, 16
    qw = quantize_weights_rtn(rng.standard_normal((k, n)).astype(np.float32),
                              QuantScheme(4, group_size=g))
    attrs = {"k": k, "n": n, "bits": 4, "act_bits": 8, "group_size": g,
             "act_group": act_group, "nbw": 2, "output": "sums", "placement": "pim",
             "dequant_placement": "pim", "schedule": "table", "slot": 0}
    executor = Executor(Program(TINY, [Instruction(0, LUTGEMV, "l", attrs)]),
                        block_bytes=block_bytes)
    executor.record = True
    xq = rng.integers(-127, 128, (3, 1, k)).astype(np.int8)
    args = [xq, qw.packed(), qw.zero_points().astype(np.int32)]
    got = executor(0, *(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args)).numpy()
    assert np.array_equal(got, reference_group_sums(xq, qw, act_group))
    (call,) = executor.calls
    blocks = ActBlocks(k, g, act_group)
    assert call.tokens == 3
    assert call.lookups == 3 * chunk_layout(k, blocks.sum_size, 2).n_chunks * 8
    assert 0.0 <= call.reuse_saved <= 1.0 and not hasattr(call, "patterns")
    # timing only: the same record, zeros for the sums
    executor.functional, executor.calls = False, []
    zeros = executor(0, *(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args)).numpy()
    assert zeros.shape == got.shape and not zeros.any()
    assert executor.calls[0].reuse_saved == call.reuse_saved


def _readme_headline() -> dict[str, tuple[float, float]]:
    """``{figure: (same batch, SAIL at B vs baseline at B=1)}`` of the README's table."""
    text = (ROOT / "README.md").read_text()
    found = {}
    for label in ("max speedup vs N1", "max tokens/$ vs N1", "max tokens/$ vs V100"):
        match = re.search(rf"^\| {re.escape(label)} \| [\d.]+x \| ([\d.]+)x \| [^|]* \| "
                          rf"([\d.]+)x \|", text, re.M)
        assert match, f"README.md has no reproduction row for {label!r}"
        found[label] = (float(match.group(1)), float(match.group(2)))
    return found


def test_readme_pins_the_reproduction_headline():
    """A cost-model change that moves a headline figure must update the README in the same
    commit: the README's figures are what the default sweep gives now (the maxima lie at batch
    32, so batches 1 and 32 decide both readings)."""
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    from reproduce_paper import GEMMA_REUSE, _reuse_sources

    reuse = _reuse_sources(GEMMA_REUSE if GEMMA_REUSE.exists() else None)[0]
    results = sweep([model_shape("llama-2-7b"), model_shape("llama-2-13b")], N1,
                    bits=[2, 3, 4], batches=[1, 32], context_len=128, reuse=reuse,
                    progress=False)
    best = headline(results)
    for label, key in (("max speedup vs N1", "speedup_vs_n1"),
                       ("max tokens/$ vs N1", "tokens_per_usd_vs_n1"),
                       ("max tokens/$ vs V100", "tokens_per_usd_vs_gpu")):
        same, cross = _readme_headline()[label]
        assert round(best[key]["value"], 2) == same, label
        assert round(best[f"{key}_vs_batch1"]["value"], 2) == cross, label


@pytest.mark.slow
def test_reproduce_paper_regenerates_the_committed_tables(tmp_path):
    """``python examples/reproduce_paper.py`` from a checkout gives the committed table.md and
    headline.md byte for byte."""
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    from reproduce_paper import main

    assert main(["--out", str(tmp_path), "--no-plots", "--quiet"]) == 0
    for name in ("table.md", "headline.md"):
        assert (tmp_path / name).read_text() == (ROOT / "docs/reproduction" / name).read_text()
