"""``sail_compiler.load(OUT)`` on every target and ``sail generate`` / ``sail bench``:

* ``model(**inputs)`` equals onnxruntime on the float model (llvm on the Relax VM, c through
  ctypes on libmodel.so); a 4-bit pim-sim artifact equals the 4-bit llvm build bit for bit;
* greedy generation equals an independent greedy loop over onnxruntime; sampled generation
  repeats for a seed, changes with another, and picks the same ids on c (the C sampler) and
  llvm (the NumPy one);
* text in, text out: the stored tokenizer, streamed pieces, stop strings (which stop the C loop
  early), end-of-sequence ids, the chat template, the context limit;
* bad input is refused before anything runs, with the option and its range named.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from train_stdlib_lm import train_tokenizer

import sail_compiler
from sail_compiler import CompileOptions, compile_model
from sail_compiler.cli import main
from sail_compiler.errors import InputError, OptionError
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.verify import InputPlan, generate_inputs

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="the c target builds with make and cc")

PROMPT = [3, 17, 256, 9, 1000]
TEXT = "The capital of France is"
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
            "<|endoftext|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% endif %}")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer of fewer tokens than the tiny decoder's 1024, with a chat
    template; the tiny decoder's random weights emit ids of the whole vocabulary, so the ids
    above the tokenizer's decode to nothing."""
    path = tmp_path_factory.mktemp("tok")
    texts = ["The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
             "def main():\n    return 0\n", "naïve café 日本語"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=400)
    tokenizer.add_special_tokens(["<|im_start|>"])
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": TEMPLATE, "eos_token": "<|endoftext|>"}))
    return path


