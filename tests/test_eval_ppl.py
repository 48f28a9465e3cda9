"""Perplexity evaluation: strided windows, NLL against brute force, tokens, float vs compiled."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from train_stdlib_lm import train_tokenizer

from sail_compiler.errors import InputError, OptionError
from sail_compiler.eval_ppl import (
    LogitsFn,
    calibration_overlap,
    evaluate,
    load_tokens,
    model_logits_fn,
    perplexity,
    strided_windows,
)
from sail_compiler.frontend import signature_of
from sail_compiler.options import CompileOptions
from sail_compiler.quant.calibrate import CalibrationSpec
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.testing import decoders
from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model
from sail_compiler.verify import OnnxRuntimeReference

MICRO_VOCAB = PRESETS["micro"].vocab_size
#: A long source text for tokenizer corpora.
DECODERS_SOURCE = Path(decoders.__file__).read_text()
WORDS = [f"w{i}" for i in range(MICRO_VOCAB - 2)]  # + [UNK] and [PAD]: the micro vocabulary


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _words_text(path: Path, n_words: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return _write(path, " ".join(rng.choice(WORDS, n_words)))


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE of 300 tokens trained on this repository's example sources and the
    example decoder's generator."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    texts = [p.read_text() for p in sorted(examples.glob("*.py"))] + [DECODERS_SOURCE]
    path = tmp_path_factory.mktemp("tok") / "bpe.json"
    train_tokenizer(texts, vocab_size=300).save(str(path))
    return path


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer whose ids fit the micro decoder's 50-token vocabulary."""
    vocab = {"[UNK]": 0, "[PAD]": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "words.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def micro_ort(micro_decoder: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(micro_decoder), providers=["CPUExecutionProvider"])


def _ort_logits(session: ort.InferenceSession, ids: np.ndarray) -> np.ndarray:
    """Logits of the micro decoder for ids [b, L], fed by hand (not by eval_ppl)."""
    return session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]


def _micro_logits_fn(micro_decoder: Path) -> LogitsFn:
    reference = OnnxRuntimeReference(micro_decoder)
    return model_logits_fn(signature_of(onnx.load(str(micro_decoder))), reference.run)


def test_strided_windows_score_each_token_once_with_the_most_context() -> None:
    for n in range(0, 41):
        for window in range(2, 13):
            for stride in range(1, window + 1):
                windows = strided_windows(n, window, stride)
                if n < 2:
                    assert windows == []
                    continue
                scored = [p for _, end, first in windows for p in range(first, end)]
                assert scored == sorted(set(scored)), (n, window, stride)
                unscored = set(range(n)) - set(scored)
                begins = {begin for begin, _, _ in windows}
                if stride < window:
                    assert unscored == {0}, (n, window, stride)
                else:  # chunks: a chunk's first token has no context in it
                    assert 0 in unscored and unscored <= begins, (n, window, stride)
                assert windows[-1][1] == n
                assert len(windows) == 1 + max(0, math.ceil((n - window) / stride))
                for k, (begin, end, first) in enumerate(windows):
                    assert end - begin == min(window, n)
                    assert 0 <= begin < first < end <= n
                    for p in range(first, end):
                        # the first window that can predict p scores it
                        assert not any(b < p < e for b, e, _ in windows[:k])
                        assert p - begin >= min(p, window - stride)
                        if stride == 1:
                            assert p - begin == min(p, window - 1)


def test_strided_windows_docstring_example() -> None:
    assert strided_windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert strided_windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (6, 10, 8)]


def _brute_force_nll(session: ort.InferenceSession, ids: np.ndarray, window: int,
                     stride: int) -> list[float]:
    """Score token by token: find the first window (ends window, window + stride, ..., n; each
    window as long as possible) that holds the token with some context before it, run it."""
    n = len(ids)
    ends = list(range(window, n, stride)) + [n] if n > window else [n]
    nll = []
    for p in range(1, n):
        holder = next(((max(0, e - window), e) for e in ends if max(0, e - window) < p < e), None)
        if holder is None:
            continue
        begin, end = holder
        z = _ort_logits(session, ids[None, begin:end])[0, p - begin - 1].astype(np.float64)
        nll.append(float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[ids[p]]))
    return nll


@pytest.mark.parametrize(("n", "window", "stride"),
                         [(70, 16, 5), (70, 16, 16), (45, 7, 3), (40, 32, 31), (20, 8, 1),
                          (5, 16, 8)])
