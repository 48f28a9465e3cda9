"""AnalyzeLUTPatterns and ``sail analyze-patterns``: the figures against an independent count on
the activations the compiled model really produces, the annotations, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sail_compiler import CompileOptions
from sail_compiler.cli import main
from sail_compiler.errors import OptionError
from sail_compiler.lut_patterns import analyze_patterns, collect_activations, text_like_ids
from sail_compiler.ops.sail_ops import reference_quantize
from sail_compiler.passes import AnalyzeLUTPatterns
from sail_compiler.quant.patterns import ReuseConfig
from sail_compiler.quant.scheme import QuantScheme

OPTIONS = CompileOptions(quant=QuantScheme(4, 16, False), nbw=4)


@pytest.fixture(scope="module")
def report(micro_decoder: Path) -> dict:
    return analyze_patterns(micro_decoder, OPTIONS)


def _distinct_fraction(xq: np.ndarray, g: int, nbw: int, act_bits: int) -> float:
    """1 - distinct (chunk, pattern) / lookups for one call of rows ``xq [B, K]``, counted
    with Python sets straight from the definition (chunks of NBW rows inside each group)."""
    b, k = xq.shape
    seen, lookups = set(), 0
    for t in range(b):
        u = [int(v) & ((1 << act_bits) - 1) for v in xq[t]]
        for grp_start in range(0, -(-k // g) * g, g):
            for c_start in range(grp_start, grp_start + g, nbw):
                rows = [r for r in range(c_start, min(c_start + nbw, grp_start + g))]
                for i in range(act_bits):
                    p = sum(((u[r] >> i) & 1) << j for j, r in enumerate(rows) if r < k)
                    seen.add((c_start, p))
                    lookups += 1
    return 1 - len(seen) / lookups


def test_text_like_ids_are_skewed_and_in_range() -> None:
    ids = text_like_ids(1000, 4000, seed=3)
    assert ids.min() >= 0 and ids.max() < 1000
    np.testing.assert_array_equal(ids, text_like_ids(1000, 4000, seed=3))
    counts = np.sort(np.bincount(ids, minlength=1000))[::-1]
    assert counts[:10].sum() > 0.15 * len(ids)  # uniform ids would give 1%


def test_every_layer_is_analysed_and_annotated(report: dict) -> None:
    assert len(report["layers"]) == 8
    for layer in report["layers"]:
        for b in (1, 4, 16):
            f = layer["batches"][b]
            assert 0 <= f["table_saved_fraction"] <= f["ideal_saved_fraction"] <= 1
            assert f["ideal_saved_fraction"] >= f["pigeonhole_bound"] - 1e-12
            assert 0 <= f["zero_fraction"] <= 1
        # more tokens per call can only add repeats of the same tables
        assert layer["batches"][16]["ideal_saved_fraction"] >= \
            layer["batches"][1]["ideal_saved_fraction"]
    text = report["module"].script()
    assert text.count('"lookup_schedule": "dedup"') == 8
    assert '"b16.table"' in text and '"size": 32' in text
    # the deduplicated schedule reads each distinct pattern once
    for per_batch in report["schedules"].values():
        for sched in per_batch.values():
            assert sched.reads < sched.lookups


def test_figures_match_an_independent_count(micro_decoder: Path, report: dict) -> None:
    from sail_compiler.driver import compile_model
    from sail_compiler.lut_patterns import generated_feeds, generated_seq_len

    result = compile_model(micro_decoder, None, OPTIONS.__class__(**{
        **OPTIONS.__dict__, "emit": "sail"}))
    seq = generated_seq_len(micro_decoder)
    feeds = generated_feeds(result.signature, 16, seq)
    acts = collect_activations(micro_decoder, OPTIONS, result.quantization, feeds)
    layer = report["layers"][0]
    xq, _ = reference_quantize(acts[layer["layer"]], 8)
    assert xq.shape[:2] == (16, seq)
    # batch 1: every token is its own call; batch 4: 4 samples at one position
    single = np.mean([_distinct_fraction(xq[s, p][None], 16, 4, 8)
                      for s in range(16) for p in range(seq)])
    assert layer["batches"][1]["ideal_saved_fraction"] == pytest.approx(single, abs=1e-9)
    four = np.mean([_distinct_fraction(xq[s:s + 4, p], 16, 4, 8)
                    for s in range(0, 16, 4) for p in range(seq)])
    assert layer["batches"][4]["ideal_saved_fraction"] == pytest.approx(four, abs=1e-9)


def test_cli_prints_the_table_and_json(micro_decoder: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    out, sched = tmp_path / "annotated.py", tmp_path / "schedule.npz"
    assert main(["analyze-patterns", str(micro_decoder), "--group-size", "16", "--batches",
                 "1,2", "--table-size", "8", "-o", str(out), "--schedule-out", str(sched)]) == 0
    text = capsys.readouterr().out
    assert "8-entry" in text and "total" in text and "B=2 table" in text
    assert '"reuse"' in out.read_text()
    with np.load(sched) as data:
        source = data["logits/b2/source"]  # [B, C, b_a]: every lookup's read
        chunk = data["logits/b2/read_chunk"]
        assert source.shape[0] == 2 and source.max() < chunk.size
        # a lookup of chunk c takes its value from a read of chunk c
        np.testing.assert_array_equal(chunk[source], np.arange(source.shape[1])[None, :, None]
                                      + np.zeros_like(source))
    assert main(["analyze-patterns", str(micro_decoder), "--json", "--batches", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["layers"]) == 8 and "1" in data["total"]


@pytest.mark.parametrize("args, message", [
    (["--table-size", "0"], "size"),
    (["--ways", "3"], "ways"),
    (["--nbw", "9"], "1..8"),
    (["--act-bits", "1"], "2..16"),
    (["--batches", "0"], "positive"),
])
def test_cli_rejects_bad_settings(micro_decoder: Path, capsys: pytest.CaptureFixture,
                                  args: list[str], message: str) -> None:
    assert main(["analyze-patterns", str(micro_decoder), *args]) != 0
    assert message in capsys.readouterr().err


def test_calibration_inputs_of_the_wrong_shape(micro_decoder: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.zeros((2, 3, 4), np.int64))
    assert main(["analyze-patterns", str(micro_decoder), "--calib", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "bad.npz" in err and "input_ids" in err


def test_pass_rejects_activations_of_the_wrong_width(report: dict) -> None:
    name = report["layers"][0]["layer"]
    mod = report["module"]
    with pytest.raises(OptionError, match=f"layer {name}"):
        AnalyzeLUTPatterns({name: np.zeros((2, 3, 5), np.float32)})(mod)
    with pytest.raises(OptionError, match="no sail.lut_gemv"):
        AnalyzeLUTPatterns({"nothing": np.zeros((2, 3, 5), np.float32)})(mod)
    with pytest.raises(OptionError, match="positive"):
        AnalyzeLUTPatterns({}, batches=(0,))
    with pytest.raises(OptionError):
        ReuseConfig(size=-1)
