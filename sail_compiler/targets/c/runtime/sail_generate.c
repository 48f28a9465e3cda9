/*
 * generate.c: sail_generate, token generation with a compiled decoder that has a KV cache.
 *
 *   sail_generate WEIGHTS.bin --prompt-ids 1,2,3 [-n 64] [--threads T] [--json] [--stream]
 *       [--temperature 0] [--top-k 40] [--top-p 0.95] [--min-p 0.05] [--repeat-penalty 1]
 *       [--repeat-last-n 64] [--seed S] [--eos-ids 1,106] [--repeat R] [--ctx N] [--copy-kv]
 *       [--kv-f16] [--profile]
 *
 * The model must have the inputs input_ids int64[batch, seq], attention_mask int64[batch,
 * past + seq] (optionally position_ids int64[batch, seq]) and past_key_values.<name> float32
 * [batch, ..., past, ...], and the outputs logits float32[batch, seq, vocab] (or [batch, 1,
 * vocab]: the last position's only, `sail compile --logits last`) and present.<name> (the new
 * cache of past_key_values.<name>, one position longer per token). Inputs are found by the
 * roles model.c's io specs carry (the compiler decided them at import), not by their names.
 *
 * It runs the prompt in one call (prefill, past = 0), picks the next token from the last
 * position's logits (the sampler below; greedy arg-max at --temperature 0, the default), and
 * feeds each new token back with the presents as the pasts (decode steps), until -n tokens are
 * generated or a token of --eos-ids is (it is the last id reported). --stream prints each id on
 * its own line as soon as it is chosen; a line on standard input then stops the loop after the
 * current token (what `sail generate --stop STRING` uses). --repeat R runs the whole generation
 * R times (the same ids each time) and reports each run's timings (what `sail bench` uses).
 *
 * The KV cache stays in place (sail_model_run_cached): one buffer per present with room for
 * --ctx positions (default: the prompt and the new tokens, what this generation needs), to
 * which each step appends its new keys and values; attention reads them there. A prompt and -n
 * that need more than --ctx positions are refused before anything runs. Models whose cache
 * cannot stay in place (a present read by more than the attention), and --copy-kv, feed the
 * presents back as the next step's pasts instead (the whole cache copied every step).
 * --kv-f16 stores the cache in place as float16 (sail_model_cache_create_typed: half the memory
 * and the attention's reads; each step's keys and values are rounded to the nearest half, so
 * the logits differ from float32's); with --copy-kv, or a model whose cache cannot stay in
 * place, it is an error (exit status 2), never a silent float32 cache.
 * --profile prints to standard error the time of every kernel in the first run's prefill, then
 * over its decode steps.
 *
 * Output: the generated ids on one line (with --stream: one per line as they come), then the
 * prefill time and the decode speed; --json prints one JSON object instead (after the streamed
 * ids):
 *   {"prompt_ids": [...], "ids": [...], "stop_reason": "length" | "eos" | "stop",
 *    "seed": S, "sampling": {...}, "threads": T, "prefill_tokens": P, "prefill_seconds": s,
 *    "decode_steps": n - 1, "decode_seconds": s, "decode_tokens_per_second": r,
 *    "kv_cache": "in place" | "copied", "kv_dtype": "float32" | "float16", "ctx": C,
 *    "runs": [{"prefill_seconds": s, "decode_steps": k, "decode_seconds": s}, ...]}
 * (the top-level timings are the first run's). Exit status: 0 success, 1 the weight file failed
 * to load, 2 bad arguments or a model that is not such a decoder, 3 the model failed to run.
 *
 * The sampler (sail_sampler_*) does not depend on the model: compiled with
 * -DSAIL_GENERATE_SAMPLER_ONLY this file holds only the sampler, which tests run on fixed logits
 * against sail_compiler/sampling.py, its definition in NumPy.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* The sampler: llama.cpp's order of stages, in float64 (sail_compiler/sampling.py defines it).
 *
 *   1. repeat penalty over the distinct ids of the last repeat_last_n tokens of the context;
 *   2. temperature 0: the arg-max (lowest id among equal logits); otherwise
 *   3. top-k: the k largest logits (equal ones rank by ascending id);
 *   4. top-p: e = exp(l - max), E = their sum in ascending id order; the shortest prefix in rank
 *      order whose running sum of e reaches top_p * E;
 *   5. min-p: l >= max + log(min_p);
 *   6. w = exp((l - max) / temperature) in ascending id order; u = one SplitMix64 draw in
 *      [0, 1); the first candidate whose running sum of w exceeds u * (the sum of all w).
 * NaN logits count as -inf, +inf as DBL_MAX. */

typedef struct sail_sampling {
  double temperature;     /* 0: greedy */
  int64_t top_k;          /* 0: off */
  double top_p;           /* 1: off */
  double min_p;           /* 0: off */
  double repeat_penalty;  /* 1: off */
  int64_t repeat_last_n;  /* 0: off */
  uint64_t seed;
} sail_sampling;

typedef struct sail_ranked {
  double logit;
  int64_t id;
} sail_ranked;

