"""The samplers of ``sail generate``: the NumPy one (:mod:`sail_compiler.sampling`) and the C
one inside ``sail_generate`` (compiled here on its own with -DSAIL_GENERATE_SAMPLER_ONLY), on
fixed logits, against an independent NumPy reference written from the definitions:

* the masks of top-k, top-p and min-p are exactly the reference's;
* sampled frequencies over many seeds lie within a binomial bound of the reference's
  probabilities (temperature applied after the filters);
* the C and NumPy samplers pick the same id for the same logits and seed;
* the generator is SplitMix64 (its published test vector); bad options name their range.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sail_compiler.errors import OptionError
from sail_compiler.sampling import SamplingOptions, SplitMix64, candidates, clean_logits, sample
from sail_compiler.targets.c.target import RUNTIME_DIR

VOCAB = 300
HARNESS = r"""
#include "sail_generate.c"
#include <stdio.h>
/* harness LOGITS.f32 HISTORY.i64 T K P MINP PENALTY LAST_N SEED N MODE
 * MODE seeds: the first id of seeds SEED..SEED+N-1; stream: N ids of one generator;
 * candidates: the candidate ids (temperature > 0). */
static void *slurp(const char *path, long *bytes) {
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  *bytes = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *data = malloc(*bytes ? *bytes : 1);
  if (fread(data, 1, *bytes, f) != (size_t)*bytes) return NULL;
  fclose(f);
  return data;
}
int main(int argc, char **argv) {
  if (argc != 13) return 2;
  long lb, hb;
  float *logits = slurp(argv[1], &lb);
  int64_t *history = slurp(argv[2], &hb);
  sail_sampling opt = {strtod(argv[3], NULL), strtoll(argv[4], NULL, 10), strtod(argv[5], NULL),
                       strtod(argv[6], NULL), strtod(argv[7], NULL), strtoll(argv[8], NULL, 10),
                       strtoull(argv[9], NULL, 10)};
  const long n = strtol(argv[10], NULL, 10);
  const int64_t vocab = lb / 4, n_history = hb / 8;
  sail_sampler s;
  if (sail_sampler_init(&s, vocab, &opt) != 0) return 3;
  if (strcmp(argv[11], "candidates") == 0) {
    const double top = sail_sampler_prepare(&s, logits, history, n_history);
    const int64_t m = sail_sampler_candidates(&s, top);
    for (int64_t i = 0; i < m; ++i) printf("%lld\n", (long long)s.ids[i]);
  } else if (strcmp(argv[11], "stream") == 0) {
    for (long i = 0; i < n; ++i)
      printf("%lld\n", (long long)sail_sampler_next(&s, logits, history, n_history));
  } else {
    for (long i = 0; i < n; ++i) {
      s.state = opt.seed + (uint64_t)i;
      printf("%lld\n", (long long)sail_sampler_next(&s, logits, history, n_history));
    }
  }
  (void)argv[12];
  sail_sampler_free(&s);
  free(logits);
  free(history);
  return 0;
}
"""


@pytest.fixture(scope="module")
def c_sampler(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``run(logits, history, options, n, mode) -> list[int]`` with the C sampler."""
    if shutil.which("cc") is None:
        pytest.skip("the C sampler builds with cc")
    tmp = tmp_path_factory.mktemp("sampler")
    (tmp / "harness.c").write_text(HARNESS)
    binary = tmp / "harness"
    # under the address and undefined-behaviour sanitizers: every case below runs the sampler
    subprocess.run(["cc", "-std=c11", "-O1", "-g", "-ffp-contract=off", "-Wall", "-Wextra",
                    "-Werror", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-DSAIL_GENERATE_SAMPLER_ONLY", f"-I{RUNTIME_DIR}", str(tmp / "harness.c"),
                    "-o", str(binary), "-lm"], check=True)

    def run(logits: np.ndarray, history: list[int], options: SamplingOptions, n: int,
            mode: str) -> list[int]:
        (tmp / "logits.f32").write_bytes(np.asarray(logits, np.float32).tobytes())
        (tmp / "history.i64").write_bytes(np.asarray(history, np.int64).tobytes())
        proc = subprocess.run(
            [str(binary), str(tmp / "logits.f32"), str(tmp / "history.i64"),
             repr(float(options.temperature)), str(options.top_k), repr(float(options.top_p)),
             repr(float(options.min_p)), repr(float(options.repeat_penalty)),
             str(options.repeat_last_n), str(options.seed or 0), str(n), mode, "-"],
            capture_output=True, text=True, check=True)
        return [int(v) for v in proc.stdout.split()]

    return run


