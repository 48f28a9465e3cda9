"""Verification against onnxruntime: per-output error metrics of a compiled model, on inputs
generated or loaded by :mod:`.inputs`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import OptionError, SailError
from .inputs import InputPlan, generate_inputs, load_inputs
from .options import CompileOptions

DEFAULT_TOLERANCE = 1e-4
#: Largest rel_l2_err between a quantized artifact of another target and the llvm build the
#: reference check records (DESIGN.md section 3: results within 1e-5 of the reference).
TARGET_AGREEMENT = 1e-5


def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """Max abs error, relative L2 error and cosine similarity of ``actual`` vs ``expected``."""
    if actual.shape != expected.shape:
        return {"max_abs_err": float("inf"), "rel_l2_err": float("inf"), "cosine": 0.0,
                "shape_mismatch": [list(actual.shape), list(expected.shape)]}
    a = actual.astype(np.float64).ravel()
    e = expected.astype(np.float64).ravel()
    if a.size == 0:
        return {"max_abs_err": 0.0, "rel_l2_err": 0.0, "cosine": 1.0}
    diff = a - e
    norm_e, norm_a = np.linalg.norm(e), np.linalg.norm(a)
    rel = float(np.linalg.norm(diff) / norm_e) if norm_e > 0 else float(np.linalg.norm(diff))
    if norm_e > 0 and norm_a > 0:
        cosine = float(a @ e / (norm_a * norm_e))
    else:
        cosine = 1.0 if norm_e == norm_a else 0.0
    return {"max_abs_err": float(np.abs(diff).max()), "rel_l2_err": rel, "cosine": cosine}


class OnnxRuntimeReference:
    """The float model on onnxruntime's CPU provider; the session is made once.

    Parameters
    ----------
    model_path
        The ``.onnx`` file (external data beside it).
    threads
        ``intra_op_num_threads`` (None: onnxruntime's default).
    """

    def __init__(self, model_path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from .frontend.genai import EXTERNAL_DATA_FOLDER, reference_model

        self.model_path = model_path
        model: str | bytes = str(model_path)
        options = ort.SessionOptions()
        changed = reference_model(model_path)
        if changed is not None:  # a genai sliding-window cache: see reference_model
            model = changed
            options.add_session_config_entry(EXTERNAL_DATA_FOLDER,
                                             str(Path(model_path).resolve().parent))
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise self._error(err) from err
        self.names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self.names, self.session.run(self.names, inputs), strict=True))
        except Exception as err:
            raise self._error(err) from err

    def _error(self, err: Exception) -> SailError:
        return SailError(f"onnxruntime, the reference, failed on {self.model_path}: "
                         f"{str(err).strip().splitlines()[0]}; check the model and inputs")


def _last_positions(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """``theirs`` cut to the last positions of its sequence axis when ``ours`` has fewer
    (``--logits last``: logits [batch, 1, vocab] against onnxruntime's [batch, seq, vocab])."""
    if ours.ndim == 3 and theirs.ndim == 3 and ours.shape[1] == 1 and theirs.shape[1] > 1 \
            and ours.shape[::2] == theirs.shape[::2]:
        return theirs[:, -1:]
    return theirs


def report_line(name: str, metrics: dict[str, Any], tolerance: float | None) -> str:
    verdict = "" if tolerance is None else \
        ("  ok" if metrics["rel_l2_err"] <= tolerance else "  FAIL")
    return (f"  {name:<28} max_abs_err {metrics['max_abs_err']:.3e}  rel_l2_err "
            f"{metrics['rel_l2_err']:.3e}  cosine {metrics['cosine']:.7f}{verdict}")


def _float_weights(model_path: Path, names: set[str]) -> dict[str, np.ndarray]:
    from .frontend import load_checked
    from .quant.plan import find_layers, layer_weight

    model = load_checked(model_path)
    return {layer.name: layer_weight(model, layer) for layer in find_layers(model)
            if layer.name in names}


def verify_model(model_path: str | Path, options: CompileOptions, plans: list[InputPlan],
                 inputs_file: str | Path | None = None, tolerance: float | None = None,
                 artifact_dir: str | Path | None = None, per_layer: bool = False,
                 check_reference: bool = True, cross: str | None = None) -> dict[str, Any]:
    """Compile once, run every input plan (or the given inputs) and compare with onnxruntime.

    A quantized compile is also checked against the NumPy reference on a probe build
    (:mod:`.reference_check`): ``ok`` then means ``ref_exact`` (and, if a ``tolerance`` is
    given, outputs within it of the float model); the errors against onnxruntime on the float
    model are the quantization error, reported, not judged. A float compile is ``ok`` when every
    output is within ``tolerance`` (default :data:`DEFAULT_TOLERANCE`). ``check_reference=False``
    skips the probe build (half the compile time) and ``ref_exact`` is then None. ``cross``
    (target c): build the artifact for that cross target (``sail build --cross``) and run it
    under qemu; the ``--dump-lut`` check then checks the cross build's kernels.

    Returns
    -------
    dict
        ``{"target", "ok", "tolerance", "compile_seconds", "notes", "outputs": [{"name",
        "max_abs_err", "rel_l2_err", "cosine", "dims", "ok"}, ...]}``: one entry per output and
        run; quantized compiles add ``"ref_exact"``, ``"reference"`` (group sums checked and
        mismatched, largest result error) and ``"quant"`` (plan, sizes; with ``per_layer`` each
        layer's bits, size, method, weight error, output error and exactness).
    """
    import dataclasses
    import tempfile
    import time

    from .artifact import Artifact
    from .driver import compile_model

    model_path = Path(model_path)
    if cross is not None and options.target != "c":
        raise OptionError(f"--cross builds c artifacts; this compile is for target "
                          f"{options.target} (use --target c)")
    with tempfile.TemporaryDirectory(prefix="sail-verify-") as tmp:
        out = Path(artifact_dir) if artifact_dir is not None else Path(tmp) / "artifact"
        started = time.perf_counter()
        result = compile_model(model_path, out, options)
        compile_seconds = time.perf_counter() - started
        quant = result.quantization
        if tolerance is None and quant is None:
            tolerance = DEFAULT_TOLERANCE
        artifact = Artifact(out)
        if cross is not None:
            from .targets.c.target import build_library

            build_library(out, cross=cross)
        if inputs_file is not None:
            runs = [load_inputs(inputs_file, artifact.signature)]
        else:
            runs = [generate_inputs(artifact.signature, plan) for plan in plans]
        reference = OnnxRuntimeReference(model_path)
        probe = check = None
        if quant is not None and check_reference:
            from .passes.expose_group_sums import recording
            from .reference_check import ReferenceCheck

            # The probe records the group sums through Python callbacks: an llvm build for
            # every target; probe_vs_artifact_rel_l2 then compares the artifact with llvm.
            probe_options = dataclasses.replace(options, target="llvm", probe=True,
                                                dump_dir=None, print_after=(), force=False)
            compile_model(model_path, Path(tmp) / "probe", probe_options, quantization=quant)
            probe = Artifact(Path(tmp) / "probe")
            names = {q.layer.name for q in quant.layers if q.qw is not None}
            check = ReferenceCheck(quant, probe.manifest["probe_layers"],
                                   _float_weights(model_path, names), options.act_bits,
                                   options.act_group_size)
        entries = []
        seen: list[dict[str, int]] = []
        distinct: list[dict[str, np.ndarray]] = []
        probe_diff = 0.0
        for inputs in runs:
            dims = artifact.check_inputs(inputs)
            if dims in seen:
                continue  # e.g. --past-len values on a model without past inputs
            seen.append(dims)
            distinct.append(inputs)
            ours = artifact.run(inputs)
            theirs = reference.run(inputs)
            for name, value in ours.items():
                metrics = compare(value, _last_positions(value, theirs[name]))
                ok = tolerance is None or bool(metrics["rel_l2_err"] <= tolerance)
                entries.append({"name": name, **metrics, "dims": dims, "ok": ok})
            if probe is not None and check is not None:
                with recording() as records:
                    probed = probe.run(inputs)
                check.add(records)
                for name, value in ours.items():
                    probe_diff = max(probe_diff, compare(probed[name], value)["rel_l2_err"])
        c_lut = None
        if quant is not None and check is not None and artifact.manifest.get("lut_layers"):
            from .targets.c.check import lut_reference_check

            c_lut = lut_reference_check(artifact.path, artifact.manifest, quant, distinct)
    report: dict[str, Any] = {"target": options.target, "tolerance": tolerance,
                              "compile_seconds": round(compile_seconds, 3),
                              "notes": result.notes, "outputs": entries}
    ok = all(e["ok"] for e in entries)
    if quant is not None and check is None:
        report["ref_exact"] = None
        summary = quant.report()
        summary.pop("plan")
        if not per_layer:
            summary.pop("layers")
        report["quant"] = summary
    elif quant is not None and check is not None:
        checked = check.report()
        report["ref_exact"] = checked["ref_exact"]
        report["reference"] = {k: checked[k] for k in ("ref_max_rel_err", "sums_checked",
                                                       "sums_mismatched", "unchecked_layers")}
        report["reference"]["probe_vs_artifact_rel_l2"] = probe_diff
        summary = quant.report()
        summary.pop("layers")
        summary.pop("plan")
        if per_layer:
            summary["layers"] = checked["layers"]
        report["quant"] = summary
        ok = ok and checked["ref_exact"]
        if c_lut is not None:
            # The c library's LUT-GEMVs, on the activations that reached them there, must equal
            # the reference exactly; its outputs against llvm's are reported, not judged: the
            # other kernels come from two compilers (targets.c.check).
            report["reference"]["c_lut"] = c_lut
            ok = ok and c_lut["exact"]
        elif options.target != "llvm":  # the reference check ran on llvm: must agree with it
            ok = ok and probe_diff <= TARGET_AGREEMENT
    return {"ok": ok, **report}