@pytest.fixture(scope="module")
def artifacts(tiny_decoder_kv: Path, tokenizer_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("api")
    tokenizer = tokenizer_dir / "tokenizer.json"
    w4 = QuantScheme(4, 32)
    out = {"llvm": tmp / "llvm", "c": tmp / "c", "llvm4": tmp / "llvm4", "pim4": tmp / "pim4"}
    compile_model(tiny_decoder_kv, out["llvm"], CompileOptions(target="llvm", tokenizer=tokenizer))
    compile_model(tiny_decoder_kv, out["c"], CompileOptions(target="c", tokenizer=tokenizer))
    compile_model(tiny_decoder_kv, out["llvm4"], CompileOptions(target="llvm", quant=w4))
    compile_model(tiny_decoder_kv, out["pim4"], CompileOptions(target="pim-sim", quant=w4))
    return out


def _onnxruntime(model: Path):  # type: ignore[no-untyped-def]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, feeds), strict=True))


def _greedy(run, tokens: int) -> list[int]:  # type: ignore[no-untyped-def]
    """An independent greedy loop with the KV cache (the tiny decoder: 2 KV heads of 32)."""
    past = {f"past_key_values.{i}.{kv}": np.zeros((1, 2, 0, 32), np.float32)
            for i in range(4) for kv in ("key", "value")}
    ids, step, out = list(PROMPT), list(PROMPT), []
    for _ in range(tokens):
        result = run({"input_ids": np.array([step], np.int64),
                      "attention_mask": np.ones((1, len(ids)), np.int64), **past})
        token = int(np.argmax(result["logits"][0, -1]))
        out.append(token)
        ids.append(token)
        step = [token]
        past = {k: result["present." + k.removeprefix("past_key_values.")] for k in past}
    return out


def test_forward_on_every_target(artifacts: dict[str, Path], tiny_decoder_kv: Path) -> None:
    inputs = generate_inputs(sail_compiler.load(artifacts["c"]).signature,
                             InputPlan(batch=2, seq_len=5, past_len=3))
    expected = _onnxruntime(tiny_decoder_kv)(inputs)
    for target in ("llvm", "c"):
        model = sail_compiler.load(artifacts[target])
        assert model.target == target
        outputs = model(**inputs)
        assert list(outputs) == list(expected)
        for name, value in expected.items():
            assert outputs[name].dtype == value.dtype and outputs[name].shape == value.shape
            error = np.linalg.norm(outputs[name] - value) / np.linalg.norm(value)
            assert error < 1e-5, (target, name, error)
    pim, llvm4 = sail_compiler.load(artifacts["pim4"]), sail_compiler.load(artifacts["llvm4"])
    ours, theirs = pim(**inputs), llvm4(**inputs)
    for name in expected:
        np.testing.assert_array_equal(ours[name], theirs[name])
    logits, reference = ours["logits"].ravel(), expected["logits"].ravel()
    assert logits @ reference / np.linalg.norm(logits) / np.linalg.norm(reference) > 0.9


def test_c_forward_checks_inputs(artifacts: dict[str, Path]) -> None:
    model = sail_compiler.load(artifacts["c"], threads=2)
    inputs = generate_inputs(model.signature, InputPlan(batch=1, seq_len=3, past_len=2))
    first = model(**inputs)["logits"]
    model.close()
    np.testing.assert_array_equal(model(**inputs)["logits"], first)  # loads again
    bad = dict(inputs, input_ids=np.full((1, 3), 5000, np.int64))
    with pytest.raises(InputError, match=r"input_ids: values must lie in \[0, 1024\)"):
        model(**bad)
    with pytest.raises(InputError):
        model(**dict(inputs, attention_mask=np.ones((1, 9), np.int64)))
    with pytest.raises(OptionError, match="threads apply to c artifacts"):
        sail_compiler.load(artifacts["llvm"], threads=2)


def test_greedy_generation_equals_onnxruntime(artifacts: dict[str, Path],
                                              tiny_decoder_kv: Path) -> None:
    expected = _greedy(_onnxruntime(tiny_decoder_kv), 8)
    for target in ("llvm", "c"):
        result = sail_compiler.load(artifacts[target]).generate(PROMPT, 8, ignore_eos=True)
        assert result.ids == expected and result.prompt_ids == PROMPT
        assert result.stop_reason == "length" and result.decode_steps == 7
        assert result.target == target and result.decode_tokens_per_second > 0
    llvm4 = sail_compiler.load(artifacts["llvm4"]).generate(PROMPT, 6)
    assert sail_compiler.load(artifacts["pim4"]).generate(PROMPT, 6).ids == llvm4.ids


def test_sampled_generation_repeats_per_seed_on_every_target(artifacts: dict[str, Path]) -> None:
    options = dict(temperature=0.9, top_k=0, top_p=0.98, min_p=0.0, repeat_penalty=1.1,
                   ignore_eos=True)
    c, llvm = sail_compiler.load(artifacts["c"]), sail_compiler.load(artifacts["llvm"])
    first = c.generate(PROMPT, 16, seed=1, **options)
    assert c.generate(PROMPT, 16, seed=1, **options).ids == first.ids
    assert c.generate(PROMPT, 16, seed=2, **options).ids != first.ids
    assert llvm.generate(PROMPT, 16, seed=1, **options).ids == first.ids
    assert first.seed == 1 and first.sampling["top_p"] == 0.98
    drawn = c.generate(PROMPT, 4, temperature=0.9)  # no seed: one is drawn and reported
    assert c.generate(PROMPT, 4, temperature=0.9, seed=drawn.seed).ids == drawn.ids


def test_text_streams_and_stops(artifacts: dict[str, Path]) -> None:
    for target in ("c", "llvm"):
        model = sail_compiler.load(artifacts[target])
        pieces: list[str] = []
        whole = model.generate(TEXT, 40, ignore_eos=True, on_text=pieces.append)
        assert whole.text == "".join(pieces) == model.tokenizer.decode(whole.ids)
        assert whole.prompt_ids == model.tokenizer.encode(TEXT)
        assert len(whole.text) > 6, whole.text
        stop = whole.text[3:6]
        cut = model.generate(TEXT, 200, ignore_eos=True, stop=[stop])
        assert cut.stop_reason == "stop"
        assert cut.text == whole.text[:whole.text.index(stop)]
        assert cut.ids == whole.ids[:len(cut.ids)]
        assert stop in model.tokenizer.decode(cut.ids)
        assert stop not in model.tokenizer.decode(cut.ids[:-1])
        assert cut.decode_steps < 100  # the loop stopped, it did not run to 200


def test_end_of_sequence_and_chat(artifacts: dict[str, Path], tmp_path: Path) -> None:
    model = sail_compiler.load(artifacts["c"])
    greedy = model.generate(PROMPT, 6, ignore_eos=True).ids
    for target in ("c", "llvm"):  # the tokenizer's end-of-sequence id: the third greedy id
        copy = tmp_path / target
        shutil.copytree(artifacts[target], copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["tokenizer"]["eos_ids"] = [greedy[2]]
        (copy / "manifest.json").write_text(json.dumps(manifest))
        result = sail_compiler.load(copy).generate(PROMPT, 6)
        assert result.ids == greedy[:3] and result.stop_reason == "eos"
    chat = model.generate("hello", 3, chat=True, ignore_eos=True)
    expected = model.tokenizer.tokenizer.encode(
        "<|im_start|>user\nhello<|endoftext|>\n<|im_start|>assistant\n",
        add_special_tokens=False).ids
    assert chat.prompt_ids == expected


def test_context_limit(artifacts: dict[str, Path]) -> None:
    model = sail_compiler.load(artifacts["llvm"])
    assert model.context_length == 512  # rows of the tiny decoder's rotary tables
    with pytest.raises(InputError, match=r"the prompt has 512 tokens; the model's context holds "
                                         r"512 .* at most 511"):
        model.generate([1] * 512, 4)
    for target in ("llvm", "c"):
        result = sail_compiler.load(artifacts[target]).generate([1] * 509, 8, ignore_eos=True)
        assert len(result.ids) == 3 and result.stop_reason == "context"


def test_kv_f16(artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A float16 KV cache on c (here the same greedy ids as float32's; its logits are checked in
    tests/targets/test_c_kv_cache.py), through the API and the CLI; other targets refuse it."""
    c = sail_compiler.load(artifacts["c"])
    assert c.generate(PROMPT, 8, kv_f16=True).ids == c.generate(PROMPT, 8).ids
    assert main(["generate", str(artifacts["c"]), "--prompt-ids", "3,17", "-n", "4", "--json",
                 "--kv-f16"]) == 0
    assert len(json.loads(capsys.readouterr().out)["ids"]) == 4
    with pytest.raises(OptionError, match="a llvm artifact's loop feeds its float32 presents "
                                          "back: compile with --target c, or drop --kv-f16"):
        sail_compiler.load(artifacts["llvm"]).generate(PROMPT, 2, kv_f16=True)


def test_bad_input_is_refused_before_running(artifacts: dict[str, Path]) -> None:
    model = sail_compiler.load(artifacts["c"])
    with pytest.raises(InputError, match=r"prompt id 1024 is not a token id of this model "
                                         r"\(ids lie in \[0, 1024\)\)"):
        model.generate([1, 1024], 2)
    with pytest.raises(OptionError, match=r"--temperature must lie in \[0, 1e\+06\]"):
        model.generate(PROMPT, 2, temperature=-1.0)
    with pytest.raises(OptionError, match=r"--top-p must lie in \(0, 1\]"):
        model.generate(PROMPT, 2, top_p=0.0)
    with pytest.raises(OptionError, match=r"--top-k must be an integer >= 0"):
        model.generate(PROMPT, 2, top_k=-3)
    with pytest.raises(OptionError, match="max_tokens"):
        model.generate(PROMPT, 0)
    with pytest.raises(OptionError, match="--chat formats a text prompt"):
        model.generate(PROMPT, 2, chat=True)
    with pytest.raises(InputError, match="the prompt is empty"):
        model.generate([], 2)
    bare = sail_compiler.load(artifacts["llvm4"])
    with pytest.raises(OptionError, match="has no tokenizer, so it takes token ids"):
        bare.generate("text", 2)
    with pytest.raises(OptionError, match="--stop STRING needs the artifact's tokenizer"):
        bare.generate(PROMPT, 2, stop=["x"])


def test_cli_generate_and_bench(artifacts: dict[str, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", str(artifacts["c"]), "--prompt", TEXT, "-n", "12", "--ignore-eos",
            "--temperature", "0.8", "--seed"]
    assert main([*args, "1"]) == 0
    first = capsys.readouterr()
    assert first.out.startswith(TEXT) and "c, seed 1, stopped by length" in first.err
    assert main([*args, "1"]) == 0
    assert capsys.readouterr().out == first.out  # the same text for the same seed
    reports = []
    for seed in ("1", "2"):
        assert main([*args, seed, "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert first.out == TEXT + reports[0]["text"] + "\n"
    assert reports[1]["seed"] == 2 and len(reports[1]["ids"]) == 12
    assert reports[1]["ids"] != reports[0]["ids"]
    assert main(["generate", str(artifacts["c"]), "--prompt", TEXT, "--top-p", "1.5"]) == 2
    assert "--top-p must lie in (0, 1] (1 turns it off), not 1.5" in capsys.readouterr().err
    assert main(["generate", str(artifacts["llvm4"]), "--prompt", TEXT]) == 2
    assert "recompile with --tokenizer tokenizer.json" in capsys.readouterr().err

    assert main(["bench", str(artifacts["c"]), "-p", "8", "-n", "4", "--threads", "1,2", "-r",
                 "2", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert [(r["test"], r["threads"]) for r in bench["results"]] == [
        ("pp8", 1), ("tg4", 1), ("pp8", 2), ("tg4", 2)]
    assert all(len(r["seconds"]) == 2 and r["tokens_per_second"] > 0 for r in bench["results"])
    assert main(["bench", str(artifacts["llvm"]), "-p", "8", "-n", "4", "-r", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model |") and len(table) == 4 and "| pp8 |" in table[2]
    assert main(["bench", str(artifacts["pim4"])]) == 2
    assert "use sail simulate" in capsys.readouterr().err
    assert main(["bench", str(artifacts["llvm"]), "-p", "600"]) == 2
    assert "the model's context holds 512" in capsys.readouterr().err


@pytest.mark.parametrize("arguments,message", [
    (["--top-p", "0"], "--top-p takes (0, 1]"),
    (["--temperature", "-1"], "--temperature takes [0, 1e6]"),
    (["--temperature", "nan"], "--temperature takes [0, 1e6]"),
    (["--seed", "-1"], "--seed takes [0, 2^64)"),
    (["--seed", "18446744073709551616"], "--seed takes [0, 2^64)"),
    (["-n", "0"], "-n takes a positive integer"),
    (["--eos-ids", "1,,2"], "--eos-ids takes up to 64"),
    (["--eos-ids", "99999999999999999999"], "--eos-ids takes up to 64"),
    (["--repeat-last-n", "5000"], "--repeat-last-n takes [0, 4096]"),
    (["--prompt-ids", "1,2,1024"], "1024 is not a token id of this model"),
    (["--prompt-ids", "1,-2"], "--prompt-ids takes up to"),
    (["--top-k"], "unexpected argument '--top-k'"),
])
def test_sail_generate_binary_refuses_bad_arguments(artifacts: dict[str, Path],
                                                    arguments: list[str], message: str) -> None:
    """The C loop checks its arguments itself (it runs without Python too)."""
    binary = artifacts["c"] / "sail_generate"
    if not binary.is_file():
        sail_compiler.load(artifacts["c"]).generate(PROMPT, 1)  # builds it
    prompt = [] if "--prompt-ids" in arguments else ["--prompt-ids", "1,2"]
    proc = subprocess.run([str(binary), str(artifacts["c"] / "weights.bin"), *prompt,
                           *arguments], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
