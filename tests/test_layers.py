"""The low layers of docs/layers.md load no TVM when imported (the import-linter contracts in
pyproject.toml check the static imports; this checks what Python actually loads)."""

from __future__ import annotations

import subprocess
import sys

import sail_compiler

LOW_LAYERS = ["sail_compiler.errors", "sail_compiler.version", "sail_compiler.options",
              "sail_compiler.quant", "sail_compiler.quant.methods", "sail_compiler.quant.plan",
              "sail_compiler.quant.patterns", "sail_compiler.quant.lut",
              "sail_compiler.testing.decoders", "sail_compiler.external_data"]


def test_options_the_quantization_core_and_the_generators_load_no_tvm() -> None:
    code = (f"import sys\nfor m in {LOW_LAYERS!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m == 'tvm' or m.startswith('tvm.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_public_api_resolves() -> None:
    from sail_compiler.driver import compile_model
    from sail_compiler.model import load

    assert sail_compiler.compile_model is compile_model and sail_compiler.load is load
    assert all(getattr(sail_compiler, name) is not None for name in sail_compiler.__all__)


def test_every_module_is_in_a_layer() -> None:
    """A module no layer names escapes the contract: a new file must be placed in pyproject.toml's
    layer list (docs/layers.md)."""
    import pkgutil
    import tomllib
    from pathlib import Path

    root = Path(sail_compiler.__file__).parent
    config = tomllib.loads((root.parent / "pyproject.toml").read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    placed = {f"sail_compiler.{name.strip()}" for layer in layers["layers"]
              for name in layer.replace("|", ":").split(":")}
    modules = [m.name for m in pkgutil.walk_packages([str(root)], "sail_compiler.")]
    unplaced = [m for m in modules
                if not any(m == p or m.startswith(p + ".") for p in placed)
                and m != "sail_compiler.quant"]  # the package face of quant's layers
    assert unplaced == []
