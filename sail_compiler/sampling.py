"""Token sampling: the options of ``sail generate`` and the sampler, in NumPy.

The c target's ``sail_generate`` runs the same sampler in C (``sail_sampler_*`` in
``targets/c/runtime/sail_generate.c``); this module is its definition and the sampler of the
Python token loop (llvm and pim-sim artifacts). Both follow llama.cpp's default order of the
stages and compute in float64:

1. **Repeat penalty** (``repeat_penalty`` != 1): every distinct id among the last
   ``repeat_last_n`` tokens of the context (prompt and generated) has its logit divided by the
   penalty when positive, multiplied by it otherwise.
2. **Greedy** (``temperature`` == 0, the default): the arg-max, the lowest id among equal logits.
   Otherwise the candidates are filtered in this order:
3. **Top-k** (``top_k`` > 0): the k largest logits; equal logits rank by ascending id.
4. **Top-p** (``top_p`` < 1): with ``e = exp(l - max l)`` over the candidates and ``E`` their
   sum taken in ascending id order, the shortest prefix of the candidates ranked as in top-k
   whose running sum of ``e`` (in rank order) reaches ``top_p * E``.
5. **Min-p** (``min_p`` > 0): the candidates whose probability is at least ``min_p`` times the
   largest one's, i.e. ``l >= max l + log(min_p)``.
6. **Temperature**: weights ``w = exp((l - max l) / temperature)`` over the candidates in
   ascending id order, ``W`` their running sum; one uniform draw ``u`` in [0, 1) picks the first
   candidate whose running sum exceeds ``u * W``.

The filters (3-5) use the probabilities at temperature 1, as llama.cpp does; the temperature
shapes only the final draw. NaN logits count as -inf and +inf as the largest double.

The generator is SplitMix64 (Steele, Lea and Flood, OOPSLA 2014) seeded with ``seed``: each
sampled token (temperature > 0) takes one 64-bit output ``z`` and ``u = (z >> 11) * 2^-53``.
The C sampler performs the same float64 operations in the same order, so a seed gives the same
ids on every target; the one source of difference is ``exp`` (NumPy's and the C library's may
differ in the last bit), which can only matter when a draw falls within rounding of a boundary.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from .errors import OptionError

MASK64 = (1 << 64) - 1
#: llama.cpp's defaults for the filters; they act only when the temperature is above 0.
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_LAST_N = 64
#: Bounds the C side enforces as well (``sail_generate``).
MAX_TEMPERATURE = 1e6
MAX_REPEAT_LAST_N = 4096


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How the next token is chosen from the logits; validated when built.

    Parameters
    ----------
    temperature
        0 (the default) is greedy; above 0 samples with this temperature, in [0, 1e6].
    top_k
        Keep the k most likely tokens (0: no limit), >= 0.
    top_p
        Keep the most likely tokens up to this cumulative probability, in (0, 1] (1: off).
    min_p
        Keep tokens at least this fraction as likely as the most likely one, in [0, 1) (0: off).
    repeat_penalty
        Divide positive logits of recent tokens by this, multiply negative ones, > 0 (1: off).
    repeat_last_n
        Tokens of context the penalty looks back over, 0..4096 (0: off).
    seed
        Seed of the generator, 0 <= seed < 2**64; None draws one (reported with the result).
    """

    temperature: float = 0.0
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    min_p: float = DEFAULT_MIN_P
    repeat_penalty: float = 1.0
    repeat_last_n: int = DEFAULT_REPEAT_LAST_N
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.temperature, int | float)
                and 0.0 <= self.temperature <= MAX_TEMPERATURE):
            problems.append(f"--temperature must lie in [0, {MAX_TEMPERATURE:g}] (0 is greedy), "
                            f"not {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"--top-k must be an integer >= 0 (0 keeps every token), not "
                            f"{self.top_k}")
        if not (isinstance(self.top_p, int | float) and 0.0 < self.top_p <= 1.0):
            problems.append(f"--top-p must lie in (0, 1] (1 turns it off), not {self.top_p}")
        if not (isinstance(self.min_p, int | float) and 0.0 <= self.min_p < 1.0):
            problems.append(f"--min-p must lie in [0, 1) (0 turns it off), not {self.min_p}")
        if not (isinstance(self.repeat_penalty, int | float) and 0.0 < self.repeat_penalty
                and math.isfinite(self.repeat_penalty)):
            problems.append(f"--repeat-penalty must be a finite number > 0 (1 turns it off), "
                            f"not {self.repeat_penalty}")
        if not (isinstance(self.repeat_last_n, int)
                and 0 <= self.repeat_last_n <= MAX_REPEAT_LAST_N):
            problems.append(f"--repeat-last-n must lie in [0, {MAX_REPEAT_LAST_N}], not "
                            f"{self.repeat_last_n}")
        if self.seed is not None and not (isinstance(self.seed, int)
                                          and 0 <= self.seed <= MASK64):
            problems.append(f"--seed must lie in [0, 2**64), not {self.seed}")
        if problems:
            raise OptionError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_seed(self) -> SamplingOptions:
        """These options with a seed: the given one, else one drawn from the OS."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=int.from_bytes(os.urandom(8), "little"))

    def to_json(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


class SplitMix64:
    """The generator of both samplers: ``next()`` returns the next 64-bit output."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """A double in [0, 1) from the top 53 bits of the next output."""
        return (self.next() >> 11) * 2.0**-53


def clean_logits(row: np.ndarray) -> np.ndarray:
    """float64 copy of one row of logits, NaN as -inf and +inf as the largest double."""
    logits = np.asarray(row, dtype=np.float64).copy()
    logits[np.isnan(logits)] = -np.inf
    logits[logits == np.inf] = np.finfo(np.float64).max
    return logits


def apply_repeat_penalty(logits: np.ndarray, history: list[int] | np.ndarray,
                         options: SamplingOptions) -> None:
    """Stage 1, in place: penalize the distinct ids of the last ``repeat_last_n`` tokens."""
    if options.repeat_penalty == 1.0 or options.repeat_last_n == 0 or len(history) == 0:
        return
    window = np.asarray(history[-options.repeat_last_n:], dtype=np.int64)
    ids = np.unique(window[(window >= 0) & (window < logits.size)])
    values = logits[ids]
    logits[ids] = np.where(values > 0, values / options.repeat_penalty,
                           values * options.repeat_penalty)


def _ranked(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``ids`` ranked by descending logit, ascending id among equal logits."""
    return ids[np.lexsort((ids, -logits[ids]))]


