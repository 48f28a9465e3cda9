/* SAIL C runtime: attention over un-repeated grouped key/value heads (sail_attention.h).
 *
 * Plain C for the compiler's vectorizer (-O3): the dot products keep 8 independent partial sums
 * per query row (one 8-lane vector each, no reassociation needed), 4 query rows share each key
 * read; the weighted sums of the values run along the value dim. Prefills score and weigh in
 * register tiles of transposed keys (8 lanes, or 16 under __AVX512F__). Work is split into
 * units of up to SAIL_ATTENTION_ROWS query rows of one (batch, kv head), and, when there are
 * too few units for the threads, into chunks of the keys as well (sail_attention.h).
 */
#include "sail_attention.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
  LANES = 8,       /* partial sums per dot product: one AVX2 vector of floats */
  KEY_TILE = 16,   /* keys scored against every row quad of a unit before the next keys */
  MIN_CHUNK = 64,  /* fewest keys per chunk when the context is split across threads */
  ROWS = SAIL_ATTENTION_ROWS,
};

/* 8-lane float vectors: GNU C vector extensions (gcc, clang) keep the accumulators of the
 * 4 x 4 dot products and of the weighted values in registers, which gcc's auto-vectorizer did
 * not (it spilled them: 3x slower); other compilers, and builds with -DSAIL_NO_SIMD, get the
 * same operations on arrays. */
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD)
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(LANES * sizeof(int32_t)))); /* -1: true */
static inline vec vzero(void) { return (vec){0}; }
static inline vec vsplat(float x) { return (vec){x, x, x, x, x, x, x, x}; } /* not 0 + x: an add */
static inline vec vmuladd(vec acc, vec a, vec b) { return acc + a * b; }
static inline vec vmul(vec a, vec b) { return a * b; }
static inline vec vadd(vec a, vec b) { return a + b; }
static inline float vlane(vec v, int l) { return v[l]; }
#else
typedef struct vec {
  float l[LANES];
} vec;
static inline vec vzero(void) { return (vec){{0}}; }
static inline vec vsplat(float x) {
  vec v;
  for (int l = 0; l < LANES; ++l)
    v.l[l] = x;
  return v;
}
static inline vec vmuladd(vec acc, vec a, vec b) {
  for (int l = 0; l < LANES; ++l)
    acc.l[l] += a.l[l] * b.l[l];
  return acc;
}
static inline vec vmul(vec a, vec b) {
  for (int l = 0; l < LANES; ++l)
    a.l[l] *= b.l[l];
  return a;
}
static inline vec vadd(vec a, vec b) {
  for (int l = 0; l < LANES; ++l)
    a.l[l] += b.l[l];
  return a;
}
static inline float vlane(vec v, int l) { return v.l[l]; }
#endif

/* acc + a * b with one rounding where the machine has a fused multiply-add (x86-64 FMA3,
 * AArch64), so that the transposed-key tiles below need no register for the product: their
 * 12 accumulators, 2 key vectors and a broadcast use 15 of AVX2's 16 registers. Elsewhere
 * the product is rounded first (vmuladd). */
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD) && defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
static inline vec vfma(vec acc, vec a, vec b) {
  return (vec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
}
#elif defined(__GNUC__) && !defined(SAIL_NO_SIMD) && defined(__aarch64__)
#include <arm_neon.h>
static inline vec vfma(vec acc, vec a, vec b) {
  float32x4_t x[2], y[2], z[2];
  memcpy(x, &acc, sizeof x);
  memcpy(y, &a, sizeof y);
  memcpy(z, &b, sizeof z);
  x[0] = vfmaq_f32(x[0], y[0], z[0]);
  x[1] = vfmaq_f32(x[1], y[1], z[1]);
  memcpy(&acc, x, sizeof x);
  return acc;
}
#else
static inline vec vfma(vec acc, vec a, vec b) { return vmuladd(acc, a, b); }
#endif

static inline void vstore(float *p, vec v) { memcpy(p, &v, sizeof v); }

static inline vec vload(const float *p) {
  vec v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* ---- IEEE binary16 <-> float32 (sail_attention.h) ----------------------------------------
 * The portable conversions work on the bits: float32 -> half re-biases the exponent and rounds
 * the 13 dropped mantissa bits to nearest even (a carry may move into the exponent, which is
 * the correct next binade or 65504 -> inf only from 65520 up); below 2^-14 the 24-bit
 * significand is shifted into half subnormal units of 2^-24 with the same rounding. */
static uint16_t f16_of(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  const uint32_t sign = (x >> 16) & 0x8000u, abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) /* NaN: quiet, the payload's top bits */
    return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) /* 65520 (halfway from 65504 to 2^16) and up, inf */
    return (uint16_t)(sign | 0x7c00u);
  if (abs >= 0x38800000u) { /* normal: 2^-14 and up */
    const uint32_t m = abs - (112u << 23); /* exponent bias 127 -> 15 */
    return (uint16_t)(sign | ((m + 0xfffu + ((m >> 13) & 1u)) >> 13));
  }
  const uint32_t e = abs >> 23;
  if (e < 102) /* below 2^-25: rounds to 0 */
    return (uint16_t)sign;
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u, shift = 126u - e; /* 14 .. 24 */
  const uint32_t rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  uint32_t q = mant >> shift;
  q += rest > half || (rest == half && (q & 1u));
  return (uint16_t)(sign | q);
}

static float f32_of(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0x1f) /* inf, NaN (quiet, as F16C's vcvtph2ps) */
    x = sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0u);
  else if (e)
    x = sign | ((e + 112u) << 23) | (m << 13);
  else { /* zero, subnormal: m * 2^-24, exact */
    const float f = (float)m * 0x1p-24f;
    memcpy(&x, &f, sizeof x);
    x |= sign;
  }
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}

#if defined(__GNUC__) && defined(__F16C__) && defined(__AVX__) && !defined(SAIL_NO_SIMD)
#include <immintrin.h>
#define SAIL_F16C 1
#endif

