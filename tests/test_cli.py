"""The sail command: compile, run, dumps, inspect, and what it refuses to overwrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sail_compiler.cli import main
from sail_compiler.verify import OnnxRuntimeReference


@pytest.fixture(scope="module")
def compiled(micro_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    out, dump = root / "artifact", root / "dump"
    assert main(["compile", str(micro_decoder), "-o", str(out), "--dump-dir", str(dump)]) == 0
    return {"out": out, "dump": dump, "root": root}


def test_dump_dir_has_every_pass_and_stage(compiled: dict[str, Path]) -> None:
    dump = compiled["dump"]
    assert "sail compile" in (dump / "command.txt").read_text()
    stages = sorted(p.name for p in dump.glob("stage_*.py"))
    assert stages == ["stage_0_frontend.py", "stage_1_import.py", "stage_2_quantize.py",
                      "stage_3_sail.py", "stage_4_lower.py"]
    index = json.loads((dump / "passes.json").read_text())
    files = sorted(p.name for p in dump.glob("[0-9][0-9][0-9]_*.py"))
    assert [e["file"] for e in index] == files
    names = [e["pass"] for e in index]
    assert "LegalizeOps" in names and "FuseOpsAndTIR" in names and "VMShapeLower" in names
    assert names.count("LegalizeOps") == 1  # not the target's wrapper and its inner pass both
    legalize = next(e for e in index if e["pass"] == "LegalizeOps")
    assert legalize["changed"] and legalize["stage"] == "lower"
    wrap = next(e for e in index if e["pass"] == "WrapGatherIndices")
    assert wrap["changed"] and wrap["stage"] == "import"
    assert 'mode="wrap"' in (dump / "stage_1_import.py").read_text()
    assert "R.matmul" in (dump / "stage_1_import.py").read_text()
    assert "R.matmul" not in (dump / legalize["file"]).read_text()


def test_inspect_lists_shows_and_diffs(compiled: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    dump = str(compiled["dump"])
    assert main(["inspect", dump]) == 0
    listing = capsys.readouterr().out
    assert "LegalizeOps" in listing and "changed the IR" in listing
    assert main(["inspect", dump, "--show", "LegalizeOps"]) == 0
    assert "T.prim_func" in capsys.readouterr().out
    assert main(["inspect", dump, "--diff", "0", "LegalizeOps"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith("---") and "+" in diff
    assert main(["inspect", dump, "--show", "NoSuchPass"]) == 2
    assert "no pass 'NoSuchPass'" in capsys.readouterr().err


def test_run_writes_outputs_matching_onnxruntime(compiled: dict[str, Path],
                                                 micro_decoder: Path) -> None:
    root = compiled["root"]
    ids = np.array([[1, 7, 3, 9, 4]], dtype=np.int64)
    np.save(root / "ids.npy", ids)
    np.save(root / "mask.npy", np.ones_like(ids))
    code = main(["run", str(compiled["out"]), "--input", f"input_ids={root / 'ids.npy'}",
                 "--input", f"attention_mask={root / 'mask.npy'}", "--output-dir",
                 str(root / "res")])
    assert code == 0
    logits = np.load(root / "res" / "logits.npy")
    expected = OnnxRuntimeReference(micro_decoder).run(
        {"input_ids": ids, "attention_mask": np.ones_like(ids)})["logits"]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_run_rejects_bad_inputs(compiled: dict[str, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    root = compiled["root"]
    np.save(root / "f.npy", np.zeros((1, 5), np.float32))
    np.save(root / "m.npy", np.ones((1, 4), np.int64))
    code = main(["run", str(compiled["out"]), "--input", f"input_ids={root / 'f.npy'}",
                 "--input", f"attention_mask={root / 'm.npy'}", "--output-dir",
                 str(root / "r2")])
    err = capsys.readouterr().err
    assert code == 2
    assert "input_ids: dtype float32, expected int64" in err
    assert "('seq') is 4, but another input has 'seq' = 5" in err
    assert main(["run", str(root), "--output-dir", str(root / "r3")]) == 2
    assert "not a sail artifact" in capsys.readouterr().err


def test_emit_and_print_after(micro_decoder: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "import.py"
    assert main(["compile", str(micro_decoder), "--emit", "import", "-o", str(script)]) == 0
    text = script.read_text()
    assert "@R.function" in text and "R.matmul" in text and "seq" in text
    assert main(["compile", str(micro_decoder), "--emit", "lower",
                 "--print-after", "FuseOps"]) == 0
    out = capsys.readouterr().out
    assert "# IR after FuseOps (stage lower)" in out
    assert main(["compile", str(micro_decoder), "--emit", "sail", "--print-after", "Nope"]) == 0
    assert "no such pass ran" in capsys.readouterr().err


def test_refuses_to_overwrite_what_it_did_not_make(micro_decoder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    assert main(["compile", str(micro_decoder), "-o", str(precious)]) == 2
    assert precious.read_text() == "mine"
    foreign = tmp_path / "dumps"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    args = ["compile", str(micro_decoder), "--emit", "import", "--dump-dir", str(foreign)]
    assert main(args) == 2
    assert "not empty and was not created by sail" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert (foreign / "keep.txt").read_text() == "mine"
    assert (foreign / "stage_1_import.py").exists()
    assert main(["compile", str(micro_decoder), "-o", str(micro_decoder)]) == 2
    assert micro_decoder.stat().st_size > 0


def test_recompiling_replaces_an_earlier_artifact(micro_decoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert main(["compile", str(micro_decoder), "-o", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["target"] == "llvm" and first["signature"]["inputs"][0]["name"] == "input_ids"
    assert main(["compile", str(micro_decoder), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so", "weights.bin"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a.")]


def test_python_m_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "sail_compiler", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("sail ")


def test_never_deletes_a_foreign_directory(micro_decoder: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "main.c").write_text("int main(void) { return 0; }\n")
    for extra in ([], ["--force"]):
        assert main(["compile", str(micro_decoder), "-o", str(foreign), *extra]) == 2
        assert (foreign / "main.c").read_text().startswith("int main")


def test_runtime_dim_check_is_an_input_error(tmp_path: Path, micro_decoder_kv: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The KV decoder's mask length must equal past + seq; its dim (past_plus_seq) is a name
    of its own, related to the others by the inputs' roles before the run."""
    from sail_compiler.testing.decoders import PRESETS

    out = tmp_path / "a"
    assert main(["compile", str(micro_decoder_kv), "-o", str(out)]) == 0
    cfg = PRESETS["micro"]
    past = np.zeros((1, cfg.num_kv_heads, 3, cfg.head_dim), np.float32)
    np.savez(tmp_path / "in.npz", input_ids=np.array([[1, 2]], np.int64),
             attention_mask=np.ones((1, 4), np.int64),  # should be 3 + 2 = 5
             **{f"past_key_values.0.{kind}": past for kind in ("key", "value")})
    code = main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "--output-dir",
                 str(tmp_path / "res")])
    assert code == 2
    assert "attention_mask: dim 1 is 4, but it must be past + seq = 5" in capsys.readouterr().err


def test_scale_dtype_option_is_checked(micro_decoder: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert main(["compile", str(micro_decoder), "--bits", "4", "--scale-dtype", "bfloat16",
                 "-o", out]) == 2
    err = capsys.readouterr().err
    assert "--scale-dtype: unknown scale dtype 'bfloat16'; valid: float32, float16" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["compile", str(micro_decoder), "--scale-dtype", "float16", "-o", out]) == 2
    assert "--scale-dtype float16 applies to quantized compiles; add --bits" in \
        capsys.readouterr().err