def _logits(seed: int = 0, vocab: int = VOCAB, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(vocab) * scale).astype(np.float32)


# -- the independent reference, from the definitions ------------------------------------------

def reference_penalized(row: np.ndarray, history: list[int], penalty: float,
                        last_n: int) -> np.ndarray:
    logits = row.astype(np.float64)
    for token in set(history[-last_n:] if last_n else []):
        logits[token] = logits[token] / penalty if logits[token] > 0 else logits[token] * penalty
    return logits


def reference_mask(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> set[int]:
    """The kept ids: a full sort by (-logit, id), softmax probabilities at temperature 1."""
    order = sorted(range(logits.size), key=lambda i: (-logits[i], i))
    if 0 < top_k < logits.size:
        order = order[:top_k]
    if top_p < 1.0:
        values = np.array([logits[i] for i in order])
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        cumulative = np.cumsum(probs)
        keep = int(np.searchsorted(cumulative, top_p)) + 1  # first prefix reaching top_p
        order = order[:keep]
    if min_p > 0.0:
        best = max(logits[i] for i in order)
        order = [i for i in order if math.exp(logits[i] - best) >= min_p]
    return set(order)


def reference_probabilities(logits: np.ndarray, kept: set[int], temperature: float
                            ) -> np.ndarray:
    ids = np.array(sorted(kept))
    weights = np.exp((logits[ids] - logits[ids].max()) / temperature)
    probs = np.zeros(logits.size)
    probs[ids] = weights / weights.sum()
    return probs


MASK_CASES = [
    dict(top_k=1, top_p=1.0, min_p=0.0),
    dict(top_k=7, top_p=1.0, min_p=0.0),
    dict(top_k=0, top_p=0.5, min_p=0.0),
    dict(top_k=0, top_p=0.9, min_p=0.0),
    dict(top_k=40, top_p=0.95, min_p=0.05),  # llama.cpp's defaults
    dict(top_k=0, top_p=1.0, min_p=0.1),
    dict(top_k=50, top_p=0.8, min_p=0.02),
    dict(top_k=0, top_p=1.0, min_p=0.0),
]


@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_equal_the_reference(case: dict, seed: int, c_sampler) -> None:  # type: ignore
    row = _logits(seed)
    options = SamplingOptions(temperature=1.0, **case)
    expected = reference_mask(row.astype(np.float64), **case)
    got = candidates(clean_logits(row), options)
    assert set(got.tolist()) == expected and np.all(np.diff(got) > 0)
    assert c_sampler(row, [], options, 0, "candidates") == sorted(expected)


def test_top_k_ties_rank_by_id(c_sampler) -> None:  # type: ignore[no-untyped-def]
    row = np.zeros(20, np.float32)
    row[[3, 9, 15]] = 5.0
    row[[4, 11, 17]] = 2.0  # the third rank: ids 4 and 11 enter, 17 does not
    options = SamplingOptions(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0)
    assert candidates(clean_logits(row), options).tolist() == [3, 4, 9, 11, 15]
    assert c_sampler(row, [], options, 0, "candidates") == [3, 4, 9, 11, 15]


def test_top_p_over_the_whole_vocabulary_widens_its_window(c_sampler) -> None:  # type: ignore
    """Without top-k the C sampler ranks only the logits within 16 of the top and widens the
    window until the running sum reaches top-p: a top-p this close to 1 needs more."""
    rng = np.random.default_rng(5)
    row = (-0.05 * rng.permutation(4000)).astype(np.float32)  # 320 tokens per unit of logit
    for top_p in (0.5, 1.0 - 1e-7, 1.0 - 1e-9):
        options = SamplingOptions(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0)
        expected = reference_mask(row.astype(np.float64), 0, top_p, 0.0)
        assert set(candidates(clean_logits(row), options).tolist()) == expected
        assert c_sampler(row, [], options, 0, "candidates") == sorted(expected)
    assert len(expected) > 16 / 0.05  # beyond the first window


@pytest.mark.parametrize("temperature,case", [(1.0, MASK_CASES[4]), (0.7, MASK_CASES[3]),
                                              (1.5, MASK_CASES[6]), (1.0, MASK_CASES[7])])
def test_frequencies_within_a_binomial_bound(temperature: float, case: dict,
                                             c_sampler) -> None:  # type: ignore
    """Draws over many seeds: every id's count lies within 5 standard deviations of the
    reference's n * p (with p = 0 never drawn), for the C sampler and the NumPy one."""
    row = _logits(3, vocab=120, scale=1.0)
    options = SamplingOptions(temperature=temperature, seed=1000, **case)
    probs = reference_probabilities(row.astype(np.float64),
                                    reference_mask(row.astype(np.float64), **case), temperature)
    n = 6000
    c_ids = c_sampler(row, [], options, n, "seeds")
    numpy_ids = [sample(row, [], options, SplitMix64(1000 + i)) for i in range(2000)]
    assert c_ids[:2000] == numpy_ids  # the same id for the same seed
    counts = np.bincount(c_ids, minlength=row.size)
    bound = 5 * np.sqrt(n * probs * (1 - probs)) + 1
    assert np.all(np.abs(counts - n * probs) <= bound), np.flatnonzero(
        np.abs(counts - n * probs) > bound)
    assert counts[probs == 0].sum() == 0


def test_one_generator_stream_across_tokens(c_sampler) -> None:  # type: ignore[no-untyped-def]
    """A generation takes one draw per token from one generator: the C stream equals the
    NumPy one, and differs for another seed."""
    row = _logits(4)
    options = SamplingOptions(temperature=0.9, top_k=0, top_p=0.97, min_p=0.0, seed=77)
    generator = SplitMix64(77)
    expected = [sample(row, [], options, generator) for _ in range(300)]
    assert c_sampler(row, [], options, 300, "stream") == expected
    other = SamplingOptions(temperature=0.9, top_k=0, top_p=0.97, min_p=0.0, seed=78)
    assert c_sampler(row, [], other, 300, "stream") != expected


def test_repeat_penalty_and_greedy(c_sampler) -> None:  # type: ignore[no-untyped-def]
    row = _logits(6)
    history = [int(np.argmax(row)), 5, 5, 17, int(np.argsort(row)[0])]  # top, repeats, bottom
    for penalty, last_n in ((1.5, 64), (1.5, 2), (0.5, 64)):
        options = SamplingOptions(repeat_penalty=penalty, repeat_last_n=last_n)
        penalized = reference_penalized(row, history, penalty, last_n)
        greedy = int(np.argmax(penalized))
        assert sample(row, history, options, None) == greedy
        assert c_sampler(row, history, options, 1, "seeds") == [greedy]
        masked = SamplingOptions(temperature=1.0, repeat_penalty=penalty, repeat_last_n=last_n)
        expected = reference_mask(penalized, 40, 0.95, 0.05)
        assert c_sampler(row, history, masked, 0, "candidates") == sorted(expected)
    assert sample(row, history, SamplingOptions(repeat_penalty=1.5), None) != int(np.argmax(row))


def test_greedy_ties_and_non_finite_logits(c_sampler) -> None:  # type: ignore[no-untyped-def]
    row = np.array([1.0, 3.0, np.nan, 3.0, -np.inf], np.float32)
    assert sample(row, [], SamplingOptions(), None) == 1
    assert c_sampler(row, [], SamplingOptions(), 1, "seeds") == [1]
    hot = np.array([0.0, np.inf, 2.0, np.nan], np.float32)
    options = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3)
    assert sample(hot, [], options, SplitMix64(3)) == 1
    assert c_sampler(hot, [], options, 20, "seeds") == [1] * 20
    dead = np.full(4, np.nan, np.float32)
    assert c_sampler(dead, [], options, 3, "seeds") == [0, 0, 0]
    assert sample(dead, [], options, SplitMix64(0)) == 0


