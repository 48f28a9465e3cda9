/*
 * generate.c: sail_generate, greedy decoding with a compiled decoder that has a KV cache.
 *
 *   sail_generate WEIGHTS.bin --prompt-ids 1,2,3 [-n 64] [--threads T] [--json]
 *
 * The model must have the inputs input_ids int64[batch, seq], attention_mask int64[batch,
 * past + seq] (optionally position_ids int64[batch, seq]) and past_key_values.<name> float32
 * [batch, ..., past, ...], and the outputs logits float32[batch, seq, vocab] and
 * present.<name> (the new cache of past_key_values.<name>, one position longer per token).
 *
 * It runs the prompt in one call (prefill, past = 0), takes the arg-max of the last position's
 * logits as the next token, and feeds each new token back with the presents as the pasts
 * (decode steps), until -n tokens are generated. It prints the generated ids on one line, then
 * the prefill time and the decode speed; --json prints one JSON object instead:
 *   {"prompt_ids": [...], "ids": [...], "threads": T, "prefill_tokens": P,
 *    "prefill_seconds": s, "decode_steps": n - 1, "decode_seconds": s,
 *    "decode_tokens_per_second": r}
 * Exit status: 0 success, 1 the weight file failed to load, 2 bad arguments or a model that is
 * not such a decoder, 3 the model failed to run.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"
#include "sail_model_rt.h"

enum { MAX_KV = 1024 };

static void usage(FILE *to) {
  fprintf(to, "usage: sail_generate WEIGHTS.bin --prompt-ids 1,2,3 [-n 64] [--threads T] "
              "[--json]\n");
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

static int parse_ids(const char *text, int64_t **ids, int *count) {
  int n = 1;
  for (const char *p = text; *p; ++p)
    n += *p == ',';
  *ids = malloc((size_t)n * sizeof **ids);
  if (!*ids)
    return -1;
  const char *p = text;
  for (int i = 0; i < n; ++i) {
    char *end;
    long long v = strtoll(p, &end, 10);
    if (end == p || v < 0 || (*end != ',' && *end != '\0'))
      return -1;
    (*ids)[i] = v;
    p = end + 1;
  }
  *count = n;
  return 0;
}

int main(int argc, char **argv) {
  const char *weights = NULL, *prompt_text = NULL;
  long n_new = 64, threads = 0;
  int json = 0;
  for (int i = 1; i < argc; ++i) {
    const char *arg = argv[i];
    const int has_value = i + 1 < argc;
    char *end = NULL;
    if (strcmp(arg, "--prompt-ids") == 0 && has_value) {
      prompt_text = argv[++i];
    } else if ((strcmp(arg, "-n") == 0 || strcmp(arg, "--tokens") == 0) && has_value) {
      n_new = strtol(argv[++i], &end, 10);
      if (*end != '\0' || n_new < 1) {
        fprintf(stderr, "sail_generate: -n takes a positive integer, got '%s'\n", argv[i]);
        return 2;
      }
    } else if (strcmp(arg, "--threads") == 0 && has_value) {
      threads = strtol(argv[++i], &end, 10);
      if (*end != '\0' || threads < 1 || threads > SAIL_POOL_MAX_THREADS) {
        fprintf(stderr, "sail_generate: --threads takes 1..%d, got '%s'\n",
                SAIL_POOL_MAX_THREADS, argv[i]);
        return 2;
      }
    } else if (strcmp(arg, "--json") == 0) {
      json = 1;
    } else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (arg[0] != '-' && !weights) {
      weights = arg;
    } else {
      fprintf(stderr, "sail_generate: unexpected argument '%s'\n", arg);
      usage(stderr);
      return 2;
    }
  }
  if (!weights || !prompt_text) {
    usage(stderr);
    return 2;
  }
  int64_t *prompt = NULL;
  int n_prompt = 0;
  if (parse_ids(prompt_text, &prompt, &n_prompt) != 0) {
    fprintf(stderr, "sail_generate: --prompt-ids takes comma-separated token ids >= 0, got "
                    "'%s'\n", prompt_text);
    return 2;
  }

  /* The decoder's inputs and outputs. */
  const int n_in = sail_model_num_inputs, n_out = sail_model_num_outputs;
  const int ids_in = find(sail_model_inputs, n_in, "input_ids");
  const int mask_in = find(sail_model_inputs, n_in, "attention_mask");
  const int pos_in = find(sail_model_inputs, n_in, "position_ids");
  const int logits_out = find(sail_model_outputs, n_out, "logits");
  int past_of_out[MAX_KV]; /* output index -> input index of its past, -1 */
  int n_kv = 0, known = (ids_in >= 0) + (mask_in >= 0) + (pos_in >= 0);
  for (int j = 0; j < n_out && j < MAX_KV; ++j) {
    past_of_out[j] = -1;
    const char *name = sail_model_outputs[j].name;
    if (strncmp(name, "present.", 8) == 0) {
      char past_name[512];
      snprintf(past_name, sizeof past_name, "past_key_values.%s", name + 8);
      past_of_out[j] = find(sail_model_inputs, n_in, past_name);
      if (past_of_out[j] >= 0) {
        ++n_kv;
        ++known;
      }
    }
  }
  const char *problem = NULL;
  if (ids_in < 0 || mask_in < 0 || logits_out < 0)
    problem = "it needs the inputs input_ids and attention_mask and the output logits";
  else if (n_kv == 0)
    problem = "it has no KV cache (inputs past_key_values.* with outputs present.*); compile "
              "the decoder exported with its cache";
  else if (known != n_in || n_out > MAX_KV)
    problem = "it has inputs other than input_ids, attention_mask, position_ids and "
              "past_key_values.*";
  else if (sail_model_outputs[logits_out].dtype != SAIL_FLOAT32 ||
           sail_model_outputs[logits_out].ndim != 3)
    problem = "its logits are not float32[batch, seq, vocab]";
  for (int j = 0; !problem && j < n_out; ++j) {
    const int p = past_of_out[j];
    if (p >= 0 && (cache_axis(&sail_model_inputs[p]) < 0 ||
                   sail_model_inputs[p].dtype != sail_model_outputs[j].dtype))
      problem = "a past_key_values input has no single symbolic past axis";
  }
  if (problem) {
    fprintf(stderr, "sail_generate: this model is not a decoder with a KV cache: %s\n", problem);
    return 2;
  }

  char *err = NULL;
  sail_model *model = sail_model_load(weights, &err);
  if (!model) {
    fprintf(stderr, "sail_generate: %s\n", err ? err : "could not load the model");
    free(err);
    return 1;
  }
  if (threads && sail_model_set_threads(model, (int)threads) != 0) {
    fprintf(stderr, "sail_generate: %s\n", sail_model_error(model));
    sail_model_free(model);
    return 2;
  }

  int status = 3;
  const int64_t total = (int64_t)n_prompt + n_new;
  int64_t *generated = calloc((size_t)n_new, sizeof *generated);
  int64_t *ids = calloc((size_t)n_prompt, sizeof *ids);
  int64_t *positions = calloc((size_t)n_prompt, sizeof *positions);
  int64_t *mask = calloc((size_t)total, sizeof *mask);
  sail_tensor *inputs = calloc((size_t)n_in, sizeof *inputs);
  sail_tensor *outputs = calloc((size_t)n_out, sizeof *outputs);
  sail_tensor *cache = calloc((size_t)n_out, sizeof *cache); /* the presents of the last step */
  static float empty_cache[1]; /* data of the zero-length pasts of the prefill */
  if (!generated || !ids || !positions || !mask || !inputs || !outputs || !cache) {
    fprintf(stderr, "sail_generate: out of memory\n");
    goto done;
  }
  for (int64_t i = 0; i < total; ++i)
    mask[i] = 1;
  memcpy(ids, prompt, (size_t)n_prompt * sizeof *ids);

  double prefill_seconds = 0.0, decode_seconds = 0.0;
  int64_t past = 0, seq = n_prompt;
  for (long step = 0; step < n_new; ++step) {
    for (int i = 0; i < n_in; ++i) {
      const sail_io_spec *spec = &sail_model_inputs[i];
      sail_tensor *t = &inputs[i];
      memset(t, 0, sizeof *t);
      t->dtype = spec->dtype;
      t->ndim = spec->ndim;
    }
    inputs[ids_in].data = ids;
    inputs[ids_in].shape[0] = 1;
    inputs[ids_in].shape[1] = seq;
    inputs[mask_in].data = mask;
    inputs[mask_in].shape[0] = 1;
    inputs[mask_in].shape[1] = past + seq;
    if (pos_in >= 0) {
      for (int64_t i = 0; i < seq; ++i)
        positions[i] = past + i;
      inputs[pos_in].data = positions;
      inputs[pos_in].shape[0] = 1;
      inputs[pos_in].shape[1] = seq;
    }
    for (int j = 0; j < n_out; ++j) {
      const int p = past_of_out[j];
      if (p < 0)
        continue;
      if (step == 0) { /* an empty cache: batch 1, the fixed dims, past 0 */
        const sail_io_spec *spec = &sail_model_inputs[p];
        inputs[p].data = empty_cache;
        for (int d = 0; d < spec->ndim; ++d)
          inputs[p].shape[d] = d == 0 ? 1 : spec->shape[d] < 0 ? 0 : spec->shape[d];
      } else {
        inputs[p] = cache[j];
      }
    }
    const double start = now_seconds();
    if (sail_model_run(model, inputs, outputs) != 0) {
      fprintf(stderr, "sail_generate: step %ld (past %lld, seq %lld): %s\n", step,
              (long long)past, (long long)seq, sail_model_error(model));
      goto done;
    }
    const double seconds = now_seconds() - start;
    if (step == 0)
      prefill_seconds = seconds;
    else
      decode_seconds += seconds;
    /* The next token: arg-max of the last position's logits (the first of equal ones). */
    const sail_tensor *logits = &outputs[logits_out];
    const int64_t vocab = logits->shape[2];
    const float *row = (const float *)logits->data + (seq - 1) * vocab;
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v)
      if (row[v] > row[best])
        best = v;
    generated[step] = best;
    for (int j = 0; j < n_out; ++j) {
      if (past_of_out[j] >= 0) { /* the presents become the next step's pasts */
        sail_tensor_release(&cache[j]);
        cache[j] = outputs[j];
        memset(&outputs[j], 0, sizeof outputs[j]);
      } else {
        sail_tensor_release(&outputs[j]);
      }
    }
    past += seq;
    seq = 1;
    ids[0] = best;
  }

  const long steps = n_new - 1;
  const double rate = steps > 0 && decode_seconds > 0 ? (double)steps / decode_seconds : 0.0;
  if (json) {
    printf("{\"prompt_ids\": [");
    for (int i = 0; i < n_prompt; ++i)
      printf("%s%lld", i ? ", " : "", (long long)prompt[i]);
    printf("], \"ids\": [");
    for (long i = 0; i < n_new; ++i)
      printf("%s%lld", i ? ", " : "", (long long)generated[i]);
    printf("], \"threads\": %d, \"prefill_tokens\": %d, \"prefill_seconds\": %.9f, "
           "\"decode_steps\": %ld, \"decode_seconds\": %.9f, \"decode_tokens_per_second\": "
           "%.6f}\n", sail_model_threads(model), n_prompt, prefill_seconds, steps,
           decode_seconds, rate);
  } else {
    for (long i = 0; i < n_new; ++i)
      printf("%s%lld", i ? " " : "", (long long)generated[i]);
    printf("\nprefill: %d tokens in %.2f ms; decode: %ld steps in %.2f ms, %.1f tokens/s "
           "(%d thread%s)\n", n_prompt, 1e3 * prefill_seconds, steps, 1e3 * decode_seconds,
           rate, sail_model_threads(model), sail_model_threads(model) == 1 ? "" : "s");
  }
  status = 0;

done:
  for (int j = 0; cache && j < n_out; ++j)
    sail_tensor_release(&cache[j]);
  free(cache);
  free(outputs);
  free(inputs);
  free(mask);
  free(positions);
  free(ids);
  free(generated);
  free(prompt);
  sail_model_free(model);
  return status;
}