void sail_f16_from_f32(uint16_t *dst, const float *src, int64_t n) {
  int64_t i = 0;
#ifdef SAIL_F16C
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i)
    dst[i] = f16_of(src[i]);
}

void sail_f32_from_f16(float *dst, const uint16_t *src, int64_t n) {
  int64_t i = 0;
#ifdef SAIL_F16C
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
  for (; i < n; ++i)
    dst[i] = f32_of(src[i]);
}

#define SAIL_ALWAYS_INLINE static inline __attribute__((always_inline))
/* Kept out of line: inlined into their callers' loops, gcc 12 spilled the register blocks. */
#define SAIL_NOINLINE __attribute__((noinline))

/* 8 elements from element d of a key or value row: float32, or halves converted (exact). The
 * kernels below take `half` as a constant (one copy of each for float32 rows, one for halves):
 * no per-element choice. */
SAIL_ALWAYS_INLINE vec vload_row(const void *row, int64_t d, const int half) {
  if (!half)
    return vload((const float *)row + d);
#ifdef SAIL_F16C
  return (vec)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + d)));
#else
  float f[LANES];
  for (int l = 0; l < LANES; ++l)
    f[l] = f32_of(((const uint16_t *)row)[d + l]);
  return vload(f);
#endif
}

SAIL_ALWAYS_INLINE float row_at(const void *row, int64_t e, const int half) {
  return half ? f32_of(((const uint16_t *)row)[e]) : ((const float *)row)[e];
}

/* Row t of keys or values at `base` (float32, or halves), `stride` elements apart. */
SAIL_ALWAYS_INLINE const void *row_of(const void *base, int64_t t, int64_t stride,
                                      const int half) {
  return half ? (const void *)((const uint16_t *)base + t * stride)
              : (const void *)((const float *)base + t * stride);
}

static inline float vsum(vec v) {
  float s = 0.0f;
  for (int l = 0; l < LANES; ++l)
    s += vlane(v, l);
  return s;
}

/* exp(x - top) of every x[skip .. skip + n), in place, and their sum: 8 lanes at a time (lane l
 * sums the elements skip + l, skip + l + 8, ... of x, then the lanes are added in order; x[0 ..
 * skip) is neither read nor written) with a Cephes-style polynomial (within 0.97 ulp of exp over
 * [-87, 0], checked against double exp on 2^20 points; attention's arguments x - top are <= 0),
 * and exactly 0 below -87.3 (where expf gives 0 or a denormal below 1.2e-38): a dead key's weight
 * stays exactly 0. NaN stays NaN. */
static float exp_row(float *x, int64_t skip, int64_t n, float top) {
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD)
  const vec lo = vsplat(-87.3f), hi = vsplat(88.3f), log2e = vsplat(1.44269504088896341f);
  const vec c1 = vsplat(0.693359375f), c2 = vsplat(-2.12194440e-4f), one = vsplat(1.0f);
  vec sum = vzero();
  for (int64_t i = 0; i < skip + n; i += LANES) {
    /* lanes [l0, l1) of this vector are elements of the row */
    const int64_t l0 = skip > i ? skip - i : 0;
    const int64_t l1 = skip + n - i < LANES ? skip + n - i : LANES;
    const int whole = l0 == 0 && l1 == LANES;
    float part[LANES];
    vec a;
    if (whole) { /* a constant size: one vector load, not a call to memcpy */
      a = vload(x + i);
    } else {
      for (int l = 0; l < LANES; ++l)
        part[l] = -INFINITY;
      memcpy(part + l0, x + i + l0, (size_t)(l1 - l0) * sizeof(float));
      a = vload(part);
    }
    a = a - vsplat(top);
    const ivec dead = a < lo; /* -1 where the result is 0 */
    const ivec over = a > hi;
    a = (vec)(((ivec)hi & over) | ((ivec)a & ~over));
    a = (vec)(((ivec)lo & dead) | ((ivec)a & ~dead));
    const vec fx = a * log2e + vsplat(0.5f);
    ivec k = __builtin_convertvector(fx, ivec); /* toward 0; floor below */
    k += (ivec)(__builtin_convertvector(k, vec) > fx);
    const vec kf = __builtin_convertvector(k, vec);
    const vec r = a - kf * c1 - kf * c2;
    vec p = vsplat(1.9875691500e-4f);
    p = p * r + vsplat(1.3981999507e-3f);
    p = p * r + vsplat(8.3334519073e-3f);
    p = p * r + vsplat(4.1665795894e-2f);
    p = p * r + vsplat(1.6666665459e-1f);
    p = p * r + vsplat(5.0000001201e-1f);
    p = p * (r * r) + r + one;
    vec e = p * (vec)((k + 127) << 23);
    e = (vec)((ivec)e & ~dead);
    if (whole) {
      vstore(x + i, e);
    } else {
      vstore(part, e);
      memcpy(x + i + l0, part + l0, (size_t)(l1 - l0) * sizeof(float));
      for (int l = 0; l < LANES; ++l)
        if (l < l0 || l >= l1)
          e[l] = 0.0f;
    }
    sum += e;
  }
  return vsum(sum);
#else
  float sum = 0.0f;
  for (int64_t t = skip; t < skip + n; ++t) {
    x[t] = x[t] - top < -87.3f ? 0.0f : expf(x[t] - top);
    sum += x[t];
  }
  return sum;
#endif
}

/* Below this many multiply-adds per call the pool's wake-up costs more than it saves. */
#define SAIL_ATTENTION_SERIAL_WORK 262144

