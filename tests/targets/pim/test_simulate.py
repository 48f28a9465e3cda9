"""Decode-step simulation, shapes, reuse figures and reports (targets/pim/simulate.py, shapes.py,
report.py, examples/reproduce_paper.py)."""

from __future__ import annotations

import json
import time

import pytest

from sail_compiler.errors import InputError, OptionError
from sail_compiler.targets.pim import (
    ModelShape,
    ReuseModel,
    Workload,
    decode_step,
    load_config,
    model_shape,
    preset,
    simulate_step,
    sweep,
)
from sail_compiler.targets.pim.cost import host_op_cost, lut_gemv_cost, quantize_cost
from sail_compiler.targets.pim.report import (
    headline,
    markdown_table,
    plot_cycle_breakdown,
    plot_reuse_per_layer,
    plot_speedup,
    plots_available,
    stats_dict,
    write_stats,
)
from sail_compiler.targets.pim.shapes import GemvOp, HostOp, QuantizeOp

TINY = preset("tiny")
N1 = preset("sail-n1")
TOY = ModelShape("toy", hidden=32, intermediate=64, layers=1, heads=2, kv_heads=2, vocab=48)


@pytest.mark.parametrize(("name", "params"), [("llama-2-7b", 6_738_415_616),
                                              ("llama-2-13b", 13_015_864_320)])
def test_llama_2_shapes_have_the_published_parameter_counts(name: str, params: int) -> None:
    model = model_shape(name)
    ops = decode_step(model, 16)
    linear = sum(op.k * op.n for op in ops if isinstance(op, GemvOp))
    embedding = sum(op.resident_bytes / 2 for op in ops if isinstance(op, HostOp))
    norms = (2 * model.layers + 1) * model.hidden
    assert linear + embedding + norms == params
    assert sum(isinstance(op, GemvOp) for op in ops) == 7 * model.layers + 1


def test_shapes_from_a_hugging_face_config(tmp_path) -> None:
    config = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "vocab_size": 32000}
    assert ModelShape.from_hf_config(config, "llama-2-7b") == model_shape("llama-2-7b")
    path = tmp_path / "gqa" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**config, "num_key_value_heads": 8}))
    gqa = ModelShape.from_hf_config(path)
    assert gqa.name == "gqa" and gqa.kv_dim == 1024
    with pytest.raises(InputError, match="lacks"):
        ModelShape.from_hf_config({"hidden_size": 1})
    with pytest.raises(OptionError, match="unknown model 'llama-3'; valid choices are"):
        model_shape("llama-3")
    with pytest.raises(OptionError, match="context_len must be a positive integer"):
        decode_step(TOY, 0)


def test_a_7b_decode_step_takes_well_under_a_second() -> None:
    ops = decode_step(model_shape("llama-2-7b"), 512)
    start = time.perf_counter()
    result = simulate_step(ops, Workload(bits=4, batch=16), N1, reuse=0.3)
    assert time.perf_counter() - start < 1.0
    assert len(result.records) == len(ops)
    assert result.tokens_per_s("sail") > 0


def test_toy_step_on_the_tiny_preset_by_hand() -> None:
    ops = decode_step(TOY, 4)
    step = simulate_step(ops, Workload(bits=4, batch=2, act_bits=4, group_size=32), TINY,
                         reuse=0.25, model="toy", context_len=4)
    # attention at context 4: per token 4 x 4 x 32 + 5 x 4 x 2 = 552 flops, KV read
    # 2 x 4 x 32 x 2 bytes + KV write 2 x 32 x 2 = 640 DRAM bytes, 2 x 32 x 4 LLC bytes.
    # B = 2: compute 1104 / 16 = 69 ns, DRAM 100 + 1280 / 8 = 260 ns, LLC 512 / 32 = 16 ns.
    attention = next(r for r in step.records if r.op.role == "attention")
    assert attention.sail.total_ns == pytest.approx(100 + 260)
    # The step is the sum of its ops, each costed by the cost model.
    expected = 0.0
    for op in ops:
        if isinstance(op, GemvOp):
            expected += lut_gemv_cost(op.k, op.n, bits=4, act_bits=4, group_size=32, nbw=2,
                                      batch=2, config=TINY, reuse=0.25).total_ns
        elif isinstance(op, QuantizeOp):
            expected += quantize_cost(op.k, act_bits=4, batch=2, config=TINY).total_ns
        else:
            expected += host_op_cost(TINY, flops=2 * op.flops, dram_bytes=2 * op.dram_bytes,
                                     llc_bytes=2 * op.llc_bytes).total_ns
    assert step.sail.total_ns == pytest.approx(expected)
    assert step.tokens_per_s("sail") == pytest.approx(2 / (expected * 1e-9))
    assert step.sail.energy_total_pj == pytest.approx(
        sum(r.sail.energy_total_pj for r in step.records))
    assert step.sail.events["reuse_hits"] <= step.sail.events["lookups"]


