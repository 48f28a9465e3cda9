"""benchmarks/pim_sim_vs_analytic.py: a simulated pim-sim program and the analytic model of the
same shapes agree on the arrays' work; only the host's ops (costed from the kernels that ran
against modelled ones) and the lookups (reuse rates per role vs per call) may differ."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks.pim_sim_vs_analytic import analytic_point, compare, shape
from sail_compiler import compile_model
from sail_compiler.options import CompileOptions
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets.pim import MODELS, load_config
from sail_compiler.targets.pim.run import host_traffic, simulate_run
from sail_compiler.targets.pim.shapes import HostOp, decode_step
from sail_compiler.targets.pim.simulate_cli import write_report
from sail_compiler.targets.pim.target import HostCall
from sail_compiler.testing.decoders import PRESETS

#: SAIL components that the simulation and the analytic model cost with the same shapes alike.
ARRAY_WORK = ("weight_fetch", "table_construction", "shift_accumulate", "type_conversion",
              "reduction")


@pytest.fixture(scope="module")
def tiny_pim(tiny_decoder_kv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pim_vs_analytic") / "pim"
    compile_model(tiny_decoder_kv, out, CompileOptions(
        target="pim-sim", quant=QuantScheme(4, group_size=32)))
    return out


@pytest.fixture(scope="module")
def stats(tiny_pim: Path) -> dict:
    results = [simulate_run(tiny_pim, b, past_len=15, functional=False) for b in (1, 4)]
    write_report(results, tiny_pim.parent / "report")
    return json.loads((tiny_pim.parent / "report" / "stats.json").read_text())


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


@pytest.mark.parametrize("functional", [True, False])
def test_the_kv_cache_is_dram_traffic_at_the_machines_width(tiny_pim: Path,
                                                            functional: bool) -> None:
    # The tiny decoder: 4 layers, 2 KV heads of 128 / 4 = 32; batch 4, a past of 15. Each
    # layer's K and V concatenation reads its past (15 positions) from DRAM and writes its
    # present (16) back, at the machine's 16-bit KV width; attention then reads the present
    # from the LLC (64 x 16 x 4 x 2 bytes fit). Nothing else of the step goes to DRAM.
    batch, past, cfg = 4, 15, PRESETS["tiny"]
    kv_dim = cfg.num_kv_heads * cfg.hidden_size // cfg.num_heads
    config = load_config("sail-n1")
    assert config.data.kv_cache_bits == 16
    by_hand = cfg.num_layers * 2 * batch * kv_dim * (past + (past + 1)) * 2
    step = simulate_run(tiny_pim, batch, past_len=past, functional=functional).step
    host = [r for r in step.records if isinstance(r.op, HostOp)]
    assert sum(r.sail.bytes["dram"] for r in host) == by_hand
    assert sum(r.sail.bytes["dram"] > 0 for r in host) == 2 * cfg.num_layers
    # Against the analytic model's attention term, which reads the whole context (16
    # positions) and writes the new one in place: the program writes the past's 15 positions
    # again (the present is a copy), and reads the new position from the LLC, not DRAM.
    analytic = sum(op.dram_bytes for op in decode_step(shape("tiny"), past + 1)
                   if isinstance(op, HostOp) and op.role == "attention") * batch
    assert analytic == cfg.num_layers * 2 * batch * kv_dim * (past + 1 + 1) * 2
    copy_less_new = cfg.num_layers * 2 * batch * kv_dim * (past - 1) * 2
    assert sum(r.sail.bytes["dram"] for r in host) == analytic + copy_less_new
    # Costed as a cache updated in place (--kv-in-place), the step moves exactly the
    # analytic model's attention bytes: the new position written, the context read.
    in_place = simulate_run(tiny_pim, batch, past_len=past, functional=functional,
                            kv_in_place=True).step
    assert sum(r.sail.bytes["dram"] for r in in_place.records
               if isinstance(r.op, HostOp)) == analytic
    # The host time includes that traffic at the DRAM's bandwidth.
    concat = max(host, key=lambda r: r.sail.bytes["dram"])
    dram_ns = (config.dram.latency_ns
               + concat.sail.bytes["dram"] / config.dram.effective_gbps)
    assert concat.sail.total_ns >= config.host.sync_ns + dram_ns - 1e-9


def _call(shapes: list[tuple[int, ...]], buffers: tuple[int, ...],
          state: tuple[str, ...]) -> HostCall:
    program_instr = dataclasses.make_dataclass("I", ["name", "outputs"])("k", ["out"])
    return HostCall(program_instr, shapes, ["float32"] * len(shapes), buffers, state)


def test_host_traffic_rereads_a_present_from_the_llc_only_when_it_fits() -> None:
    config = load_config("sail-n1")
    llc = config.llc.slices * config.llc.slice_kib * 1024
    for positions, rereads_in in ((llc // 2 // 2, "llc"), (llc // 2 + 1, "dram")):
        # past [positions - 1, 1] + new [1, 1] -> present [positions, 1]; then a kernel reads
        # the present (and a small activation) and writes a small output.
        calls = [_call([(positions - 1, 1), (1, 1), (positions, 1)], (1, 2, 3),
                       ("past", "", "present")),
                 _call([(4, 1), (positions, 1), (4, 1)], (4, 3, 5), ("", "present", ""))]
        (concat_dram, concat_llc), (read_dram, read_llc) = host_traffic(calls, config)
        assert concat_dram == (2 * positions - 1) * 2  # the KV width, not float32's 4 bytes
        assert concat_llc == 4
        if rereads_in == "llc":
            assert (read_dram, read_llc) == (0, 8 * 4 + positions * 2)
        else:
            assert (read_dram, read_llc) == (positions * 2, 8 * 4)
        # In place: the update writes one position and reads no past; the reader's first
        # access to the present comes from DRAM.
        (concat_dram, concat_llc), (read_dram, read_llc) = host_traffic(
            calls, config, kv_in_place=True)
        assert (concat_dram, concat_llc) == (2, 4)
        assert (read_dram, read_llc) == (positions * 2, 8 * 4)
    # Without KV-cache operands everything is LLC traffic at the dtypes' widths.
    plain = [_call([(10, 3), (10, 3)], (1, 2), ())]
    assert host_traffic(plain, config) == [(0.0, 240.0)]