typedef struct sail_sampler {
  sail_sampling opt;
  int64_t vocab;
  uint64_t state;       /* SplitMix64 */
  double *logits;       /* [vocab]: the cleaned, penalized logits of the current row */
  double *scratch;      /* [vocab]: heap of top-k, weights of the draw */
  int64_t *ids;         /* [vocab]: the candidates, ascending */
  sail_ranked *ranked;  /* [vocab]: candidates in rank order */
  unsigned char *seen;  /* [vocab]: marks of the repeat penalty (all 0 between calls) */
} sail_sampler;

static uint64_t sail_splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double sail_uniform(uint64_t *state) {
  return (double)(sail_splitmix64(state) >> 11) * 0x1.0p-53;
}

static void sail_sampler_free(sail_sampler *s) {
  free(s->logits);
  free(s->scratch);
  free(s->ids);
  free(s->ranked);
  free(s->seen);
  memset(s, 0, sizeof *s);
}

/* 0, or -1 out of memory (nothing allocated then). */
static int sail_sampler_init(sail_sampler *s, int64_t vocab, const sail_sampling *opt) {
  memset(s, 0, sizeof *s);
  if (vocab < 1 || (uint64_t)vocab > SIZE_MAX / sizeof(sail_ranked))
    return -1;
  s->opt = *opt;
  s->vocab = vocab;
  s->state = opt->seed;
  const size_t n = (size_t)vocab;
  s->logits = malloc(n * sizeof *s->logits);
  s->scratch = malloc(n * sizeof *s->scratch);
  s->ids = malloc(n * sizeof *s->ids);
  s->ranked = malloc(n * sizeof *s->ranked);
  s->seen = calloc(n, 1);
  if (!s->logits || !s->scratch || !s->ids || !s->ranked || !s->seen) {
    sail_sampler_free(s);
    return -1;
  }
  return 0;
}

/* Rank order: descending logit, ascending id among equal logits (no NaN after cleaning). */
static int sail_rank_cmp(const void *a, const void *b) {
  const sail_ranked *x = a, *y = b;
  if (x->logit != y->logit)
    return x->logit > y->logit ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

static int sail_id_cmp(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Stages 1 and the cleaning: s->logits from row; returns the largest logit. */
static double sail_sampler_prepare(sail_sampler *s, const float *row, const int64_t *history,
                                   int64_t n_history) {
  double *l = s->logits;
  for (int64_t v = 0; v < s->vocab; ++v) {
    const double x = (double)row[v];
    l[v] = isnan(x) ? -INFINITY : x == INFINITY ? DBL_MAX : x;
  }
  const double pen = s->opt.repeat_penalty;
  if (pen != 1.0 && s->opt.repeat_last_n > 0 && n_history > 0) {
    const int64_t n = n_history < s->opt.repeat_last_n ? n_history : s->opt.repeat_last_n;
    const int64_t *window = history + (n_history - n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = window[i];
      if (id < 0 || id >= s->vocab || s->seen[id])
        continue;
      s->seen[id] = 1;
      l[id] = l[id] > 0 ? l[id] / pen : l[id] * pen;
    }
    for (int64_t i = 0; i < n; ++i)
      if (window[i] >= 0 && window[i] < s->vocab)
        s->seen[window[i]] = 0;
  }
  double top = l[0];
  for (int64_t v = 1; v < s->vocab; ++v)
    if (l[v] > top)
      top = l[v];
  return top;
}

/* The k-th largest of the logits (1 <= k < vocab): a min-heap of the k largest in scratch. */
static double sail_kth_largest(sail_sampler *s, int64_t k) {
  double *heap = s->scratch;
  for (int64_t v = 0; v < s->vocab; ++v) {
    const double x = s->logits[v];
    int64_t i;
    if (v < k) { /* sift up */
      i = v;
      while (i > 0 && heap[(i - 1) / 2] > x) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
      }
      heap[i] = x;
    } else if (x > heap[0]) { /* replace the root, sift down */
      i = 0;
      for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= k)
          break;
        if (c + 1 < k && heap[c + 1] < heap[c])
          ++c;
        if (heap[c] >= x)
          break;
        heap[i] = heap[c];
        i = c;
      }
      heap[i] = x;
    }
  }
  return heap[0];
}

