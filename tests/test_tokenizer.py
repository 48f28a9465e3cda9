"""The tokenizer an artifact stores (:mod:`sail_compiler.tokenizer`): what is read from the files
beside ``tokenizer.json`` (end-of-sequence ids, the chat template), the chat template rendered
as ``transformers`` renders it, streaming text that equals the whole decode, stop strings, and
clear errors for files that do not load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from train_stdlib_lm import train_tokenizer

from sail_compiler.errors import InputError, OptionError
from sail_compiler.tokenizer import TextTokenizer, prepare_tokenizer

TEXTS = ["The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
         "naïve café — 日本語のテキスト ✓ emoji 🙂 and more text", "def main():\n    return 0\n"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
            "{% if m['role'] not in ['user', 'assistant'] %}"
            "{{ raise_exception('roles must be user or assistant') }}{% endif %}"
            "<start_of_turn>{{ m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
            "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _byte_level(path: Path) -> Path:
    """A byte-level BPE tokenizer (lossless) with <bos> added in front of every encoding."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(TEXTS * 10, vocab_size=330)
    tokenizer.add_special_tokens(["<bos>", "<start_of_turn>", "<end_of_turn>"])
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                             special_tokens=[("<bos>", bos)])
    tokenizer.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


def _artifact(tmp: Path, files: dict[str, object], bound: int | None = 1024) -> TextTokenizer:
    source = _byte_level(tmp / "src")
    for name, value in files.items():
        text = value if isinstance(value, str) else json.dumps(value)
        (source.parent / name).write_text(text)
    stored = prepare_tokenizer(source, bound)
    out = tmp / "artifact"
    out.mkdir()
    entry = stored.write(out)
    assert json.loads(json.dumps(entry)) == entry  # goes into the manifest as JSON
    return TextTokenizer(out, entry)


def test_eos_ids_come_from_generation_config_then_tokenizer_config_then_names(
        tmp_path: Path) -> None:
    source = _byte_level(tmp_path / "a")
    raw = Tokenizer.from_file(str(source))
    eot, end_of_turn = raw.token_to_id("<|endoftext|>"), raw.token_to_id("<end_of_turn>")
    known = prepare_tokenizer(source, None).entry  # the special tokens with known names
    assert known["eos_ids"] == [eot, end_of_turn]
    assert known["eos_source"] == "known end-of-sequence special tokens of tokenizer.json"
    raw.add_tokens(["</s>"])  # ordinary text in Gemma's tokenizer: not an end
    raw.save(str(source))
    assert prepare_tokenizer(source, None).entry["eos_ids"] == [eot, end_of_turn]
    (source.parent / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "<end_of_turn>"}, "bos_token": "<bos>"}))
    stored = prepare_tokenizer(source, None)
    assert stored.entry["eos_ids"] == [end_of_turn]
    assert stored.entry["eos_source"] == "tokenizer_config.json"
    assert stored.entry["special_tokens"] == {"eos_token": "<end_of_turn>", "bos_token": "<bos>"}
    (source.parent / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 7]}))
    assert prepare_tokenizer(source, None).entry["eos_ids"] == [1, 7]
    with pytest.raises(OptionError, match=r"end-of-sequence id 7 .*ids lie in \[0, 5\)"):
        prepare_tokenizer(source, 5)


def test_a_tokenizer_without_eos_is_noted(tmp_path: Path) -> None:
    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    stored = prepare_tokenizer(tmp_path / "tokenizer.json", 2)
    assert stored.entry["eos_ids"] == []
    assert any("names no end-of-sequence token" in n for n in stored.notes)
    assert any("the tokenizer has 3 tokens but the model's embedding 2 rows" in n
               for n in stored.notes)


def test_chat_template_renders_as_transformers_does(tmp_path: Path) -> None:
    tok = _artifact(tmp_path, {"tokenizer_config.json": {"chat_template": TEMPLATE,
                                                         "bos_token": "<bos>",
                                                         "eos_token": "<end_of_turn>"}})
    rendered = tok.chat_template.render([{"role": "user", "content": " What is 2+2? "}])
    assert rendered == ("<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
                        "<start_of_turn>model\n")
    ids = tok.encode_chat(" What is 2+2? ")
    raw = Tokenizer.from_file(str(tmp_path / "artifact" / "tokenizer.json"))
    assert ids == raw.encode(rendered, add_special_tokens=False).ids
    assert ids.count(raw.token_to_id("<bos>")) == 1  # the template's, none added
    assert tok.encode("hi")[0] == raw.token_to_id("<bos>")  # a plain prompt gets the tokenizer's
    with pytest.raises(InputError, match="roles must be user or assistant"):
        tok.chat_template.render([{"role": "system", "content": "x"}])


