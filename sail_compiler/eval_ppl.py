"""Perplexity of a language model on a text: the float model (onnxruntime) and the compiled one.

``sail eval-ppl MODEL --text FILE --tokenizer tokenizer.json [quantization options]`` tokenizes
the text with a Hugging Face ``tokenizer.json``, compiles the model (quantized when asked), and
scores every token of the text with both the float model on onnxruntime and the compiled artifact,
so the difference of the two perplexities is what compilation (quantization) costs.

Scoring follows Hugging Face's strided perplexity (:func:`strided_windows`): the model sees
windows of ``window`` tokens advanced by ``stride``; each token is scored once, by the first window
whose new region holds it, with every token before it in that window as context. Each window is
one forward pass with batch 1 and no KV cache reuse: ``attention_mask`` is ones, ``position_ids``
(if the model takes them) count from 0, and past key/value inputs (if any) are empty (past length
0). The negative log-likelihood is computed from the logits in float64.

``perplexity = exp(mean NLL)``, the mean over scored tokens, in nats per token.

The protocol of the project's real-model measurements (issue 15) is one window over the start of
a text: ``--chars 6000 --window 1024 --max-tokens 1024`` takes the first 6000 characters, tokenizes
them (``<bos>`` first when the tokenizer's post-processor adds it, as Gemma's and Llama's do),
keeps the first 1024 ids and scores tokens 1..1023 in one forward pass:
``perplexity = exp(mean NLL of tokens 1..1023)``.

Calibrating on the text that is then scored flatters the quantized model; :func:`evaluate` warns
when the calibration text (``--calib-text``) holds the scored characters.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OptionError
from .frontend import bind_shapes, load_checked
from .frontend.signature import ModelSignature, signature_of
from .inputs import InputPlan, generate_inputs, ids_input, load_tokens, read_text
from .options import CompileOptions
from .verify import OnnxRuntimeReference

#: ``logits_fn(ids)``: token ids int64 ``[1, L]`` -> logits float ``[1, L, V]``.
LogitsFn = Callable[[np.ndarray], np.ndarray]
#: A model's forward on named inputs (``OnnxRuntimeReference.run``, ``Artifact.run``).
RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

_PROGRESS_LINES = 10
#: Quantization settings copied from the artifact's manifest into the result, when recorded.
_MANIFEST_QUANT_FIELDS = ("method", "act_bits", "act_group_size", "avg_bits")


def calibration_overlap(calib_text: str | Path | None, text_path: str | Path,
                        chars: int | None = None) -> str | None:
    """A warning when the calibration text holds the text being scored, else None.

    Parameters
    ----------
    calib_text
        The ``--calib-text`` file (None: no text calibration, no warning).
    text_path, chars
        The evaluation text and how many of its first characters are scored.

    Returns
    -------
    str | None
        The message: the same file, or the scored characters found inside the calibration
        text (a quantizer fitted to the data it is then scored on looks better than it is).
    """
    if calib_text is None:
        return None
    calib_path, text_path = Path(calib_text), Path(text_path)
    same_file = calib_path.exists() and text_path.exists() and calib_path.samefile(text_path)
    try:
        scored = read_text(text_path, chars).strip()
        contained = bool(scored) and scored in read_text(calib_path)
    except InputError:
        return None  # an unreadable file is reported where it is read
    if not (same_file or contained):
        return None
    how = "is the evaluation text" if same_file else "contains the scored text"
    return (f"the calibration text {calib_path} {how} {text_path}: the perplexity is measured on "
            "the data the quantizer was fitted to and understates its cost; calibrate on a "
            "different text")


def check_window(window: int, stride: int) -> None:
    """Raise :class:`OptionError` unless ``window >= 2`` and ``1 <= stride <= window``."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise OptionError(f"--window must be an integer >= 2 (a token is scored from the ones "
                          f"before it in its window), got {window!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window:
        raise OptionError(f"--stride must be an integer in 1..window ({window}), got {stride!r}; "
                          f"stride = window / 2 (e.g. --stride {max(1, window // 2)}) is usual")


def strided_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows of Hugging Face's strided perplexity over ``n_tokens`` tokens.

    Window ``k`` ends at ``end_k = min(window + k * stride, n_tokens)`` and starts at
    ``max(0, end_k - window)``, so every window holds ``min(window, n_tokens)`` tokens (the last
    one is moved left to full length rather than cut short, unlike Hugging Face's loop, which
    gives the final tokens more context and keeps the length fixed). Window ``k`` scores the
    tokens from ``max(end_{k-1}, begin_k + 1)`` to ``end_k - 1`` (``end_{-1} = 0``): those that no
    earlier window reached, each predicted from the logits at the position before it. So every
    token is scored at most once, with ``p - begin >= min(p, window - stride)`` tokens of
    context. Token 0 is never scored (nothing precedes it); with ``stride < window`` every other
    token is. With ``stride == window`` the windows are non-overlapping chunks and the first token
    of each chunk is not scored (it has no context in its chunk), as in Hugging Face's loop.

    Parameters
    ----------
    n_tokens
        Length of the token sequence.
    window, stride
        Tokens per forward pass and how far windows advance; ``1 <= stride <= window``.

    Returns
    -------
    list[tuple[int, int, int]]
        ``(begin, end, first)`` per window: the model sees ``ids[begin:end]`` and tokens
        ``first .. end - 1`` are scored; ``begin < first < end``. Empty if ``n_tokens < 2``.

    Examples
    --------
    >>> strided_windows(10, window=4, stride=2)
    [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]

    Token 4 is scored in the second window, with tokens 2 and 3 as context; tokens 8 and 9 in the
    last, with 6..7 and 6..8.

    >>> strided_windows(10, window=4, stride=4)
    [(0, 4, 1), (4, 8, 5), (6, 10, 8)]

    Tokens 0 and 4 are not scored; the last window starts at 6 to hold 4 tokens.
    """
    check_window(window, stride)
    windows = []
    previous_end, end = 0, min(window, n_tokens)
    while n_tokens >= 2:
        begin = max(0, end - window)
        windows.append((begin, end, max(previous_end, begin + 1)))
        if end == n_tokens:
            break
        previous_end, end = end, min(end + stride, n_tokens)
    return windows


def _token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """float64 ``-log softmax(logits)[target]`` per row of ``logits`` ``[T, V]``."""
    x = logits.astype(np.float64)
    peak = x.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(x - peak).sum(axis=1)) + peak[:, 0]
    return log_norm - x[np.arange(len(targets)), targets]


def _ppl(nll: float) -> float:
    return math.exp(nll) if nll < 700 else math.inf


def perplexity(logits_fn: LogitsFn, ids: np.ndarray, window: int, stride: int,
               progress: bool = False, label: str = "") -> dict[str, Any]:
    """Strided perplexity of ``ids`` under a model.

    Parameters
    ----------
    logits_fn
        The model: int64 ``[1, L]`` ids -> float ``[1, L, V]`` logits (``L <= window``).
    ids
        int ``[n]`` token ids, ``n >= 2``.
    window, stride
        See :func:`strided_windows`.
    progress
        Print the running perplexity to stderr about every tenth of the windows.
    label
        Names the model in the progress lines.

    Returns
    -------
    dict
        ``{"ppl", "nll" (mean nats per scored token), "tokens" (scored), "windows", "window",
        "stride"}``.

    Raises
    ------
    InputError
        Fewer than 2 ids, ids that are not 1-D integers, logits of the wrong shape, or an id the
        logits have no entry for.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InputError(f"token ids must be a 1-D integer array, got {ids.dtype}{list(ids.shape)}")
    windows = strided_windows(len(ids), window, stride)
    if not windows:
        raise InputError(f"the text has {len(ids)} token(s); perplexity needs at least 2")
    every = max(1, len(windows) // _PROGRESS_LINES)
    total, count = 0.0, 0
    for i, (begin, end, first) in enumerate(windows, start=1):
        logits = np.asarray(logits_fn(ids[None, begin:end].astype(np.int64)))
        length = end - begin
        if logits.ndim != 3 or logits.shape[:2] != (1, length):
            raise InputError(f"the model returned logits of shape {list(logits.shape)} for "
                             f"{length} tokens; expected [1, {length}, vocab]")
        targets = ids[first:end]
        if targets.max() >= logits.shape[2] or targets.min() < 0:
            raise InputError(f"token ids reach {int(ids.max())} but the model's logits cover "
                             f"{logits.shape[2]} tokens; give the tokenizer the model was "
                             "trained with")
        total += float(_token_nll(logits[0, first - begin - 1:length - 1], targets).sum())
        count += end - first
        if progress and (i % every == 0 or i == len(windows)):
            print(f"{label + ': ' if label else ''}window {i}/{len(windows)}  tokens {count}  "
                  f"ppl {_ppl(total / count):.4f}", file=sys.stderr, flush=True)
    nll = total / count
    return {"ppl": _ppl(nll), "nll": nll, "tokens": count, "windows": len(windows),
            "window": window, "stride": stride}


def logits_output(signature: ModelSignature) -> str:
    """The name of the logits output: ``logits``, else the first output."""
    names = [s.name for s in signature.outputs]
    return "logits" if "logits" in names else names[0]


def kv_pairs(signature: ModelSignature) -> dict[str, str]:
    """The model's KV cache: each past input (``past_key_values.<x>``) and its present output
    (``present.<x>``), as the signature pairs them.

    Raises
    ------
    OptionError
        The model has no such pairs, or a past input without its present output.
    """
    pairs = signature.kv_pairs()
    missing = [s.name for s in signature.inputs_of("past") if s.present is None]
    if not pairs or missing:
        raise OptionError("--chunk runs a window through the model's KV cache and needs inputs "
                          "past_key_values.<x> with outputs present.<x>"
                          + (f"; no present output for {', '.join(missing)}" if missing else
                             "; this model has none: give its KV-cache export or drop --chunk"))
    return pairs


def check_chunk(signature: ModelSignature, chunk: int | None) -> dict[str, str]:
    """:func:`kv_pairs` when ``chunk`` is given (empty when None).

    Raises
    ------
    OptionError
        ``chunk`` is not a positive integer, or the model has no KV cache to carry it.
    """
    if chunk is None:
        return {}
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise OptionError(f"--chunk must be a positive integer, got {chunk!r}")
    return kv_pairs(signature)


def model_logits_fn(signature: ModelSignature, run: RunFn, chunk: int | None = None
                    ) -> LogitsFn:
    """A ``logits_fn`` for :func:`perplexity` from a model's forward on named inputs.

    Parameters
    ----------
    signature
        The model's inputs and outputs (``Artifact.signature``).
    run
        The forward: ``OnnxRuntimeReference(model).run`` (the float model) or ``Artifact.run``.
    chunk
        None: one forward pass per window. N: the window goes through the model's KV cache
        (:func:`kv_pairs`) in pieces of N tokens, each piece's presents fed back as the next
        one's pasts; causal attention makes the logits those of one pass (up to float
        rounding), and the peak memory is that of N tokens.

    Returns
    -------
    LogitsFn
        Feeds the ids as :func:`ids_input` (in its dtype), an attention mask of ones over past
        and new tokens, position ids counting from the past length and past key/values (of
        length 0 first: :func:`~sail_compiler.inputs.generate_inputs` with ``past_len=0``), and
        returns the :func:`logits_output`, ``[1, L, V]``.
    """
    spec = ids_input(signature)
    output = logits_output(signature)
    pairs = check_chunk(signature, chunk)

    def logits_fn(ids: np.ndarray) -> np.ndarray:
        step = chunk or ids.shape[1]
        parts, past = [], {}
        for begin in range(0, ids.shape[1], step):
            piece = ids[:, begin:begin + step]
            feeds = generate_inputs(signature, InputPlan(batch=1, seq_len=piece.shape[1],
                                                         past_len=begin))
            feeds[spec.name] = piece.astype(spec.dtype)
            feeds.update(past)
            outputs = run(feeds)
            parts.append(outputs[output])
            past = {p: outputs[q] for p, q in pairs.items()}
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    return logits_fn


def check_model(signature: ModelSignature, ids: np.ndarray, window: int) -> None:
    """Check that a model can score ``ids`` in windows of ``window`` tokens.

    Raises
    ------
    OptionError
        The model fixes a batch other than 1, or a sequence length other than ``window``.
    InputError
        With a fixed sequence length, fewer tokens than it; ids outside the embedding table.
    """
    spec = ids_input(signature)
    batch, seq = spec.dims
    if isinstance(batch, int) and batch != 1:
        raise OptionError(f"the model fixes the batch at {batch} ({spec.describe()}); eval-ppl "
                          "scores one window at a time: compile it with batch 1 (--shape)")
    if isinstance(seq, int) and seq != window:
        raise OptionError(f"the model fixes the sequence length at {seq} ({spec.describe()}) but "
                          f"the window is {window}; use --window {seq} (and --stride <= {seq})")
    if isinstance(seq, int) and len(ids) < seq:
        raise InputError(f"the text has {len(ids)} tokens, fewer than the model's fixed sequence "
                         f"length {seq}; give a longer text (or a larger --max-tokens)")
    bound = spec.index_bound
    if bound is not None and (ids.max() >= bound or ids.min() < 0):
        raise InputError(f"token ids reach {int(ids.max())} but the model's embedding has {bound} "
                         "rows: the tokenizer does not match the model; give the tokenizer.json "
                         "the model was trained with")


def evaluate(model_path: str | Path, text_path: str | Path, tokenizer_path: str | Path,
             options: CompileOptions | None = None, window: int = 256, stride: int = 128,
             max_tokens: int | None = None, progress: bool = True,
             chars: int | None = None, chunk: int | None = None) -> dict[str, Any]:
    """Perplexity of the float model (onnxruntime) and of the compiled model on a text.

    Parameters
    ----------
    model_path
        The ``.onnx`` language model (external data beside it): token ids in, logits out.
    text_path, tokenizer_path, max_tokens, chars
        See :func:`load_tokens`.
    options
        How to compile (None: float, llvm); with ``options.quant`` the compiled model is
        quantized. ``options.emit`` must be None. ``options.num_threads`` also sets
        onnxruntime's threads.
    window, stride
        See :func:`strided_windows`.
    progress
        Report compilation and running perplexities on stderr.
    chunk
        Run each window through the KV cache in pieces of this many tokens (both models; see
        :func:`model_logits_fn`), for models whose one-pass window does not fit in memory.

    Returns
    -------
    dict
        ``{"model", "text", "chars", "tokenizer", "tokens" (in the text, after max_tokens),
        "first_ids" (up to 8: shows a leading ``<bos>``), "window", "stride", "warnings" (e.g.
        :func:`calibration_overlap`, also issued as ``UserWarning``), "float":
        {perplexity(...), "seconds", "runtime": "onnxruntime"},
        "compiled": {perplexity(...), "seconds", "compile_seconds", "target", "quant" (scheme
        name or None) and the manifest's "method", "act_bits", "act_group_size",
        "avg_bits" where recorded}}``.
    """
    from .artifact import Artifact
    from .driver import compile_model

    check_window(window, stride)
    options = options or CompileOptions()
    if options.emit is not None:
        raise OptionError("eval-ppl runs the compiled model and needs a full compile; "
                          f"drop --emit {options.emit}")
    ids = load_tokens(text_path, tokenizer_path, max_tokens, chars)
    notes = [w for w in [calibration_overlap(options.calib.text if options.calib else None,
                                             text_path, chars)] if w is not None]
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    model_path = Path(model_path)
    quant = options.scheme_name
    model = load_checked(model_path)  # fails early, before a compile, on a mismatched model
    bind_shapes(model, options.shapes)
    check_model(signature_of(model), ids, window)
    check_chunk(signature_of(model), chunk)
    del model

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="sail-eval-ppl-") as tmp:
        say(f"compiling {model_path} (target {options.target}, "
            f"{options.describe_quant()})")
        started = time.perf_counter()
        compile_model(model_path, Path(tmp) / "artifact", options)
        compile_seconds = time.perf_counter() - started
        artifact = Artifact(Path(tmp) / "artifact")
        windows = len(strided_windows(len(ids), window, stride))
        say(f"scoring {len(ids)} tokens in {windows} windows of {window} (stride {stride})")

        reference = OnnxRuntimeReference(model_path, threads=options.num_threads)
        started = time.perf_counter()
        float_result = perplexity(model_logits_fn(artifact.signature, reference.run, chunk),
                                  ids, window, stride, progress, "float (onnxruntime)")
        float_result.update(seconds=round(time.perf_counter() - started, 3),
                            runtime="onnxruntime")
        del reference

        started = time.perf_counter()
        compiled = perplexity(model_logits_fn(artifact.signature, artifact.run, chunk), ids,
                              window, stride, progress, f"compiled ({options.describe_quant()})")
        compiled.update(seconds=round(time.perf_counter() - started, 3),
                        compile_seconds=round(compile_seconds, 3), target=options.target,
                        quant=quant, description=options.describe_quant(),
                        **{k: artifact.manifest[k] for k in _MANIFEST_QUANT_FIELDS
                           if k in artifact.manifest})
    return {"model": str(model_path), "text": str(text_path), "chars": chars,
            "tokenizer": str(tokenizer_path), "tokens": len(ids),
            "first_ids": ids[:8].tolist(), "window": window, "stride": stride, "chunk": chunk,
            "warnings": notes, "float": float_result, "compiled": compiled}