typedef struct job {
  const sail_attention_args *a;
  int64_t group_rows; /* query rows per (batch, kv head): (q_heads / kv_heads) * q_len */
  int64_t blocks;     /* units per (batch, kv head) */
  int64_t units;      /* batch * kv_heads * blocks */
  int64_t chunks;     /* key chunks per unit; 1: each unit takes every key */
  int64_t chunk_len;
  int phase;          /* chunked: 0 scores, 1 weights and partial sums */
  int parts;          /* of each pool job (sail_pool_run_parts) */
  float *scores;      /* unchunked: [parts][ROWS][kv_len]; chunked: [units][ROWS][kv_len] */
  float *partial;     /* chunked: [units][chunks][ROWS][value_dim + 2] (partial_of) */
  float *kt;          /* NULL, or the keys in transposed tiles (kt_of) */
  int32_t *live;      /* with kt: [parts][kv_len], the keys a row block weighs */
  float *v32;         /* half values with kt: every value as float32 (v_of) */
} job;

/* The rows of unit u: pointers to their queries, masks (NULL: none) and outputs. */
typedef struct unit_rows {
  int64_t b, g, count;
  const float *q[ROWS];
  const float *mask[ROWS];
  float *y[ROWS];
} unit_rows;

static void unit_rows_of(const job *j, int64_t u, unit_rows *r) {
  const sail_attention_args *a = j->a;
  const int64_t per_head = a->q_heads / a->kv_heads;
  const int64_t block = u % j->blocks, group = u / j->blocks;
  const int64_t first = block * ROWS;
  r->b = group / a->kv_heads;
  r->g = group % a->kv_heads;
  r->count = j->group_rows - first < ROWS ? j->group_rows - first : ROWS;
  for (int64_t i = 0; i < r->count; ++i) {
    const int64_t row = first + i;
    const int64_t h = r->g * per_head + row % per_head, s = row / per_head;
    const int64_t at = (r->b * a->q_heads + h) * a->q_len + s;
    r->q[i] = a->q + at * a->head_dim;
    r->y[i] = a->y + at * a->value_dim;
    r->mask[i] = a->mask ? a->mask + r->b * a->mask_strides[0] + h * a->mask_strides[1] +
                               s * a->mask_strides[2]
                         : NULL;
  }
}

/* out[4 * i + j] = q[i] . k[j] for 4 rows and 4 keys: 16 vector accumulators, each load of a
 * row or a key serving 4 multiply-adds. */
SAIL_ALWAYS_INLINE void dot4x4(const float *const *q, const void *const *k, int64_t n, float *out,
                               const int half) {
  vec acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j)
      acc[i][j] = vzero();
  int64_t d = 0;
  for (; d + LANES <= n; d += LANES) {
    const vec k0 = vload_row(k[0], d, half), k1 = vload_row(k[1], d, half),
              k2 = vload_row(k[2], d, half), k3 = vload_row(k[3], d, half);
    for (int i = 0; i < 4; ++i) {
      const vec qi = vload(q[i] + d);
      acc[i][0] = vmuladd(acc[i][0], qi, k0);
      acc[i][1] = vmuladd(acc[i][1], qi, k1);
      acc[i][2] = vmuladd(acc[i][2], qi, k2);
      acc[i][3] = vmuladd(acc[i][3], qi, k3);
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      float s = vsum(acc[i][j]);
      for (int64_t e = d; e < n; ++e)
        s += q[i][e] * row_at(k[j], e, half);
      out[4 * i + j] = s;
    }
}

SAIL_ALWAYS_INLINE float dot1(const float *q, const void *k, int64_t n, const int half) {
  vec acc = vzero();
  int64_t d = 0;
  for (; d + LANES <= n; d += LANES)
    acc = vmuladd(acc, vload(q + d), vload_row(k, d, half));
  float s = vsum(acc);
  for (; d < n; ++d)
    s += q[d] * row_at(k, d, half);
  return s;
}

/* ---- Transposed keys: prefills, many query rows per kv head ---------------------------------
 * The keys of one (batch, kv head) are copied once per call into tiles of TK keys, [tile][d][TK]
 * (keys past kv_len are 0), so that a tile's scores for TR query rows are 2 * TR vector
 * accumulators updated by one broadcast query element and two key vectors per d: no horizontal
 * sums, and every load serves TR or 2 multiply-adds. The weighted values use the same register
 * block (TR rows x TK values) with one broadcast weight per row and key. Each score is one
 * sequential sum over d (fused multiply-adds where the machine has them), whatever the width.
 *
 * The tile vectors (tvec) are AVX2's 8 lanes (6 rows: 12 accumulators of 16 registers) or, in
 * AVX-512 builds, 16 lanes (12 rows: 24 accumulators of 32 registers), which on a Zen 5 core
 * (two 512-bit FMA pipes) doubles the multiply-adds per cycle. Gemma 3 270M's 1024-token prefill
 * (18 layers: 3 causal, 15 with a 512-key window; 4 query heads on one kv head of 256), its
 * sail_attention time on 1 thread of a shared 2-core Zen 5, medians of 5 interleaved runs:
 * AVX-512 435 -> 180 ms, AVX2 (-mno-avx512f) 541 -> 301 ms, the old kernel before -> now
 * (with the vectorized mask scans and softmax bookkeeping below). */
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD) && defined(__AVX512F__)
#include <immintrin.h>
typedef float tvec __attribute__((vector_size(16 * sizeof(float))));
enum { TL = 16, TR = 12 };
static inline tvec tfma(tvec acc, tvec a, tvec b) {
  return (tvec)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
}
static inline tvec tsplat(float x) { return (tvec)_mm512_set1_ps(x); }
#else
typedef vec tvec;
enum { TL = LANES, TR = 6 };
static inline tvec tfma(tvec acc, tvec a, tvec b) { return vfma(acc, a, b); }
static inline tvec tsplat(float x) { return vsplat(x); }
#endif
enum { TK = 2 * TL };

static inline tvec tzero(void) { return tsplat(0.0f); }

