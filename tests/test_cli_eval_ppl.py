"""`sail eval-ppl` and text calibration through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from sail_compiler.cli import main
from sail_compiler.testing.decoders import PRESETS

WORDS = [f"w{i}" for i in range(PRESETS["micro"].vocab_size - 2)]


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A word-level tokenizer that fits the micro decoder's vocabulary, and a text."""
    root = tmp_path_factory.mktemp("words")
    vocab = {"[UNK]": 0, "[PAD]": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(root / "tokenizer.json"))
    rng = np.random.default_rng(0)
    (root / "text.txt").write_text(" ".join(rng.choice(WORDS, 300)))
    return root / "tokenizer.json", root / "text.txt"


def test_eval_ppl_json_float_and_quantized(micro_decoder: Path, words: tuple[Path, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer, text = words
    code = main(["eval-ppl", str(micro_decoder), "--text", str(text), "--tokenizer",
                 str(tokenizer), "--bits", "2", "--group-size", "16", "--window", "24",
                 "--stride", "12", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == 300 and report["compiled"]["quant"] == "w2g16"
    assert report["float"]["tokens"] == report["compiled"]["tokens"] == 299
    # 2-bit weights change the model: its perplexity differs from the float one
    assert report["compiled"]["ppl"] != pytest.approx(report["float"]["ppl"], rel=1e-3)


def test_gptq_calibrates_on_text(micro_decoder: Path, words: tuple[Path, Path],
                                 tmp_path: Path) -> None:
    tokenizer, text = words
    out = tmp_path / "a"
    code = main(["compile", str(micro_decoder), "-o", str(out), "--bits", "3", "--group-size",
                 "16", "--method", "gptq", "--calib-text", str(text), "--tokenizer",
                 str(tokenizer), "--calib-samples", "3", "--calib-seq-len", "20"])
    assert code == 0
    report = json.loads((out / "quant_report.json").read_text())
    assert report["calibration"] == f"3 windows of 20 tokens from {text}"
    assert {e["method"] for e in report["layers"] if e["bits"]} == {"gptq"}


def test_gptq_act_order_needs_gptq(micro_decoder: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compile", str(micro_decoder), "-o", str(tmp_path / "a"), "--bits", "3",
                 "--gptq-act-order"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--gptq-act-order orders GPTQ's rows, and --method rtn is not GPTQ" in err
    assert "add --method gptq" in err and not (tmp_path / "a").exists()


def test_text_calibration_errors(micro_decoder: Path, words: tuple[Path, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer, text = words
    code = main(["compile", str(micro_decoder), "-o", str(tmp_path / "a"), "--bits", "3",
                 "--method", "gptq", "--calib-text", str(text), "--tokenizer", str(tokenizer),
                 "--calib-seq-len", "1000"])
    assert code == 2
    assert "fewer than the 1000" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_eval_ppl_protocol_options_and_calibration_warning(
        micro_decoder: Path, words: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer, text = words
    chars = len(" ".join(text.read_text().split()[:40]))
    code = main(["eval-ppl", str(micro_decoder), "--text", str(text), "--tokenizer",
                 str(tokenizer), "--bits", "4", "--group-size", "8", "--method", "gptq",
                 "--calib-text", str(text), "--calib-samples", "2", "--calib-seq-len", "16",
                 "--chars", str(chars), "--window", "32", "--max-tokens", "32"])
    assert code == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("sail: warning: the calibration text")
    assert "is the evaluation text" in warning[0]
    assert f"(first {chars} characters): 32 tokens" in captured.out
    assert "1 window(s), 31 tokens scored" in captured.out


def test_eval_ppl_chunk_needs_a_kv_cache(micro_decoder: Path, words: tuple[Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer, text = words
    code = main(["eval-ppl", str(micro_decoder), "--text", str(text), "--tokenizer",
                 str(tokenizer), "--window", "16", "--chunk", "4"])
    assert code == 2
    assert "--chunk runs a window through the model's KV cache" in capsys.readouterr().err
