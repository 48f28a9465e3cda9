/*
 * sail_model_api.h: the interface of a model compiled by `sail compile --target c`.
 * Include "model.h" (it includes this file and describes the model's inputs and outputs).
 *
 *     char *err = NULL;
 *     sail_model *m = sail_model_load("weights.bin", &err);
 *     if (!m) { fprintf(stderr, "%s\n", err); free(err); return 1; }
 *     sail_tensor in[SAIL_MODEL_NUM_INPUTS] = {...}, out[SAIL_MODEL_NUM_OUTPUTS];
 *     if (sail_model_run(m, in, out) != 0) fprintf(stderr, "%s\n", sail_model_error(m));
 *     ...
 *     for (int i = 0; i < SAIL_MODEL_NUM_OUTPUTS; ++i) sail_tensor_release(&out[i]);
 *     sail_model_free(m);
 *
 * Inputs are C-order arrays the caller owns; symbolic dims (e.g. the sequence length) are taken
 * from them at every run. Outputs are allocated by the runtime; release them with
 * sail_tensor_release. A model runs one call at a time (use one sail_model per thread).
 */
#ifndef SAIL_MODEL_API_H
#define SAIL_MODEL_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SAIL_MAX_NDIM 8

typedef enum sail_dtype {
  SAIL_BOOL = 1,
  SAIL_INT8,
  SAIL_INT16,
  SAIL_INT32,
  SAIL_INT64,
  SAIL_UINT8,
  SAIL_UINT16,
  SAIL_UINT32,
  SAIL_UINT64,
  SAIL_FLOAT16,
  SAIL_FLOAT32,
  SAIL_FLOAT64,
} sail_dtype;

/* A dense, C-order tensor. */
typedef struct sail_tensor {
  void *data;
  sail_dtype dtype;
  int32_t ndim;
  int64_t shape[SAIL_MAX_NDIM];
} sail_tensor;

/* What an input is for, as the compiler decided at import (outputs are SAIL_ROLE_OTHER). */
typedef enum sail_role {
  SAIL_ROLE_OTHER = 0,
  SAIL_ROLE_IDS,       /* the token ids */
  SAIL_ROLE_MASK,      /* the attention mask */
  SAIL_ROLE_POSITIONS, /* the position ids */
  SAIL_ROLE_PAST,      /* a KV-cache input; `present` names its output */
} sail_role;

/* One input or output of the model. */
typedef struct sail_io_spec {
  const char *name;
  sail_dtype dtype;
  int32_t ndim;
  int64_t shape[SAIL_MAX_NDIM];        /* -1 for a symbolic dim */
  const char *dim_names[SAIL_MAX_NDIM]; /* names of the symbolic dims; NULL for fixed dims */
  int64_t index_bound;                  /* > 0: values must lie in [0, index_bound) */
  sail_role role;
  int32_t present; /* a past input: index of its present in sail_model_outputs; else -1 */
} sail_io_spec;

typedef struct sail_model sail_model;

/* Load and check the weight file. On failure: NULL, and *err (if err is not NULL) receives a
 * message allocated with malloc (free it). */
sail_model *sail_model_load(const char *weights_path, char **err);

/* Run the model once. inputs[i] follows sail_model_inputs[i]; outputs[i] is filled with
 * sail_model_outputs[i]'s dtype, rank, shape and newly allocated data. Returns 0, or nonzero
 * with the reason in sail_model_error(model) (outputs then hold no data). */
int sail_model_run(sail_model *model, const sail_tensor *inputs, sail_tensor *outputs);

/* Run the model's LUT-GEMV kernels on `threads` threads (1..256; the calling thread and
 * threads - 1 workers). The default is SAIL_NUM_THREADS from the environment, else 1. Returns 0,
 * or nonzero with the reason in sail_model_error(model). */
int sail_model_set_threads(sail_model *model, int threads);

/* Threads the model runs on. */
int sail_model_threads(const sail_model *model);

/* The message of the last failed sail_model_run ("" if none). */
const char *sail_model_error(const sail_model *model);

void sail_model_free(sail_model *model);

/* A KV cache kept in place across runs (decoders whose past_key_values.* inputs come back as
 * present.* outputs): sail_model_run_cached appends each step's new keys and values to one
 * buffer per present instead of concatenating the whole cache, and attention reads them there.
 * `capacity` positions (past + seq) at most, for `batch` sequences. NULL, with the reason in
 * sail_model_error, if the model cannot keep its cache in place (the message says why; use
 * sail_model_run) or memory runs out. */
typedef struct sail_kv_cache sail_kv_cache;
/* Whether this model can keep its KV cache in place (else sail_model_cache_create fails). */
int sail_model_has_kv_cache(void);
sail_kv_cache *sail_model_cache_create(sail_model *model, int64_t batch, int64_t capacity);
/* sail_model_cache_create with the cache stored as `storage`: SAIL_FLOAT32 or SAIL_FLOAT16
 * (half the memory and the attention's reads; each step's keys and values are rounded to the
 * nearest half as they are appended, so later steps attend to rounded keys and values). Only
 * float32 presents can be stored as float16; NULL with the reason otherwise. */
sail_kv_cache *sail_model_cache_create_typed(sail_model *model, int64_t batch, int64_t capacity,
                                             sail_dtype storage);
/* sail_model_run with the past_key_values.* taken from `cache`: their inputs give only the past
 * length (it must be the cache's length; their data is not read), the new positions are
 * appended to the cache, and the present.* outputs are left empty (no data). */
int sail_model_run_cached(sail_model *model, const sail_tensor *inputs, sail_tensor *outputs,
                          sail_kv_cache *cache);
/* Positions the cache holds (that of its first present; -1 for NULL). */
int64_t sail_kv_cache_length(const sail_kv_cache *cache);
void sail_kv_cache_free(sail_kv_cache *cache);

/* Free an output's data (safe on a tensor without data). */
void sail_tensor_release(sail_tensor *tensor);

/* Bytes per element, and the NumPy name ("float32", ...); 0 and "?" for unknown values. */
size_t sail_dtype_size(sail_dtype dtype);
const char *sail_dtype_name(sail_dtype dtype);

/* Elements of a tensor (the product of its shape). */
int64_t sail_tensor_numel(const sail_tensor *tensor);

extern const int sail_model_num_inputs;
extern const int sail_model_num_outputs;
extern const sail_io_spec sail_model_inputs[];
extern const sail_io_spec sail_model_outputs[];

#ifdef __cplusplus
}
#endif

#endif /* SAIL_MODEL_API_H */
