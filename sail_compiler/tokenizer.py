"""Text in and out of an artifact: the tokenizer stored at compile time, its chat template, and
the incremental decoding that streams text as ids arrive.

``sail compile ... --tokenizer tokenizer.json`` copies the Hugging Face ``tokenizer.json`` into
the artifact (:func:`prepare_tokenizer`). Files beside it add what ``tokenizer.json`` does not hold:

* ``tokenizer_config.json``: ``chat_template`` (a string, or a list of named templates of which
  ``default`` is used), ``bos_token``, ``eos_token`` (and ``unk_token`` / ``pad_token``, which
  templates may use);
* ``chat_template.jinja``: the chat template (newer Hugging Face exports);
* ``generation_config.json``: ``eos_token_id`` (one id or a list).

The end-of-sequence ids are those of ``generation_config.json``, else the id of
``tokenizer_config.json``'s ``eos_token``, else the tokenizer's special tokens with a well-known
end-of-sequence name (:data:`KNOWN_EOS`; Gemma's tokenizer also holds ``</s>`` as ordinary
text); the manifest records which. The template is stored as
``chat_template.jinja`` and rendered with Jinja2 in a sandbox, as ``transformers`` does
(``messages``, ``add_generation_prompt``, the special tokens, ``raise_exception``,
``strftime_now``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ArtifactError, InputError, OptionError

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
#: Names of end-of-sequence tokens in common tokenizers (Llama, Gemma, Qwen, Phi, GPT-2, ...).
KNOWN_EOS = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>",
             "<end_of_turn>", "<|end|>")
#: Tokens of the prompt decoded together with the generated ones, so that a generated token
#: that continues a word keeps (or drops) its leading space as it would in the whole text.
PROMPT_CONTEXT = 6


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OptionError(f"--tokenizer: cannot read {path} ({err}); fix or remove it") from None
    if not isinstance(value, dict):
        raise OptionError(f"--tokenizer: {path} is not a JSON object; fix or remove it")
    return value


def _token_text(value: Any) -> str | None:
    """A special token of tokenizer_config.json: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _load_tokenizer(path: Path, option: str = "--tokenizer"):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    if not path.is_file():
        raise OptionError(f"{option}: {path} does not exist or is not a file; give the model's "
                          "tokenizer.json (Hugging Face tokenizers format)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exception for unparsable files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OptionError(f"{option}: cannot load {path}: {first}; give a tokenizer.json in the "
                          "Hugging Face tokenizers format") from None


def _chat_template(config: dict[str, Any], beside: Path) -> str | None:
    template_file = beside / CHAT_TEMPLATE_FILE
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


