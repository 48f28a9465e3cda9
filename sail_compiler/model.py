"""The Python API of a compiled artifact: ``sail_compiler.load(OUT)``.

::

    import sail_compiler
    model = sail_compiler.load("g4")                  # any target: llvm, c, pim-sim
    outputs = model(input_ids=ids, attention_mask=mask, ...)   # {name: np.ndarray}
    result = model.generate("The capital of France is", max_tokens=24,
                            on_text=lambda piece: print(piece, end="", flush=True))
    result.text, result.ids, result.decode_tokens_per_second

``model(**inputs)`` runs one forward: on the Relax VM for llvm and pim-sim artifacts (pim-sim
executes the SAIL instructions on the functional simulator), in this process through ctypes on
``libmodel.so`` for c artifacts (:mod:`.targets.c.library`). ``model.generate`` runs a decoder
with a KV cache token by token with the options of ``sail generate``: the c target runs
``sail_generate`` (the C token loop and sampler) and streams its ids; llvm and pim-sim run the
same loop in Python with the NumPy sampler of :mod:`.sampling`, which draws the same ids from
the same logits and seed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact
from .errors import InputError, OptionError
from .frontend.signature import past_axis
from .sampling import SamplingOptions, SplitMix64, sample
from .tokenizer import TextTokenizer

#: Why a generation ended.
STOP_REASONS = ("length", "eos", "stop", "context")


@dataclasses.dataclass
class Generation:
    """The result of :meth:`Model.generate`.

    ``ids`` are the generated ids (an end-of-sequence id that ended the generation is the last
    one; with a stop string, up to the id that completed it); ``text`` their text, ending before
    a stop string (None without a tokenizer); ``stop_reason`` one of :data:`STOP_REASONS`;
    ``seed`` the generator's seed (give it back to reproduce a sampled text). Timings are of the
    model's runs only: the prefill (the prompt in one run) and the decode steps after it.
    """

    prompt_ids: list[int]
    ids: list[int]
    text: str | None
    stop_reason: str
    seed: int
    sampling: dict[str, Any]
    target: str
    threads: int | None
    prefill_seconds: float
    decode_steps: int
    decode_seconds: float

    @property
    def prefill_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "prefill_tokens": self.prefill_tokens,
                "decode_tokens_per_second": self.decode_tokens_per_second}


def decoder_cache_axes(signature: Any) -> dict[str, int]:
    """``{past input name: its growing axis}`` of a decoder with a KV cache (the one symbolic
    dim besides the batch); :class:`OptionError` unless the model is one."""
    from .targets.c.target import check_decoder

    check_decoder(signature)
    axes = {}
    for spec in signature.inputs_of("past"):
        axis = past_axis(spec)
        if axis is None:
            raise OptionError(f"sail generate runs decoders with a KV cache; {spec.name} has "
                              f"dims {list(spec.dims)}, not one symbolic past axis")
        axes[spec.name] = axis
    return axes


class Model:
    """A compiled artifact, loaded (:func:`load`)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.artifact = Artifact(path)
        self.path = self.artifact.path
        self.manifest = self.artifact.manifest
        self.signature = self.artifact.signature
        self.target: str = self.manifest["target"]
        if threads is not None and self.target != "c":
            raise OptionError(f"threads apply to c artifacts; a {self.target} artifact's threads "
                              "are set when it is compiled (sail compile --threads N)")
        self.threads = threads
        self._tokenizer: TextTokenizer | None = None
        self._library: Any = None

    def __repr__(self) -> str:
        return f"<sail Model {self.path} target={self.target} quant={self.manifest.get('quant')}>"

    # -- one forward ---------------------------------------------------------------------------

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model once on named inputs; return its outputs by name (ONNX order)."""
        if self.target != "c":
            return self.artifact.run(inputs)
        from .targets.c.library import ModelLibrary

        self.artifact.check_inputs(inputs)
        if self._library is None:
            self._library = ModelLibrary(self.path, self.manifest, self.threads)
        outputs = self._library.run([inputs[s.name] for s in self.signature.inputs])
        return dict(zip((s.name for s in self.signature.outputs), outputs, strict=True))

    def close(self) -> None:
        """Free the c library's model (weights); later calls load it again."""
        if self._library is not None:
            self._library.close()
            self._library = None

    # -- text ----------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> TextTokenizer | None:
        """The tokenizer stored at compile time (``--tokenizer``), or None."""
        entry = self.manifest.get("tokenizer")
        if entry is not None and self._tokenizer is None:
            self._tokenizer = TextTokenizer(self.path, entry)
        return self._tokenizer

    @property
    def context_length(self) -> int | None:
        """The longest past + seq the model accepts, when the model says (else None)."""
        return self.manifest.get("context_length")

    @property
    def vocab_bound(self) -> int | None:
        ids = self.signature.input_of("ids")
        return None if ids is None else ids.index_bound

    def prompt_ids(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        """The ids of a prompt (text through the tokenizer, or ids), checked against the
        vocabulary and the context; :class:`InputError` / :class:`OptionError` otherwise."""
        if isinstance(prompt, str):
            tokenizer = self.tokenizer
            if tokenizer is None:
                raise OptionError(f"{self.path} has no tokenizer, so it takes token ids, not "
                                  "text: recompile with --tokenizer tokenizer.json, or give "
                                  "--prompt-ids")
            ids = tokenizer.encode_chat(prompt) if chat else tokenizer.encode(prompt)
        else:
            if chat:
                raise OptionError("--chat formats a text prompt; give --prompt TEXT")
            ids = [int(i) for i in prompt]
        if not ids:
            raise InputError("the prompt is empty (no token ids); give some text or ids")
        bound = self.vocab_bound
        bad = [i for i in ids if i < 0 or (bound is not None and i >= bound)]
        if bad:
            raise InputError(f"prompt id {bad[0]} is not a token id of this model (ids lie in "
                             f"[0, {bound}))")
        context = self.context_length
        if context is not None and len(ids) >= context:
            raise InputError(f"the prompt has {len(ids)} tokens; the model's context holds "
                             f"{context} (prompt and generated tokens together): shorten it to "
                             f"at most {context - 1}")
        return ids

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, *,
                 chat: bool = False, stop: Sequence[str] = (),
                 sampling: SamplingOptions | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repeat_penalty: float | None = None,
                 repeat_last_n: int | None = None, seed: int | None = None,
                 ignore_eos: bool = False, ctx: int | None = None, kv_f16: bool = False,
                 on_text: Callable[[str], None] | None = None,
                 on_token: Callable[[int], None] | None = None) -> Generation:
        """Generate up to ``max_tokens`` tokens after ``prompt`` with the KV cache.

        Parameters
        ----------
        prompt
            Text (needs the artifact's tokenizer) or token ids.
        max_tokens
            New tokens at most (>= 1); fewer when the context fills up.
        chat
            Format a text prompt as the user's turn with the tokenizer's chat template.
        stop
            Strings that end the generation (the text ends before them; needs a tokenizer).
        sampling, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed
            :class:`~.sampling.SamplingOptions`, or its fields one by one (greedy by default).
        ignore_eos
            Do not stop at the tokenizer's end-of-sequence ids.
        ctx
            Positions the KV cache holds (``sail_generate --ctx``; None: what the prompt and
            ``max_tokens`` need). A prompt and ``max_tokens`` that need more (the prompt's
            tokens plus ``max_tokens - 1``: the last token is not fed back) are refused before
            anything runs, on every target: the c target's cache is a buffer of that size; the
            llvm and pim-sim loops feed the presents back and check the same limit.
        kv_f16
            c artifacts: store the KV cache as float16 (``sail_generate --kv-f16``): half its
            memory and the attention's reads, the keys and values rounded to the nearest half
            as they are appended (the logits change by that rounding).
        on_text
            Called with each piece of text as soon as it is final (streaming).
        on_token
            Called with each generated id as it comes.

        Raises
        ------
        OptionError
            Out-of-range options (naming the option and its valid range), text without a
            tokenizer, a model that is not a decoder with a KV cache, or ``kv_f16`` on
            another target than c or for a model whose cache cannot stay in place.
        InputError
            Ids outside the vocabulary, an empty prompt, one longer than the context, or a
            prompt and ``max_tokens`` that need more positions than ``ctx``.
        """
        fields = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                  "repeat_penalty": repeat_penalty, "repeat_last_n": repeat_last_n,
                  "seed": seed}
        given = {k: v for k, v in fields.items() if v is not None}
        sampling = dataclasses.replace(sampling or SamplingOptions(), **given).with_seed()
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise OptionError(f"-n (max_tokens) must be an integer >= 1, not {max_tokens}")
        if kv_f16 and self.target != "c":
            raise OptionError(f"--kv-f16 (kv_f16) stores the c target's in-place KV cache as "
                              f"float16; a {self.target} artifact's loop feeds its float32 "
                              "presents back: compile with --target c, or drop --kv-f16")
        axes = decoder_cache_axes(self.signature)
        ids = self.prompt_ids(prompt, chat)
        tokenizer = self.tokenizer
        stop = tuple(stop)
        if stop and tokenizer is None:
            raise OptionError("--stop STRING needs the artifact's tokenizer (sail compile "
                              "--tokenizer tokenizer.json)")
        tokens = max_tokens
        if self.context_length is not None:
            tokens = min(tokens, self.context_length - len(ids))
        check_kv_capacity(len(ids), tokens, ctx)
        eos = () if ignore_eos or tokenizer is None else tokenizer.eos_ids
        stream = tokenizer.stream(ids, stop) if tokenizer is not None else None

        def on_id(token: int) -> bool:
            """Take one id; True once a stop string has appeared."""
            if on_token is not None:
                on_token(token)
            if stream is None:
                return False
            piece = stream.push(token)
            if piece and on_text is not None:
                on_text(piece)
            return stream.stopped

        if self.target == "c":
            from .targets.c.target import generate as c_generate

            report = c_generate(self.path, self.manifest, ids, tokens, self.threads, sampling,
                                eos, on_id, ctx=ctx, kv_f16=kv_f16)
        else:
            report = python_token_loop(self.artifact.run, self.signature, axes, ids, tokens,
                                       sampling, eos, on_id)
        out = list(report["ids"])
        reason = report["stop_reason"]
        text = None
        if stream is not None:
            if stream.stopped:
                out, reason = out[:stream.tokens], "stop"
            rest = stream.finish()
            if rest and on_text is not None:
                on_text(rest)
            text = stream.text
        if reason == "length" and tokens < max_tokens and len(out) == tokens:
            reason = "context"
        return Generation(prompt_ids=ids, ids=out, text=text, stop_reason=reason,
                          seed=int(sampling.seed), sampling=sampling.to_json(),
                          target=self.target, threads=report.get("threads"),
                          prefill_seconds=report["prefill_seconds"],
                          decode_steps=report["decode_steps"],
                          decode_seconds=report["decode_seconds"])

    def time_generation(self, prompt_ids: Sequence[int], tokens: int, repeat: int,
                        threads: int | None = None) -> list[dict[str, float]]:
        """Run a greedy generation of ``tokens`` tokens (no end-of-sequence stop) ``repeat``
        times; each run's ``prefill_seconds``, ``decode_steps`` and ``decode_seconds``
        (``sail bench``)."""
        ids = self.prompt_ids(list(prompt_ids))
        greedy = SamplingOptions(seed=0)
        if self.target == "c":
            from .targets.c.target import generate as c_generate

            report = c_generate(self.path, self.manifest, ids, tokens,
                                threads if threads is not None else self.threads, greedy,
                                repeat=repeat)
            return report["runs"]
        if threads is not None:
            raise OptionError(f"threads apply to c artifacts; a {self.target} artifact's "
                              "threads are set when it is compiled (sail compile --threads N)")
        axes = decoder_cache_axes(self.signature)
        runs = []
        for _ in range(repeat):
            report = python_token_loop(self.artifact.run, self.signature, axes, ids, tokens,
                                       greedy, (), lambda _: False)
            runs.append({k: report[k] for k in ("prefill_seconds", "decode_steps",
                                                "decode_seconds")})
        return runs