/* Stages 3-5: the candidates into s->ids (ascending); returns their count (>= 1). */
static int64_t sail_sampler_candidates(sail_sampler *s, double top) {
  const double *l = s->logits;
  const int64_t vocab = s->vocab;
  int64_t n = vocab, n_ranked = 0; /* n_ranked > 0: s->ranked holds the n candidates ranked */
  if (top == -INFINITY) { /* no finite logit: the first id, as greedy picks */
    s->ids[0] = 0;
    return 1;
  }
  for (int64_t v = 0; v < vocab; ++v)
    s->ids[v] = v;
  if (s->opt.top_k > 0 && s->opt.top_k < vocab) {
    const int64_t k = s->opt.top_k;
    const double kth = sail_kth_largest(s, k);
    int64_t above = 0;
    for (int64_t v = 0; v < vocab; ++v)
      above += l[v] > kth;
    int64_t equal = k - above;
    n = 0;
    for (int64_t v = 0; v < vocab; ++v)
      if (l[v] > kth || (l[v] == kth && equal-- > 0))
        s->ids[n++] = v;
    for (int64_t i = 0; i < n; ++i)
      s->ranked[i] = (sail_ranked){l[s->ids[i]], s->ids[i]};
    qsort(s->ranked, (size_t)n, sizeof *s->ranked, sail_rank_cmp);
    n_ranked = n;
  }
  if (s->opt.top_p < 1.0) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i)
      total += exp(l[s->ids[i]] - top);
    const double target = s->opt.top_p * total;
    int64_t keep = 0;
    if (n_ranked > 0) {
      double running = 0.0;
      for (keep = 0; keep < n_ranked;) {
        running += exp(s->ranked[keep++].logit - top);
        if (running >= target)
          break;
      }
    } else {
      /* All ids are candidates: rank only those within `spread` of the top, widening the
       * spread until their running sum reaches the target. Every id left out has a smaller
       * logit than every id ranked, so the ranked ones are the prefix of the full ranking. */
      for (double spread = 16.0;; spread *= 4.0) {
        const double floor = top - spread;
        int64_t m = 0;
        for (int64_t v = 0; v < vocab; ++v)
          if (l[v] >= floor)
            s->ranked[m++] = (sail_ranked){l[v], v};
        qsort(s->ranked, (size_t)m, sizeof *s->ranked, sail_rank_cmp);
        double running = 0.0;
        int reached = 0;
        for (keep = 0; keep < m;) {
          running += exp(s->ranked[keep++].logit - top);
          if (running >= target) {
            reached = 1;
            break;
          }
        }
        if (reached || m == vocab)
          break;
      }
    }
    for (int64_t i = 0; i < keep; ++i)
      s->ids[i] = s->ranked[i].id;
    n = keep;
    qsort(s->ids, (size_t)n, sizeof *s->ids, sail_id_cmp);
  }
  if (s->opt.min_p > 0.0) {
    const double floor = top + log(s->opt.min_p);
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i)
      if (l[s->ids[i]] >= floor)
        s->ids[m++] = s->ids[i];
    n = m; /* the top logit always passes: n >= 1 */
  }
  return n;
}

/* The next token from one row of logits [vocab]; history: the context so far. */
static int64_t sail_sampler_next(sail_sampler *s, const float *row, const int64_t *history,
                                 int64_t n_history) {
  const double top = sail_sampler_prepare(s, row, history, n_history);
  if (s->opt.temperature == 0.0) {
    int64_t best = 0;
    for (int64_t v = 1; v < s->vocab; ++v)
      if (s->logits[v] > s->logits[best])
        best = v;
    return best;
  }
  const int64_t n = sail_sampler_candidates(s, top);
  const double u = sail_uniform(&s->state);
  if (top == -INFINITY)
    return s->ids[0];
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    s->scratch[i] = exp((s->logits[s->ids[i]] - top) / s->opt.temperature);
    total += s->scratch[i];
  }
  const double target = u * total;
  double running = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    running += s->scratch[i];
    if (running > target)
      return s->ids[i];
  }
  return s->ids[n - 1];
}

#ifndef SAIL_GENERATE_SAMPLER_ONLY
/* ------------------------------------------------------------------------------------------ */
/* The token loop. */

#include <poll.h>
#include <time.h>
#include <unistd.h>

#include "model.h"
#include "sail_model_rt.h"

enum { MAX_KV = 1024 };
/* Bounds of the arguments: prompt and new tokens, eos ids, repetitions. */
#define MAX_TOKENS (1L << 24)
#define MAX_EOS 64
#define MAX_REPEAT 1000
#define MAX_TEMPERATURE 1e6
#define MAX_REPEAT_LAST_N 4096

static void usage(FILE *to) {
  fprintf(to, "usage: sail_generate WEIGHTS.bin --prompt-ids 1,2,3 [-n 64] [--threads T] "
              "[--json] [--stream]\n"
              "       [--temperature 0] [--top-k 40] [--top-p 0.95] [--min-p 0.05] "
              "[--repeat-penalty 1]\n"
              "       [--repeat-last-n 64] [--seed S] [--eos-ids 1,2] [--repeat R] [--ctx N] "
              "[--copy-kv] [--kv-f16] [--profile]\n");
}

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int find(const sail_io_spec *specs, int count, const char *name) {
  for (int i = 0; i < count; ++i)
    if (strcmp(specs[i].name, name) == 0)
      return i;
  return -1;
}

/* The index of the one input of `role`: -1 if there is none, -2 if there are several. */
static int input_of(sail_role role) {
  int found = -1;
  for (int i = 0; i < sail_model_num_inputs; ++i) {
    if (sail_model_inputs[i].role == role) {
      if (found >= 0)
        return -2;
      found = i;
    }
  }
  return found;
}

/* The axis of a past/present spec that grows with the tokens: the symbolic dim that is not the
 * batch (axis 0); -1 if there is none or more than one. */
