"""benchmarks/decode.py: the command line refuses what a large preset cannot run, before any
model is written."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("gguf")

from benchmarks.decode import is_large, main  # noqa: E402
from sail_compiler.testing.decoders import PRESETS  # noqa: E402


def test_large_presets_are_the_ones_past_memory() -> None:
    assert [name for name, cfg in sorted(PRESETS.items()) if is_large(cfg)] == ["13b", "7b"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--arms", "ort-fp32,c"], "arms ort-fp32 load the whole float model (27 GB); choose from "
                               "llama.cpp, c"),
    (["--arms", "llvm"], "arms llvm load the whole float model"),
    (["--gguf-types", "Q4_K_M"], "writes F32, F16, Q8_0, Q4_0, not Q4_K_M"),
])
def test_large_preset_refuses_float_arms_and_unwritable_types(tmp_path, argv: list[str],
                                                              message: str) -> None:
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["--preset", "7b", "--workdir", str(tmp_path), *argv])
    assert not any(tmp_path.iterdir())