static inline tvec tload(const float *p) {
  tvec v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void tstore(float *p, tvec v) { memcpy(p, &v, sizeof v); }

_Static_assert(SAIL_ATTENTION_ROWS % TR == 0, "whole register blocks of rows per unit");

static const float *kt_of(const job *j, int64_t b, int64_t g) {
  const sail_attention_args *a = j->a;
  const size_t tiles = (size_t)((a->kv_len + TK - 1) / TK);
  return j->kt + (size_t)(b * a->kv_heads + g) * tiles * TK * (size_t)a->head_dim;
}

static void transpose_keys(const job *j) {
  const sail_attention_args *a = j->a;
  const int64_t d = a->head_dim, tiles = (a->kv_len + TK - 1) / TK;
  for (int64_t b = 0; b < a->batch; ++b)
    for (int64_t g = 0; g < a->kv_heads; ++g) {
      const int64_t at = b * a->k_strides[0] + g * a->k_strides[1];
      float *kt = (float *)kt_of(j, b, g);
      for (int64_t tile = 0; tile < tiles; ++tile) {
        float *dst = kt + (size_t)tile * TK * (size_t)d;
        for (int u = 0; u < TK; ++u) {
          const int64_t t = tile * TK + u;
          if (t < a->kv_len && a->k)
            for (int64_t e = 0; e < d; ++e)
              dst[e * TK + u] = a->k[at + t * a->k_strides[2] + e];
          else if (t < a->kv_len) /* half keys */
            for (int64_t e = 0; e < d; ++e)
              dst[e * TK + u] = f32_of(a->k16[at + t * a->k_strides[2] + e]);
          else
            for (int64_t e = 0; e < d; ++e)
              dst[e * TK + u] = 0.0f;
        }
      }
    }
}

/* out[i][u] = q[i] . key u of the tile, for TR rows (the caller repeats a row to fill a
 * block and keeps only its rows' results). */
static SAIL_NOINLINE void kt_dots(const float *const *q, const float *kt, int64_t n, float (*out)[TK]) {
  tvec acc[TR][2];
  for (int i = 0; i < TR; ++i)
    acc[i][0] = acc[i][1] = tzero();
  for (int64_t d = 0; d < n; ++d) {
    const tvec k0 = tload(kt + d * TK), k1 = tload(kt + d * TK + TL);
    for (int i = 0; i < TR; ++i) {
      const tvec qi = tsplat(q[i][d]);
      acc[i][0] = tfma(acc[i][0], qi, k0);
      acc[i][1] = tfma(acc[i][1], qi, k1);
    }
  }
  for (int i = 0; i < TR; ++i) {
    tstore(out[i], acc[i][0]);
    tstore(out[i] + TL, acc[i][1]);
  }
}

/* out[i][e0 .. e0 + TK) = sum over the keys live[0 .. n) of w[i][t] * v[t][e0 ..], for the
 * first `rows` of TR rows (w of the others: any readable weights, results dropped). */
static SAIL_NOINLINE void kt_weigh(const float *const *w, const int32_t *live, int64_t n, const float *v,
                     int64_t vs, int64_t e0, int rows, float *const *out) {
  tvec acc[TR][2];
  for (int i = 0; i < TR; ++i)
    acc[i][0] = acc[i][1] = tzero();
  for (int64_t l = 0; l < n; ++l) {
    const int64_t t = live[l];
    const tvec v0 = tload(v + t * vs + e0), v1 = tload(v + t * vs + e0 + TL);
    for (int i = 0; i < TR; ++i) {
      const tvec wi = tsplat(w[i][t]);
      acc[i][0] = tfma(acc[i][0], wi, v0);
      acc[i][1] = tfma(acc[i][1], wi, v1);
    }
  }
  for (int i = 0; i < rows; ++i) {
    tstore(out[i] + e0, acc[i][0]);
    tstore(out[i] + e0 + TL, acc[i][1]);
  }
}

/* Whether adding mask value m gives m for any score (sail_attention.h). */
static int dead(float m) { return m <= -FLT_MAX; }

/* Whether every key t0 .. t0 + keys - 1 is dead for rows i .. i + rows - 1. */
static int all_dead(const unit_rows *r, int64_t i, int64_t rows, int64_t t0, int64_t keys,
                    int64_t mt) {
  if (!r->mask[0])
    return 0;
  for (int64_t e = i; e < i + rows; ++e)
    for (int64_t t = t0; t < t0 + keys; ++t)
      if (!dead(r->mask[e][t * mt]))
        return 0;
  return 1;
}

/* When every key t0 .. t0 + keys - 1 is dead for rows i .. i + rows - 1: their scores
 * x[e * ld + t] are the mask values (no products), and 1; else 0 and nothing written. */
static int dead_block(const unit_rows *r, int64_t i, int64_t rows, int64_t t0, int64_t keys,
                      int64_t mt, float *x, int64_t ld) {
  if (!all_dead(r, i, rows, t0, keys, mt))
    return 0;
  for (int64_t e = i; e < i + rows; ++e)
    for (int64_t t = t0; t < t0 + keys; ++t)
      x[e * ld + t] = r->mask[e][t * mt];
  return 1;
}

/* The score of row e and key t from its dot product: scaled, capped, masked. */
static float logit(const sail_attention_args *a, const unit_rows *r, int64_t e, int64_t t,
                   float dot) {
  float s = dot * a->scale;
  if (a->softcap > 0.0f)
    s = a->softcap * tanhf(s / a->softcap);
  if (r->mask[e])
    s += r->mask[e][t * a->mask_strides[3]];
  return s;
}

/* x[i * ld + t] for keys t in [t0, t1) of the unit's rows: scaled, capped and masked scores.
 * Keys that are dead for every row of a 4 x 4 block get the mask's value without a product. */
SAIL_ALWAYS_INLINE void score_keys_of(const sail_attention_args *a, const unit_rows *r, int64_t t0,
                                      int64_t t1, float *x, int64_t ld, const int half) {
  const int64_t at = r->b * a->k_strides[0] + r->g * a->k_strides[1];
  const void *k = half ? (const void *)(a->k16 + at) : (const void *)(a->k + at);
  const int64_t mt = a->mask_strides[3], ks = a->k_strides[2], d = a->head_dim;
  for (int64_t tile = t0; tile < t1; tile += KEY_TILE) {
    const int64_t end = tile + KEY_TILE < t1 ? tile + KEY_TILE : t1;
    for (int64_t i = 0; i < r->count; i += 4) {
      const int64_t rows = r->count - i < 4 ? r->count - i : 4;
      for (int64_t t = tile; t < end;) {
        const int64_t keys = rows == 4 && end - t >= 4 ? 4 : 1;
        float dots[16];
        if (dead_block(r, i, rows, t, keys, mt, x, ld)) {
          /* the mask's values written */
        } else if (keys == 4) {
          const void *kt[4] = {row_of(k, t, ks, half), row_of(k, t + 1, ks, half),
                               row_of(k, t + 2, ks, half), row_of(k, t + 3, ks, half)};
          dot4x4(&r->q[i], kt, d, dots, half);
          for (int64_t e = 0; e < 4; ++e)
            for (int64_t u = 0; u < 4; ++u)
              x[(i + e) * ld + t + u] = logit(a, r, i + e, t + u, dots[4 * e + u]);
        } else {
          for (int64_t e = i; e < i + rows; ++e)
            x[e * ld + t] = logit(a, r, e, t, dot1(r->q[e], row_of(k, t, ks, half), d, half));
        }
        t += keys;
      }
    }
  }
}

static void score_keys(const sail_attention_args *a, const unit_rows *r, int64_t t0, int64_t t1,
                       float *x, int64_t ld) {
  if (a->k16)
    score_keys_of(a, r, t0, t1, x, ld, 1);
  else
    score_keys_of(a, r, t0, t1, x, ld, 0);
}

/* Largest of x[i * ld + t] for t in [t0, t1), per row. */
static void row_max(const unit_rows *r, int64_t t0, int64_t t1, const float *x, int64_t ld,
                    float *top) {
  for (int64_t i = 0; i < r->count; ++i) {
    const float *xi = x + i * ld;
    float m = -INFINITY;
    int64_t t = t0;
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD)
    /* per lane, then across: the same largest value (NaNs skipped as below) */
    vec mv = vsplat(-INFINITY);
    for (; t + LANES <= t1; t += LANES) {
      const vec xv = vload(xi + t);
      const ivec more = xv > mv;
      mv = (vec)(((ivec)xv & more) | ((ivec)mv & ~more));
    }
    for (int l = 0; l < LANES; ++l)
      m = mv[l] > m ? mv[l] : m;
#endif
    for (; t < t1; ++t)
      m = xi[t] > m ? xi[t] : m;
    top[i] = m;
  }
}