static int cache_axis(const sail_io_spec *spec) {
  int axis = -1;
  for (int d = 1; d < spec->ndim; ++d) {
    if (spec->shape[d] < 0) {
      if (axis >= 0)
        return -1;
      axis = d;
    }
  }
  return axis;
}

/* Comma-separated ids >= 0, at most `limit` of them; 0, or -1 (nothing allocated then). */
static int parse_ids(const char *text, long limit, int64_t **ids, int *count) {
  long n = 1;
  for (const char *p = text; *p; ++p)
    n += *p == ',';
  if (n > limit)
    return -1;
  *ids = malloc((size_t)n * sizeof **ids);
  if (!*ids)
    return -1;
  const char *p = text;
  for (long i = 0; i < n; ++i) {
    char *end;
    errno = 0;
    const long long v = (*p >= '0' && *p <= '9') ? strtoll(p, &end, 10) : -1;
    if (v < 0 || errno != 0 || (*end != ',' && *end != '\0')) {
      free(*ids);
      *ids = NULL;
      return -1;
    }
    (*ids)[i] = v;
    p = end + 1;
  }
  *count = (int)n;
  return 0;
}

/* A number of [lo, hi] (a NaN fails every comparison); 0, or -1. */
static int parse_double(const char *text, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  const double v = strtod(text, &end);
  if (end == text || *end != '\0' || errno != 0 || !(v >= lo && v <= hi))
    return -1;
  *out = v;
  return 0;
}

static int parse_long(const char *text, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  const long v = strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0 || v < lo || v > hi)
    return -1;
  *out = v;
  return 0;
}

/* ---- Streaming: ids out as they come, a stop request in (separate from the loop). ---- */

typedef struct sail_stream {
  int on;        /* --stream */
  int stdin_eof; /* standard input reached its end: no stop request can come */
} sail_stream;

static void stream_token(const sail_stream *stream, int64_t id) {
  if (!stream->on)
    return;
  printf("%lld\n", (long long)id);
  fflush(stdout);
}

/* 1 if a line (any bytes) arrived on standard input since the last call; never blocks. */
static int stream_stop_requested(sail_stream *stream) {
  if (!stream->on || stream->stdin_eof)
    return 0;
  struct pollfd fd = {.fd = STDIN_FILENO, .events = POLLIN};
  if (poll(&fd, 1, 0) <= 0 || !(fd.revents & (POLLIN | POLLHUP)))
    return 0;
  char buffer[256];
  const ssize_t got = read(STDIN_FILENO, buffer, sizeof buffer);
  if (got <= 0) { /* end of input (or an error): stop polling */
    stream->stdin_eof = 1;
    return 0;
  }
  return 1;
}

/* ---- One generation: prefill, then decode steps. ---- */

typedef struct sail_decoder {
  int n_in, n_out, ids_in, mask_in, pos_in, logits_out;
  int past_of_out[MAX_KV]; /* output index -> input index of its past, -1 */
} sail_decoder;

typedef struct sail_run {
  int64_t *generated; /* [n_new] */
  long n_generated;
  const char *stop_reason;
  double prefill_seconds, decode_seconds;
  int kv_in_place; /* the run kept its KV cache in place (sail_model_run_cached) */
} sail_run;

/* Checks the model's interface; NULL, or the reason it is not a decoder with a KV cache. */
static const char *describe_decoder(sail_decoder *dec) {
  const int n_in = sail_model_num_inputs, n_out = sail_model_num_outputs;
  dec->n_in = n_in;
  dec->n_out = n_out;
  dec->ids_in = input_of(SAIL_ROLE_IDS);
  dec->mask_in = input_of(SAIL_ROLE_MASK);
  dec->pos_in = input_of(SAIL_ROLE_POSITIONS); /* -2 (several) counts as unknown inputs */
  dec->logits_out = find(sail_model_outputs, n_out, "logits");
  int n_kv = 0, known = (dec->ids_in >= 0) + (dec->mask_in >= 0) + (dec->pos_in >= 0);
  for (int j = 0; j < n_out && j < MAX_KV; ++j)
    dec->past_of_out[j] = -1;
  for (int i = 0; i < n_in; ++i) {
    const int j = sail_model_inputs[i].present;
    if (sail_model_inputs[i].role == SAIL_ROLE_PAST && j >= 0 && j < n_out && j < MAX_KV) {
      dec->past_of_out[j] = i;
      ++n_kv;
      ++known;
    }
  }
  if (dec->ids_in < 0 || dec->mask_in < 0 || dec->logits_out < 0)
    return "it needs the inputs input_ids and attention_mask and the output logits";
  if (n_kv == 0)
    return "it has no KV cache (inputs past_key_values.* with outputs present.*); compile "
           "the decoder exported with its cache";
  if (known != n_in || n_out > MAX_KV)
    return "it has inputs other than input_ids, attention_mask, position_ids and "
           "past_key_values.*";
  if (sail_model_outputs[dec->logits_out].dtype != SAIL_FLOAT32 ||
      sail_model_outputs[dec->logits_out].ndim != 3)
    return "its logits are not float32[batch, seq, vocab]";
  for (int j = 0; j < n_out; ++j) {
    const int p = dec->past_of_out[j];
    if (p >= 0 && (cache_axis(&sail_model_inputs[p]) < 0 ||
                   sail_model_inputs[p].dtype != sail_model_outputs[j].dtype))
      return "a past_key_values input has no single symbolic past axis";
  }
  return NULL;
}

