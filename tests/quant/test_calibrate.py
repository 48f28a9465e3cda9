"""Calibration statistics and the --avg-bits allocation (quant.calibrate)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from sail_compiler.errors import InputError, OptionError, SailError
from sail_compiler.frontend.signature import signature_of
from sail_compiler.quant import calibrate
from sail_compiler.quant.calibrate import (
    CURVE_COLUMNS,
    CalibrationSpec,
    WeightSwapper,
    assign_bits,
    calibration_feeds,
    collect_hessians,
    collect_hessians_sequential,
    curve_columns,
    layer_output_error,
    measure_sensitivity,
    probe_width,
    sensitivity_feeds,
)
from sail_compiler.quant.plan import find_layers
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(5)


def _mlp():  # type: ignore[no-untyped-def]
    w1 = RNG.standard_normal((6, 5)).astype(np.float32)
    w2 = RNG.standard_normal((5, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w1, w2


def test_hessians_equal_gram_matrices_of_the_layer_inputs() -> None:
    model, w1, _ = _mlp()
    feeds = [{"x": RNG.standard_normal((2, 4, 6)).astype(np.float32)} for _ in range(3)]
    hessians = collect_hessians(model, find_layers(model), feeds)
    xs = np.concatenate([f["x"].reshape(-1, 6) for f in feeds]).astype(np.float64)
    rs = np.maximum(xs @ w1.astype(np.float64), 0)
    np.testing.assert_allclose(hessians["fc1"], xs.T @ xs, rtol=1e-6)
    np.testing.assert_allclose(hessians["fc2"], rs.T @ rs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch,runs", [(1, 1), (2, 3)])
def test_spilled_hessians_equal_the_in_memory_ones_bit_for_bit(tmp_path, batch: int,  # type: ignore[no-untyped-def]
                                                              runs: int) -> None:
    """Spilled to files (as activation rows when they are smaller than the sums: 4 rows of
    K = 6, 5; as running sums otherwise: 24 rows), the Hessians equal the in-memory ones
    exactly; one is computed per input and kept until the next; close deletes the files."""
    model, _, _ = _mlp()
    feeds = [{"x": RNG.standard_normal((batch, 4, 6)).astype(np.float32)} for _ in range(runs)]
    layers = find_layers(model)
    in_memory = collect_hessians(model, layers, feeds)
    spilled = collect_hessians(model, layers, feeds, work_dir=tmp_path)
    (folder,) = tmp_path.iterdir()
    files = sorted(f.name for f in folder.iterdir())
    assert files == (["0.rows.f32", "1.rows.f32"] if runs == 1 else ["0.sum.f64", "1.sum.f64"])
    assert "fc1" in spilled and "nope" not in spilled and len(spilled) == 2
    for name in ("fc1", "fc2"):
        h = spilled[name]
        assert h.dtype == np.float64 and not h.flags.writeable
        assert np.array_equal(h, in_memory[name])
        assert spilled[name] is h  # kept for the next layer of the same input
    spilled.close()
    assert list(tmp_path.iterdir()) == []


def test_spilling_refuses_a_disk_without_room_and_leaves_nothing(tmp_path,  # type: ignore[no-untyped-def]
                                                                monkeypatch) -> None:
    """After the first run the store knows what it needs (3 runs x 8 rows x 4 bytes x (6 + 5)
    as rows would be more than the sums, 8 x (36 + 25) bytes): less free is refused with the
    figure, and the folder is removed."""
    model, _, _ = _mlp()
    feeds = [{"x": RNG.standard_normal((2, 4, 6)).astype(np.float32)} for _ in range(3)]
    real = calibrate.shutil.disk_usage

    def small(path):  # type: ignore[no-untyped-def]
        return real(path)._replace(free=100)

    monkeypatch.setattr(calibrate.shutil, "disk_usage", small)
    with pytest.raises(SailError, match=r"needs about 488 bytes .* 100 bytes .* are free"):
        collect_hessians(model, find_layers(model), feeds, work_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_filling_up_while_spilling_says_so_and_leaves_nothing(tmp_path,  # type: ignore[no-untyped-def]
                                                                    monkeypatch) -> None:
    """ENOSPC from a write after the room check (another process took the space) becomes the
    same message, with the bytes written by then; the folder is removed."""
    import errno

    model, _, _ = _mlp()
    feeds = [{"x": RNG.standard_normal((2, 4, 6)).astype(np.float32)} for _ in range(3)]
    writes = []
    original = calibrate._write

    def write(path, array, mode):  # type: ignore[no-untyped-def]
        writes.append(path.name)
        if len(writes) > 2:  # the second run's first write
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, array, mode)

    monkeypatch.setattr(calibrate, "_write", write)
    with pytest.raises(SailError, match=r"needs about 488 bytes .* 488 bytes were written"):
        collect_hessians(model, find_layers(model), feeds, work_dir=tmp_path)
    assert len(writes) == 3 and list(tmp_path.iterdir()) == []


def test_weight_swapper_runs_the_model_with_substituted_weights() -> None:
    model, w1, w2 = _mlp()
    x = RNG.standard_normal((1, 4, 6)).astype(np.float32)
    other = RNG.standard_normal(w2.shape).astype(np.float32)
    with WeightSwapper(model, find_layers(model)) as swapper:
        base = swapper.run({"x": x})
        swapped = swapper.run({"x": x}, {"fc2": other})
    hidden = np.maximum(x @ w1, 0)
    np.testing.assert_allclose(base, hidden @ w2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(swapped, hidden @ other, rtol=1e-5, atol=1e-5)


def _deep_mlp():  # type: ignore[no-untyped-def]
    """x -> fc1 -> relu -> fc2 (a Gemm with transB) -> relu -> fc3 and fc4 (one input)."""
    w1, w2, w3, w4 = (RNG.standard_normal(shape).astype(np.float32)
                      for shape in ((6, 5), (5, 4), (4, 3), (4, 2)))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2t"], ["g"], name="fc2", transB=1),
         helper.make_node("Relu", ["g"], ["s"], name="relu2"),
         helper.make_node("MatMul", ["s", "w3"], ["y"], name="fc3"),
         helper.make_node("MatMul", ["s", "w4"], ["z"], name="fc4")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [8, 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2.T.copy(), "w2t"),
         numpy_helper.from_array(w3, "w3"), numpy_helper.from_array(w4, "w4")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (w1, w2)


@pytest.mark.parametrize("per_stage", [1, 2])
def test_sequential_hessians_come_from_the_model_with_earlier_layers_quantized(
        per_stage: int) -> None:
    model, (w1, w2) = _deep_mlp()
    layers = find_layers(model)
    feeds = [{"x": RNG.standard_normal((8, 6)).astype(np.float32)} for _ in range(3)]
    calls = []

    def quantize_layer(layer, h):  # type: ignore[no-untyped-def]
        calls.append(layer.name)
        w = {"fc1": w1, "fc2": w2}.get(layer.name)
        return np.round(w * 2) / 2 if w is not None else np.zeros((layer.k, layer.n))

    hessians = collect_hessians_sequential(model, layers, feeds, quantize_layer, per_stage)
    assert calls == ["fc1", "fc2", "fc3", "fc4"]
    q1, q2 = (np.round(w.astype(np.float64) * 2) / 2 for w in (w1, w2))
    xs = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    # with two inputs a stage, fc1's and fc2's inputs are both taken from the float model
    rs = np.maximum(xs @ (q1 if per_stage == 1 else w1), 0)
    ss = np.maximum(np.maximum(xs @ q1, 0) @ q2, 0)
    np.testing.assert_allclose(hessians["fc1"], xs.T @ xs, rtol=1e-6)
    np.testing.assert_allclose(hessians["fc2"], rs.T @ rs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hessians["fc3"], ss.T @ ss, rtol=1e-4, atol=1e-4)
    assert hessians["fc4"] is hessians["fc3"]


def test_layer_output_error_is_the_squared_error_of_the_layer_outputs() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40, 24))
    err = rng.standard_normal((24, 70000)).astype(np.float32)  # several column tiles
    expected = float(np.sum(np.square(x @ err.astype(np.float64))))
    assert layer_output_error(err, x.T @ x) == pytest.approx(expected, rel=1e-5)
    assert layer_output_error(np.zeros((24, 3), np.float32), x.T @ x) == 0.0


def test_probe_width_is_the_candidate_nearest_the_budget() -> None:
    widths = list(range(2, 9))
    assert [probe_width(widths, a) for a in (2.0, 2.6, 3.5, 4.49, 7.9, 8.0)] == [2, 3, 3, 4, 8, 8]


def _numpy_mlp(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float64) @ w1, 0) @ w2


def test_curve_columns_sample_at_most_the_limit_evenly() -> None:
    for n in (1, 5, CURVE_COLUMNS, CURVE_COLUMNS + 1, 262144):
        picked = np.arange(n)[curve_columns(n)]
        assert picked[0] == 0 and 0 < len(picked) <= CURVE_COLUMNS
        assert len(set(np.diff(picked).tolist())) <= 1  # evenly spaced
        assert len(picked) == n or len(picked) > CURVE_COLUMNS // 2


def _numpy_mlp(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float64) @ w1, 0) @ w2


def test_sensitivity_is_measured_end_to_end_at_the_probe_width_and_scaled_by_the_curve() -> None:
    model, w1, w2 = _mlp()
    layers = find_layers(model)
    feeds = [{"x": RNG.standard_normal((1, 4, 6)).astype(np.float32)} for _ in range(5)]
    weights = {"fc1": w1, "fc2": w2}
    # a made-up quantizer (noise that shrinks with the width) and made-up output errors
    noise = {(name, b): RNG.standard_normal(w.shape).astype(np.float32) * 2.0 ** -b
             for name, w in weights.items() for b in (2, 3, 4)}
    curve = {("fc1", 2): 8.0, ("fc1", 3): 2.0, ("fc1", 4): 0.5,
             ("fc2", 2): 1.0, ("fc2", 3): 0.0, ("fc2", 4): 0.0}

    def quantized(layer, scheme):  # type: ignore[no-untyped-def]
        return weights[layer.name] + noise[(layer.name, scheme.bits)]

    def output_error(layer, scheme):  # type: ignore[no-untyped-def]
        return curve[(layer.name, scheme.bits)]

    errors = measure_sensitivity(model, layers, [2, 3, 4], 3, QuantScheme(4, 2), feeds,
                                 quantized, output_error)

    def end_to_end(name: str) -> float:
        total = 0.0
        for feed in feeds:
            ref = _numpy_mlp(feed["x"], w1, w2)
            swapped = dict(weights, **{name: weights[name] + noise[(name, 3)]})
            out = _numpy_mlp(feed["x"], swapped["fc1"], swapped["fc2"])
            total += float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))
        return total

    e1, e2 = end_to_end("fc1"), end_to_end("fc2")
    assert errors["fc1"] == pytest.approx({2: 4 * e1, 3: e1, 4: e1 / 4}, rel=1e-4)
    # no output error at the probe width: the measurement stands for every width
    assert errors["fc2"] == pytest.approx({2: e2, 3: e2, 4: e2}, rel=1e-4)
    assert e1 > 0 and e2 > 0


def test_calibration_files_are_checked_against_the_signature(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = _mlp()
    sig = signature_of(model)
    good, wrong_name, wrong_shape = (tmp_path / f"{n}.npz" for n in ("good", "name", "shape"))
    np.savez(good, x=np.zeros((2, 4, 6), np.float32))
    np.savez(wrong_name, inputs=np.zeros((2, 4, 6), np.float32))
    np.savez(wrong_shape, x=np.zeros((2, 5, 6), np.float32))
    feeds = calibration_feeds(CalibrationSpec(files=(good,)), sig)
    assert feeds[0]["x"].shape == (2, 4, 6)
    with pytest.raises(InputError, match="lacks input"):
        calibration_feeds(CalibrationSpec(files=(wrong_name,)), sig)
    with pytest.raises(InputError, match="dim 1 is 5, expected 4"):
        calibration_feeds(CalibrationSpec(files=(wrong_shape,)), sig)


def test_sensitivity_probes_run_on_the_first_calibration_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = _mlp()
    sig = signature_of(model)
    paths = [tmp_path / f"{i}.npz" for i in range(3)]
    for i, path in enumerate(paths):
        np.savez(path, x=np.full((1, 4, 6), i, np.float32))
    feeds = sensitivity_feeds(CalibrationSpec(files=tuple(paths)), sig)
    assert len(feeds) == 1 and np.all(feeds[0]["x"] == 0)


def test_calibration_spec_rejects_inconsistent_sources(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match="go together"):
        CalibrationSpec(text=tmp_path / "t.txt")
    with pytest.raises(OptionError, match="not both"):
        CalibrationSpec(files=(tmp_path / "a.npz",), text=tmp_path / "t", tokenizer=tmp_path / "j")
    with pytest.raises(OptionError, match=">= 1"):
        CalibrationSpec(samples=0)


def _brute_force(errors, params, budget):  # type: ignore[no-untyped-def]
    names = list(errors)
    best = None
    for combo in itertools.product(*(sorted(errors[n]) for n in names)):
        if sum(b * params[n] for b, n in zip(combo, names, strict=True)) <= budget + 1e-9:
            total = sum(errors[n][b] for b, n in zip(combo, names, strict=True))
            best = total if best is None else min(best, total)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_assign_bits_is_optimal_for_convex_curves_and_equal_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    widths = range(1, 9)
    # convex, decreasing: e(b) = a * 4**-b (quantization noise falls 4x per bit) + tiny slope
    errors = {f"l{i}": {b: float(a) * 4.0 ** -b for b in widths}
              for i, a in enumerate(rng.uniform(0.1, 10, size=4))}
    params = dict.fromkeys(errors, 100)
    avg = float(rng.choice([1.5, 2.25, 3.0, 4.75, 6.5]))
    chosen = assign_bits(errors, params, avg)
    spent = sum(chosen[n] * params[n] for n in chosen)
    assert spent <= avg * sum(params.values()) + 1e-9
    total = sum(errors[n][chosen[n]] for n in chosen)
    assert total == pytest.approx(_brute_force(errors, params, avg * 400), rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_assign_bits_respects_the_budget_with_unequal_sizes(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    errors = {f"l{i}": dict(zip(range(1, 9), sorted(rng.uniform(0, 1, 8), reverse=True),
                                strict=True)) for i in range(5)}
    params = {n: int(rng.integers(10, 1000)) for n in errors}
    avg = float(rng.uniform(1, 8))
    chosen = assign_bits(errors, params, avg)
    assert sum(chosen[n] * params[n] for n in chosen) <= avg * sum(params.values()) + 1e-6
    assert set(chosen) == set(errors) and all(1 <= b <= 8 for b in chosen.values())


def test_assign_bits_rejects_an_unreachable_budget() -> None:
    with pytest.raises(OptionError, match=r"\[2, 8\]"):
        assign_bits({"a": {b: 1.0 / b for b in range(2, 9)}}, {"a": 10}, 1.5)


def test_compile_with_gptq_sequential_is_exact_and_close_to_float(micro_decoder) -> None:  # type: ignore[no-untyped-def]
    """--gptq-sequential with --awq: the weights quantized during the sequential calibration
    are the ones compiled (exact against the NumPy reference)."""
    from sail_compiler.options import CompileOptions
    from sail_compiler.verify import InputPlan, verify_model

    options = CompileOptions(quant=QuantScheme.parse("w8g16"), method="gptq", awq=True,
                             gptq_sequential=True, calib=CalibrationSpec(samples=2, seq_len=8))
    report = verify_model(micro_decoder, options, [InputPlan(seq_len=5)])
    assert report["ref_exact"]
    assert report["outputs"][0]["cosine"] > 0.999, report["outputs"][0]
    with pytest.raises(OptionError, match="--gptq-sequential"):
        CompileOptions(gptq_sequential=True)


def test_compile_with_gptq_act_order_is_exact_and_close_to_float(micro_decoder) -> None:  # type: ignore[no-untyped-def]
    """--gptq-act-order with --awq and --gptq-sequential: the weights the sequential
    calibration quantized in activation order are the ones compiled (exact against the NumPy
    reference)."""
    from sail_compiler.options import CompileOptions
    from sail_compiler.verify import InputPlan, verify_model

    options = CompileOptions(quant=QuantScheme.parse("w8g16"), method="gptq", awq=True,
                             gptq_sequential=True, gptq_act_order=True,
                             calib=CalibrationSpec(samples=2, seq_len=8))
    report = verify_model(micro_decoder, options, [InputPlan(seq_len=5)])
    assert report["ref_exact"]
    assert report["outputs"][0]["cosine"] > 0.999, report["outputs"][0]


def test_gptq_act_order_applies_to_the_gptq_layers_and_needs_one(micro_decoder,  # type: ignore[no-untyped-def]
                                                                 tmp_path) -> None:
    import json

    from sail_compiler.frontend import load_checked
    from sail_compiler.frontend.signature import signature_of
    from sail_compiler.options import CompileOptions
    from sail_compiler.quant.prepare import prepare_quantization

    model = load_checked(micro_decoder)

    def codes(**options):  # type: ignore[no-untyped-def]
        quant = prepare_quantization(model, signature_of(model), CompileOptions(
            quant=QuantScheme(3, 16), calib=CalibrationSpec(samples=2, seq_len=8), **options))
        return {q.layer.name: q.qw.q for q in quant.layers}

    rtn, in_order = codes(), codes(method="gptq")
    act_order = codes(method="gptq", gptq_act_order=True)
    assert all(act_order[name].shape == in_order[name].shape for name in in_order)
    assert sum(not np.array_equal(act_order[name], in_order[name]) for name in in_order) >= 2
    # a plan's gptq rule gets the activation order, its other layers keep their method
    first = next(iter(in_order))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [{"match": first, "bits": 3, "method": "gptq"}]}))
    mixed = codes(bits_plan=plan, gptq_act_order=True)
    np.testing.assert_array_equal(mixed[first], act_order[first])
    for name in set(in_order) - {first}:
        np.testing.assert_array_equal(mixed[name], rtn[name])
    # no layer quantized by gptq: nothing to order
    plan.write_text(json.dumps({"layers": [{"match": first, "bits": 3}]}))
    with pytest.raises(OptionError, match=r"no layer is quantized by gptq \(the rules of .*"
                                          r"plan.json\); add --method gptq"):
        codes(bits_plan=plan, gptq_act_order=True)
    with pytest.raises(OptionError, match="--method search is not GPTQ; add --method gptq"):
        CompileOptions(quant=QuantScheme(3, 16), method="search", gptq_act_order=True)