def test_named_templates_and_chat_template_jinja(tmp_path: Path) -> None:
    tok = _artifact(tmp_path, {"tokenizer_config.json": {
        "chat_template": [{"name": "tool_use", "template": "TOOLS"},
                          {"name": "default", "template": "D:{{ messages[0]['content'] }}"}]}})
    assert tok.chat_template.render([{"role": "user", "content": "x"}]) == "D:x"
    tok = _artifact(tmp_path / "b", {"tokenizer_config.json": {"chat_template": "ignored"},
                                     "chat_template.jinja": "J:{{ messages[0]['content'] }}"})
    assert tok.chat_template.render([{"role": "user", "content": "y"}]) == "J:y"
    plain = _artifact(tmp_path / "c", {})
    assert plain.chat_template is None
    with pytest.raises(OptionError, match="has no chat template"):
        plain.encode_chat("hi")


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="--tokenizer: .*missing.json does not exist"):
        prepare_tokenizer(tmp_path / "missing.json", None)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(OptionError, match="--tokenizer: cannot load .*broken.json"):
        prepare_tokenizer(tmp_path / "broken.json", None)
    source = _byte_level(tmp_path / "t")
    (source.parent / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(OptionError, match="tokenizer_config.json is not a JSON object"):
        prepare_tokenizer(source, None)
    (source.parent / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}"}))
    with pytest.raises(OptionError, match="the chat template does not compile"):
        prepare_tokenizer(source, None)


def _streamed(tok: TextTokenizer, prompt: str, generated: str, stop: tuple[str, ...] = ()
              ) -> tuple[list[str], object, list[int]]:
    raw = tok.tokenizer
    prompt_ids = raw.encode(prompt).ids
    ids = raw.encode(prompt + generated, add_special_tokens=False).ids
    new = ids[len(raw.encode(prompt, add_special_tokens=False).ids):]
    assert raw.decode(new) == generated  # the split point is a token boundary
    stream = tok.stream(prompt_ids, stop)
    pieces = [stream.push(i) for i in new]
    pieces.append(stream.finish())
    return pieces, stream, new


def test_streamed_text_equals_the_whole_decode(tmp_path: Path) -> None:
    tok = _artifact(tmp_path, {})
    generated = " café — 日本語のテキスト ✓ emoji 🙂 done"
    pieces, stream, new = _streamed(tok, "The capital is", generated)
    assert "".join(pieces) == generated == stream.text
    assert not any("\ufffd" in p for p in pieces)  # a character split over tokens waits
    assert len(new) > len([p for p in pieces if p])  # ... so some tokens gave no text


def test_metaspace_tokens_keep_their_space_after_the_prompt(tmp_path: Path) -> None:
    """Sentencepiece-style tokenizers drop the space of a text's first token: decoding the
    generated ids with the end of the prompt keeps it."""
    vocab = {"<bos>": 0, "▁The": 1, "▁capital": 2, "▁of": 3, "▁France": 4, "[UNK]": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    (tmp_path / "src").mkdir()
    tokenizer.save(str(tmp_path / "src" / "tokenizer.json"))
    stored = prepare_tokenizer(tmp_path / "src" / "tokenizer.json", 6)
    (tmp_path / "a").mkdir()
    tok = TextTokenizer(tmp_path / "a", stored.write(tmp_path / "a"))
    stream = tok.stream([1, 2], ())
    assert [stream.push(3), stream.push(4)] == [" of", " France"]


def test_stop_strings(tmp_path: Path) -> None:
    tok = _artifact(tmp_path, {})
    pieces, stream, new = _streamed(tok, "x", " The quick brown fox jumps", ("brown",))
    assert stream.stopped and stream.text == " The quick " == "".join(pieces)
    assert tok.decode(new[:stream.tokens]).startswith(" The quick br")  # up to the stop's token
    assert not tok.decode(new[:stream.tokens - 1]).endswith("brown")
    # the earliest of several stops wins; text that may begin a stop waits, then comes out
    pieces, stream, _ = _streamed(tok, "x", " lazy dog. The capital", ("capital", "dog"))
    assert stream.text == " lazy " and stream.stopped
    pieces, stream, _ = _streamed(tok, "x", " over the lazy dog", ("lazy cat",))
    assert not stream.stopped and "".join(pieces) == " over the lazy dog"
    # " laz" and "y" could begin the stop: they came out only with " do"
    assert any(p.startswith("lazy d") for p in pieces)


def test_compile_refuses_a_tokenizer_that_does_not_load(tiny_decoder_kv: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from sail_compiler.cli import main

    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    out = tmp_path / "out"
    assert main(["compile", str(tiny_decoder_kv), "-o", str(out), "--tokenizer",
                 str(tmp_path / "tokenizer.json")]) == 2
    assert "--tokenizer: cannot load" in capsys.readouterr().err and not out.exists()