def test_splitmix64_test_vector() -> None:
    generator = SplitMix64(1234567)
    assert [generator.next() for _ in range(5)] == [
        6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
        16408922859458223821]
    assert 0.0 <= SplitMix64(0).uniform() < 1.0


@pytest.mark.parametrize("field,value,message", [
    ("temperature", -0.1, r"--temperature must lie in \[0, 1e\+06\]"),
    ("temperature", float("nan"), r"--temperature must lie in"),
    ("top_k", -1, r"--top-k must be an integer >= 0"),
    ("top_p", 0.0, r"--top-p must lie in \(0, 1\]"),
    ("top_p", 1.5, r"--top-p must lie in \(0, 1\]"),
    ("min_p", 1.0, r"--min-p must lie in \[0, 1\)"),
    ("repeat_penalty", 0.0, r"--repeat-penalty must be a finite number > 0"),
    ("repeat_last_n", 5000, r"--repeat-last-n must lie in \[0, 4096\]"),
    ("seed", -1, r"--seed must lie in \[0, 2\*\*64\)"),
])
def test_bad_options_name_the_option_and_range(field: str, value: float, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        SamplingOptions(**{field: value})


def test_runtime_source_is_where_the_harness_looks() -> None:
    assert (Path(RUNTIME_DIR) / "sail_generate.c").is_file()
