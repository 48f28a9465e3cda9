"""The pim-sim target end to end: exact outputs (vs the llvm target and the NumPy reference),
simulated runs and their invariants, ``sail simulate`` and ``sail verify --target pim-sim``
(targets/pim/target.py, run.py, simulate_cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import tvm

from sail_compiler.artifact import Artifact
from sail_compiler.driver import compile_model
from sail_compiler.errors import ArtifactError, OptionError
from sail_compiler.ops.sail_ops import reference_dequantize, reference_group_sums
from sail_compiler.options import CompileOptions
from sail_compiler.quant.reference import ActBlocks, quantize_weights_rtn
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets.pim import preset
from sail_compiler.targets.pim.config import ConfigError
from sail_compiler.targets.pim.isa import DEQUANT, LUTGEMV, Instruction
from sail_compiler.targets.pim.program import Program
from sail_compiler.targets.pim.run import extrapolate_host_shapes, load_artifact, simulate_run
from sail_compiler.targets.pim.shapes import HostOp
from sail_compiler.targets.pim.simulate_cli import add_parser, run
from sail_compiler.targets.pim.target import Executor, HostCall
from sail_compiler.verify import TARGET_AGREEMENT, InputPlan, generate_inputs, verify_model

BITS = (2, 3, 4, 8)
#: The tiny machine's data-feeding modules index 2 bits.
PIM = {"pim_config": "tiny", "nbw": 2}


@pytest.fixture(scope="module")
def artifacts(micro_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{bits: (llvm artifact, pim-sim artifact)} of the micro decoder, one quantization each."""
    root = tmp_path_factory.mktemp("pim")
    out = {}
    for bits in BITS:
        quant = QuantScheme(bits, group_size=16)
        llvm = compile_model(micro_decoder, root / f"llvm{bits}",
                             CompileOptions(quant=quant, nbw=2))
        compile_model(micro_decoder, root / f"pim{bits}",
                      CompileOptions(target="pim-sim", quant=quant, **PIM),
                      quantization=llvm.quantization)
        out[bits] = (root / f"llvm{bits}", root / f"pim{bits}")
    return out


@pytest.mark.parametrize("bits", BITS)
def test_outputs_bit_identical_to_llvm(artifacts, bits):
    llvm, pim = (Artifact(p) for p in artifacts[bits])
    for plan in (InputPlan(batch=1, seq_len=1), InputPlan(batch=3, seq_len=5, seed=1)):
        inputs = generate_inputs(llvm.signature, plan)
        ours, theirs = pim.run(inputs), llvm.run(inputs)
        for name in theirs:
            assert np.array_equal(ours[name], theirs[name]), (bits, name, plan)