/* Runs one generation of up to n_new tokens into run (whose generated holds n_new ids), with
 * the KV cache `kv` in place (NULL: the presents fed back as pasts); 0, or -1 after printing
 * the reason (a failed step, out of memory). */
static int generate_once(sail_model *model, const sail_decoder *dec, const int64_t *prompt,
                         int n_prompt, long n_new, const sail_sampling *sampling,
                         const int64_t *eos, int n_eos, sail_stream *stream, sail_kv_cache *kv,
                         int profile, sail_run *run) {
  const int n_in = dec->n_in, n_out = dec->n_out;
  int status = -1;
  const int64_t total = (int64_t)n_prompt + n_new;
  sail_sampler sampler = {0};
  int64_t *history = calloc((size_t)total, sizeof *history); /* prompt, then generated */
  int64_t *positions = calloc((size_t)n_prompt, sizeof *positions);
  int64_t *mask = calloc((size_t)total, sizeof *mask);
  sail_tensor *inputs = calloc((size_t)n_in, sizeof *inputs);
  sail_tensor *outputs = calloc((size_t)n_out, sizeof *outputs);
  sail_tensor *cache = calloc((size_t)n_out, sizeof *cache); /* the presents of the last step */
  static float empty_cache[1]; /* data of the zero-length pasts of the prefill */
  if (!history || !positions || !mask || !inputs || !outputs || !cache) {
    fprintf(stderr, "sail_generate: out of memory\n");
    goto done;
  }
  for (int64_t i = 0; i < total; ++i)
    mask[i] = 1;
  memcpy(history, prompt, (size_t)n_prompt * sizeof *history);
  run->n_generated = 0;
  run->stop_reason = "length";
  run->prefill_seconds = run->decode_seconds = 0.0;
  run->kv_in_place = kv != NULL;

  int64_t past = 0, seq = n_prompt;
  for (long step = 0; step < n_new; ++step) {
    for (int i = 0; i < n_in; ++i) {
      const sail_io_spec *spec = &sail_model_inputs[i];
      sail_tensor *t = &inputs[i];
      memset(t, 0, sizeof *t);
      t->dtype = spec->dtype;
      t->ndim = spec->ndim;
    }
    inputs[dec->ids_in].data = history + past;
    inputs[dec->ids_in].shape[0] = 1;
    inputs[dec->ids_in].shape[1] = seq;
    inputs[dec->mask_in].data = mask;
    inputs[dec->mask_in].shape[0] = 1;
    inputs[dec->mask_in].shape[1] = past + seq;
    if (dec->pos_in >= 0) {
      for (int64_t i = 0; i < seq; ++i)
        positions[i] = past + i;
      inputs[dec->pos_in].data = positions;
      inputs[dec->pos_in].shape[0] = 1;
      inputs[dec->pos_in].shape[1] = seq;
    }
    for (int j = 0; j < n_out; ++j) {
      const int p = dec->past_of_out[j];
      if (p < 0)
        continue;
      if (step == 0 || kv) { /* batch 1, the fixed dims, the past's length; with the cache in
                              * place the data is not read */
        const sail_io_spec *spec = &sail_model_inputs[p];
        inputs[p].data = empty_cache;
        for (int d = 0; d < spec->ndim; ++d)
          inputs[p].shape[d] = d == 0 ? 1 : spec->shape[d] < 0 ? past : spec->shape[d];
      } else {
        inputs[p] = cache[j];
      }
    }
    if (step == 0 && profile && sail_rt_profile(model) != 0) { /* time the prefill */
      fprintf(stderr, "sail_generate: %s\n", sail_model_error(model));
      goto done;
    }
    const double start = now_seconds();
    if ((kv ? sail_model_run_cached(model, inputs, outputs, kv)
            : sail_model_run(model, inputs, outputs)) != 0) {
      fprintf(stderr, "sail_generate: step %ld (past %lld, seq %lld): %s\n", step,
              (long long)past, (long long)seq, sail_model_error(model));
      goto done;
    }
    const double seconds = now_seconds() - start;
    if (step == 0 && profile) { /* the prefill's kernels; then time the decode steps */
      fprintf(stderr, "kernels of the prefill (%lld tokens):\n", (long long)seq);
      sail_rt_print_profile(model, stderr);
      sail_rt_reset_profile(model);
    }
    if (step == 0)
      run->prefill_seconds = seconds;
    else
      run->decode_seconds += seconds;

    const sail_tensor *logits = &outputs[dec->logits_out];
    const int64_t vocab = logits->shape[2];
    /* every position's logits, or the last one's (--logits last) */
    const int64_t rows = logits->shape[1];
    if (logits->shape[0] != 1 || (rows != seq && rows != 1) || vocab < 1) {
      fprintf(stderr, "sail_generate: step %ld: logits of shape [%lld, %lld, %lld], expected "
              "[1, %lld or 1, vocab]\n", step, (long long)logits->shape[0],
              (long long)logits->shape[1], (long long)vocab, (long long)seq);
      goto done;
    }
    if (step == 0 && sail_sampler_init(&sampler, vocab, sampling) != 0) {
      fprintf(stderr, "sail_generate: out of memory (sampler of %lld tokens)\n",
              (long long)vocab);
      goto done;
    }
    if (vocab != sampler.vocab) {
      fprintf(stderr, "sail_generate: step %ld: the vocabulary changed from %lld to %lld\n",
              step, (long long)sampler.vocab, (long long)vocab);
      goto done;
    }
    const float *row = (const float *)logits->data + (rows - 1) * vocab;
    const int64_t next = sail_sampler_next(&sampler, row, history, past + seq);
    history[past + seq] = next;
    run->generated[run->n_generated++] = next;
    stream_token(stream, next);

    for (int j = 0; j < n_out; ++j) {
      if (dec->past_of_out[j] >= 0 && !kv) { /* the presents become the next step's pasts */
        sail_tensor_release(&cache[j]);
        cache[j] = outputs[j];
        memset(&outputs[j], 0, sizeof outputs[j]);
      } else {
        sail_tensor_release(&outputs[j]);
      }
    }
    past += seq;
    seq = 1;
    int is_eos = 0;
    for (int e = 0; e < n_eos; ++e)
      is_eos |= eos[e] == next;
    if (is_eos) {
      run->stop_reason = "eos";
      break;
    }
    if (stream_stop_requested(stream)) {
      run->stop_reason = "stop";
      break;
    }
  }
  status = 0;

done:
  for (int j = 0; outputs && j < n_out; ++j)
    sail_tensor_release(&outputs[j]);
  for (int j = 0; cache && j < n_out; ++j)
    sail_tensor_release(&cache[j]);
  sail_sampler_free(&sampler);
  free(cache);
  free(outputs);
  free(inputs);
  free(mask);
  free(positions);
  free(history);
  return status;
}

