"""Pattern-reuse counts and the deduplicated lookup schedule (quant/patterns.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail_compiler.errors import OptionError
from sail_compiler.quant.lut import activation_patterns, chunk_layout, lut_gemv_sail, sail_tables
from sail_compiler.quant.patterns import (
    ReuseConfig,
    analyze_layer,
    count_reuse,
    lookup_schedule,
    pigeonhole_bound,
)
from sail_compiler.quant.reference import group_sums, quantize_activations, quantize_weights_rtn
from sail_compiler.quant.scheme import QuantScheme


@st.composite
def calls(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """(patterns [B, C, b_a], NBW); a small alphabet sometimes, so that patterns repeat."""
    nbw = draw(st.integers(1, 8))
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 30)), draw(st.integers(1, 8)))
    alphabet = draw(st.integers(1, 1 << nbw))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.integers(0, alphabet, size=shape), nbw


@st.composite
def configs(draw: st.DrawFn) -> ReuseConfig:
    size = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 16, 32]))
    ways = draw(st.sampled_from([None] + [d for d in range(1, size + 1) if size % d == 0]))
    return ReuseConfig(size, ways, draw(st.sampled_from(["mod", "xor"])),
                       draw(st.integers(1, 10)))


def brute_force_hits(patterns: np.ndarray, nbw: int, config: ReuseConfig) -> int:
    """The streams' reuse tables, simulated lookup by lookup with lists (least recent first)."""
    b, n_chunks, b_a = patterns.shape
    n_sets = 1 if config.ways is None else config.size // config.ways
    per_set = config.size // n_sets
    hits = 0
    for first in range(0, n_chunks, config.chunks_per_stream):
        sets: list[list[tuple[int, int]]] = [[] for _ in range(n_sets)]
        for t in range(b):
            for i in range(b_a):
                for c in range(first, min(first + config.chunks_per_stream, n_chunks)):
                    p = int(patterns[t, c, i])
                    if config.hash == "mod":
                        entries = sets[(c * 2**nbw + p) % n_sets]
                    else:
                        entries = sets[(p ^ (c * 0x9E3779B1 // 128)) % n_sets]
                    if (c, p) in entries:
                        hits += 1
                        entries.remove((c, p))
                    elif len(entries) == per_set:
                        entries.pop(0)
                    entries.append((c, p))
    return hits


@settings(max_examples=150, deadline=None)
@given(calls(), configs())
def test_counts_against_brute_force(call: tuple[np.ndarray, int], config: ReuseConfig) -> None:
    patterns, nbw = call
    counts = count_reuse(patterns, nbw, config)
    keys = {(c, int(p)) for (_, c, _), p in np.ndenumerate(patterns)}
    assert counts.lookups == patterns.size
    assert counts.distinct == len(keys)
    assert counts.zero == int((patterns == 0).sum())
    assert counts.table_saved == brute_force_hits(patterns, nbw, config)
    assert 0 <= counts.table_saved <= counts.ideal_saved <= counts.lookups
    assert counts.ideal_saved_fraction >= pigeonhole_bound(patterns.shape[0], nbw,
                                                           patterns.shape[2])


@settings(max_examples=60, deadline=None)
@given(calls(), st.integers(1, 10))
def test_table_holding_every_key_saves_the_ideal(call: tuple[np.ndarray, int],
                                                 chunks_per_stream: int) -> None:
    patterns, nbw = call
    big = ReuseConfig(size=chunks_per_stream << nbw, chunks_per_stream=chunks_per_stream)
    counts = count_reuse(patterns, nbw, big)
    assert counts.table_saved == counts.ideal_saved
    one_set = ReuseConfig(size=8, ways=8, chunks_per_stream=chunks_per_stream)
    assert count_reuse(patterns, nbw, one_set) == \
        count_reuse(patterns, nbw, ReuseConfig(size=8, chunks_per_stream=chunks_per_stream))


def test_hand_counted_call() -> None:
    # Chunk 0 reads patterns 1, 1, 2, 1 (planes 0..3), chunk 1 reads 0 four times. One stream
    # issues (0,1) (1,0) (0,1) (1,0) (0,2) (1,0) (0,1) (1,0): a 2-entry LRU hits the 3rd, 4th,
    # 6th and 8th lookups ((0,2) evicts (0,1), whose return evicts (0,2)).
    patterns = np.array([[[1, 1, 2, 1], [0, 0, 0, 0]]])
    counts = count_reuse(patterns, 2, ReuseConfig(size=2, chunks_per_stream=2))
    assert (counts.lookups, counts.distinct, counts.zero, counts.table_saved) == (8, 3, 4, 4)
    assert counts.ideal_saved == 5 and counts.zero_fraction == 0.5
    assert count_reuse(patterns, 2, ReuseConfig(size=1, chunks_per_stream=2)).table_saved == 0
    # A stream per chunk: the same 2 entries now hold every key, so they save the ideal.
    assert count_reuse(patterns, 2, ReuseConfig(size=2, chunks_per_stream=1)).table_saved == 5
    schedule = lookup_schedule(patterns)
    assert schedule.reads == 3
    assert schedule.chunk_reads(0).tolist() == [1, 2]
    assert schedule.chunk_reads(1).tolist() == [0]
    assert schedule.source.tolist() == [[[0, 0, 1, 0], [2, 2, 2, 2]]]


@settings(max_examples=100, deadline=None)
@given(calls())
def test_schedule_reads_each_distinct_key_once(call: tuple[np.ndarray, int]) -> None:
    patterns, nbw = call
    schedule = lookup_schedule(patterns)
    counts = count_reuse(patterns, nbw)
    assert schedule.reads == counts.distinct == counts.lookups - counts.ideal_saved
    assert schedule.lookups == counts.lookups
    chunk_ids = np.broadcast_to(np.arange(patterns.shape[1])[None, :, None], patterns.shape)
    np.testing.assert_array_equal(schedule.read_chunk[schedule.source], chunk_ids)
    np.testing.assert_array_equal(schedule.read_pattern[schedule.source], patterns)
    for c in range(patterns.shape[1]):
        issued = patterns[:, c, :].ravel().tolist()  # (t, i) order
        assert schedule.chunk_reads(c).tolist() == list(dict.fromkeys(issued))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(2, 8), st.integers(1, 8), st.booleans(),
       st.integers(1, 16), st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_schedule_reproduces_lut_gemv_sail(bits: int, act_bits: int, nbw: int, symmetric: bool,
                                           group_size: int, k: int, batch: int,
                                           seed: int) -> None:
    rng = np.random.default_rng(seed)
    scheme = QuantScheme(bits, group_size, symmetric and bits >= 2)
    qw = quantize_weights_rtn(rng.standard_normal((k, 3)).astype(np.float32), scheme)
    xq, _ = quantize_activations(rng.standard_normal((batch, k)).astype(np.float32), act_bits)
    patterns = activation_patterns(xq, group_size=qw.group_size, nbw=nbw, act_bits=act_bits)
    tables = sail_tables(qw.q, qw.zero_points(), group_size=qw.group_size, nbw=nbw)
    cpg = chunk_layout(k, qw.group_size, nbw).chunks_per_group
    sums = lookup_schedule(patterns).apply(tables, chunks_per_group=cpg)
    want = lut_gemv_sail(xq, qw.q, qw.zero_points(), group_size=qw.group_size, nbw=nbw,
                         act_bits=act_bits)
    np.testing.assert_array_equal(sums, want)
    np.testing.assert_array_equal(sums, group_sums(xq, qw))


def test_analyze_layer_batches() -> None:
    rng = np.random.default_rng(0)
    xq = rng.integers(-7, 8, size=(4, 8, 20))  # S = 4 samples of L = 8 positions, K = 20
    config = ReuseConfig(size=8, chunks_per_stream=2)
    result = analyze_layer(xq, group_size=8, nbw=3, act_bits=4, batches=(1, 4, 8),
                           config=config)
    n_chunks = chunk_layout(20, 8, 3).n_chunks
    assert [result[b]["batching"] for b in (1, 4, 8)] == ["samples", "samples", "positions"]
    assert [result[b]["calls"] for b in (1, 4, 8)] == [32, 8, 4]
    for b in (1, 4, 8):
        assert result[b]["lookups"] == result[b]["calls"] * b * n_chunks * 4
        assert result[b]["ideal_saved_fraction"] >= result[b]["pigeonhole_bound"]
        assert result[b]["table_saved_fraction"] <= result[b]["ideal_saved_fraction"]
    assert result[1]["pigeonhole_bound"] == 0.0 and result[8]["pigeonhole_bound"] == 0.75
    patterns = activation_patterns(xq.reshape(32, 20), group_size=8, nbw=3, act_bits=4)
    patterns = patterns.reshape(4, 8, n_chunks, 4)
    by_samples = [count_reuse(patterns[:, pos], 3, config) for pos in range(8)]
    by_positions = [count_reuse(patterns[s], 3, config) for s in range(4)]
    for b, counts in ((4, by_samples), (8, by_positions)):
        total = sum(counts[1:], counts[0])
        assert result[b]["table_saved_fraction"] == total.table_saved_fraction
        assert result[b]["zero_fraction"] == total.zero_fraction


def test_analyze_layer_bad_batches() -> None:
    xq = np.zeros((2, 3, 8), np.int32)
    with pytest.raises(OptionError, match=r"batch sizes \[0, 4\] .* max\(S, L\) = 3"):
        analyze_layer(xq, group_size=8, nbw=4, act_bits=8, batches=(0, 1, 4))
    with pytest.raises(ValueError, match=r"\[S, L, K\]"):
        analyze_layer(xq[0], group_size=8, nbw=4, act_bits=8)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 0}, "size must be a positive integer"),
    ({"ways": 3}, r"ways must be None \(fully associative\) or a divisor of size 32 "
                  r"\(1, 2, 4, 8, 16, 32\)"),
    ({"ways": 0}, "ways must be None"),
    ({"hash": "crc"}, "hash 'crc' is unknown; valid choices are: mod, xor"),
    ({"chunks_per_stream": 0}, "chunks_per_stream must be a positive integer"),
    ({"size": 8, "ways": 16, "hash": "x"}, "divisor of size 8.*; hash 'x' is unknown"),
])
def test_bad_configs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        ReuseConfig(**kwargs)


def test_bad_patterns() -> None:
    with pytest.raises(ValueError, match=r"0\.\.15 for NBW = 4"):
        count_reuse(np.full((1, 2, 8), 16), 4)
    with pytest.raises(ValueError, match="3-D integer"):
        count_reuse(np.zeros((2, 8)), 4)
    with pytest.raises(OptionError, match=r"1\.\.8"):
        count_reuse(np.zeros((1, 2, 8), np.int32), 9)
    with pytest.raises(ValueError, match="must lie in 0,"):
        lookup_schedule(np.full((1, 1, 1), -1))
    schedule = lookup_schedule(np.zeros((1, 2, 2), np.int32))
    with pytest.raises(ValueError, match="chunks_per_group must divide the 2 chunks"):
        schedule.apply(np.zeros((2, 4, 1), np.int32), chunks_per_group=3)
    with pytest.raises(ValueError, match=r"tables must be 3-D integers \[2, "):
        schedule.apply(np.zeros((3, 4, 1), np.int32), chunks_per_group=1)