def test_perplexity_matches_brute_force(micro_decoder: Path, micro_ort: ort.InferenceSession,
                                        n: int, window: int, stride: int) -> None:
    ids = np.random.default_rng(n + window + stride).integers(0, MICRO_VOCAB, n)
    result = perplexity(_micro_logits_fn(micro_decoder), ids, window, stride)
    expected = _brute_force_nll(micro_ort, ids, window, stride)
    assert result["tokens"] == len(expected)
    assert result["windows"] == len(strided_windows(n, window, stride))
    assert (result["window"], result["stride"]) == (window, stride)
    np.testing.assert_allclose(result["nll"], np.mean(expected), rtol=1e-10)
    np.testing.assert_allclose(result["ppl"], math.exp(np.mean(expected)), rtol=1e-10)


def test_stride_equal_to_window_is_independent_chunks(micro_decoder: Path,
                                                      micro_ort: ort.InferenceSession) -> None:
    window, chunks = 16, 4
    ids = np.random.default_rng(7).integers(0, MICRO_VOCAB, window * chunks)
    logits = _ort_logits(micro_ort, ids.reshape(chunks, window)).astype(np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    targets = ids.reshape(chunks, window)[:, 1:]
    picked = np.take_along_axis(probs[:, :-1], targets[..., None], axis=-1)
    result = perplexity(_micro_logits_fn(micro_decoder), ids, window, window)
    assert result["tokens"] == chunks * (window - 1)
    np.testing.assert_allclose(result["nll"], -np.log(picked).mean(), rtol=1e-6)


def test_kv_model_with_empty_past_scores_like_the_model_without(micro_decoder: Path,
                                                                 word_tokenizer: Path,
                                                                 tmp_path: Path) -> None:
    kv_path = tmp_path / "micro_kv.onnx"
    save_model(make_decoder(PRESETS["micro"], kv_cache=True), kv_path)  # same seed, same weights
    text = _words_text(tmp_path / "t.txt", 40, seed=3)
    result = evaluate(kv_path, text, word_tokenizer, window=16, stride=8, progress=False)
    without = perplexity(_micro_logits_fn(micro_decoder), load_tokens(text, word_tokenizer), 16,
                         8)
    assert result["float"]["tokens"] == without["tokens"] == 39
    np.testing.assert_allclose(result["float"]["nll"], without["nll"], rtol=1e-6)
    np.testing.assert_allclose(result["compiled"]["nll"], without["nll"], rtol=1e-5)


def test_load_tokens_round_trips_text(bpe_tokenizer: Path, tmp_path: Path) -> None:
    text = "def naïve(x):\n    return x ** 2  # ✓ — done\n\n\tclass Z: pass\n"
    ids = load_tokens(_write(tmp_path / "t.txt", text), bpe_tokenizer)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert Tokenizer.from_file(str(bpe_tokenizer)).decode(ids.tolist()) == text
    assert len(ids) < len(text.encode())  # merges learned from the examples apply
    np.testing.assert_array_equal(load_tokens(tmp_path / "t.txt", bpe_tokenizer, 5), ids[:5])


def test_evaluate_float_compile_matches_onnxruntime(tiny_decoder: Path, bpe_tokenizer: Path,
                                                    tmp_path: Path) -> None:
    text = _write(tmp_path / "t.txt", DECODERS_SOURCE)
    result = evaluate(tiny_decoder, text, bpe_tokenizer, window=64, stride=32, max_tokens=200,
                      progress=False)
    assert (result["tokens"], result["window"], result["stride"]) == (200, 64, 32)
    assert result["float"]["tokens"] == result["compiled"]["tokens"] == 199
    assert result["float"]["windows"] == 1 + math.ceil((200 - 64) / 32)
    assert result["compiled"]["quant"] is None
    assert result["compiled"]["ppl"] == pytest.approx(result["float"]["ppl"], rel=1e-4)
    json.dumps(result)


def test_evaluate_quantized_compile_at_a_fixed_sequence_length(micro_decoder: Path,
                                                                word_tokenizer: Path,
                                                                tmp_path: Path) -> None:
    text = _words_text(tmp_path / "t.txt", 80)
    options = CompileOptions(quant=QuantScheme.parse("w4g8"),
                             shapes={"input_ids": (1, 16), "attention_mask": (1, 16)})
    result = evaluate(micro_decoder, text, word_tokenizer, options, window=16, stride=5,
                      progress=False)
    assert result["compiled"]["quant"] == "w4g8"
    assert result["float"]["tokens"] == result["compiled"]["tokens"] == 79
    # quantization moves the perplexity, but not far
    assert result["compiled"]["ppl"] != result["float"]["ppl"]
    assert result["compiled"]["ppl"] == pytest.approx(result["float"]["ppl"], rel=0.1)


def test_window_must_match_a_fixed_sequence_length(micro_decoder: Path, word_tokenizer: Path,
                                                   tmp_path: Path) -> None:
    text = _words_text(tmp_path / "t.txt", 40)
    options = CompileOptions(shapes={"input_ids": (1, 16), "attention_mask": (1, 16)})
    with pytest.raises(OptionError, match="fixes the sequence length at 16.*--window 16"):
        evaluate(micro_decoder, text, word_tokenizer, options, window=8, stride=4,
                 progress=False)
    short = _words_text(tmp_path / "short.txt", 10)
    with pytest.raises(InputError, match="10 tokens, fewer than the model's fixed sequence"):
        evaluate(micro_decoder, short, word_tokenizer, options, window=16, stride=4,
                 progress=False)


def test_tokenizer_larger_than_the_model_vocabulary(micro_decoder: Path, bpe_tokenizer: Path,
                                                    tmp_path: Path) -> None:
    text = _write(tmp_path / "t.txt", "import numpy as np\n" * 20)
    with pytest.raises(InputError, match="embedding has 50 rows"):
        evaluate(micro_decoder, text, bpe_tokenizer, window=16, stride=8, progress=False)


@pytest.mark.parametrize(("window", "stride", "match"), [
    (1, 1, "--window must be an integer >= 2"),
    (8, 0, "--stride must be an integer in 1..window"),
    (8, 9, "--stride must be an integer in 1..window"),
    (8.0, 4, "--window must be"),
])
def test_bad_window_or_stride(window: float, stride: int, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        strided_windows(100, window, stride)


def test_bad_inputs(bpe_tokenizer: Path, micro_decoder: Path, tmp_path: Path) -> None:
    text = _write(tmp_path / "t.txt", "x = 1\n")
    with pytest.raises(InputError, match="cannot read the text"):
        load_tokens(tmp_path / "missing.txt", bpe_tokenizer)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(InputError, match="UTF-8"):
        load_tokens(tmp_path / "latin1.txt", bpe_tokenizer)
    with pytest.raises(InputError, match="does not exist"):
        load_tokens(text, tmp_path / "missing.json")
    for bad in ("{not json", '{"model": 1}'):
        with pytest.raises(InputError, match="cannot parse the tokenizer"):
            load_tokens(text, _write(tmp_path / "bad.json", bad))
    with pytest.raises(InputError, match="is empty"):
        load_tokens(_write(tmp_path / "empty.txt", ""), bpe_tokenizer)
    with pytest.raises(OptionError, match="--max-tokens must be at least 2"):
        load_tokens(text, bpe_tokenizer, max_tokens=1)
    with pytest.raises(InputError, match="needs at least 2"):
        perplexity(lambda ids: np.zeros((1, ids.shape[1], 4)), np.array([3]), 4, 2)
    with pytest.raises(InputError, match="logits cover 4 tokens"):
        perplexity(lambda ids: np.zeros((1, ids.shape[1], 4)), np.array([0, 1, 7]), 4, 2)
    with pytest.raises(OptionError, match="drop --emit"):
        evaluate(micro_decoder, text, bpe_tokenizer, CompileOptions(emit="import"),
                 progress=False)


# The real-model protocol (issue 15): the first C characters, <bos> first when the tokenizer adds
# it, the first W ids, one window, exp(mean NLL of tokens 1..W-1).

BOS_ID = 2
BOS_WORDS = WORDS[:-1]  # [UNK], [PAD], <bos> and 47 words: the micro vocabulary of 50


@pytest.fixture(scope="module")
def bos_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer whose post-processor puts <bos> first, as Gemma's does."""
    vocab = {"[UNK]": 0, "[PAD]": 1, "<bos>": BOS_ID} | {w: i + 3 for i, w in enumerate(BOS_WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS_ID)])
    path = tmp_path_factory.mktemp("tok") / "bos.json"
    tokenizer.save(str(path))
    return path


def _protocol_ppl_numpy(session: ort.InferenceSession, text: str, chars: int, window: int,
                        bos: bool) -> tuple[float, list[int]]:
    """The protocol computed independently: split the characters into words by hand, map them
    to ids as the two word tokenizers number them, one forward pass on onnxruntime, log-softmax
    in float64 NumPy."""
    vocab = {w: i + 3 for i, w in enumerate(BOS_WORDS)} if bos else \
        {w: i + 2 for i, w in enumerate(WORDS)}
    ids = ([BOS_ID] if bos else []) + [vocab.get(w, 0) for w in text[:chars].split()]
    ids = np.array(ids[:window], np.int64)
    z = _ort_logits(session, ids[None])[0].astype(np.float64)
    log_probs = z - z.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    nll = -log_probs[np.arange(window - 1), ids[1:]]
    return float(np.exp(nll.mean())), ids.tolist()


@pytest.mark.parametrize("bos", [True, False])
def test_protocol_one_window_of_the_first_characters(micro_decoder: Path, bos_tokenizer: Path,
                                                     word_tokenizer: Path,
                                                     micro_ort: ort.InferenceSession,
                                                     tmp_path: Path, bos: bool) -> None:
    rng = np.random.default_rng(5)
    words = BOS_WORDS if bos else WORDS
    text = " ".join(rng.choice(words, 80))
    path = _write(tmp_path / "t.txt", text)
    chars = len(" ".join(text.split()[:45])) - 2  # ends inside word 45: a partial (unknown) word
    window = PRESETS["micro"].max_positions
    tokenizer = bos_tokenizer if bos else word_tokenizer
    result = evaluate(micro_decoder, path, tokenizer, window=window, stride=8, max_tokens=window,
                      chars=chars, progress=False)
    expected, ids = _protocol_ppl_numpy(micro_ort, text, chars, window, bos)
    assert result["first_ids"] == ids[:8]
    assert (ids[0] == BOS_ID) == bos
    assert (result["tokens"], result["chars"], result["warnings"]) == (window, chars, [])
    for side in ("float", "compiled"):
        assert (result[side]["windows"], result[side]["tokens"]) == (1, window - 1)
        np.testing.assert_allclose(result[side]["ppl"], expected, rtol=1e-5)


def test_protocol_uses_only_the_first_characters(bos_tokenizer: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "t.txt", "w0 w1 w2 w3 w4 w5")
    np.testing.assert_array_equal(load_tokens(path, bos_tokenizer, chars=7), [BOS_ID, 3, 4, 0])
    np.testing.assert_array_equal(load_tokens(path, bos_tokenizer, 3, chars=8), [BOS_ID, 3, 4])
    with pytest.raises(OptionError, match="--chars must be a positive integer"):
        load_tokens(path, bos_tokenizer, chars=0)


def test_calibrating_on_the_evaluation_text_warns(micro_decoder: Path, word_tokenizer: Path,
                                                  tmp_path: Path) -> None:
    text = _words_text(tmp_path / "t.txt", 120, seed=2)
    same_words = _write(tmp_path / "copy.txt", "preface\n" + text.read_text() + "\nmore")
    other = _words_text(tmp_path / "other.txt", 120, seed=9)
    assert "is the evaluation text" in calibration_overlap(text, text)
    assert "contains the scored text" in calibration_overlap(same_words, text, chars=200)
    assert calibration_overlap(other, text) is None
    assert calibration_overlap(None, text) is None
    options = CompileOptions(quant=QuantScheme.parse("w4g8"), method="gptq",
                             calib=CalibrationSpec(text=text, tokenizer=word_tokenizer,
                                                   samples=2, seq_len=16))
    with pytest.warns(UserWarning, match="calibration text .* is the evaluation text"):
        result = evaluate(micro_decoder, text, word_tokenizer, options, window=16, stride=8,
                          max_tokens=16, progress=False)
    assert len(result["warnings"]) == 1
    options = CompileOptions(quant=QuantScheme.parse("w4g8"), method="gptq",
                             calib=CalibrationSpec(text=other, tokenizer=word_tokenizer,
                                                   samples=2, seq_len=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate(micro_decoder, text, word_tokenizer, options, window=16, stride=8,
                        max_tokens=16, progress=False)["warnings"] == []


def test_chunks_through_the_kv_cache_score_like_one_pass(micro_decoder: Path, word_tokenizer: Path,
                                                         tmp_path: Path) -> None:
    kv_path = tmp_path / "micro_kv.onnx"
    save_model(make_decoder(PRESETS["micro"], kv_cache=True), kv_path)
    text = _words_text(tmp_path / "t.txt", 60, seed=4)
    options = CompileOptions(quant=QuantScheme.parse("w4g8"))
    whole = evaluate(kv_path, text, word_tokenizer, options, window=32, stride=16,
                     progress=False)
    chunked = evaluate(kv_path, text, word_tokenizer, options, window=32, stride=16,
                       progress=False, chunk=5)
    assert chunked["chunk"] == 5 and whole["chunk"] is None
    for side in ("float", "compiled"):
        assert chunked[side]["tokens"] == whole[side]["tokens"] == 59
        np.testing.assert_allclose(chunked[side]["nll"], whole[side]["nll"], rtol=1e-5)
    with pytest.raises(OptionError, match="--chunk runs a window through the model's KV cache"):
        evaluate(micro_decoder, text, word_tokenizer, window=16, stride=8, progress=False,
                 chunk=4)
    with pytest.raises(OptionError, match="--chunk must be a positive integer"):
        evaluate(kv_path, text, word_tokenizer, window=16, stride=8, progress=False, chunk=0)