def test_program_files_and_manifest(artifacts):
    out = artifacts[4][1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "pim-sim" and manifest["pim_config"] == "tiny"
    assert manifest["instructions"]["LUTGEMV"] == 8  # q, k, v, o, gate, up, down, lm_head
    listing = (out / "program.txt").read_text()
    assert "LUTGEMV  model.layers.0.self_attn.q_proj" in listing
    program = json.loads((out / "program.json").read_text())
    assert program["config_fingerprint"] == manifest["pim_config_fingerprint"]


@pytest.mark.parametrize("output", ["sums", "float"])
@pytest.mark.parametrize("act_group", [40, 16, 8, 32], ids=["per-row", "a16", "a8", "a32"])
def test_executor_matches_the_numpy_reference(output, act_group):
    """Per-row and per-block activation scales: blocks equal to the groups, inside them (the
    tables are built per sum block), spanning two groups."""
    rng = np.random.default_rng(0)
    k, n, g = 40, 24, 16
    qw = quantize_weights_rtn(rng.standard_normal((k, n)).astype(np.float32),
                              QuantScheme(3, group_size=g))
    blocks = ActBlocks(k, g, act_group)
    attrs = {"k": k, "n": n, "bits": 3, "act_bits": 8, "group_size": g,
             "act_group": act_group, "nbw": 2, "output": output, "placement": "pim",
             "dequant_placement": "pim", "schedule": "table", "slot": 0}
    executor = Executor(Program(preset("tiny"), [Instruction(0, LUTGEMV, "l", attrs)]))
    xq = rng.integers(-127, 128, (2, 3, k)).astype(np.int8)
    sx = rng.random((2, 3, blocks.n_blocks)).astype(np.float32)
    args = [xq, qw.packed(), qw.zero_points().astype(np.int32)]
    if output == "float":
        args += [sx, qw.scale]
    got = executor(0, *(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args)).numpy()
    # timing only: zeros of the same shape and dtype, the call's lookups still counted
    timing = Executor(executor.program, functional=False)
    timing.record = True
    zeros = timing(0, *(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args)).numpy()
    assert zeros.shape == got.shape and zeros.dtype == got.dtype and not zeros.any()
    assert timing.calls[0].lookups > 0
    sums = reference_group_sums(xq, qw, act_group)
    assert sums.shape == (2, 3, blocks.n_sums, n)
    if output == "sums":
        assert got.dtype == np.int32 and np.array_equal(got, sums)
    else:
        want = reference_dequantize(sums, sx, qw.scale, blocks)
        assert np.array_equal(got, want)
        # the contract written out: sum_j (s[grp(j)] * sx[blk(j)]) * S[j], in order of j
        terms = (qw.scale[blocks.group_of()] * sx[..., blocks.block_of(), None]) \
            * sums.astype(np.float32)
        assert np.array_equal(want, terms.sum(axis=-2, dtype=np.float32))


@pytest.fixture(scope="module")
def runs(artifacts) -> dict:
    return {b: simulate_run(artifacts[4][1], b) for b in (1, 4, 16)}


def test_simulated_run_invariants(runs):
    for result in runs.values():
        step = result.step
        parts = sum(r.sail.energy_total_pj for r in step.records)
        assert step.sail.energy_total_pj == pytest.approx(parts, rel=1e-12)
        assert step.sail.energy_total_pj == pytest.approx(sum(step.sail.energy_pj.values()))
        for r in step.records:
            assert r.sail.events.get("reuse_hits", 0) <= r.sail.events.get("lookups", 0)
        for layer in result.layer_reuse.values():
            assert 0 <= layer["reuse_hits"] <= layer["lookups"]
        assert len(result.layer_reuse) == 8
        assert all(i["opcode"] != DEQUANT for i in result.instructions)  # fused into LUTGEMV
        assert step.pim_compute_ns <= step.pim_compute_no_reuse_ns
    throughput = [runs[b].step.tokens_per_s("sail") for b in (1, 4, 16)]
    assert throughput == sorted(throughput)


def test_cycles_do_not_decrease_with_bits(artifacts):
    """Each program's LUT-GEMVs as mapped, at the batch the lanes were chosen for (1) and the
    same reuse (none): real runs of separately quantized models see different activations,
    hence different reuse, and at other batches another lane could be faster."""
    from sail_compiler.targets.pim.cost import lut_gemv_cost
    from sail_compiler.targets.pim.program import load_program

    totals = []
    for bits in BITS:
        program = load_program(artifacts[bits][1])
        total = 0.0
        for instr in program.instructions:
            if instr.opcode == LUTGEMV:
                a = instr.attrs
                total += lut_gemv_cost(a["k"], a["n"], bits=a["bits"], act_bits=a["act_bits"],
                                       group_size=a["group_size"], nbw=a["nbw"], batch=1,
                                       config=program.config, reuse=0.0,
                                       placement=a["dequant_placement"],
                                       lane_bits=instr.mapping.tiling.lane_bits).total_ns
        totals.append(total)
    assert totals == sorted(totals)


def test_simulate_with_another_machine_is_refused(artifacts):
    with pytest.raises(ConfigError, match="--pim-config"):
        simulate_run(artifacts[4][1], 1, config=preset("sail-n1"))
    with pytest.raises(OptionError, match="--target pim-sim"):
        simulate_run(artifacts[4][0], 1)


def test_layer_larger_than_the_machine(micro_decoder, tmp_path):
    options = CompileOptions(target="pim-sim", quant=QuantScheme(4), pim_config="tiny", nbw=4)
    with pytest.raises(OptionError, match="csram.nbw"):
        compile_model(micro_decoder, tmp_path / "out", options)


def test_cli_simulate_writes_the_report(artifacts, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    report = tmp_path / "report"
    args = parser.parse_args(["simulate", str(artifacts[4][1]), "--batch", "1,4",
                              "--report", str(report), "--no-progress"])
    assert run(args) == 0
    assert "| speedup vs N1 |" in capsys.readouterr().out
    stats = json.loads((report / "stats.json").read_text())
    assert [p["batch"] for p in stats["points"]] == [1, 4]
    assert "model.layers.0.mlp.down_proj" in stats["points"][0]["layer_reuse"]
    assert "hit rate B=4" in (report / "report.md").read_text()
    from sail_compiler.targets.pim.report import plots_available

    if plots_available():
        for name in ("cycle_breakdown.png", "speedup.png", "reuse_per_layer.png"):
            assert (report / name).stat().st_size > 0
    # both readings of tokens/$: with batch 1 in the run, the cross-batch columns are filled
    assert stats["points"][1]["vs_batch1"]["tokens_per_usd_vs_n1"] > 0
    assert "tok/$ vs N1 at B=1" in (report / "report.md").read_text()
    # timing only: the same instructions costed, no offload arithmetic, no outputs kept
    args = parser.parse_args(["simulate", str(artifacts[4][1]), "--batch", "1,4",
                              "--timing-only", "--json", "--no-progress"])
    assert run(args) == 0
    timing = json.loads(capsys.readouterr().out)
    assert "timing only" in timing["points"][0]["reuse_source"]
    assert [p["batch"] for p in timing["points"]] == [1, 4]
    assert [p["sail"]["events"]["lookups"] for p in timing["points"]] \
        == [p["sail"]["events"]["lookups"] for p in stats["points"]]
    full = simulate_run(artifacts[4][1], 1, functional=False)
    assert full.outputs == {} and full.step.sail.total_ns > 0


@pytest.mark.parametrize("act_group", ["row", 8], ids=["per-row", "blocks-of-8"])
def test_verify_pim_sim(micro_decoder, tmp_path, act_group):
    options = CompileOptions(target="pim-sim", quant=QuantScheme(4, group_size=16),
                             act_group_size=act_group, **PIM)
    report = verify_model(micro_decoder, options, [InputPlan(batch=2, seq_len=3)],
                          artifact_dir=tmp_path / "pim")
    assert report["ok"] and report["ref_exact"] is True
    assert report["reference"]["probe_vs_artifact_rel_l2"] == 0.0 <= TARGET_AGREEMENT


@pytest.fixture(scope="module")
def kv_artifact(tiny_decoder_kv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny decoder with a KV cache (4 layers), compiled for pim-sim."""
    out = tmp_path_factory.mktemp("pim_kv") / "pim"
    compile_model(tiny_decoder_kv, out, CompileOptions(
        target="pim-sim", quant=QuantScheme(4, group_size=32)))
    return out


def _host_ops(result) -> list[tuple]:
    return [(r.op.name, r.op.flops, r.op.llc_bytes, r.sail.total_ns) for r in result.step.records
            if isinstance(r.op, HostOp)]


@pytest.mark.parametrize("past_len", [0, 7, 40])
def test_timing_only_costs_the_host_kernels_of_a_run_at_the_context(kv_artifact, past_len):
    """Timing only runs at pasts 1-3 and extrapolates; a functional run materializes the past
    at ``past_len``: every host kernel is costed alike, and the LUT-GEMVs' lookups agree."""
    artifact = load_artifact(kv_artifact)
    full = simulate_run(kv_artifact, 3, past_len=past_len, artifact=artifact)
    timing = simulate_run(kv_artifact, 3, past_len=past_len, artifact=artifact,
                          functional=False)
    assert len(_host_ops(full)) > 20
    assert _host_ops(timing) == _host_ops(full)
    assert timing.step.sail.events["lookups"] == full.step.sail.events["lookups"]
    assert timing.step.context_len == full.step.context_len == past_len + 1
    assert "host kernels' shapes at" in timing.step.reuse_source
    with pytest.raises(OptionError, match="--past-len"):
        simulate_run(kv_artifact, 1, past_len=-1, artifact=artifact)


def test_host_shapes_not_affine_in_the_past_are_refused():
    kernel = Instruction(0, "HOST", "fused_concat", {})

    def call(*dims):
        return HostCall(kernel, [(4, d) for d in dims], ["float32"] * len(dims))

    # dims P + 1 and 2P at pasts 1, 2, 3 -> at 10: 11 and 20
    got = extrapolate_host_shapes([call(2, 2)], [[call(3, 4)], [call(4, 6)]], 10)
    assert got[0].shapes == [(4, 11), (4, 20)]
    # (P + 1)^2 is not affine: 4, 9, 16
    with pytest.raises(ArtifactError, match="not affine.*without --timing-only"):
        extrapolate_host_shapes([call(4)], [[call(9)], [call(16)]], 10)
    with pytest.raises(ArtifactError, match="different host kernels"):
        extrapolate_host_shapes([call(2)], [[call(3)], []], 10)


def test_the_runner_maps_the_weights_instead_of_copying_them(kv_artifact, tmp_path):
    """The VM's weight tensors are views of the file's pages: a byte written to weights.bin
    after loading shows through (a copy would not see it)."""
    import shutil

    from sail_compiler.weights_file import read_weight_file

    out = tmp_path / "pim"
    shutil.copytree(kv_artifact, out)
    runner = Artifact(out).runner
    tensors = read_weight_file(out / "weights.bin")
    index = max(range(len(tensors)), key=lambda i: tensors[i][1].nbytes)
    view = tensors[index][1]
    whole = view
    while isinstance(whole.base, np.ndarray):
        whole = whole.base
    offset = view.ctypes.data - whole.ctypes.data  # the tensor's offset in the file
    before = bytes(view.reshape(-1).view(np.uint8)[:1])[0]
    loaded = runner.weights[index].numpy().reshape(-1).view(np.uint8)
    assert loaded[0] == before
    with (out / "weights.bin").open("r+b") as f:
        f.seek(offset)
        f.write(bytes([before ^ 0xFF]))
    assert runner.weights[index].numpy().reshape(-1).view(np.uint8)[0] == before ^ 0xFF