/* out[i][:] = sum_t x[i][t] * v[t, :] for t in [t0, t1), with v's rows vs elements apart:
 * four rows at a time, 16 values of each in registers while the keys pass; keys whose weight is
 * 0 in all four rows are not read. */
SAIL_ALWAYS_INLINE void weigh_span(const unit_rows *r, const float *x, int64_t ld, const void *v,
                                   int64_t vs, int64_t dv, int64_t t0, int64_t t1,
                                   float *const *out, const int half) {
  for (int64_t i = 0; i < r->count; i += 4) {
    const int64_t rows = r->count - i < 4 ? r->count - i : 4;
    const float *w[4];
    for (int64_t e = 0; e < 4; ++e)
      w[e] = x + (i + (e < rows ? e : 0)) * ld; /* rows past the unit: weight 0 below */
    int64_t e0 = 0;
    for (; e0 + 2 * LANES <= dv; e0 += 2 * LANES) { /* 8 vector accumulators */
      vec acc[4][2];
      for (int e = 0; e < 4; ++e)
        acc[e][0] = acc[e][1] = vzero();
      for (int64_t t = t0; t < t1; ++t) {
        float wt[4];
        for (int e = 0; e < 4; ++e)
          wt[e] = e < rows ? w[e][t] : 0.0f;
        if (wt[0] == 0.0f && wt[1] == 0.0f && wt[2] == 0.0f && wt[3] == 0.0f)
          continue;
        const void *vt = row_of(v, t, vs, half);
        const vec v0 = vload_row(vt, e0, half), v1 = vload_row(vt, e0 + LANES, half);
        for (int e = 0; e < 4; ++e) {
          const vec we = vsplat(wt[e]);
          acc[e][0] = vmuladd(acc[e][0], we, v0);
          acc[e][1] = vmuladd(acc[e][1], we, v1);
        }
      }
      for (int64_t e = 0; e < rows; ++e) {
        vstore(out[i + e] + e0, acc[e][0]);
        vstore(out[i + e] + e0 + LANES, acc[e][1]);
      }
    }
    for (; e0 < dv; ++e0) /* values past the last 16 */
      for (int64_t e = 0; e < rows; ++e) {
        float sum = 0.0f;
        for (int64_t t = t0; t < t1; ++t)
          sum += w[e][t] * row_at(row_of(v, t, vs, half), e0, half);
        out[i + e][e0] = sum;
      }
  }
}

/* For each row i: x[i][t] = exp(x[i][t] - top[i]) for t in [t0, t1); sums[i] = their sum;
 * out[i][:] = sum_t x[i][t] * v[t, :] (weigh_span). */
static void weigh_values(const sail_attention_args *a, const unit_rows *r, int64_t t0, int64_t t1,
                         float *x, int64_t ld, const float *top, float *const *out,
                         float *sums) {
  const int64_t dv = a->value_dim, vs = a->v_strides[2];
  for (int64_t i = 0; i < r->count; ++i)
    sums[i] = exp_row(x + i * ld + t0, 0, t1 - t0, top[i]);
  const int64_t at = r->b * a->v_strides[0] + r->g * a->v_strides[1];
  if (a->v16)
    weigh_span(r, x, ld, a->v16 + at, vs, dv, t0, t1, out, 1);
  else
    weigh_span(r, x, ld, a->v + at, vs, dv, t0, t1, out, 0);
}