def check_kv_capacity(prompt_tokens: int, tokens: int, ctx: int | None) -> None:
    """Refuse a generation whose prompt and ``tokens`` new tokens need more KV-cache positions
    than ``ctx`` (``prompt_tokens + tokens - 1``: the last token is not fed back), as
    ``sail_generate --ctx`` does; :class:`OptionError` for a ``ctx`` below 1."""
    if ctx is None:
        return
    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 1:
        raise OptionError(f"--ctx (ctx) must be an integer >= 1, not {ctx}")
    needed = prompt_tokens + tokens - 1
    if needed > ctx:
        fix = f"at most {ctx - prompt_tokens + 1} new tokens" if prompt_tokens <= ctx else \
            f"a prompt of at most {ctx} tokens"
        raise InputError(f"the prompt ({prompt_tokens} tokens) and {tokens} new tokens need a "
                         f"KV cache of {needed} positions, more than --ctx {ctx}: raise --ctx "
                         f"to {needed} or ask for {fix}")


def python_token_loop(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                      signature: Any, axes: dict[str, int], prompt_ids: list[int], tokens: int,
                      sampling: SamplingOptions, eos_ids: Sequence[int],
                      on_id: Callable[[int], bool]) -> dict[str, Any]:
    """The token loop of ``sail_generate`` in Python, over ``run(inputs) -> outputs``.

    Prefill with the prompt (empty pasts), then one decode step per token with the presents as
    the pasts; each token from :func:`~.sampling.sample`. Stops after ``tokens`` ids, after an
    id of ``eos_ids`` (reported), or when ``on_id`` returns True. Returns the keys of
    ``sail_generate --json`` that :meth:`Model.generate` reads.
    """
    specs = {s.name: s for s in signature.inputs}
    ids, mask = signature.inputs_of("ids")[0].name, signature.inputs_of("mask")[0].name
    positions = signature.inputs_of("positions")
    presents = signature.kv_pairs()
    generator = None if sampling.greedy else SplitMix64(sampling.seed)
    pasts = {}
    for name, axis in axes.items():
        shape = [1 if d == 0 else 0 if d == axis else int(size)
                 for d, size in enumerate(specs[name].dims)]
        pasts[name] = np.zeros(shape, dtype=specs[name].dtype)
    history = list(prompt_ids)
    step_ids = list(prompt_ids)
    generated: list[int] = []
    prefill_seconds = decode_seconds = 0.0
    reason = "length"
    for step in range(tokens):
        past = len(history) - len(step_ids)
        feeds = {ids: np.array([step_ids], np.int64),
                 mask: np.ones((1, len(history)), np.int64), **pasts}
        if positions:
            feeds[positions[0].name] = np.arange(past, len(history), dtype=np.int64)[None]
        started = time.perf_counter()
        outputs = run(feeds)
        seconds = time.perf_counter() - started
        if step == 0:
            prefill_seconds = seconds
        else:
            decode_seconds += seconds
        token = sample(outputs["logits"][0, -1], history, sampling, generator)
        generated.append(token)
        history.append(token)
        step_ids = [token]
        pasts = {name: outputs[presents[name]] for name in pasts}
        stopped = on_id(token)
        if token in eos_ids:
            reason = "eos"
            break
        if stopped:
            reason = "stop"
            break
    return {"ids": generated, "stop_reason": reason, "threads": None,
            "prefill_seconds": prefill_seconds, "decode_steps": len(generated) - 1,
            "decode_seconds": decode_seconds}


def load(path: str | Path, threads: int | None = None) -> Model:
    """Load a compiled artifact (``sail compile -o path``) of any target.

    Parameters
    ----------
    path
        The artifact directory.
    threads
        c artifacts: threads of the LUT-GEMV kernels (1..256; default ``SAIL_NUM_THREADS``
        or 1). Other targets fix their threads at compile time.
    """
    return Model(path, threads)
