/*
 * main.c: sail_main, the command-line runner of a compiled model.
 *
 *   sail_main WEIGHTS.bin --input NAME=FILE.npy ... [--output-dir DIR]
 *             [--output NAME=FILE.npy ...] [--repeat N] [--profile] [--threads T]
 *             [--dump-lut DIR]
 *   sail_main WEIGHTS.bin --check        load and check the weight file only
 *   sail_main --info                     print the model's inputs and outputs
 *
 * Reads every input from a .npy file, runs the model, and writes each output to the file given
 * with --output, or to DIR/<name>.npy (characters other than letters, digits, '.', '_' and '-'
 * become '_'). --repeat N runs N times and prints the mean time per run; --profile prints the
 * time spent in each kernel over all runs; --threads T runs the LUT-GEMV kernels on T threads
 * (default: SAIL_NUM_THREADS, else 1); --dump-lut DIR writes the operands of every LUT-GEMV of
 * the (last) run to DIR/lut<i>.xq.npy, .sx.npy and .y.npy, i the index in model.c's LUTS[], for
 * checking the integers layer by layer (sail verify does). Exit status:
 * 0 success, 1 the weight file failed to load, 2 bad arguments or input files, 3 the model
 * rejected the inputs or failed to run.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"
#include "sail_model_rt.h"
#include "sail_npy.h"

static void usage(FILE *to) {
  fprintf(to, "usage: sail_main WEIGHTS.bin --input NAME=FILE.npy ... [--output-dir DIR]\n"
              "                 [--output NAME=FILE.npy ...] [--repeat N] [--profile]\n"
              "                 [--threads T] [--dump-lut DIR]\n"
              "       sail_main WEIGHTS.bin --check\n"
              "       sail_main --info\n");
}

static void print_spec(const char *kind, int index, const sail_io_spec *spec) {
  printf("%s %d: %s %s[", kind, index, spec->name, sail_dtype_name(spec->dtype));
  for (int32_t d = 0; d < spec->ndim; ++d) {
    if (spec->shape[d] < 0)
      printf("%s%s", d ? ", " : "", spec->dim_names[d]);
    else
      printf("%s%lld", d ? ", " : "", (long long)spec->shape[d]);
  }
  printf("]\n");
}

/* The index of the spec whose name `arg` starts with, followed by '=' (names may contain '='
 * only where it cannot be confused: the longest matching name wins). */
static int match_name(const char *arg, const sail_io_spec *specs, int count, const char **path) {
  int best = -1;
  size_t best_len = 0;
  for (int i = 0; i < count; ++i) {
    const size_t len = strlen(specs[i].name);
    if (strncmp(arg, specs[i].name, len) == 0 && arg[len] == '=' && len >= best_len) {
      best = i;
      best_len = len;
    }
  }
  if (best >= 0)
    *path = arg + best_len + 1;
  return best;
}

/* --dump-lut: write one LUT-GEMV's operands as .npy files into the directory `ctx`. */
static int dump_lut(void *ctx, sail_model *model, int32_t lut, const sail_buffer *xq,
                    const sail_buffer *sx, const sail_buffer *y) {
  const sail_buffer *buffers[3] = {xq, sx, y};
  const char *names[3] = {"xq", "sx", "y"};
  const sail_dtype dtypes[3] = {SAIL_INT8, SAIL_FLOAT32, SAIL_FLOAT32};
  for (int i = 0; i < 3; ++i) {
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/lut%d.%s.npy", (const char *)ctx, (int)lut, names[i]);
    sail_tensor t = {.data = buffers[i]->t.data, .dtype = dtypes[i],
                     .ndim = buffers[i]->t.ndim};
    for (int32_t d = 0; d < t.ndim; ++d)
      t.shape[d] = buffers[i]->shape[d];
    if (sail_npy_write(path, &t, err, sizeof err) != 0)
      return sail_rt_fail(model, "--dump-lut: %s", err);
  }
  return 0;
}

/* --input/--output NAME=FILE.npy: paths[index of NAME] = FILE.npy; -1 (reported) if no
 * input/output has that name. */
static int bind_path(const char *kind, const char *arg, const sail_io_spec *specs, int count,
                     const char **paths) {
  const char *path = NULL;
  const int k = match_name(arg, specs, count, &path);
  if (k >= 0) {
    paths[k] = path;
    return 0;
  }
  fprintf(stderr, "sail_main: --%s %s: expected NAME=FILE.npy with a model %s NAME; the "
                  "model's %ss:", kind, arg, kind, kind);
  for (int i = 0; i < count; ++i)
    fprintf(stderr, " %s", specs[i].name);
  fprintf(stderr, "\n");
  return -1;
}