@pytest.mark.parametrize(("config", "model"), [(N1, "llama-2-7b"), (N1, "llama-2-13b"),
                                               (TINY, TOY)])
def test_more_batch_never_lowers_step_throughput(config, model) -> None:
    model = model_shape(model) if isinstance(model, str) else model
    for bits in (2, 3, 4):
        results = sweep([model], config, bits=[bits], batches=range(1, 33), context_len=64,
                        reuse=ReuseModel.constant(0.35), progress=False,
                        group_size=32 if config is TINY else 128)
        tps = [r.tokens_per_s("sail") for r in results]
        assert tps == sorted(tps)
        cycles = [r.sail.total_ns for r in results]
        assert cycles == sorted(cycles)


def test_ratios_and_prices() -> None:
    step = simulate_step(decode_step(model_shape("llama-2-7b"), 128),
                         Workload(bits=3, batch=8), N1, reuse=0.4)
    assert step.speedup_vs_n1 == pytest.approx(step.tokens_per_s("sail")
                                               / step.tokens_per_s("n1"))
    assert step.tokens_per_usd_vs_n1 == pytest.approx(step.speedup_vs_n1 / 1.02)
    assert step.tokens_per_usd("gpu") == pytest.approx(step.tokens_per_s("gpu") * 3600 / 3.06)
    assert 0 < step.reuse_saved_compute_fraction < 1
    amortized = simulate_step(decode_step(model_shape("llama-2-7b"), 128),
                              Workload(bits=3, batch=8, amortize_dequant=True), N1, reuse=0.4)
    assert amortized.tokens_per_s("n1") > step.tokens_per_s("n1")
    on_host = simulate_step(decode_step(model_shape("llama-2-7b"), 128),
                            Workload(bits=3, batch=8, placement="host"), N1, reuse=0.4)
    assert on_host.sail.time_ns["host"] > step.sail.time_ns["host"]


def test_a_model_that_does_not_fit_the_gpu() -> None:
    fp16 = load_config("sail-n1", overrides={"gpu": {"weights": "fp16"}})
    step = simulate_step(decode_step(model_shape("llama-2-13b"), 128), Workload(4, 1), fp16)
    assert not step.gpu_fits and step.tokens_per_s("gpu") == 0
    assert step.tokens_per_usd_vs_gpu is None
    assert simulate_step(decode_step(model_shape("llama-2-7b"), 128), Workload(4, 1),
                         fp16).gpu_fits


def _analysis() -> dict:
    """A `sail analyze-patterns --json` report with Hugging Face layer names."""
    def figures(*fractions: float) -> dict:
        return {str(b): {"lookups": 100 * b, "table_saved_fraction": f}
                for b, f in zip((1, 4, 16), fractions, strict=True)}

    return {"inputs": "test", "batches": [1, 4, 16],
            "layers": [{"layer": "/model/layers.0/self_attn/q_proj/MatMul",
                        "batches": figures(0.1, 0.3, 0.5)},
                       {"layer": "/model/layers.1/self_attn/q_proj/MatMul",
                        "batches": figures(0.3, 0.5, 0.7)},
                       {"layer": "/model/layers.0/mlp/down_proj/MatMul",
                        "batches": figures(0.6, 0.6, 0.6)}],
            "total": {"1": {"table_saved_fraction": 0.2}, "4": {"table_saved_fraction": 0.4},
                      "16": {"table_saved_fraction": 0.6}}}


