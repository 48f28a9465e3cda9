"""benchmarks/pim_sim_vs_analytic.py: a simulated pim-sim program and the analytic model of the
same shapes agree on the arrays' work; only the host's ops (costed from the kernels that ran
against modelled ones) and the lookups (reuse rates per role vs per call) may differ."""

from __future__ import annotations

import json

import pytest

from benchmarks.pim_sim_vs_analytic import analytic_point, compare, shape
from sail_compiler import compile_model
from sail_compiler.options import CompileOptions
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets.pim import MODELS, load_config
from sail_compiler.targets.pim.run import simulate_run
from sail_compiler.targets.pim.simulate_cli import write_report
from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model

#: SAIL components that the simulation and the analytic model cost with the same shapes alike.
ARRAY_WORK = ("weight_fetch", "table_construction", "shift_accumulate", "type_conversion",
              "reduction")


@pytest.fixture(scope="module")
def stats(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pim_vs_analytic")
    save_model(make_decoder(PRESETS["tiny"], kv_cache=True), root / "tiny.onnx")
    compile_model(root / "tiny.onnx", root / "pim", CompileOptions(
        target="pim-sim", quant=QuantScheme(4, group_size=32)))
    results = [simulate_run(root / "pim", b, past_len=15, functional=False) for b in (1, 4)]
    write_report(results, root / "report")
    return json.loads((root / "report" / "stats.json").read_text())


def test_array_work_agrees_with_the_analytic_model(stats: dict) -> None:
    config = load_config(stats["machine"]["name"])
    for point in stats["points"]:
        ours = analytic_point(point, shape("tiny"), config)
        assert ours["context_len"] == point["context_len"] == 16
        sim, ana = point["sail"]["components"], ours["sail"]["components"]
        for name in ARRAY_WORK:
            assert sim[name]["time_ns"] == pytest.approx(ana[name]["time_ns"], rel=1e-9), name
        assert sim["lookups"]["time_ns"] == pytest.approx(ana["lookups"]["time_ns"], rel=0.05)


def test_table_names_every_machine_and_batch(stats: dict) -> None:
    table = compare(stats, shape("tiny"))
    for batch in (1, 4):
        for machine in ("sail", "n1", "gpu"):
            assert f"| {batch} | {machine} |" in table


def test_shapes_of_presets_and_of_the_analytic_models() -> None:
    assert shape("llama-2-7b") is MODELS["llama-2-7b"]
    seven = shape("7b")
    assert (seven.hidden, seven.intermediate, seven.layers, seven.heads, seven.vocab) == (
        4096, 11008, 32, 32, 32000)