/* One unit over every key, on part `part`'s scratch rows. */
/* The keys [*lo, *hi) outside which every key is dead for every row of the unit (a causal
 * prefill's later keys, a sliding window's earlier ones), when every row has a live key; else
 * all keys. Dropping the others changes nothing: their weights are exactly 0 (exp of at most
 * -FLT_MAX minus a finite maximum) and weigh_values skips keys whose weights are all 0. */
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD)
enum { RUN = 4 * LANES };

/* Whether m[0 .. RUN) are all dead: one vector test per 8 values, one reduction per RUN. */
static inline int dead_run(const float *m) {
  const vec lim = vsplat(-FLT_MAX);
  const ivec d = (vload(m) <= lim) & (vload(m + LANES) <= lim) &
                 (vload(m + 2 * LANES) <= lim) & (vload(m + 3 * LANES) <= lim);
  uint64_t w[sizeof d / sizeof(uint64_t)], all = ~0ull;
  memcpy(w, &d, sizeof w);
  for (size_t i = 0; i < sizeof w / sizeof w[0]; ++i)
    all &= w[i];
  return all == ~0ull;
}
#endif

/* The first key t in [t0, t1) whose mask value m[t * mt] is not dead, or t1; the last one, or
 * t0 - 1. A contiguous row is tested RUN values at a time first (the same test: NaN is not
 * dead). */
static int64_t first_live(const float *m, int64_t mt, int64_t t0, int64_t t1) {
  int64_t t = t0;
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD)
  for (; mt == 1 && t + RUN <= t1 && dead_run(m + t); t += RUN) {
  }
#endif
  for (; t < t1; ++t)
    if (!dead(m[t * mt]))
      return t;
  return t1;
}

static int64_t last_live(const float *m, int64_t mt, int64_t t0, int64_t t1) {
  int64_t t = t1;
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD)
  for (; mt == 1 && t - RUN >= t0 && dead_run(m + t - RUN); t -= RUN) {
  }
#endif
  for (--t; t >= t0; --t)
    if (!dead(m[t * mt]))
      return t;
  return t0 - 1;
}

static void live_keys(const sail_attention_args *a, const unit_rows *r, int64_t *lo,
                      int64_t *hi) {
  const int64_t n = a->kv_len, mt = a->mask_strides[3];
  *lo = 0;
  *hi = n;
  if (!r->mask[0])
    return;
  /* Each row is scanned only outside the span [first, last] found so far, and inside it only
   * until one live key shows that the row has one: for consecutive causal or windowed rows
   * that is a few keys each, where scanning every row from both ends cost 8% of a 1024-token
   * prefill's attention. */
  int64_t first = n, last = -1;
  for (int64_t i = 0; i < r->count; ++i) {
    const float *m = r->mask[i];
    if (i && m == r->mask[i - 1])
      continue; /* the previous row's mask (query heads sharing one): nothing new */
    const int64_t below = first_live(m, mt, 0, first);
    int live = below < first;
    first = below < first ? below : first;
    const int64_t from = last + 1 > first ? last + 1 : first;
    const int64_t above = last_live(m, mt, from, n);
    if (above >= from) {
      last = above;
      live = 1;
    }
    if (!live)
      live = first_live(m, mt, first, last + 1) <= last;
    if (!live)
      return; /* a row with every key masked weighs them all equally */
  }
  *lo = first;
  *hi = last + 1;
}

/* out[u] = logit(dot[u]) of row e for the keys t .. t + n - 1: scaled, capped, masked, as
 * logit() computes each (the same operations in the same order, 8 lanes at a time without
 * soft-capping and with a contiguous mask row). */
static void logits(const sail_attention_args *a, const unit_rows *r, int64_t e, int64_t t,
                   const float *dot, int64_t n, float *out) {
  const float *mask = r->mask[e];
  int64_t u = 0;
  if (a->softcap == 0.0f && (!mask || a->mask_strides[3] == 1)) {
    const vec scale = vsplat(a->scale);
    for (; u + LANES <= n; u += LANES) {
      vec s = vmul(vload(dot + u), scale);
      if (mask)
        s = vadd(s, vload(mask + t + u));
      vstore(out + u, s);
    }
  }
  for (; u < n; ++u)
    out[u] = logit(a, r, e, t + u, dot[u]);
}

/* score_keys over the transposed keys of the unit's (batch, kv head). */
static void kt_score_keys(const job *j, const unit_rows *r, int64_t t0, int64_t t1, float *x,
                          int64_t ld) {
  const sail_attention_args *a = j->a;
  const float *kt = kt_of(j, r->b, r->g);
  const int64_t mt = a->mask_strides[3], d = a->head_dim;
  for (int64_t tile = t0 / TK; tile * TK < t1; ++tile) {
    const int64_t base = tile * TK;
    const int64_t lo = base > t0 ? base : t0, hi = base + TK < t1 ? base + TK : t1;
    const float *ktile = kt + (size_t)tile * TK * (size_t)d;
    for (int64_t i = 0; i < r->count; i += TR) {
      const int rows = r->count - i < TR ? (int)(r->count - i) : TR;
      if (dead_block(r, i, rows, lo, hi - lo, mt, x, ld))
        continue;
      const float *q[TR];
      for (int e = 0; e < TR; ++e) /* a short block repeats its last row */
        q[e] = r->q[i + (e < rows ? e : rows - 1)];
      float dots[TR][TK];
      kt_dots(q, ktile, d, dots);
      for (int64_t e = 0; e < rows; ++e)
        logits(a, r, i + e, lo, dots[e] + (lo - base), hi - lo, x + (i + e) * ld + lo);
    }
  }
}

/* The values of (batch b, kv head g) as float32: in place, or (half values) in j->v32, whose
 * rows are value_dim floats, [batch][kv_heads][kv_len][value_dim]. */
static const float *v_of(const job *j, int64_t b, int64_t g) {
  const sail_attention_args *a = j->a;
  if (a->v)
    return a->v + b * a->v_strides[0] + g * a->v_strides[1];
  return j->v32 + (size_t)(b * a->kv_heads + g) * (size_t)a->kv_len * (size_t)a->value_dim;
}

