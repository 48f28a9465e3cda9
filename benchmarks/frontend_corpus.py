"""Which third-party exports import and verify: the table model x exporter x cache x mode.

Each model of the corpus is compiled for llvm and checked against onnxruntime
(:func:`sail_compiler.verify.verify_model`, tolerance 1e-4 for float models; quantized builds
must be exact against the NumPy reference) twice:

* ``symbolic``: dims left as the exporter wrote them, verified at two (seq, past) sizes;
* ``fixed``: every input dim fixed with ``--shape`` to one size, verified at it.

The corpus is

* Hugging Face transformers random-init models exported by both torch exporters, with and
  without a KV cache: ``examples/make_hf_fixtures.py --corpus --out-dir DIR`` (run with a
  Python that has torch and transformers, e.g. ``/root/.cache/sail-models/gemma3_270m/venv``;
  exports that fail are recorded as ``NAME.export_error`` and reported as such);
* the committed fixtures ``tests/fixtures/hf`` and the onnxruntime-genai builder fixtures
  ``tests/fixtures/genai`` (``examples/make_genai_fixtures.py``).

Usage::

    python benchmarks/frontend_corpus.py [--corpus-dir DIR] [--only SUBSTRING] [--json OUT]

Each case prints one row as it finishes: ``ok`` or the first line of the error. With
``--stock`` a second column says what stock TVM does with the same model and mode (its own
``from_onnx``, ``shape_dict`` for fixed dims, ``relax.build`` for llvm, outputs within 1e-4
relative L2 of onnxruntime): ``ok`` or its first error line
(``tests/frontend/test_stock_parity.py`` asserts that sail's import is never worse).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = Path("/root/.cache/sail-frontend/corpus")
SEQ, PAST = 3, 2


def cases(corpus: Path) -> list[tuple[str, str, str, Path | str]]:
    """``(model, exporter, cache, path or export error)`` of every corpus entry."""
    found: dict[str, tuple[str, str, str, Path | str]] = {}
    for folder in (ROOT / "tests" / "fixtures" / "hf", corpus):
        if not folder.exists():
            continue
        for path in sorted([*folder.glob("*.onnx"), *folder.glob("*.export_error")]):
            parts = path.stem.split("_")
            family, exporter = parts[0], parts[1]
            cache = "kv" if parts[-1] == "kv" else "-"
            what: Path | str = path if path.suffix == ".onnx" else \
                f"export failed: {path.read_text().strip()}"
            found[path.stem] = (family, exporter, cache, what)
    for folder in sorted((ROOT / "tests" / "fixtures" / "genai").glob("*")):
        family, precision = folder.name.split("_")
        found[folder.name] = (family, f"genai-{precision}", "kv", folder / "model.onnx")
    return list(found.values())


def fixed_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """``--shape`` bindings of every input at batch 1, seq SEQ, past PAST (as verify makes)."""
    from sail_compiler.frontend.check import load_checked
    from sail_compiler.frontend.signature import signature_of
    from sail_compiler.verify import InputPlan, generate_inputs

    inputs = generate_inputs(signature_of(load_checked(path)), InputPlan(1, SEQ, PAST))
    return {name: tuple(int(d) for d in x.shape) for name, x in inputs.items()}


def run_case(path: Path, mode: str) -> str:
    """``ok`` or the error of one verification."""
    from sail_compiler import CompileOptions
    from sail_compiler.verify import InputPlan, verify_model

    try:
        if mode == "symbolic":
            options = CompileOptions(target="llvm")
            plans = [InputPlan(1, SEQ, PAST), InputPlan(1, 1, PAST + 3)]
        else:
            options = CompileOptions(target="llvm", shapes=fixed_shapes(path))
            plans = [InputPlan(1, SEQ, PAST)]
        report = verify_model(path, options, plans, tolerance=None, check_reference=True)
    except Exception as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {text}"[:300]
    if report["ok"]:
        return "ok"
    worst = max(report["outputs"], key=lambda o: o["rel_l2_err"])
    return f"verify failed: {worst['name']} rel_l2_err {worst['rel_l2_err']:.2e}"


def stock_case(path: Path, mode: str) -> str:
    """``ok`` or the error of stock TVM's import, build and run at (1, SEQ, PAST)."""
    import contextlib
    import io
    import warnings

    import numpy as np
    import onnx
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from sail_compiler.frontend.signature import signature_of
    from sail_compiler.verify import InputPlan, generate_inputs

    shapes = fixed_shapes(path)
    model = onnx.load(str(path))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            mod = from_onnx(model, shape_dict=shapes if mode == "fixed" else None,
                            keep_params_in_input=False)
        vm = relax.VirtualMachine(relax.build(mod, target=tvm.target.Target({"kind": "llvm"})),
                                  tvm.cpu())
        # the reference only once stock TVM has built the model: the raw genai files (which it
        # cannot import) leave their head size symbolic, which generated inputs cannot guess
        feeds = generate_inputs(signature_of(model), InputPlan(1, SEQ, PAST))
        result = vm["main"](*[tvm.runtime.tensor(feeds[v.name]) for v in model.graph.input])
    except Exception as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {text}"[:300]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    outputs = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
    for got, want in zip(outputs, expected, strict=True):
        got = got.numpy()
        if got.shape != want.shape:
            return f"wrong shape {list(got.shape)}, onnxruntime {list(want.shape)}"
        error = np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30)
        if error >= 1e-4:
            return f"rel_l2_err {error:.2e}"
    return "ok"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--only", default="", help="run the models whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--stock", action="store_true",
                        help="add a column: what stock TVM's importer does with the model")
    args = parser.parse_args(argv)
    rows = []
    stock_head = f" {'stock TVM':<40}" if args.stock else ""
    print(f"{'model':<10} {'exporter':<12} {'cache':<6} {'mode':<9}{stock_head} sail", flush=True)
    for family, exporter, cache, what in cases(args.corpus_dir):
        name = f"{family}_{exporter}_{cache}"
        if args.only not in name:
            continue
        for mode in ("symbolic", "fixed"):
            started = time.perf_counter()
            result = what if isinstance(what, str) else run_case(what, mode)
            row = {"model": family, "exporter": exporter, "cache": cache, "mode": mode,
                   "result": result, "seconds": round(time.perf_counter() - started, 1)}
            stock = ""
            if args.stock:
                row["stock"] = what if isinstance(what, str) else stock_case(what, mode)
                stock = f" {row['stock'][:40]:<40}"
            rows.append(row)
            print(f"{family:<10} {exporter:<12} {cache:<6} {mode:<9}{stock} {result}", flush=True)
    ok = sum(r["result"] == "ok" for r in rows)
    print(f"{ok} of {len(rows)} cases ok ({100 * ok / max(len(rows), 1):.0f}%)")
    if args.stock:
        stock_ok = sum(r["stock"] == "ok" for r in rows)
        worse = sum(r["stock"] == "ok" and r["result"] != "ok" for r in rows)
        print(f"stock TVM: {stock_ok} of {len(rows)} ok; sail fails where stock is ok: {worse}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
