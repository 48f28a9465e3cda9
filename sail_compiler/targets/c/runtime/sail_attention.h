/* SAIL C runtime: scaled dot-product attention over un-repeated grouped key/value heads.
 *
 * Computes the operator sail.attention (sail_compiler/ops/attention.py) in float32: for every
 * batch b, query head h (kv head g = h / (q_heads / kv_heads)) and query row s,
 *
 *   x[t] = (sum_d q[b, h, s, d] * k[b, g, t, d]) * scale
 *   x[t] = softcap * tanhf(x[t] / softcap)                    only if softcap > 0
 *   x[t] = x[t] + mask[b, h, s, t]                            only with a mask
 *   y[b, h, s, :] = sum_t exp(x[t] - max x) * v[b, g, t, :] / sum_t exp(x[t] - max x)
 *
 * Keys and values are read where they are, never repeated per query head: the keys and values
 * of one kv head are read once for all its query heads (4 rows at a time), which is what makes
 * grouped and multi-query attention cheap. The softmax subtracts each row's maximum (numerically
 * stable; exp of non-positive arguments). A key whose mask value is -inf or at most -FLT_MAX
 * for every row of a block is not multiplied: adding such a mask gives the mask value itself
 * for every score below 2^103 in magnitude, so the scores are exactly what computing them would
 * give; its exp is then 0 unless every key of the row is masked, and a key whose weight is 0 in
 * every row is not read from v. Causal and sliding-window masks thus cost what they keep.
 *
 * Differences from the graph's float operations: the dot products are summed in 8 interleaved
 * partial sums (decode), or in order over d with fused multiply-adds (prefills: at least
 * SAIL_ATTENTION_ROWS query rows per kv head, on keys copied once into transposed tiles, 8 or,
 * in AVX-512 builds, 16 keys per vector: the same sums either way); exp is a polynomial within
 * 1 ulp, 0 below -87.3; the weighted values are divided by the sum at the end instead of
 * normalizing the weights first: rounding-level differences (~1e-6 relative). A prefill's
 * softmax sums 8 lanes chosen by key index, so a query row's result does not depend on the
 * other rows computed with it (a prefill run in pieces gives the same bits).
 *
 * Threads: units of up to SAIL_ATTENTION_ROWS query rows of one (batch, kv head) run on the
 * pool's threads, a unit's rows being consecutive query positions times every query head of
 * the kv head (position-major: those heads share the mask row and the keys it keeps); when
 * there are fewer such units than threads (a decode step), the context
 * (the keys) is split into chunks instead: scores in one pass, then weights and partial
 * weighted sums per chunk in a second, combined on the calling thread.
 *
 * Layout: q [batch, q_heads, q_len, head_dim] and y [batch, q_heads, q_len, value_dim] are
 * contiguous. Keys and values have contiguous rows (head_dim / value_dim floats) at element
 * offsets b * stride[0] + g * stride[1] + t * stride[2], so a cache with room for more rows than
 * kv_len (stride[2] = row length, stride[1] = capacity * row length) is read in place. The mask
 * element of (b, h, s, t) is at b * mask_strides[0] + h * mask_strides[1] + s * mask_strides[2]
 * + t * mask_strides[3] (a stride of 0 broadcasts that axis).
 *
 * Half-precision keys and values (a KV cache stored as float16): k16 / v16 instead of k / v
 * (same strides, in elements). Each load of 8 keys or values converts them to float32 (F16C's
 * vcvtph2ps, or portable C; exact: every half is a float), so the result equals that of
 * float32 keys and values holding the same numbers, bit for bit; prefills copy the keys into
 * their transposed tiles and the values into a float32 scratch once per call. The kernels are
 * compiled once for float32 rows and once for halves, chosen per call (no per-element choice).
 */
#ifndef SAIL_ATTENTION_H
#define SAIL_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "sail_threads.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Query rows per work unit: a multiple of the prefill's register blocks (6 rows with AVX2, 12
 * with AVX-512); the unit's scores (rows x keys floats) stay in the second-level cache. */
#define SAIL_ATTENTION_ROWS 24

typedef struct sail_attention_args {
  const float *q;
  const float *k;
  const float *v;
  const float *mask; /* NULL: no mask */
  float *y;
  int64_t batch, q_heads, kv_heads, q_len, kv_len, head_dim, value_dim;
  int64_t k_strides[3], v_strides[3]; /* elements per batch, kv head and row */
  int64_t mask_strides[4];            /* elements per batch, query head, query row and key */
  float scale;
  float softcap;       /* 0: none */
  const uint16_t *k16; /* IEEE binary16 keys instead of k (k NULL), or NULL */
  const uint16_t *v16; /* IEEE binary16 values instead of v (v NULL), or NULL */
} sail_attention_args;

#define SAIL_ATTENTION_OK 0
#define SAIL_ATTENTION_EINVAL (-1) /* a size, a stride or a pointer is out of range */
#define SAIL_ATTENTION_ENOMEM (-2) /* the scratch memory could not be allocated */

/* y = attention(q, k, v, mask) on the pool's threads (NULL: the caller only). Returns
 * SAIL_ATTENTION_OK, SAIL_ATTENTION_EINVAL (nothing written) or SAIL_ATTENTION_ENOMEM. */
int sail_attention(const sail_attention_args *args, sail_pool *pool);

/* dst[i] = src[i] as IEEE binary16, rounded to nearest even (what NumPy's astype(np.float16)
 * gives): magnitudes from 65520 up become infinities, those below 2^-14 subnormals, NaNs stay
 * NaNs (quiet: the payload's top 10 bits with the quiet bit set, as x86's F16C does). F16C's
 * vcvtps2ph where the build has it (__F16C__), else portable C with the same results. */
void sail_f16_from_f32(uint16_t *dst, const float *src, int64_t n);

/* dst[i] = src[i] (binary16) as float32: exact. */
void sail_f32_from_f16(float *dst, const uint16_t *src, int64_t n);

#ifdef __cplusplus
}
#endif

#endif /* SAIL_ATTENTION_H */
