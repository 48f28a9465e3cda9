"""Model inputs: generated, loaded from ``.npz`` files or tokenized from text.

Generated inputs are seeded and valid for language models: token ids inside the vocabulary (the
rows of the embedding table they index, recorded in the signature), attention masks of ones whose
length is past + seq, position ids counting from past, past key/values of a consistent length;
other floats standard normal. Symbolic dims take values by the role of their input (ids:
batch x seq; past tensors: batch x ... x past x ...; masks: batch x (past + seq)), then by their
name (``batch``, ``past``, ``seq``/``len``, ``total``), else 1; ``InputPlan.dims`` overrides any.

The role of an input (token ids, attention mask, position ids, past key/values) is the one the
signature records (:attr:`~sail_compiler.frontend.signature.TensorSpec.role`, decided at import).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .errors import InputError, OptionError
from .frontend.signature import ModelSignature, TensorSpec


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """How to generate inputs: dim values by role plus explicit dims per symbol."""

    batch: int = 1
    seq_len: int = 8
    past_len: int = 8
    dims: dict[str, int] = dataclasses.field(default_factory=dict)
    seed: int = 0


def _by_name(dim: str, plan: InputPlan, total: int) -> int:
    """A value for a symbolic dim no input role fixed, from its name (1 if unknown)."""
    low = dim.lower()
    if "batch" in low:
        return plan.batch
    if "total" in low or "+" in low or "plus" in low:
        return total
    if "past" in low or "cache" in low:
        return plan.past_len
    if "seq" in low or "len" in low or "token" in low:
        return plan.seq_len
    return 1


def _role_dims(signature: ModelSignature, plan: InputPlan) -> dict[str, int]:
    """Assign a value to every symbolic dim of the inputs."""
    values: dict[str, int] = {}
    ids = [s for s in signature.inputs_of("ids") if len(s.dims) == 2]
    past = [s for s in signature.inputs_of("past") if len(s.dims) >= 3]
    for spec in ids:
        for dim, value in zip(spec.dims, (plan.batch, plan.seq_len), strict=True):
            if isinstance(dim, str):
                values.setdefault(dim, value)
    for spec in past:
        if isinstance(spec.dims[0], str):
            values.setdefault(spec.dims[0], plan.batch)
        if isinstance(spec.dims[-2], str):
            values.setdefault(spec.dims[-2], plan.past_len)
    total = plan.seq_len + (plan.past_len if past else 0)
    for spec in signature.inputs:
        if spec.role in ("mask", "positions") and len(spec.dims) == 2:
            if isinstance(spec.dims[0], str):
                values.setdefault(spec.dims[0], plan.batch)
            if isinstance(spec.dims[1], str):
                values.setdefault(spec.dims[1], total if spec.role == "mask" else plan.seq_len)
    for name in signature.symbolic_dims():
        values.setdefault(name, _by_name(name, plan, total))
    values.update(plan.dims)
    return values


def _generate(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator,
              bound: int | None, past_len: int) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu":
        if spec.role == "mask":
            return np.ones(shape, dtype)
        if spec.role == "positions":
            return np.broadcast_to(np.arange(shape[-1]) + past_len, shape).astype(dtype)
        return rng.integers(0, bound if bound is not None else 100, shape).astype(dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype) if spec.role == "mask" else rng.random(shape) < 0.5
    return rng.standard_normal(shape).astype(dtype)


def generate_inputs(signature: ModelSignature, plan: InputPlan) -> dict[str, np.ndarray]:
    """Seeded inputs valid for a model of ``signature``; see the module docstring."""
    dims = _role_dims(signature, plan)
    rng = np.random.default_rng(plan.seed)
    past_len = plan.past_len if signature.inputs_of("past") else 0
    inputs = {}
    for spec in signature.inputs:
        shape = tuple(d if isinstance(d, int) else dims[d] for d in spec.dims)
        inputs[spec.name] = _generate(spec, shape, rng, spec.index_bound, past_len)
    return inputs


def load_inputs(path: str | Path, signature: ModelSignature) -> dict[str, np.ndarray]:
    """Inputs from an ``.npz`` whose keys are the model's input names."""
    try:
        with np.load(path) as data:
            inputs = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read inputs from {path}: {err}; give an .npz written by "
                         "numpy.savez with one array per model input") from err
    expected = [s.name for s in signature.inputs]
    missing = [n for n in expected if n not in inputs]
    if missing:
        raise InputError(f"{path} lacks input(s) {', '.join(missing)}; its keys: "
                         f"{', '.join(inputs) or 'none'}; the model takes {', '.join(expected)}")
    return inputs


