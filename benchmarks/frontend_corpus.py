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

Each case prints one row as it finishes: ``ok`` or the first line of the error.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--only", default="", help="run the models whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'model':<10} {'exporter':<12} {'cache':<6} {'mode':<9} result", flush=True)
    for family, exporter, cache, what in cases(args.corpus_dir):
        name = f"{family}_{exporter}_{cache}"
        if args.only not in name:
            continue
        for mode in ("symbolic", "fixed"):
            started = time.perf_counter()
            result = what if isinstance(what, str) else run_case(what, mode)
            rows.append({"model": family, "exporter": exporter, "cache": cache, "mode": mode,
                         "result": result, "seconds": round(time.perf_counter() - started, 1)})
            print(f"{family:<10} {exporter:<12} {cache:<6} {mode:<9} {result}", flush=True)
    ok = sum(r["result"] == "ok" for r in rows)
    print(f"{ok} of {len(rows)} cases ok ({100 * ok / max(len(rows), 1):.0f}%)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