/* weigh_values for the transposed-key path: TR rows at a time over the keys that some row of
 * the block weighs (a list, so each value chunk's loop reads no weights it skips). */
static void kt_weigh_values(const job *j, const unit_rows *r, int64_t t0, int64_t t1, float *x,
                            int64_t ld, const float *top, float *const *out, float *sums,
                            int32_t *live) {
  const sail_attention_args *a = j->a;
  const int64_t dv = a->value_dim, vs = a->v ? a->v_strides[2] : dv;
  /* each key's lane is fixed by its index, not by t0: a row's sum does not depend on the
   * other rows of its unit (whose live keys set t0), so a prefill run in pieces gives the same
   * bits as in one call */
  const int64_t from = t0 - t0 % LANES;
  for (int64_t i = 0; i < r->count; ++i)
    sums[i] = exp_row(x + i * ld + from, t0 - from, t1 - t0, top[i]);
  const float *v = v_of(j, r->b, r->g);
  for (int64_t i = 0; i < r->count; i += TR) {
    const int rows = r->count - i < TR ? (int)(r->count - i) : TR;
    const float *w[TR];
    for (int e = 0; e < TR; ++e) /* a short block repeats its last row */
      w[e] = x + (i + (e < rows ? e : rows - 1)) * ld;
    int64_t n = 0, t = t0;
#if defined(__GNUC__) && !defined(SAIL_NO_SIMD)
    for (; t + LANES <= t1; t += LANES) { /* the same test, 8 keys at a time */
      ivec any = (ivec){0};
      for (int e = 0; e < rows; ++e)
        any |= vload(w[e] + t) != vzero();
      for (int l = 0; l < LANES; ++l) {
        live[n] = (int32_t)(t + l);
        n += any[l] != 0;
      }
    }
#endif
    for (; t < t1; ++t) {
      int any = 0;
      for (int e = 0; e < rows; ++e)
        any |= w[e][t] != 0.0f;
      if (any)
        live[n++] = (int32_t)t;
    }
    int64_t e0 = 0;
    for (; e0 + TK <= dv; e0 += TK)
      kt_weigh(w, live, n, v, vs, e0, rows, out + i);
    for (; e0 < dv; ++e0) /* values past the last TK */
      for (int e = 0; e < rows; ++e) {
        float sum = 0.0f;
        for (int64_t l = 0; l < n; ++l)
          sum += w[e][live[l]] * v[live[l] * vs + e0];
        out[i + e][e0] = sum;
      }
  }
}

static void whole_unit(const job *j, int64_t u, int part) {
  const sail_attention_args *a = j->a;
  unit_rows r;
  unit_rows_of(j, u, &r);
  float *x = j->scores + (size_t)part * ROWS * (size_t)a->kv_len;
  float top[ROWS] = {0}, sums[ROWS];
  int64_t lo, hi;
  live_keys(a, &r, &lo, &hi);
  if (j->kt) {
    kt_score_keys(j, &r, lo, hi, x, a->kv_len);
    row_max(&r, lo, hi, x, a->kv_len, top);
    kt_weigh_values(j, &r, lo, hi, x, a->kv_len, top, r.y, sums,
                    j->live + (size_t)part * (size_t)a->kv_len);
  } else {
    score_keys(a, &r, lo, hi, x, a->kv_len);
    row_max(&r, lo, hi, x, a->kv_len, top);
    weigh_values(a, &r, lo, hi, x, a->kv_len, top, r.y, sums);
  }
  for (int64_t i = 0; i < r.count; ++i)
    for (int64_t e = 0; e < a->value_dim; ++e)
      r.y[i][e] /= sums[i];
}

/* The partial result of row i of chunk c of unit u: value_dim weighted sums, the sum of the
 * weights, the chunk's largest score. */
static float *partial_of(const job *j, int64_t u, int64_t c, int64_t i) {
  return j->partial + (((size_t)u * j->chunks + c) * ROWS + i) * (size_t)(j->a->value_dim + 2);
}

/* Chunk c of unit u: its scores and their maxima (phase 0), or its weights and partial sums
 * (phase 1, after every chunk's phase 0). */
static void chunk_of_unit(const job *j, int64_t u, int64_t c) {
  const sail_attention_args *a = j->a;
  unit_rows r;
  unit_rows_of(j, u, &r);
  const int64_t t0 = c * j->chunk_len;
  const int64_t t1 = t0 + j->chunk_len < a->kv_len ? t0 + j->chunk_len : a->kv_len;
  float *x = j->scores + (size_t)u * ROWS * (size_t)a->kv_len;
  const int64_t dv = a->value_dim;
  float *out[ROWS] = {0}, top[ROWS] = {0}, sums[ROWS];
  for (int64_t i = 0; i < r.count; ++i)
    out[i] = partial_of(j, u, c, i);
  if (j->phase == 0) {
    score_keys(a, &r, t0, t1, x, a->kv_len);
    row_max(&r, t0, t1, x, a->kv_len, top);
    for (int64_t i = 0; i < r.count; ++i)
      out[i][dv + 1] = top[i];
    return;
  }
  for (int64_t i = 0; i < r.count; ++i) {
    top[i] = -INFINITY;
    for (int64_t other = 0; other < j->chunks; ++other) {
      const float m = partial_of(j, u, other, i)[dv + 1];
      top[i] = m > top[i] ? m : top[i];
    }
  }
  weigh_values(a, &r, t0, t1, x, a->kv_len, top, out, sums);
  for (int64_t i = 0; i < r.count; ++i)
    out[i][dv] = sums[i];
}

static void run_part(void *ctx, int part, int parts) {
  const job *j = ctx;
  const int64_t items = j->units * j->chunks;
  for (int64_t w = part; w < items; w += parts) {
    if (j->chunks == 1)
      whole_unit(j, w, part);
    else
      chunk_of_unit(j, w / j->chunks, w % j->chunks);
  }
}