@dataclasses.dataclass(frozen=True)
class StoredTokenizer:
    """A checked tokenizer, ready to be written into an artifact (:func:`prepare_tokenizer`).

    ``entry`` is the manifest's ``tokenizer`` entry (``file``, ``chat_template``, ``eos_ids``,
    ``eos_source``, ``special_tokens``, ``vocab_size``, ``source``); ``notes`` are messages for
    the user.
    """

    source: Path
    entry: dict[str, Any]
    chat_template: str | None
    notes: tuple[str, ...]

    def check_vocabulary(self, vocab_bound: int | None) -> list[str]:
        """Check the tokenizer against the model's embedding rows (``input_ids`` must lie below
        ``vocab_bound``, if known); return notes for the user.

        Raises
        ------
        OptionError
            An end-of-sequence id is outside the model's vocabulary.
        """
        if vocab_bound is None:
            return []
        eos_ids, eos_source = self.entry["eos_ids"], self.entry["eos_source"]
        bad = [i for i in eos_ids if i >= vocab_bound]
        if bad:
            raise OptionError(f"--tokenizer: end-of-sequence id {bad[0]} ({eos_source}) is not "
                              f"a token id of the model (ids lie in [0, {vocab_bound}))")
        size = self.entry["vocab_size"]
        if size > vocab_bound:
            return [f"the tokenizer has {size} tokens but the model's embedding {vocab_bound} "
                    f"rows: prompts with ids >= {vocab_bound} will be refused; is it the model's "
                    "tokenizer?"]
        return []

    def write(self, out_dir: Path) -> dict[str, Any]:
        """Copy the files into the artifact directory ``out_dir``; return the manifest entry."""
        if self.chat_template is not None:
            (out_dir / CHAT_TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        shutil.copyfile(self.source, out_dir / TOKENIZER_FILE)
        return dict(self.entry)


def prepare_tokenizer(source: Path, vocab_bound: int | None = None) -> StoredTokenizer:
    """Load and check ``source`` (a ``tokenizer.json``) and the files beside it.

    Parameters
    ----------
    source
        The ``tokenizer.json``; ``tokenizer_config.json``, ``chat_template.jinja`` and
        ``generation_config.json`` are read from its directory when present.
    vocab_bound
        Rows of the model's embedding (``input_ids`` must lie below it), if known: then
        :meth:`StoredTokenizer.check_vocabulary` runs too.

    Raises
    ------
    OptionError
        The tokenizer or a file beside it does not load, its chat template does not compile,
        or an end-of-sequence id is negative or outside the model's vocabulary.
    """
    source = Path(source)
    tokenizer = _load_tokenizer(source)
    beside = source.parent
    config_path = beside / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    generation_path = beside / "generation_config.json"
    generation = _read_json(generation_path) if generation_path.is_file() else {}
    specials = {name: _token_text(config.get(name))
                for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    specials = {k: v for k, v in specials.items() if v is not None}
    notes = []

    given = generation.get("eos_token_id")
    if isinstance(given, int) or (isinstance(given, list) and given
                                  and all(isinstance(i, int) for i in given)):
        eos_ids = [given] if isinstance(given, int) else list(given)
        eos_source = "generation_config.json"
    elif "eos_token" in specials and tokenizer.token_to_id(specials["eos_token"]) is not None:
        eos_ids = [tokenizer.token_to_id(specials["eos_token"])]
        eos_source = "tokenizer_config.json"
    else:
        added = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        eos_ids = [tokenizer.token_to_id(name) for name in KNOWN_EOS if name in added]
        eos_source = ("known end-of-sequence special tokens of tokenizer.json" if eos_ids
                      else "none")
    if not eos_ids:
        notes.append(f"the tokenizer {source} names no end-of-sequence token (no "
                     "generation_config.json or tokenizer_config.json beside it): generation "
                     "stops only at -n or --stop")
    bad_eos = [i for i in eos_ids if i < 0]
    if bad_eos:
        raise OptionError(f"--tokenizer: end-of-sequence id {bad_eos[0]} ({eos_source}) is "
                          "negative; token ids are >= 0")

    template = _chat_template(config, beside)
    if template is not None:
        ChatTemplate(template, specials).render([{"role": "user", "content": "hello"}])
    entry = {"file": TOKENIZER_FILE, "chat_template": CHAT_TEMPLATE_FILE if template else None,
             "eos_ids": eos_ids, "eos_source": eos_source, "special_tokens": specials,
             "vocab_size": tokenizer.get_vocab_size(), "source": str(source.resolve())}
    stored = StoredTokenizer(source, entry, template, tuple(notes))
    return dataclasses.replace(stored, notes=(*notes, *stored.check_vocabulary(vocab_bound)))


class ChatTemplate:
    """A Hugging Face chat template (Jinja2, sandboxed, rendered as ``transformers`` does)."""

    def __init__(self, source: str, special_tokens: dict[str, str]) -> None:
        try:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise OptionError("chat templates need jinja2: pip install jinja2") from None

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
                   separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
            return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                              separators=separators, sort_keys=sort_keys)

        def strftime_now(fmt: str) -> str:
            import datetime

            return datetime.datetime.now().strftime(fmt)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        self._errors = (jinja2.exceptions.TemplateError,)
        try:
            self.template = env.from_string(source)
        except jinja2.exceptions.TemplateError as err:
            raise OptionError(f"--tokenizer: the chat template does not compile: {err}") from None
        self.special_tokens = dict(special_tokens)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation; ``messages``: ``[{"role", "content"}, ...]``."""
        try:
            return self.template.render(messages=messages,
                                        add_generation_prompt=add_generation_prompt,
                                        **self.special_tokens)
        except self._errors as err:
            raise InputError(f"the chat template refused the conversation: {err}") from None
        except Exception as err:  # a template may fail on anything it indexes
            raise InputError(f"the chat template failed: {type(err).__name__}: {err}") from None


class TextTokenizer:
    """The tokenizer of an artifact (``manifest["tokenizer"]``, see :func:`prepare_tokenizer`)."""

    def __init__(self, artifact_dir: Path, entry: dict[str, Any]) -> None:
        path = artifact_dir / entry["file"]
        if not path.is_file():
            raise ArtifactError(f"{artifact_dir} lost its tokenizer ({path} is missing); "
                                "recompile with --tokenizer tokenizer.json")
        try:
            self.tokenizer = _load_tokenizer(path, "the artifact's tokenizer")
        except OptionError as err:
            raise ArtifactError(str(err)) from None
        self.eos_ids: tuple[int, ...] = tuple(entry["eos_ids"])
        self.special_tokens: dict[str, str] = dict(entry.get("special_tokens", {}))
        self.chat_template: ChatTemplate | None = None
        if entry.get("chat_template"):
            source = (artifact_dir / entry["chat_template"]).read_text(encoding="utf-8")
            self.chat_template = ChatTemplate(source, self.special_tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of a plain prompt, with the tokenizer's own special tokens (e.g. ``<bos>``)."""
        return list(self.tokenizer.encode(text).ids)

    def encode_chat(self, text: str) -> list[int]:
        """Ids of ``text`` as the user's turn of a conversation, ready for the model's answer.

        The rendered template holds its special tokens, so none are added (as ``transformers``'
        ``apply_chat_template`` does).
        """
        if self.chat_template is None:
            raise OptionError("--chat: this artifact's tokenizer has no chat template; put the "
                              "model's tokenizer_config.json (or chat_template.jinja) beside "
                              "tokenizer.json and recompile, or drop --chat")
        rendered = self.chat_template.render([{"role": "user", "content": text}])
        return list(self.tokenizer.encode(rendered, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def stream(self, prompt_ids: Sequence[int], stop: Sequence[str] = ()) -> TextStream:
        return TextStream(self, prompt_ids, stop)


class TextStream:
    """Turns generated ids into text as they arrive, and finds stop strings.

    Each :meth:`push` returns the text that became final: a token whose bytes end inside a
    UTF-8 character waits for the next, and text that could be the start of a stop string is
    held back until it is not. Once a stop string appears, :attr:`stopped` is set and the text
    ends before it.
    """

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: Sequence[int],
                 stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-PROMPT_CONTEXT:])
        self._prefix = 0                # ids[_prefix:_read] decode to the text already taken
        self._read = len(self._ids)
        self.stop = tuple(s for s in stop if s)
        self.text = ""                  # the generated text (ends before a stop string)
        self._shown = 0                 # characters of text returned so far
        self.stopped = False
        self.tokens = 0                 # ids pushed, up to the one that completed a stop string

    def push(self, token: int) -> str:
        """Add one generated id; return the text that is now final ("" if none)."""
        if self.stopped:
            return ""
        self.tokens += 1
        self._ids.append(token)
        before = self._tokenizer.decode(self._ids[self._prefix:self._read])
        after = self._tokenizer.decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text once no more ids come (incomplete characters included)."""
        if not self.stopped and self._read < len(self._ids):
            before = self._tokenizer.decode(self._ids[self._prefix:self._read])
            after = self._tokenizer.decode(self._ids[self._prefix:])
            self.text += after[len(before):]
            self._read = len(self._ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        for stop in self.stop:
            at = self.text.find(stop, max(0, self._shown - len(stop) + 1))
            if at >= 0:
                self.text = self.text[:at]
                self.stopped = True
        end = len(self.text)
        if not final and not self.stopped:
            for stop in self.stop:  # the longest end of the text that begins a stop string
                for size in range(min(len(stop) - 1, len(self.text)), 0, -1):
                    if stop.startswith(self.text[-size:]):
                        end = min(end, len(self.text) - size)
                        break
        piece = self.text[self._shown:max(end, self._shown)]
        self._shown = max(end, self._shown)
        return piece