def load_tokens(text_path: str | Path, tokenizer_path: str | Path,
                max_tokens: int | None = None, chars: int | None = None) -> np.ndarray:
    """Tokenize a UTF-8 text file (or its first ``chars`` characters) with a Hugging Face
    ``tokenizer.json``.

    Parameters
    ----------
    text_path
        The text to score.
    tokenizer_path
        A ``tokenizer.json`` of the ``tokenizers`` library (what Hugging Face models ship). The
        tokenizer's own post-processing applies (e.g. a leading BOS token for Llama tokenizers).
    max_tokens
        Keep only the first ``max_tokens`` ids (None: all).
    chars
        Tokenize only the first ``chars`` characters (Unicode code points) of the text (None:
        all of it).

    Returns
    -------
    np.ndarray
        int64 ``[n]`` token ids, ``n >= 1``.

    Raises
    ------
    InputError
        The text or tokenizer is missing or unreadable, the tokenizer cannot be parsed, or the
        text has no tokens.
    OptionError
        ``max_tokens < 2`` or ``chars < 1``.
    """
    from tokenizers import Tokenizer

    if max_tokens is not None and max_tokens < 2:
        raise OptionError(f"--max-tokens must be at least 2 (a token is scored from the ones "
                          f"before it), got {max_tokens}")
    text = read_text(text_path, chars)
    text_path, tokenizer_path = Path(text_path), Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise InputError(f"tokenizer {tokenizer_path} does not exist or is not a file; give the "
                         "tokenizer.json the model was trained with")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as err:  # tokenizers raises plain Exception for unparsable files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot parse the tokenizer {tokenizer_path}: {first}; give a "
                         "tokenizer.json in the Hugging Face tokenizers format") from err
    ids = np.asarray(tokenizer.encode(text).ids, dtype=np.int64)
    if ids.size == 0:
        raise InputError(f"the text {text_path} is empty (no tokens); give a text to score")
    return ids if max_tokens is None else ids[:max_tokens]


def read_text(text_path: str | Path, chars: int | None = None) -> str:
    """The UTF-8 text of a file, or its first ``chars`` characters.

    Raises
    ------
    InputError
        The file is missing or not UTF-8.
    OptionError
        ``chars < 1``.
    """
    if chars is not None and (isinstance(chars, bool) or not isinstance(chars, int)
                              or chars < 1):
        raise OptionError(f"--chars must be a positive integer, got {chars!r}")
    text_path = Path(text_path)
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the text {text_path}: {err}; give a UTF-8 text "
                         "file") from err
    return text if chars is None else text[:chars]


def ids_input(signature: ModelSignature) -> TensorSpec:
    """The token-ids input (role ``ids``: ``input_ids`` or else the only input named like ids).

    Raises
    ------
    OptionError
        No such input, several candidates, or inputs with no role eval-ppl can fill (it fills
        ids, attention masks, position ids and past key/values).
    """
    inputs = signature.inputs
    spec = signature.input_of("ids")
    if spec is None:
        raise OptionError(f"cannot tell the token-ids input among: "
                          f"{', '.join(s.describe() for s in inputs)}; eval-ppl expects one "
                          "input named input_ids (or one name containing 'ids')")
    other = [s.name for s in inputs if s.role == "other"]
    if other:
        raise OptionError(f"eval-ppl cannot fill input(s) {', '.join(other)}: it feeds token ids "
                          f"({spec.name}), attention masks, position ids and past key/values")
    if len(spec.dims) != 2 or np.dtype(spec.dtype).kind not in "iu":
        raise OptionError(f"token ids input {spec.describe()} is not an integer [batch, seq] "
                          "tensor")
    return spec