/* y of every unit from the chunks' partial sums (chunked runs). */
static void combine(const job *j) {
  const int64_t dv = j->a->value_dim;
  for (int64_t u = 0; u < j->units; ++u) {
    unit_rows r;
    unit_rows_of(j, u, &r);
    for (int64_t i = 0; i < r.count; ++i) {
      float sum = 0.0f;
      memset(r.y[i], 0, (size_t)dv * sizeof(float));
      for (int64_t c = 0; c < j->chunks; ++c) {
        const float *p = partial_of(j, u, c, i);
        for (int64_t e = 0; e < dv; ++e)
          r.y[i][e] += p[e];
        sum += p[dv];
      }
      for (int64_t e = 0; e < dv; ++e)
        r.y[i][e] /= sum;
    }
  }
}

static int valid(const sail_attention_args *a) {
  if (!a || a->batch < 0 || a->q_heads < 1 || a->kv_heads < 1 || a->q_heads % a->kv_heads ||
      a->q_len < 0 || a->kv_len < 0 || a->head_dim < 0 || a->value_dim < 0 ||
      !isfinite(a->scale) || !isfinite(a->softcap) || a->softcap < 0.0f)
    return 0;
  for (int d = 0; d < 3; ++d)
    if (a->k_strides[d] < 0 || a->v_strides[d] < 0)
      return 0;
  for (int d = 0; d < 4; ++d)
    if (a->mask_strides[d] < 0)
      return 0;
  const int64_t rows = a->batch * a->q_heads * a->q_len;
  if (rows && a->value_dim && !a->y)
    return 0;
  /* keys and values: float32 or half, one of the two pointers */
  return !rows || !a->kv_len || (a->q && !a->k != !a->k16 && !a->v != !a->v16);
}

int sail_attention(const sail_attention_args *a, sail_pool *pool) {
  if (!valid(a))
    return SAIL_ATTENTION_EINVAL;
  const int64_t rows = a->batch * a->q_heads * a->q_len;
  if (!rows || !a->value_dim)
    return SAIL_ATTENTION_OK;
  if (!a->kv_len) { /* a softmax over no keys weighs nothing */
    memset(a->y, 0, (size_t)rows * (size_t)a->value_dim * sizeof(float));
    return SAIL_ATTENTION_OK;
  }
  job j = {.a = a, .group_rows = a->q_heads / a->kv_heads * a->q_len};
  j.blocks = (j.group_rows + ROWS - 1) / ROWS;
  j.units = a->batch * a->kv_heads * j.blocks;
  const double work = (double)rows * (double)a->kv_len * (double)(a->head_dim + a->value_dim);
  if (work < SAIL_ATTENTION_SERIAL_WORK)
    pool = NULL;
  const int threads = sail_pool_threads(pool);
  const int64_t enough = sail_pool_parts(pool, INT32_MAX, 1); /* items to keep all busy */
  j.chunks = 1;
  if (threads > 1 && j.units < enough) {
    const int64_t want = (enough + j.units - 1) / j.units;
    const int64_t most = a->kv_len / MIN_CHUNK;
    j.chunks = want < most ? want : most;
    if (j.chunks < 1)
      j.chunks = 1;
  }
  j.chunk_len = (a->kv_len + j.chunks - 1) / j.chunks;
  j.chunks = (a->kv_len + j.chunk_len - 1) / j.chunk_len;
  const size_t row_floats = (size_t)ROWS * (size_t)a->kv_len;
  j.parts = sail_pool_parts(pool, j.units * j.chunks, 1);
  const size_t score_floats = row_floats * (size_t)(j.chunks == 1 ? j.parts : j.units);
  const size_t partial_floats = j.chunks == 1 ? 0
      : (size_t)j.units * (size_t)j.chunks * ROWS * (size_t)(a->value_dim + 2);
  /* transposed keys when whole units of query rows share each (batch, kv head) */
  const int transposed = j.chunks == 1 && j.group_rows >= ROWS;
  const size_t kt_floats = !transposed ? 0
      : (size_t)(a->batch * a->kv_heads) * (size_t)((a->kv_len + TK - 1) / TK) * TK *
            (size_t)a->head_dim;
  const size_t live_ints = transposed ? (size_t)j.parts * (size_t)a->kv_len : 0;
  /* half values with transposed keys: every value as float32 */
  const size_t v32_floats = !transposed || !a->v16 ? 0
      : (size_t)(a->batch * a->kv_heads) * (size_t)a->kv_len * (size_t)a->value_dim;
  float *scratch = malloc((score_floats + partial_floats + kt_floats + v32_floats) *
                              sizeof(float) + live_ints * sizeof(int32_t));
  if (!scratch)
    return SAIL_ATTENTION_ENOMEM;
  j.scores = scratch;
  j.partial = scratch + score_floats;
  float *rest = j.partial + partial_floats + kt_floats;
  j.v32 = v32_floats ? rest : NULL;
  if (j.v32)
    for (int64_t b = 0; b < a->batch; ++b)
      for (int64_t g = 0; g < a->kv_heads; ++g)
        for (int64_t t = 0; t < a->kv_len; ++t)
          sail_f32_from_f16((float *)v_of(&j, b, g) + t * a->value_dim,
                            a->v16 + b * a->v_strides[0] + g * a->v_strides[1] +
                                t * a->v_strides[2], a->value_dim);
  if (transposed) {
    j.kt = j.partial + partial_floats;
    j.live = (int32_t *)(rest + v32_floats);
    transpose_keys(&j);
  }
  if (j.chunks == 1) {
    sail_pool_run_parts(pool, run_part, &j, j.parts);
  } else {
    sail_pool_run_parts(pool, run_part, &j, j.parts);
    j.phase = 1;
    sail_pool_run_parts(pool, run_part, &j, j.parts);
    combine(&j);
  }
  free(scratch);
  return SAIL_ATTENTION_OK;
}