/* ---- The report. ---- */

static void print_ids(const int64_t *ids, long n, const char *separator) {
  for (long i = 0; i < n; ++i)
    printf("%s%lld", i ? separator : "", (long long)ids[i]);
}

static void print_report(int json, const sail_model *model, const int64_t *prompt,
                         int n_prompt, const sail_sampling *sampling, const sail_run *runs,
                         int n_runs, const sail_stream *stream, int64_t ctx, int kv_f16) {
  const sail_run *first = &runs[0];
  const long steps = first->n_generated - 1;
  const double rate = steps > 0 && first->decode_seconds > 0 ?
      (double)steps / first->decode_seconds : 0.0;
  const int threads = sail_model_threads(model);
  if (json) {
    printf("{\"prompt_ids\": [");
    print_ids(prompt, n_prompt, ", ");
    printf("], \"ids\": [");
    print_ids(first->generated, first->n_generated, ", ");
    printf("], \"stop_reason\": \"%s\", \"seed\": %llu, \"sampling\": {\"temperature\": %.17g, "
           "\"top_k\": %lld, \"top_p\": %.17g, \"min_p\": %.17g, \"repeat_penalty\": %.17g, "
           "\"repeat_last_n\": %lld}, \"threads\": %d, \"prefill_tokens\": %d, "
           "\"prefill_seconds\": %.9f, \"decode_steps\": %ld, \"decode_seconds\": %.9f, "
           "\"decode_tokens_per_second\": %.6f, \"kv_cache\": \"%s\", \"kv_dtype\": \"%s\", "
           "\"ctx\": %lld, \"runs\": [",
           first->stop_reason, (unsigned long long)sampling->seed, sampling->temperature,
           (long long)sampling->top_k, sampling->top_p, sampling->min_p,
           sampling->repeat_penalty, (long long)sampling->repeat_last_n, threads, n_prompt,
           first->prefill_seconds, steps, first->decode_seconds, rate,
           first->kv_in_place ? "in place" : "copied", kv_f16 ? "float16" : "float32",
           (long long)ctx);
    for (int r = 0; r < n_runs; ++r)
      printf("%s{\"prefill_seconds\": %.9f, \"decode_steps\": %ld, \"decode_seconds\": %.9f}",
             r ? ", " : "", runs[r].prefill_seconds, runs[r].n_generated - 1,
             runs[r].decode_seconds);
    printf("]}\n");
  } else {
    if (!stream->on) {
      print_ids(first->generated, first->n_generated, " ");
      printf("\n");
    }
    printf("prefill: %d tokens in %.2f ms; decode: %ld steps in %.2f ms, %.1f tokens/s "
           "(%d thread%s; KV cache %s, %s)\n", n_prompt, 1e3 * first->prefill_seconds, steps,
           1e3 * first->decode_seconds, rate, threads, threads == 1 ? "" : "s",
           first->kv_in_place ? "in place" : "copied", kv_f16 ? "float16" : "float32");
  }
}