def candidates(logits: np.ndarray, options: SamplingOptions) -> np.ndarray:
    """Stages 3-5: the ids (ascending) the draw chooses among; ``logits`` already penalized.

    Parameters
    ----------
    logits
        float64 [vocab] from :func:`clean_logits` (and :func:`apply_repeat_penalty`).
    """
    vocab = logits.size
    top = float(logits.max())
    if top == -np.inf:
        return np.zeros(1, dtype=np.int64)  # no finite logit: the first id, as greedy picks
    ids = np.arange(vocab, dtype=np.int64)
    ranked = None
    if 0 < options.top_k < vocab:
        # the k-th largest value; all larger ones are in, equal ones fill up by ascending id
        kth = np.partition(logits, vocab - options.top_k)[vocab - options.top_k]
        above = ids[logits > kth]
        equal = ids[logits == kth][:options.top_k - above.size]
        ranked = _ranked(logits, np.concatenate([above, equal]))
        ids = np.sort(ranked)
    if options.top_p < 1.0:
        if ranked is None:
            ranked = _ranked(logits, ids)
        total = np.cumsum(np.exp(logits[ids] - top))[-1]
        running = np.cumsum(np.exp(logits[ranked] - top))
        reached = np.flatnonzero(running >= options.top_p * total)
        keep = int(reached[0]) + 1 if reached.size else ranked.size
        ids = np.sort(ranked[:keep])
    if options.min_p > 0.0:
        ids = ids[logits[ids] >= top + math.log(options.min_p)]
    return ids


def sample(row: np.ndarray, history: list[int] | np.ndarray, options: SamplingOptions,
           generator: SplitMix64 | None) -> int:
    """The next token id from one row of logits.

    Parameters
    ----------
    row
        Logits [vocab] of the last position (any float dtype).
    history
        The context so far (prompt and generated ids), for the repeat penalty.
    options
        The sampling options.
    generator
        The seeded generator (one draw per call when the temperature is above 0); None only
        for greedy options.
    """
    logits = clean_logits(row)
    apply_repeat_penalty(logits, history, options)
    if options.greedy:
        return int(np.argmax(logits))
    assert generator is not None, "sampling at a temperature needs a generator"
    ids = candidates(logits, options)
    top = float(logits.max())
    draw = generator.uniform()
    if top == -np.inf:
        return int(ids[0])
    running = np.cumsum(np.exp((logits[ids] - top) / options.temperature))
    pick = int(np.searchsorted(running, draw * running[-1], side="right"))
    return int(ids[min(pick, ids.size - 1)])