static char *default_output_path(const char *dir, const char *name) {
  const size_t len = strlen(dir) + strlen(name) + 8;
  char *path = malloc(len);
  if (!path)
    return NULL;
  int used = snprintf(path, len, "%s/", dir);
  for (const char *c = name; *c; ++c) {
    const int safe = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                     (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '-';
    path[used++] = safe ? *c : '_';
  }
  snprintf(path + used, len - (size_t)used, ".npy");
  return path;
}

static double seconds_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  const int n_in = sail_model_num_inputs, n_out = sail_model_num_outputs;
  const char *weights = NULL, *output_dir = NULL, *dump_dir = NULL;
  const char **input_paths = calloc((size_t)n_in + 1, sizeof *input_paths);
  const char **output_paths = calloc((size_t)n_out + 1, sizeof *output_paths);
  sail_tensor *inputs = calloc((size_t)n_in + 1, sizeof *inputs);
  sail_tensor *outputs = calloc((size_t)n_out + 1, sizeof *outputs);
  long repeat = 1, threads = 0;
  int info = 0, check = 0, profile = 0, status = 2;
  sail_model *model = NULL;
  char err[1024];
  if (!input_paths || !output_paths || !inputs || !outputs) {
    fprintf(stderr, "sail_main: out of memory\n");
    goto done;
  }
  for (int i = 1; i < argc; ++i) {
    const char *arg = argv[i];
    const int has_value = i + 1 < argc;
    if (strcmp(arg, "--input") == 0 && has_value) {
      if (bind_path("input", argv[++i], sail_model_inputs, n_in, input_paths) != 0)
        goto done;
    } else if (strcmp(arg, "--output") == 0 && has_value) {
      if (bind_path("output", argv[++i], sail_model_outputs, n_out, output_paths) != 0)
        goto done;
    } else if (strcmp(arg, "--dump-lut") == 0 && has_value) {
      dump_dir = argv[++i];
    } else if (strcmp(arg, "--output-dir") == 0 && has_value) {
      output_dir = argv[++i];
    } else if (strcmp(arg, "--repeat") == 0 && has_value) {
      char *end = NULL;
      repeat = strtol(argv[++i], &end, 10);
      if (*end != '\0' || repeat < 1) {
        fprintf(stderr, "sail_main: --repeat takes a positive integer, got '%s'\n", argv[i]);
        goto done;
      }
    } else if (strcmp(arg, "--threads") == 0 && has_value) {
      char *end = NULL;
      threads = strtol(argv[++i], &end, 10);
      if (*end != '\0' || threads < 1 || threads > SAIL_POOL_MAX_THREADS) {
        fprintf(stderr, "sail_main: --threads takes 1..%d, got '%s'\n", SAIL_POOL_MAX_THREADS,
                argv[i]);
        goto done;
      }
    } else if (strcmp(arg, "--info") == 0) {
      info = 1;
    } else if (strcmp(arg, "--check") == 0) {
      check = 1;
    } else if (strcmp(arg, "--profile") == 0) {
      profile = 1;
    } else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage(stdout);
      status = 0;
      goto done;
    } else if (arg[0] != '-' && !weights) {
      weights = arg;
    } else {
      fprintf(stderr, "sail_main: unexpected argument '%s'\n", arg);
      usage(stderr);
      goto done;
    }
  }
  if (info) {
    for (int k = 0; k < n_in; ++k)
      print_spec("input", k, &sail_model_inputs[k]);
    for (int k = 0; k < n_out; ++k)
      print_spec("output", k, &sail_model_outputs[k]);
    if (!weights) {
      status = 0;
      goto done;
    }
  }
  if (!weights) {
    usage(stderr);
    goto done;
  }
  char *load_error = NULL;
  model = sail_model_load(weights, &load_error);
  if (!model) {
    fprintf(stderr, "sail_main: %s\n", load_error ? load_error : "out of memory");
    free(load_error);
    status = 1;
    goto done;
  }
  if (threads && sail_model_set_threads(model, (int)threads) != 0) {
    fprintf(stderr, "sail_main: %s\n", sail_model_error(model));
    goto done;
  }
  if (check) {
    printf("%s: ok\n", weights);
    status = 0;
    goto done;
  }
  int missing = 0;
  for (int k = 0; k < n_in; ++k) {
    if (!input_paths[k]) {
      fprintf(stderr, "sail_main: missing --input %s=FILE.npy\n", sail_model_inputs[k].name);
      missing = 1;
    }
  }
  if (missing)
    goto done;
  for (int k = 0; k < n_in; ++k) {
    if (sail_npy_read(input_paths[k], &inputs[k], err, sizeof err) != 0) {
      fprintf(stderr, "sail_main: input %s: %s\n", sail_model_inputs[k].name, err);
      goto done;
    }
  }
  if (profile && sail_rt_profile(model) != 0) {
    fprintf(stderr, "sail_main: %s\n", sail_model_error(model));
    status = 1;
    goto done;
  }
  double elapsed = 0.0;
  for (long r = 0; r < repeat; ++r) {
    if (dump_dir && r + 1 == repeat)
      sail_rt_set_lut_hook(model, dump_lut, (void *)dump_dir);
    for (int k = 0; k < n_out; ++k)
      sail_tensor_release(&outputs[k]);
    const double start = seconds_now();
    if (sail_model_run(model, inputs, outputs) != 0) {
      fprintf(stderr, "sail_main: %s\n", sail_model_error(model));
      status = 3;
      goto done;
    }
    elapsed += seconds_now() - start;
  }
  if (repeat > 1)
    printf("forward: %.3f ms (mean of %ld runs)\n", 1e3 * elapsed / (double)repeat, repeat);
  if (profile)
    sail_rt_print_profile(model, stdout);

  for (int k = 0; k < n_out; ++k) {
    char *path = NULL;
    if (!output_paths[k] && output_dir)
      path = default_output_path(output_dir, sail_model_outputs[k].name);
    const char *target = output_paths[k] ? output_paths[k] : path;
    if (!target)
      continue;
    if (sail_npy_write(target, &outputs[k], err, sizeof err) != 0) {
      fprintf(stderr, "sail_main: output %s: %s\n", sail_model_outputs[k].name, err);
      free(path);
      goto done;
    }
    free(path);
  }
  status = 0;

done:
  for (int k = 0; inputs && k < n_in; ++k)
    sail_tensor_release(&inputs[k]);
  for (int k = 0; outputs && k < n_out; ++k)
    sail_tensor_release(&outputs[k]);
  sail_model_free(model);
  free(inputs);
  free(outputs);
  free(input_paths);
  free(output_paths);
  return status;
}