int main(int argc, char **argv) {
  const char *weights = NULL, *prompt_text = NULL, *eos_text = NULL;
  long n_new = 64, threads = 0, repeat = 1, top_k = 40, last_n = 64, ctx = 0;
  int json = 0, copy_kv = 0, kv_f16 = 0, profile = 0;
  sail_stream stream = {0};
  sail_sampling sampling = {.temperature = 0.0, .top_k = 40, .top_p = 0.95, .min_p = 0.05,
                            .repeat_penalty = 1.0, .repeat_last_n = 64, .seed = 0};
  int seed_given = 0;
  for (int i = 1; i < argc; ++i) {
    const char *arg = argv[i];
    const char *value = i + 1 < argc ? argv[i + 1] : NULL;
    const char *bad = NULL; /* the valid range of a bad value */
    if (strcmp(arg, "--json") == 0) {
      json = 1;
      continue;
    }
    if (strcmp(arg, "--stream") == 0) {
      stream.on = 1;
      continue;
    }
    if (strcmp(arg, "--copy-kv") == 0) {
      copy_kv = 1;
      continue;
    }
    if (strcmp(arg, "--kv-f16") == 0) {
      kv_f16 = 1;
      continue;
    }
    if (strcmp(arg, "--profile") == 0) {
      profile = 1;
      continue;
    }
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (arg[0] != '-' && !weights) {
      weights = arg;
      continue;
    }
    if (!value) {
      fprintf(stderr, "sail_generate: unexpected argument '%s'\n", arg);
      usage(stderr);
      return 2;
    }
    ++i;
    if (strcmp(arg, "--prompt-ids") == 0) {
      prompt_text = value;
    } else if (strcmp(arg, "--eos-ids") == 0) {
      eos_text = value;
    } else if (strcmp(arg, "-n") == 0 || strcmp(arg, "--tokens") == 0) {
      if (parse_long(value, 1, MAX_TOKENS, &n_new) != 0)
        bad = "a positive integer up to 16777216";
    } else if (strcmp(arg, "--threads") == 0) {
      if (parse_long(value, 1, SAIL_POOL_MAX_THREADS, &threads) != 0)
        bad = "1..256";
    } else if (strcmp(arg, "--ctx") == 0) {
      if (parse_long(value, 1, MAX_TOKENS, &ctx) != 0)
        bad = "a positive integer up to 16777216";
    } else if (strcmp(arg, "--repeat") == 0) {
      if (parse_long(value, 1, MAX_REPEAT, &repeat) != 0)
        bad = "1..1000";
    } else if (strcmp(arg, "--temperature") == 0) {
      if (parse_double(value, 0.0, MAX_TEMPERATURE, &sampling.temperature) != 0)
        bad = "[0, 1e6] (0 is greedy)";
    } else if (strcmp(arg, "--top-k") == 0) {
      if (parse_long(value, 0, MAX_TOKENS, &top_k) != 0)
        bad = "an integer >= 0 (0 keeps every token)";
    } else if (strcmp(arg, "--top-p") == 0) {
      if (parse_double(value, 0.0, 1.0, &sampling.top_p) != 0 || sampling.top_p == 0.0)
        bad = "(0, 1] (1 turns it off)";
    } else if (strcmp(arg, "--min-p") == 0) {
      if (parse_double(value, 0.0, 1.0, &sampling.min_p) != 0 || sampling.min_p == 1.0)
        bad = "[0, 1) (0 turns it off)";
    } else if (strcmp(arg, "--repeat-penalty") == 0) {
      if (parse_double(value, 0.0, DBL_MAX, &sampling.repeat_penalty) != 0 ||
          sampling.repeat_penalty == 0.0)
        bad = "a finite number > 0 (1 turns it off)";
    } else if (strcmp(arg, "--repeat-last-n") == 0) {
      if (parse_long(value, 0, MAX_REPEAT_LAST_N, &last_n) != 0)
        bad = "[0, 4096]";
    } else if (strcmp(arg, "--seed") == 0) {
      char *end;
      errno = 0;
      sampling.seed = strtoull(value, &end, 10);
      if (!(value[0] >= '0' && value[0] <= '9') || *end != '\0' || errno != 0)
        bad = "[0, 2^64)";
      seed_given = 1;
    } else {
      fprintf(stderr, "sail_generate: unexpected argument '%s'\n", arg);
      usage(stderr);
      return 2;
    }
    if (bad) {
      fprintf(stderr, "sail_generate: %s takes %s, got '%s'\n", arg, bad, value);
      return 2;
    }
  }
  sampling.top_k = top_k;
  sampling.repeat_last_n = last_n;
  if (!seed_given) /* a fresh seed, reported so that the text can be reproduced */
    sampling.seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
  if (!weights || !prompt_text) {
    usage(stderr);
    return 2;
  }

  sail_decoder dec;
  const char *problem = describe_decoder(&dec);
  if (problem) {
    fprintf(stderr, "sail_generate: this model is not a decoder with a KV cache: %s\n", problem);
    return 2;
  }
  int64_t *prompt = NULL, *eos = NULL;
  int n_prompt = 0, n_eos = 0;
  if (parse_ids(prompt_text, MAX_TOKENS, &prompt, &n_prompt) != 0) {
    fprintf(stderr, "sail_generate: --prompt-ids takes up to %ld comma-separated token ids >= 0, "
                    "got '%s'\n", MAX_TOKENS, prompt_text);
    return 2;
  }
  if (eos_text && parse_ids(eos_text, MAX_EOS, &eos, &n_eos) != 0) {
    fprintf(stderr, "sail_generate: --eos-ids takes up to %d comma-separated token ids >= 0, "
                    "got '%s'\n", MAX_EOS, eos_text);
    free(prompt);
    return 2;
  }
  const int64_t bound = sail_model_inputs[dec.ids_in].index_bound;
  for (int i = 0; bound > 0 && i < n_prompt; ++i) {
    if (prompt[i] >= bound) {
      fprintf(stderr, "sail_generate: --prompt-ids: %lld is not a token id of this model (ids "
                      "lie in [0, %lld))\n", (long long)prompt[i], (long long)bound);
      free(prompt);
      free(eos);
      return 2;
    }
  }

  if (kv_f16 && copy_kv) {
    fprintf(stderr, "sail_generate: --kv-f16 stores the KV cache kept in place as float16, and "
                    "--copy-kv feeds float32 presents back instead: use one of them\n");
    free(prompt);
    free(eos);
    return 2;
  }
  const int64_t needed = (int64_t)n_prompt + n_new - 1; /* the last token is not fed back */
  if (ctx && needed > ctx) {
    fprintf(stderr, "sail_generate: the prompt (%d tokens) and -n %ld need a KV cache of %lld "
                    "positions, more than --ctx %ld\n", n_prompt, n_new, (long long)needed, ctx);
    free(prompt);
    free(eos);
    return 2;
  }
  if (!ctx)
    ctx = (long)needed;

  char *err = NULL;
  sail_model *model = sail_model_load(weights, &err);
  if (!model) {
    fprintf(stderr, "sail_generate: %s\n", err ? err : "could not load the model");
    free(err);
    free(prompt);
    free(eos);
    return 1;
  }
  int status = 2;
  sail_kv_cache *kv = NULL;
  sail_run *runs = calloc((size_t)repeat, sizeof *runs);
  int n_runs = 0;
  if (threads && sail_model_set_threads(model, (int)threads) != 0) {
    fprintf(stderr, "sail_generate: %s\n", sail_model_error(model));
    goto done;
  }
  if (kv_f16 && !sail_model_has_kv_cache()) {
    sail_kv_cache_free(sail_model_cache_create(model, 1, ctx)); /* fails: the reason */
    fprintf(stderr, "sail_generate: --kv-f16 needs the KV cache kept in place, and %s\n",
            sail_model_error(model));
    goto done;
  }
  status = 3;
  if (!runs) {
    fprintf(stderr, "sail_generate: out of memory\n");
    goto done;
  }
  for (; n_runs < repeat; ++n_runs) {
    sail_run *run = &runs[n_runs];
    run->generated = calloc((size_t)n_new, sizeof *run->generated);
    if (!run->generated) {
      fprintf(stderr, "sail_generate: out of memory (%ld tokens)\n", n_new);
      goto done;
    }
    sail_stream *streamed = n_runs == 0 ? &stream : &(sail_stream){0}; /* the first run's ids */
    sail_kv_cache_free(kv); /* each run starts from an empty cache */
    kv = copy_kv || !sail_model_has_kv_cache() ? NULL
        : kv_f16 ? sail_model_cache_create_typed(model, 1, ctx, SAIL_FLOAT16)
                 : sail_model_cache_create(model, 1, ctx);
    if (!kv && !copy_kv && sail_model_has_kv_cache()) {
      fprintf(stderr, "sail_generate: %s\n", sail_model_error(model));
      status = kv_f16 ? 2 : 3; /* a model whose presents are not float32 */
      goto done;
    }
    if (generate_once(model, &dec, prompt, n_prompt, n_new, &sampling, eos, n_eos, streamed, kv,
                      profile && n_runs == 0, run) != 0)
      goto done;
    if (strcmp(run->stop_reason, "stop") == 0) { /* asked to stop: no more repetitions */
      ++n_runs;
      break;
    }
  }
  print_report(json, model, prompt, n_prompt, &sampling, runs, n_runs, &stream, ctx, kv_f16);
  if (profile) {
    fprintf(stderr, "kernels of the %ld decode steps:\n", runs[0].n_generated - 1);
    sail_rt_print_profile(model, stderr);
  }
  status = 0;

done:
  sail_kv_cache_free(kv);
  for (int r = 0; runs && r < (int)repeat; ++r)
    free(runs[r].generated);
  free(runs);
  free(prompt);
  free(eos);
  sail_model_free(model);
  return status;
}
#endif /* SAIL_GENERATE_SAMPLER_ONLY */