def test_reuse_model_matches_layers_then_roles_then_the_total(tmp_path) -> None:
    reuse = ReuseModel.from_analysis(_analysis())
    assert reuse.fraction(4, "q_proj", "layers.1.self_attn.q_proj") == pytest.approx(0.5)
    assert reuse.fraction(4, "q_proj", "layers.5.self_attn.q_proj") == pytest.approx(0.4)
    assert reuse.fraction(4, "down_proj", "layers.3.mlp.down_proj") == pytest.approx(0.6)
    assert reuse.fraction(4, "o_proj", "layers.0.self_attn.o_proj") == pytest.approx(0.4)
    # log2-linear between analysed batches, held beyond them
    assert reuse.fraction(2, "o_proj") == pytest.approx(0.3)
    assert reuse.fraction(8, "o_proj") == pytest.approx(0.5)
    assert reuse.fraction(64, "o_proj") == pytest.approx(0.6)
    path = tmp_path / "reuse.json"
    path.write_text(json.dumps(_analysis()))
    assert ReuseModel.load(path).fraction(1) == pytest.approx(0.2)
    path.write_text("{}")
    with pytest.raises(InputError, match="not a `sail analyze-patterns --json` report"):
        ReuseModel.load(path)
    with pytest.raises(OptionError, match=r"reuse fractions must be"):
        ReuseModel.constant(1.5)


def test_sweep_shows_progress(capsys) -> None:
    results = sweep([TOY], TINY, bits=[2, 4], batches=[1, 2], context_len=8, group_size=32)
    assert [(r.workload.bits, r.batch) for r in results] == [(2, 1), (2, 2), (4, 1), (4, 2)]
    assert "simulating decode steps" in capsys.readouterr().err


def test_reports(tmp_path) -> None:
    results = sweep([TOY], TINY, bits=[2, 4], batches=[1, 4], context_len=8, group_size=32,
                    reuse=0.3, progress=False)
    stats = json.loads(write_stats(tmp_path / "stats.json", results, per_layer=True,
                                   extra={"note": "x"}).read_text())
    assert stats["machine"]["name"] == "tiny" and stats["note"] == "x"
    point = stats["points"][0]
    assert point["sail"]["energy_pj"] == pytest.approx(
        sum(c["energy_pj"] for c in point["sail"]["components"].values()))
    assert point["sail"]["cycles"] == pytest.approx(point["sail"]["total_ns"] * 1.0)
    assert len(point["layers"]) == len(decode_step(TOY, 8))
    best = headline(results)
    assert best["speedup_vs_n1"]["value"] == max(r.speedup_vs_n1 for r in results)
    assert stats_dict(results)["headline"]["speedup_vs_n1"] == best["speedup_vs_n1"]
    table = markdown_table(results).splitlines()
    assert len(table) == 2 + len(results) and table[2].startswith("| toy | 2 | 1 |")
    if not plots_available():
        pytest.skip("matplotlib is not installed")
    for plot, name in ((plot_cycle_breakdown, "cycles.png"), (plot_speedup, "speedup.png")):
        assert plot(results, tmp_path / name).stat().st_size > 0
    rates = {r.op.name: {1: r.reuse} for r in results[0].records if r.reuse is not None}
    assert plot_reuse_per_layer(rates, tmp_path / "reuse.png").stat().st_size > 0


def test_reproduce_paper_script(tmp_path, capsys) -> None:
    from reproduce_paper import main

    out = tmp_path / "out"
    assert main(["--models", "llama-2-7b", "--bits", "4", "--batches", "1,32", "--no-plots",
                 "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| max speedup vs N1 | 10.7x |" in printed
    assert "| Gemma 3 270M |" in printed and "| stdlib LM (5M) |" in printed  # both sources
    stats = json.loads((out / "stats.json").read_text())
    assert stats["paper"]["speedup_vs_n1"] == 10.7
    assert stats["headline"]["tokens_per_usd_vs_n1_vs_batch1"]["batch"] == 32
    assert (out / "headline.md").read_text().count("| max tokens/$ vs") == 2
    assert main(["--preset", "huge", "--out", str(out)]) == 2
    assert "unknown machine preset 'huge'" in capsys.readouterr().err
