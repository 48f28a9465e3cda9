/* SAIL C runtime: LUT-GEMV kernels for x86-64 AVX2 (compiled with -mavx2 or -march=...).
 *
 * Same tables, layout and integers as the portable kernels in sail_lut.c; see sail_lut.h.
 * One exception, private to this file's pair of entry points: for batches that take the codes
 * path (use_codes), sail_lut_tables_avx2 writes activation pairs instead of tables into each
 * token's 256 bytes per block, and sail_lut_tiles_avx2 reads them as such (see codes_pass).
 * 4- and 8-bit weights are stored as codes (sail_lut.h) and take nibble_pass at every batch size.
 *
 * Exactness: every narrow accumulator below has a proven bound.
 *   table bytes    L in [0, 15] (uint8), H in [-32, 31] (int8)
 *   byte sums      4 lookups (the 4 chunk pairs of a block) per byte: L-sum <= 60 fits uint8,
 *                  H-sum in [-128, 124] fits int8 (vpaddb wraps, but never has to)
 *   int16 (vpmaddubsw, never saturating: |products| tiny)
 *                  pair vector:  (L0 + 2 L1) + (16 H0 + 32 H1) in [-6144, 6132]
 *                  odd vector:   L + 16 H in [-2048, 2044] per subtile
 *   int16 sums     of at most 4 blocks: |.| <= 4 * 6144 = 24576 < 32767
 *   int32          (vpmaddwd by the plane weights 4^j <= 64 or 2^(b-1) <= 128) accumulate
 *                  sum_k q x - z sum_k x, which wraps modulo 2^32 exactly like the portable
 *                  kernel: exact whenever the group sum fits int32 (the reference checks).
 *   codes paths    bounds at codes_pass and nibble_quad4.
 */
#include "sail_lut.h"

#include "sail_attention.h" /* sail_f32_from_f16 */

#ifdef SAIL_LUT_HAVE_AVX2

#include <immintrin.h>
#include <string.h>

/* Tokens whose int16/int32 accumulators live on the stack during one pass over a tile. */
#define ROWS_PER_PASS 8
/* Tiles whose lookups share one load of a token's table registers, for batches: more tiles
 * per pass cut table loads (which matter when the lookups of several tokens are compute
 * bound). Batch 1 is memory bound and runs one tile per pass: one contiguous weight stream,
 * which the prefetchers follow best (measured on Zen 3, 4096 x 4096, weights out of cache:
 * 2 bits 0.79 -> 0.41 ms, 3 bits 1.08 -> 0.49 ms against two tiles per pass). */
#define TILES_PER_PASS 4
/* Blocks whose int16 sums may be added before they are widened (bound in the file comment). */
#define BLOCKS_PER_FLUSH 4
/* The sum blocks of a pass (sail_lut.h). S, a constant: 0 when they are the weight groups (the
 * common case: a plain step from group to group), 1 when activation blocks split the groups (the
 * general step, serving both, cost 1- and 2-bit batch-1 passes ~5% in cache). The group step
 * here recomputes each group's live blocks from K and tests the end against w->n_sums, as
 * sail_lut_sum_next(&sb, 0) would give them: with sail_lut_sum_next's step instead (counts kept
 * in the struct) gcc 12's code for the 4-bit codes pass took 1.5x the CPU of a whole Gemma 3
 * 270M w4g32 decode (sail_generate -n 64, 1 thread: 1.56 vs 1.05 s user; one 32-row block per
 * group, so the walk is most of the per-group work). */
static inline void group_next(const sail_lut_weight *w, sail_lut_sum *s) {
    s->j += 1;
    s->grp += 1;
    const long rows = (long)w->k - (long)s->grp * w->group_size;
    const long live = (rows + SAIL_LUT_BLOCK_K - 1) / SAIL_LUT_BLOCK_K;
    s->nblk = live < w->blocks_per_group ? (int)live : w->blocks_per_group;
}
#define FOR_EACH_SUM(w, sb, S)                                                                   \
    for (sail_lut_sum sb = sail_lut_sum_first(w); sb.j < (w)->n_sums;                           \
         (S) ? sail_lut_sum_next(&sb, 1) : group_next((w), &sb))
/* Software prefetch distance in each weight stream: the hardware prefetcher alone left batch 1
 * well below the read bandwidth (measured on Zen 3: 7 GB/s without, 12-13 GB/s with). */
#define PREFETCH_BYTES 2048

#define SAIL_INLINE static inline __attribute__((always_inline))

/* Batches of at least CODES_MIN_ROWS tokens over weights of CODES_MIN_BITS .. CODES_MAX_BITS
 * bits take the codes path (see codes_pass): the activation tables are replaced by activation
 * pairs. Measured on the 2-core Zen 3 (shared, 4096 x 4096, 1 thread): at 4 and 8 tokens the
 * codes path beat the tables by 1.1-1.6x at 3 and 4 bits, lost ~1.15x at 2 bits (its cost per
 * token, 16 vpmaddubsw per tile and block, does not shrink with the bits; the tables' does).
 * 4-bit weights now use the codes layout, which needs no unpacking of bit planes. */
#define CODES_MIN_ROWS 4
#define CODES_MIN_BITS 3
#define CODES_MAX_BITS 3

static int use_codes(const sail_lut_weight *w, int rows) {
    return rows >= CODES_MIN_ROWS && w->bits >= CODES_MIN_BITS && w->bits <= CODES_MAX_BITS;
}

/* ---- Tables ---------------------------------------------------------------------------------- */

void sail_lut_tables_avx2(const sail_lut_weight *w, const int8_t *xq, int rows, int row_begin,
                          int row_end, uint8_t *tables, int32_t *xsum) {
    /* int16 entry p (lane 0: p = 0..7, lane 1: p = 8..15) as byte pairs: bits 0,1 / 2,3 of p. */
    const __m256i bits01 = _mm256_setr_epi8(0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1,
                                            0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1);
    const __m256i bits23 = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0,
                                            0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    /* Broadcast activation byte pairs (0,1), (2,3), (4,5), (6,7) of a qword to every int16. */
    const __m256i pick01 = _mm256_set1_epi16(0x0100), pick23 = _mm256_set1_epi16(0x0302);
    const __m256i pick45 = _mm256_set1_epi16(0x0504), pick67 = _mm256_set1_epi16(0x0706);
    const __m256i low4 = _mm256_set1_epi16(15), bias = _mm256_set1_epi8(-128);
    int8_t scratch[SAIL_LUT_BLOCK_K];
    const int codes = use_codes(w, rows), nibbles = sail_lut_codes_layout(w);
    for (int t = row_begin; t < row_end; ++t) {
        const int8_t *xr = xq + (size_t)t * (size_t)w->k;
        for (sail_lut_sum s = sail_lut_sum_first(w); s.j < s.n_sums; sail_lut_sum_next(&s, 1)) {
            const int grp = s.grp;
            __m256i sad = _mm256_setzero_si256();
            for (int blk = s.blk0; blk < s.blk0 + s.nblk; ++blk) {
                const int8_t *x = sail_lut_block_rows(w, xr, grp, blk, scratch);
                uint8_t *tab = tables + sail_lut_table_offset(w, rows, t, grp, blk);
                /* sum of (x + 128) per 8 bytes; the bias is removed once per group */
                sad = _mm256_add_epi64(sad, _mm256_sad_epu8(_mm256_xor_si256(
                    _mm256_loadu_si256((const __m256i *)x), bias), _mm256_setzero_si256()));
                if (nibbles) {
                    _mm256_storeu_si256((__m256i *)tab, _mm256_loadu_si256((const __m256i *)x));
                    continue;
                }
                if (codes) {
                    /* activation pairs of the codes path: vector cp * 2 + rh, lane L, every
                     * int16 = rows (2 rh, 2 rh + 1) of chunk 2 cp + L */
                    for (int cp = 0; cp < 4; ++cp)
                        for (int rh = 0; rh < 2; ++rh) {
                            int16_t p0, p1;
                            memcpy(&p0, x + 8 * cp + 2 * rh, 2);
                            memcpy(&p1, x + 8 * cp + 4 + 2 * rh, 2);
                            _mm256_storeu_si256((__m256i *)(tab + (cp * 2 + rh) * 32),
                                                _mm256_setr_m128i(_mm_set1_epi16(p0),
                                                                  _mm_set1_epi16(p1)));
                        }
                    continue;
                }
                for (int cp = 0; cp < 4; ++cp) {
                    int64_t eight;
                    memcpy(&eight, x + cp * 8, 8);
                    const __m256i xb = _mm256_set1_epi64x(eight);
                    /* V[p] = x0 b0 + x1 b1 + x2 b2 + x3 b3 in int16, chunks 2cp (a), 2cp+1 (b) */
                    const __m256i va = _mm256_add_epi16(
                        _mm256_maddubs_epi16(bits01, _mm256_shuffle_epi8(xb, pick01)),
                        _mm256_maddubs_epi16(bits23, _mm256_shuffle_epi8(xb, pick23)));
                    const __m256i vb = _mm256_add_epi16(
                        _mm256_maddubs_epi16(bits01, _mm256_shuffle_epi8(xb, pick45)),
                        _mm256_maddubs_epi16(bits23, _mm256_shuffle_epi8(xb, pick67)));
                    const __m256i lo = _mm256_packus_epi16(_mm256_and_si256(va, low4),
                                                           _mm256_and_si256(vb, low4));
                    const __m256i hi = _mm256_packs_epi16(_mm256_srai_epi16(va, 4),
                                                          _mm256_srai_epi16(vb, 4));
                    /* packs interleave the lanes: qwords (a0-7, b0-7, a8-15, b8-15) -> a, b */
                    _mm256_storeu_si256((__m256i *)(tab + cp * 64),
                                        _mm256_permute4x64_epi64(lo, 0xD8));
                    _mm256_storeu_si256((__m256i *)(tab + cp * 64 + 32),
                                        _mm256_permute4x64_epi64(hi, 0xD8));
                }
            }
            const __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sad),
                                             _mm256_extracti128_si256(sad, 1));
            const int64_t total = _mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1);
            xsum[(size_t)t * (size_t)w->n_sums + (size_t)s.j] =
                (int32_t)(total - 128 * (int64_t)SAIL_LUT_BLOCK_K * s.nblk);
        }
    }
}

/* ---- Tiles ----------------------------------------------------------------------------------- */

/* Store the first `count` of 8 values (a partial tile at the end of N). */
SAIL_INLINE void store_ps(float *dst, __m256 v, int count) {
    if (count >= 8) {
        _mm256_storeu_ps(dst, v);
    } else if (count > 0) {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        memcpy(dst, tmp, (size_t)count * sizeof(float));
    }
}

SAIL_INLINE void store_epi32(int32_t *dst, __m256i v, int count) {
    if (count >= 8) {
        _mm256_storeu_si256((__m256i *)dst, v);
    } else if (count > 0) {
        int32_t tmp[8];
        _mm256_storeu_si256((__m256i *)tmp, v);
        memcpy(dst, tmp, (size_t)count * sizeof(int32_t));
    }
}

/* vpmaddubsw weights: pair vectors L0 + 2 L1 and 16 H0 + 32 H1; the odd vector's even bytes
 * (subtile 0) and odd bytes (subtile 1) separately. */
#define M_LO 0x0201
#define M_HI 0x2010
#define M_LO_A 0x0001
#define M_HI_A 0x0010
#define M_LO_B 0x0100
#define M_HI_B 0x1000

/* The 8 table registers of one token and block: lo and hi bytes of chunk pairs 0..3. */
typedef struct block_tables {
    __m256i lo[4], hi[4];
} block_tables;

SAIL_INLINE block_tables load_tables(const uint8_t *tab) {
    block_tables t;
    for (int cp = 0; cp < 4; ++cp) {
        t.lo[cp] = _mm256_load_si256((const __m256i *)(tab + cp * 64));
        t.hi[cp] = _mm256_load_si256((const __m256i *)(tab + cp * 64 + 32));
    }
    return t;
}

/* Widen the byte sums of index vector v (4 lookups per byte) to int16 and add them to the
 * int16 sums of its slot(s). */
SAIL_INLINE void widen(__m256i lo, __m256i hi, __m256i *acc16, int v, const int B) {
    if (v < 2 * (B / 2)) {
        const __m256i q = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi16(M_LO)),
                                           _mm256_maddubs_epi16(_mm256_set1_epi16(M_HI), hi));
        acc16[v] = _mm256_add_epi16(acc16[v], q);
    } else {
        const __m256i qa = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi16(M_LO_A)),
                                            _mm256_maddubs_epi16(_mm256_set1_epi16(M_HI_A), hi));
        const __m256i qb = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi16(M_LO_B)),
                                            _mm256_maddubs_epi16(_mm256_set1_epi16(M_HI_B), hi));
        acc16[v] = _mm256_add_epi16(acc16[v], qa);
        acc16[v + 1] = _mm256_add_epi16(acc16[v + 1], qb);
    }
}

/* The 4 lookups (one per chunk pair) of index vector v for lo and hi: 8 shuffles, 6 adds. */
SAIL_INLINE void lookup4(const block_tables *t, __m256i i0, __m256i i1, __m256i i2, __m256i i3,
                         __m256i *lo, __m256i *hi) {
    const __m256i lo01 = _mm256_add_epi8(_mm256_shuffle_epi8(t->lo[0], i0),
                                         _mm256_shuffle_epi8(t->lo[1], i1));
    const __m256i hi01 = _mm256_add_epi8(_mm256_shuffle_epi8(t->hi[0], i0),
                                         _mm256_shuffle_epi8(t->hi[1], i1));
    const __m256i lo23 = _mm256_add_epi8(_mm256_shuffle_epi8(t->lo[2], i2),
                                         _mm256_shuffle_epi8(t->lo[3], i3));
    const __m256i hi23 = _mm256_add_epi8(_mm256_shuffle_epi8(t->hi[2], i2),
                                         _mm256_shuffle_epi8(t->hi[3], i3));
    *lo = _mm256_add_epi8(lo01, lo23);
    *hi = _mm256_add_epi8(hi01, hi23);
}

/* One token, one tile, one block, indices straight from the weight bytes wb (batch 1). */
SAIL_INLINE void block_direct(const uint8_t *wb, const block_tables *t, __m256i *acc16,
                              const int B) {
    const __m256i nib = _mm256_set1_epi8(15);
#pragma GCC unroll 8
    for (int v = 0; v < B; ++v) {
        const __m256i raw0 = _mm256_loadu_si256((const __m256i *)(wb + v * 64));
        const __m256i raw1 = _mm256_loadu_si256((const __m256i *)(wb + v * 64 + 32));
        __m256i lo, hi;
        lookup4(t, _mm256_and_si256(raw0, nib), _mm256_and_si256(_mm256_srli_epi16(raw0, 4), nib),
                _mm256_and_si256(raw1, nib), _mm256_and_si256(_mm256_srli_epi16(raw1, 4), nib),
                &lo, &hi);
        widen(lo, hi, acc16, v, B);
    }
}

/* Index vectors of one tile and block, shared by every token: idx[v * 4 + cp]. */
SAIL_INLINE void extract_indices(const uint8_t *wb, __m256i *idx, const int B) {
    const __m256i nib = _mm256_set1_epi8(15);
#pragma GCC unroll 16
    for (int i = 0; i < 2 * B; ++i) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(wb + i * 32));
        idx[2 * i] = _mm256_and_si256(raw, nib);
        idx[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nib);
    }
}

/* One token, one tile, one block, indices extracted beforehand (batches). */
SAIL_INLINE void block_indexed(const __m256i *idx, const block_tables *t, __m256i *acc16,
                               const int B) {
#pragma GCC unroll 8
    for (int v = 0; v < B; ++v) {
        __m256i lo, hi;
        lookup4(t, idx[v * 4], idx[v * 4 + 1], idx[v * 4 + 2], idx[v * 4 + 3], &lo, &hi);
        widen(lo, hi, acc16, v, B);
    }
}

/* int16 sums -> int32 with the plane weights, and the int16 sums reset: (w, 0) picks the even
 * columns of each subtile, (0, w) the odd ones. acc32: even subtile 0, even subtile 1, odd
 * subtile 0, odd subtile 1. */
SAIL_INLINE void flush(__m256i *acc16, __m256i *acc32, const int B) {
    const int npair2 = 2 * (B / 2), nslot = B + (B & 1);
#pragma GCC unroll 8
    for (int s = 0; s < nslot; ++s) {
        const int pair = s < npair2;
        const int weight = pair ? 1 << (2 * (s / 2)) : 1 << (B - 1);
        const int sub = pair ? s % 2 : s - npair2;
        acc32[sub] = _mm256_add_epi32(acc32[sub],
                                      _mm256_madd_epi16(acc16[s], _mm256_set1_epi32(weight)));
        acc32[2 + sub] = _mm256_add_epi32(
            acc32[2 + sub], _mm256_madd_epi16(acc16[s], _mm256_set1_epi32(weight << 16)));
        acc16[s] = _mm256_setzero_si256();
    }
}

/* Fold the two chunk lanes of the int32 sums and interleave even and odd columns: the sums
 * of tile columns SAIL_LUT_COLUMN_ORDER[0..7] and [8..15] (the order scales and zero points
 * are stored in, so the float epilogue needs no further shuffles). */
SAIL_INLINE void fold_columns(const __m256i *acc32, __m256i *p, __m256i *q) {
    const __m256i e = _mm256_add_epi32(_mm256_permute2x128_si256(acc32[0], acc32[1], 0x20),
                                       _mm256_permute2x128_si256(acc32[0], acc32[1], 0x31));
    const __m256i o = _mm256_add_epi32(_mm256_permute2x128_si256(acc32[2], acc32[3], 0x20),
                                       _mm256_permute2x128_si256(acc32[2], acc32[3], 0x31));
    *p = _mm256_unpacklo_epi32(e, o);
    *q = _mm256_unpackhi_epi32(e, o);
}

/* Store 16 values held in kernel column order as tile columns 0..15 (the first `count`). */
SAIL_INLINE void store_tile_epi32(int32_t *dst, __m256i p, __m256i q, int count) {
    store_epi32(dst, _mm256_permute2x128_si256(p, q, 0x20), count);
    store_epi32(dst + 8, _mm256_permute2x128_si256(p, q, 0x31), count - 8);
}

SAIL_INLINE void store_tile_ps(float *dst, __m256 p, __m256 q, int count) {
    store_ps(dst, _mm256_permute2f128_ps(p, q, 0x20), count);
    store_ps(dst + 8, _mm256_permute2f128_ps(p, q, 0x31), count - 8);
}

/* Weight scales at..at+7 as float32: loaded, or converted exactly from binary16 (F16C's
 * vcvtph2ps where the build has it, else the runtime's portable conversion). */
SAIL_INLINE __m256 load_scales(const sail_lut_weight *w, size_t at) {
    if (!w->scales_f16) return _mm256_loadu_ps(w->scales + at);
#ifdef __F16C__
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w->scales_f16 + at)));
#else
    float f[8];
    sail_f32_from_f16(f, w->scales_f16 + at, 8);
    return _mm256_loadu_ps(f);
#endif
}

/* Epilogue of one sum block, token and tile: exact sums minus the zero point term, stored if
 * asked for, and (scale * sx) * S added to y (yacc in kernel column order). */
SAIL_INLINE void finish_sums(const sail_lut_call *call, __m256i *sum, __m256 *yacc, int tile,
                             int t, const sail_lut_sum *sb, const int B) {
    const sail_lut_weight *w = call->w;
    const size_t tg = (size_t)tile * (size_t)w->n_groups + (size_t)sb->grp;
    const size_t tj = (size_t)t * (size_t)w->n_sums + (size_t)sb->j;
    const int32_t xs = call->xsum[tj];
    if (w->zeros) {
        const __m128i z = _mm_loadu_si128((const __m128i *)(w->zeros + tg * SAIL_LUT_TILE_N));
        const __m256i x = _mm256_set1_epi32(xs);
        sum[0] = _mm256_sub_epi32(sum[0], _mm256_mullo_epi32(_mm256_cvtepu8_epi32(z), x));
        sum[1] = _mm256_sub_epi32(
            sum[1], _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(z, z)), x));
    } else {
        const __m256i zx = _mm256_set1_epi32((int32_t)((uint32_t)xs << (B - 1)));
        sum[0] = _mm256_sub_epi32(sum[0], zx);
        sum[1] = _mm256_sub_epi32(sum[1], zx);
    }
    if (call->sums) {
        const int col0 = tile * SAIL_LUT_TILE_N;
        store_tile_epi32(call->sums + tj * (size_t)w->n + (size_t)col0, sum[0], sum[1],
                         w->n - col0);
    }
    const __m256 ssx = _mm256_set1_ps(call->sx[tj]);
    for (int h = 0; h < 2; ++h) {
        const __m256 scale = _mm256_mul_ps(load_scales(w, tg * SAIL_LUT_TILE_N + 8 * h), ssx);
        yacc[h] = _mm256_add_ps(yacc[h], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(sum[h])));
    }
}

/* The same from the four int32 sums of the bit-plane kernels (lanes not yet folded). */
SAIL_INLINE void finish_group(const sail_lut_call *call, const __m256i *acc32, __m256 *yacc,
                              int tile, int t, const sail_lut_sum *sb, const int B) {
    __m256i sum[2];
    fold_columns(acc32, &sum[0], &sum[1]);
    finish_sums(call, sum, yacc, tile, t, sb, B);
}

/* One pass over tiles tile0 .. tile0 + ntl - 1 (ntl <= TILES_PER_PASS) for tokens
 * t0 .. t0 + nt - 1 (nt <= ROWS_PER_PASS), B = bits. Per block, each token's 8 table
 * registers are loaded once and serve all tiles of the pass; with several tokens the index
 * vectors are extracted once and serve every token. */
SAIL_INLINE void tile_pass(const sail_lut_call *call, int tile0, int ntl, int t0, const int nt,
                           const int B, const int S) {
    const sail_lut_weight *w = call->w;
    const int n_groups = w->n_groups, bpg = w->blocks_per_group, nslot = B + (B & 1);
    const size_t block_bytes = (size_t)B * 64;
    const size_t tile_bytes = (size_t)n_groups * (size_t)bpg * block_bytes;
    __m256i idx[TILES_PER_PASS][8 * 4];
    __m256i acc16[ROWS_PER_PASS][TILES_PER_PASS][8];
    __m256i acc32[ROWS_PER_PASS][TILES_PER_PASS][4];
    __m256 yacc[ROWS_PER_PASS][TILES_PER_PASS][2];
    for (int t = 0; t < nt; ++t)
        for (int j = 0; j < ntl; ++j) {
            for (int s = 0; s < nslot; ++s) acc16[t][j][s] = _mm256_setzero_si256();
            yacc[t][j][0] = yacc[t][j][1] = _mm256_setzero_ps();
        }

    FOR_EACH_SUM(w, sb, S) {
        const int grp = sb.grp, blk_end = sb.blk0 + sb.nblk;
        for (int t = 0; t < nt; ++t)
            for (int j = 0; j < ntl; ++j)
                for (int i = 0; i < 4; ++i) acc32[t][j][i] = _mm256_setzero_si256();
        const uint8_t *planes = w->planes + ((size_t)tile0 * (size_t)n_groups + (size_t)grp) *
                                                (size_t)bpg * block_bytes;
        for (int blk = sb.blk0; blk < blk_end; ++blk) {
            const uint8_t *wb = planes + (size_t)blk * block_bytes;
            const uint8_t *tab = call->tables + sail_lut_table_offset(w, call->rows, t0, grp, blk);
            for (int j = 0; j < ntl; ++j)
                for (size_t i = 0; i < block_bytes; i += 64)
                    _mm_prefetch((const char *)(wb + j * tile_bytes + PREFETCH_BYTES + i),
                                 _MM_HINT_T0);
            if (nt == 1) {
                const block_tables tb = load_tables(tab);
                for (int j = 0; j < ntl; ++j)
                    block_direct(wb + j * tile_bytes, &tb, acc16[0][j], B);
            } else {
                for (int j = 0; j < ntl; ++j) extract_indices(wb + j * tile_bytes, idx[j], B);
                for (int t = 0; t < nt; ++t) {
                    const block_tables tb =
                        load_tables(tab + (size_t)t * SAIL_LUT_TABLE_BYTES_PER_BLOCK);
                    for (int j = 0; j < ntl; ++j) block_indexed(idx[j], &tb, acc16[t][j], B);
                }
            }
            if ((blk - sb.blk0) % BLOCKS_PER_FLUSH == BLOCKS_PER_FLUSH - 1 || blk == blk_end - 1)
                for (int t = 0; t < nt; ++t)
                    for (int j = 0; j < ntl; ++j) flush(acc16[t][j], acc32[t][j], B);
        }
        for (int t = 0; t < nt; ++t)
            for (int j = 0; j < ntl; ++j)
                finish_group(call, acc32[t][j], yacc[t][j], tile0 + j, t0 + t, &sb, B);
    }
    for (int t = 0; t < nt; ++t)
        for (int j = 0; j < ntl; ++j) {
            const int col0 = (tile0 + j) * SAIL_LUT_TILE_N;
            store_tile_ps(call->y + (size_t)(t0 + t) * (size_t)w->n + (size_t)col0, yacc[t][j][0],
                          yacc[t][j][1], w->n - col0);
        }
}

/* ---- Codes path ------------------------------------------------------------------------------ */

/* One token of the codes path against the 8 code vectors of one subtile (codes[i], i = l * 4 +
 * s * 2 + rh, against the activation pairs at act + 32 i): the int16 sums of the even / odd
 * columns are sign-extended and added to *even / *odd. Written in assembly so that the code
 * vectors stay in registers and each product sits next to its add: with intrinsics gcc
 * computed the products first and spilled them, or reloaded the codes per token. */
typedef struct { __m256i v[8]; } codes_acts;

SAIL_INLINE void codes_token(const __m256i *codes, const uint8_t *act, __m256i *even,
                             __m256i *odd) {
    __m256i p0, p1, p2;
    __asm__("vpmaddubsw 0x00(%[a]), %[c0], %[p0]\n\t"
            "vpmaddubsw 0x20(%[a]), %[c1], %[p1]\n\t"
            "vpmaddubsw 0x40(%[a]), %[c2], %[p2]\n\t"
            "vpaddw %[p1], %[p0], %[p0]\n\t"
            "vpmaddubsw 0x60(%[a]), %[c3], %[p1]\n\t"
            "vpaddw %[p2], %[p0], %[p0]\n\t"
            "vpmaddubsw 0x80(%[a]), %[c4], %[p2]\n\t"
            "vpaddw %[p1], %[p0], %[p0]\n\t"
            "vpmaddubsw 0xa0(%[a]), %[c5], %[p1]\n\t"
            "vpaddw %[p2], %[p0], %[p0]\n\t"
            "vpmaddubsw 0xc0(%[a]), %[c6], %[p2]\n\t"
            "vpaddw %[p1], %[p0], %[p0]\n\t"
            "vpmaddubsw 0xe0(%[a]), %[c7], %[p1]\n\t"
            "vpaddw %[p2], %[p0], %[p0]\n\t"
            "vpaddw %[p1], %[p0], %[p0]\n\t"
            "vpslld $16, %[p0], %[p1]\n\t"
            "vpsrad $16, %[p1], %[p1]\n\t"
            "vpsrad $16, %[p0], %[p0]\n\t"
            "vpaddd %[e], %[p1], %[p1]\n\t"
            "vpaddd %[o], %[p0], %[p0]\n\t"
            "vmovdqa %[p1], %[e]\n\t"
            "vmovdqa %[p0], %[o]"
            : [p0] "=&x"(p0), [p1] "=&x"(p1), [p2] "=&x"(p2), [e] "+m"(*even), [o] "+m"(*odd)
            : [a] "r"(act), "m"(*(const codes_acts *)act), [c0] "x"(codes[0]),
              [c1] "x"(codes[1]), [c2] "x"(codes[2]), [c3] "x"(codes[3]), [c4] "x"(codes[4]),
              [c5] "x"(codes[5]), [c6] "x"(codes[6]), [c7] "x"(codes[7]));
}

/* One tile for tokens t0 .. t0 + nt - 1 (nt <= ROWS_PER_PASS), B = bits <= 4. Per block the bit
 * planes are unpacked once into the codes themselves, two rows of one column per int16, and
 * each token multiplies them with its activation pairs (vpmaddubsw, codes unsigned).
 * Unpacking: a shuffle maps a plane's 4-bit index p (4 rows) to the bits of two rows as
 * nibbles, T0[p] = p0 + 16 p1, T1[p] = p2 + 16 p3; vpmaddubsw by the plane weights adds the two
 * planes of a pair vector (or picks one subtile of the odd vector) into an int16 whose low byte
 * is c0 + 16 c1 (codes c <= 15 of the two rows: no carry between the nibbles), and
 * (v | v << 4) & 0x0F0F moves c1 into the high byte.
 * Exactness: a product pair is |c0 x0 + c1 x1| <= 2 * 15 * 128 = 3840 (no vpmaddubsw
 * saturation); each int16 sums 8 pairs per block (2 l x 2 s x 2 rh), |.| <= 30720 < 32767, and
 * is widened to int32 after every block. */
SAIL_INLINE void codes_pass(const sail_lut_call *call, int tile, int t0, const int nt,
                            const int B, const int S) {
    const sail_lut_weight *w = call->w;
    const int n_groups = w->n_groups, bpg = w->blocks_per_group;
    const size_t block_bytes = (size_t)B * 64;
    const __m256i nib = _mm256_set1_epi8(15), m0f = _mm256_set1_epi16(0x0F0F);
    const __m256i tab0 = _mm256_setr_epi8(0, 1, 16, 17, 0, 1, 16, 17, 0, 1, 16, 17, 0, 1, 16, 17,
                                          0, 1, 16, 17, 0, 1, 16, 17, 0, 1, 16, 17, 0, 1, 16, 17);
    const __m256i tab1 = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 16, 16, 16, 16, 17, 17, 17, 17,
                                          0, 0, 0, 0, 1, 1, 1, 1, 16, 16, 16, 16, 17, 17, 17, 17);
    __m256i acc32[ROWS_PER_PASS][4];
    __m256 yacc[ROWS_PER_PASS][2];
    for (int t = 0; t < nt; ++t) yacc[t][0] = yacc[t][1] = _mm256_setzero_ps();

    FOR_EACH_SUM(w, sb, S) {
        const int grp = sb.grp;
        for (int t = 0; t < nt; ++t)
            for (int i = 0; i < 4; ++i) acc32[t][i] = _mm256_setzero_si256();
        const uint8_t *planes = w->planes + ((size_t)tile * (size_t)n_groups + (size_t)grp) *
                                                (size_t)bpg * block_bytes;
        for (int blk = sb.blk0; blk < sb.blk0 + sb.nblk; ++blk) {
            const uint8_t *wb = planes + (size_t)blk * block_bytes;
            const uint8_t *tab = call->tables + sail_lut_table_offset(w, call->rows, t0, grp, blk);
            for (size_t i = 0; i < block_bytes; i += 64)
                _mm_prefetch((const char *)(wb + PREFETCH_BYTES + i), _MM_HINT_T0);
            for (int h = 0; h < 2; ++h) {
                /* unpack subtile h: codes[l * 4 + s * 2 + rh] */
                __m256i codes[8];
                for (int l = 0; l < 2; ++l) {
                    __m256i raw[2], rawo = _mm256_setzero_si256();
                    for (int m = 0; m < B / 2; ++m)
                        raw[m] = _mm256_loadu_si256(
                            (const __m256i *)(wb + (size_t)(((2 * m + h) * 2 + l) * 32)));
                    if (B & 1)
                        rawo = _mm256_loadu_si256(
                            (const __m256i *)(wb + (size_t)(((B - 1) * 2 + l) * 32)));
                    for (int s = 0; s < 2; ++s) {
                        __m256i idx[2], idxo = _mm256_setzero_si256();
                        for (int m = 0; m < B / 2; ++m)
                            idx[m] = _mm256_and_si256(s ? _mm256_srli_epi16(raw[m], 4) : raw[m],
                                                      nib);
                        if (B & 1)
                            idxo = _mm256_and_si256(s ? _mm256_srli_epi16(rawo, 4) : rawo, nib);
                        for (int rh = 0; rh < 2; ++rh) {
                            const __m256i tb = rh ? tab1 : tab0;
                            __m256i v = _mm256_setzero_si256();
                            for (int m = 0; m < B / 2; ++m)
                                v = _mm256_add_epi16(
                                    v, _mm256_maddubs_epi16(
                                           _mm256_shuffle_epi8(tb, idx[m]),
                                           _mm256_set1_epi16((short)((2 << (2 * m)) << 8 |
                                                                     (1 << (2 * m))))));
                            if (B & 1)
                                v = _mm256_add_epi16(
                                    v, _mm256_maddubs_epi16(
                                           _mm256_shuffle_epi8(tb, idxo),
                                           _mm256_set1_epi16((short)((1 << (B - 1)) << (8 * h)))));
                            codes[l * 4 + s * 2 + rh] =
                                _mm256_and_si256(_mm256_or_si256(v, _mm256_slli_epi16(v, 4)), m0f);
                        }
                    }
                }
                /* every token against the 8 code vectors, kept in registers */
                for (int t = 0; t < nt; ++t)
                    codes_token(codes, tab + (size_t)t * SAIL_LUT_TABLE_BYTES_PER_BLOCK,
                                &acc32[t][h], &acc32[t][2 + h]);
            }
        }
        for (int t = 0; t < nt; ++t) finish_group(call, acc32[t], yacc[t], tile, t0 + t, &sb, B);
    }
    for (int t = 0; t < nt; ++t) {
        const int col0 = tile * SAIL_LUT_TILE_N;
        store_tile_ps(call->y + (size_t)(t0 + t) * (size_t)w->n + (size_t)col0, yacc[t][0],
                      yacc[t][1], w->n - col0);
    }
}

/* ---- Codes layout (4- and 8-bit weights) ---------------------------------------------------- */

/* Four tokens (nibble_quad4/8) or one (nibble_one4/8) against one block of codes. Per row quad
 * q one vector is loaded and split into ymm8 (low nibbles) and ymm9 (high nibbles); each
 * token's 4 activations of the quad are broadcast to every 4 bytes (ymm10) and serve both:
 * vpmaddubsw adds row pairs into int16. Token t's two int16 sums (ymm 2t, 2t + 1) stay in
 * registers over the block, then vpmaddwd adds a column's two pairs into int32, added to
 * acc32[t]. 4 bits: one pass, the two sums are the two halves' (columns order[0..7] and
 * order[8..15]). 8 bits: one pass per half h over vectors 2q + h, the two sums are the low and
 * high nibbles', added to acc32[t][h] with weights 1 and 16 (code = 16 high + low).
 * Exactness: a product pair is |c0 x0 + c1 x1| <= 2 * 15 * 128 = 3840 (no saturation); each
 * int16 sums the block's 8 row quads, |.| <= 30720 < 32767. Assembly, so that every product
 * sits next to its add and the sums stay in registers (gcc computed the products first and
 * spilled them).
 * With VNNI (AVX512-VNNI with AVX512VL, or AVX-VNNI; chosen at build time), vpdpbusd adds each
 * column's 4 products of a quad straight into int32 (exact: |sum| <= 8 * 4 * 15 * 128 per
 * block): one instruction where vpmaddubsw, vpaddw and the block's vpmaddwd were three; 8-bit
 * codes are then not split into nibbles at all (below). */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define SAIL_LUT_VNNI 1
#define NQ_DP "vpdpbusd " /* EVEX, ymm0-15 */
#define SAIL_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#elif defined(__AVXVNNI__)
#define SAIL_LUT_VNNI 1
#define NQ_DP "%{vex%} vpdpbusd " /* braces escaped: in asm templates they select dialects */
#define SAIL_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#endif
/* With AVX512-VNNI and AVX512BW, the four-token kernels (a prefill's) take two row quads per
 * 512-bit vpdpbusd: half the instructions per product of the 256-bit form (below). */
#if defined(SAIL_LUT_VNNI) && defined(__AVX512F__) && defined(__AVX512BW__) &&                   \
    defined(__AVX512VNNI__)
#define SAIL_LUT_VNNI512 1
#endif
typedef struct { __m256i v[4][2]; } nibble_quad_acc;
typedef struct { __m256i v[2]; } nibble_one_acc;
typedef struct { uint8_t b[4 * 64]; } nibble_block4;
typedef struct { uint8_t b[8 * 64]; } nibble_block8;
typedef struct { int8_t x[4][SAIL_LUT_ROWS_BYTES_PER_BLOCK]; } nibble_quad_rows;
typedef struct { int8_t x[SAIL_LUT_ROWS_BYTES_PER_BLOCK]; } nibble_rows;

#define NQ_CODES(q, stride)                                                                       \
    "vmovdqu " #stride "*" #q "(%[w]), %%ymm9\n\t"                                               \
    "vpand %%ymm13, %%ymm9, %%ymm8\n\t"                                                          \
    "vpsrlw $4, %%ymm9, %%ymm9\n\t"                                                              \
    "vpand %%ymm13, %%ymm9, %%ymm9\n\t"
#ifdef SAIL_LUT_VNNI
#define NQ_TOKEN(q, t, a0, a1)                                                                    \
    "vpbroadcastd 4*" #q "+32*" #t "(%[x]), %%ymm10\n\t"                                         \
    NQ_DP "%%ymm10, %%ymm8, %%" #a0 "\n\t"                                                        \
    NQ_DP "%%ymm10, %%ymm9, %%" #a1 "\n\t"
#define NQ_FIRST(t, a0, a1)                                                                       \
    "vpxor %%" #a0 ", %%" #a0 ", %%" #a0 "\n\t"                                                  \
    "vpxor %%" #a1 ", %%" #a1 ", %%" #a1 "\n\t" NQ_TOKEN(0, t, a0, a1)
#else
#define NQ_TOKEN(q, t, a0, a1)                                                                    \
    "vpbroadcastd 4*" #q "+32*" #t "(%[x]), %%ymm10\n\t"                                         \
    "vpmaddubsw %%ymm10, %%ymm8, %%ymm11\n\t"                                                    \
    "vpmaddubsw %%ymm10, %%ymm9, %%ymm12\n\t"                                                    \
    "vpaddw %%ymm11, %%" #a0 ", %%" #a0 "\n\t"                                                   \
    "vpaddw %%ymm12, %%" #a1 ", %%" #a1 "\n\t"
/* row quad 0 writes the sums instead of adding to them */
#define NQ_FIRST(t, a0, a1)                                                                       \
    "vpbroadcastd 32*" #t "(%[x]), %%ymm10\n\t"                                                  \
    "vpmaddubsw %%ymm10, %%ymm8, %%" #a0 "\n\t"                                                  \
    "vpmaddubsw %%ymm10, %%ymm9, %%" #a1 "\n\t"
#endif
#define NQ_ROW(q, stride)                                                                         \
    NQ_CODES(q, stride) NQ_TOKEN(q, 0, ymm0, ymm1) NQ_TOKEN(q, 1, ymm2, ymm3)                      \
        NQ_TOKEN(q, 2, ymm4, ymm5) NQ_TOKEN(q, 3, ymm6, ymm7)
#define NQ_BLOCK_ONE(stride)                                                                      \
    NQ_CODES(0, stride) NQ_FIRST(0, ymm0, ymm1) NQ_CODES(1, stride) NQ_TOKEN(1, 0, ymm0, ymm1)     \
        NQ_CODES(2, stride) NQ_TOKEN(2, 0, ymm0, ymm1) NQ_CODES(3, stride)                         \
            NQ_TOKEN(3, 0, ymm0, ymm1) NQ_CODES(4, stride) NQ_TOKEN(4, 0, ymm0, ymm1)              \
                NQ_CODES(5, stride) NQ_TOKEN(5, 0, ymm0, ymm1) NQ_CODES(6, stride)                 \
                    NQ_TOKEN(6, 0, ymm0, ymm1) NQ_CODES(7, stride) NQ_TOKEN(7, 0, ymm0, ymm1)
#define NQ_BLOCK(stride)                                                                          \
    NQ_CODES(0, stride) NQ_FIRST(0, ymm0, ymm1) NQ_FIRST(1, ymm2, ymm3) NQ_FIRST(2, ymm4, ymm5)    \
        NQ_FIRST(3, ymm6, ymm7) NQ_ROW(1, stride) NQ_ROW(2, stride) NQ_ROW(3, stride)              \
            NQ_ROW(4, stride) NQ_ROW(5, stride) NQ_ROW(6, stride) NQ_ROW(7, stride)
/* 8 bits: token t's low (ymm13: ones) and high (ymm14: 16s) nibble sums into acc32[t][h] */
#ifdef SAIL_LUT_VNNI
#define NQ_WIDEN8(t, a0, a1)                                                                      \
    "vpslld $4, %%" #a1 ", %%" #a1 "\n\t"                                                        \
    "vpaddd %%" #a1 ", %%" #a0 ", %%" #a0 "\n\t"                                                 \
    "vpaddd 64*" #t "(%[acc]), %%" #a0 ", %%" #a0 "\n\t"                                         \
    "vmovdqu %%" #a0 ", 64*" #t "(%[acc])\n\t"
#define NQ_WIDEN(i, a)                                                                            \
    "vpaddd 32*" #i "(%[acc]), %%" #a ", %%" #a "\n\t"                                           \
    "vmovdqu %%" #a ", 32*" #i "(%[acc])\n\t"
#else
#define NQ_WIDEN8(t, a0, a1)                                                                      \
    "vpmaddwd %%ymm13, %%" #a0 ", %%" #a0 "\n\t"                                                 \
    "vpmaddwd %%ymm14, %%" #a1 ", %%" #a1 "\n\t"                                                 \
    "vpaddd %%" #a1 ", %%" #a0 ", %%" #a0 "\n\t"                                                 \
    "vpaddd 64*" #t "(%[acc]), %%" #a0 ", %%" #a0 "\n\t"                                         \
    "vmovdqu %%" #a0 ", 64*" #t "(%[acc])\n\t"
#define NQ_WIDEN(i, a)                                                                            \
    "vpmaddwd %%ymm13, %%" #a ", %%" #a "\n\t"                                                   \
    "vpaddd 32*" #i "(%[acc]), %%" #a ", %%" #a "\n\t"                                           \
    "vmovdqu %%" #a ", 32*" #i "(%[acc])\n\t"
#endif

#ifndef SAIL_LUT_VNNI512 /* the 256-bit assembly kernels' constants */
static const int16_t nq_nib[16] __attribute__((aligned(32))) = {
    0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F,
    0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F, 0x0F0F};
static const int16_t nq_ones[16] __attribute__((aligned(32))) = {1, 1, 1, 1, 1, 1, 1, 1,
                                                                1, 1, 1, 1, 1, 1, 1, 1};
#endif

#ifdef SAIL_LUT_VNNI512
/* acc32[t][h] += the two 256-bit halves of a[t][h]: the same columns, for the even and the odd
 * row quads of the block. */
SAIL_INLINE void fold_halves512(__m512i (*a)[2], __m256i (*acc32)[2]) {
    for (int t = 0; t < 4; ++t)
        for (int h = 0; h < 2; ++h)
            acc32[t][h] = _mm256_add_epi32(
                acc32[t][h], _mm256_add_epi32(_mm512_castsi512_si256(a[t][h]),
                                              _mm512_extracti64x4_epi64(a[t][h], 1)));
}

/* 4 bits, four tokens, 512 bits: vector p holds row quads 2p (low 256 bits) and 2p + 1 (high),
 * split into low and high nibbles as in the 256-bit form; each token's activations of the two
 * quads go to the matching halves (quad 2p's 4 bytes in lanes 0-7, quad 2p + 1's in 8-15). A
 * lane then sums one column's products of one quad, so folding the halves gives the 256-bit
 * form's sums exactly (integers: |sum| <= 8 * 4 * 15 * 128 per block). */
SAIL_INLINE void nibble_quad4(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    const __m512i nib = _mm512_set1_epi8(0x0F);
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512i a[4][2];
    for (int t = 0; t < 4; ++t) a[t][0] = a[t][1] = _mm512_setzero_si512();
    for (int p = 0; p < 4; ++p) {
        const __m512i c = _mm512_loadu_si512((const void *)(wb + 64 * p));
        const __m512i lo = _mm512_and_si512(c, nib);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), nib);
        for (int t = 0; t < 4; ++t) {
            const __m128i two = _mm_loadl_epi64(
                (const __m128i *)(x + SAIL_LUT_ROWS_BYTES_PER_BLOCK * t + 8 * p));
            const __m512i xq = _mm512_permutexvar_epi32(halves, _mm512_castsi128_si512(two));
            a[t][0] = _mm512_dpbusd_epi32(a[t][0], lo, xq);
            a[t][1] = _mm512_dpbusd_epi32(a[t][1], hi, xq);
        }
    }
    fold_halves512(a, acc32);
}
#else
SAIL_INLINE void nibble_quad4(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    const __m256i *nib = (const __m256i *)nq_nib, *ones = (const __m256i *)nq_ones;
    __asm__("vmovdqa %[nib], %%ymm13\n\t"
            NQ_BLOCK(32)
            "vmovdqa %[ones], %%ymm13\n\t"
            NQ_WIDEN(0, ymm0) NQ_WIDEN(1, ymm1) NQ_WIDEN(2, ymm2) NQ_WIDEN(3, ymm3)
            NQ_WIDEN(4, ymm4) NQ_WIDEN(5, ymm5) NQ_WIDEN(6, ymm6) NQ_WIDEN(7, ymm7)
            : "+m"(*(nibble_quad_acc *)acc32)
            : [w] "r"(wb), [x] "r"(x), [acc] "r"(acc32), "m"(*(const nibble_block4 *)wb),
              "m"(*(const nibble_quad_rows *)x), [nib] "m"(*nib), [ones] "m"(*ones)
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
              "xmm10", "xmm11", "xmm12", "xmm13");
}

#endif /* SAIL_LUT_VNNI512 */

#ifdef SAIL_LUT_VNNI512
/* 4 bits, one token (a decode step's), 512 bits: as nibble_quad4 for token 0. */
SAIL_INLINE void nibble_one4(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    const __m512i nib = _mm512_set1_epi8(0x0F);
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
    for (int p = 0; p < 4; ++p) {
        const __m512i c = _mm512_loadu_si512((const void *)(wb + 64 * p));
        const __m128i two = _mm_loadl_epi64((const __m128i *)(x + 8 * p));
        const __m512i xq = _mm512_permutexvar_epi32(halves, _mm512_castsi128_si512(two));
        a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(c, nib), xq);
        a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(_mm512_srli_epi16(c, 4), nib), xq);
    }
    acc32[0][0] = _mm256_add_epi32(acc32[0][0], _mm256_add_epi32(_mm512_castsi512_si256(a0),
                                                                 _mm512_extracti64x4_epi64(a0, 1)));
    acc32[0][1] = _mm256_add_epi32(acc32[0][1], _mm256_add_epi32(_mm512_castsi512_si256(a1),
                                                                 _mm512_extracti64x4_epi64(a1, 1)));
}
#else
SAIL_INLINE void nibble_one4(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    const __m256i *nib = (const __m256i *)nq_nib, *ones = (const __m256i *)nq_ones;
    __asm__("vmovdqa %[nib], %%ymm13\n\t"
            NQ_BLOCK_ONE(32)
            "vmovdqa %[ones], %%ymm13\n\t"
            NQ_WIDEN(0, ymm0) NQ_WIDEN(1, ymm1)
            : "+m"(*(nibble_one_acc *)acc32)
            : [w] "r"(wb), [x] "r"(x), [acc] "r"(acc32), "m"(*(const nibble_block4 *)wb),
              "m"(*(const nibble_rows *)x), [nib] "m"(*nib), [ones] "m"(*ones)
            : "xmm0", "xmm1", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13");
}

#endif /* SAIL_LUT_VNNI512 */

#ifdef SAIL_LUT_VNNI512
/* 8 bits, four tokens, 512 bits: row quad q's 64 code bytes (its two 256-bit vectors below) in
 * one vector, against the quad's activations broadcast to every lane; the halves are folded
 * into acc32[t][0] and acc32[t][1] as the two 256-bit sums. */
SAIL_INLINE void nibble_quad8(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    __m512i a[4];
    for (int t = 0; t < 4; ++t) a[t] = _mm512_setzero_si512();
    for (int q = 0; q < 8; ++q) {
        const __m512i c = _mm512_loadu_si512((const void *)(wb + 64 * q));
        for (int t = 0; t < 4; ++t) {
            int32_t quad;
            memcpy(&quad, x + SAIL_LUT_ROWS_BYTES_PER_BLOCK * t + 4 * q, 4);
            a[t] = _mm512_dpbusd_epi32(a[t], c, _mm512_set1_epi32(quad));
        }
    }
    for (int t = 0; t < 4; ++t) {
        acc32[t][0] = _mm256_add_epi32(acc32[t][0], _mm512_castsi512_si256(a[t]));
        acc32[t][1] = _mm256_add_epi32(acc32[t][1], _mm512_extracti64x4_epi64(a[t], 1));
    }
}
#define SAIL_LUT_HAVE_QUAD8 1
#endif

#ifdef SAIL_LUT_VNNI
/* 8 bits with VNNI: vpdpbusd multiplies the unsigned codes with the int8 activations directly
 * (4 products of |c x| <= 255 * 128 into int32 per column, no saturation: exact), so the codes
 * need no nibble split. Vector 2q + h holds, in each 4 bytes i, rows 4q .. 4q + 3 of column
 * order[8 h + i]: against the quad's 4 activations broadcast to every 4 bytes it adds column
 * order[8 h + i]'s 4 products into lane i of acc32[t][h], the lanes the nibble form gives.
 * The sums are exact in int32 for |sum| <= K * 255 * 128, any K up to 65793 rows. */
#ifndef SAIL_LUT_HAVE_QUAD8
SAIL_INLINE void nibble_quad8(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    __m256i a[4][2];
    for (int t = 0; t < 4; ++t) a[t][0] = a[t][1] = _mm256_setzero_si256();
    for (int q = 0; q < 8; ++q) {
        const __m256i c0 = _mm256_loadu_si256((const __m256i *)(wb + 64 * q));
        const __m256i c1 = _mm256_loadu_si256((const __m256i *)(wb + 64 * q + 32));
        for (int t = 0; t < 4; ++t) {
            int32_t quad;
            memcpy(&quad, x + SAIL_LUT_ROWS_BYTES_PER_BLOCK * t + 4 * q, 4);
            const __m256i xq = _mm256_set1_epi32(quad);
            a[t][0] = SAIL_DPBUSD(a[t][0], c0, xq);
            a[t][1] = SAIL_DPBUSD(a[t][1], c1, xq);
        }
    }
    for (int t = 0; t < 4; ++t) {
        acc32[t][0] = _mm256_add_epi32(acc32[t][0], a[t][0]);
        acc32[t][1] = _mm256_add_epi32(acc32[t][1], a[t][1]);
    }
}

#endif /* SAIL_LUT_HAVE_QUAD8 */

#ifdef SAIL_LUT_VNNI512
/* 8 bits, one token, 512 bits: as nibble_quad8 for token 0. */
SAIL_INLINE void nibble_one8(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    __m512i a = _mm512_setzero_si512();
    for (int q = 0; q < 8; ++q) {
        int32_t quad;
        memcpy(&quad, x + 4 * q, 4);
        a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512((const void *)(wb + 64 * q)),
                                _mm512_set1_epi32(quad));
    }
    acc32[0][0] = _mm256_add_epi32(acc32[0][0], _mm512_castsi512_si256(a));
    acc32[0][1] = _mm256_add_epi32(acc32[0][1], _mm512_extracti64x4_epi64(a, 1));
}
#else
SAIL_INLINE void nibble_one8(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    for (int q = 0; q < 8; ++q) {
        int32_t quad;
        memcpy(&quad, x + 4 * q, 4);
        const __m256i xq = _mm256_set1_epi32(quad);
        a0 = SAIL_DPBUSD(a0, _mm256_loadu_si256((const __m256i *)(wb + 64 * q)), xq);
        a1 = SAIL_DPBUSD(a1, _mm256_loadu_si256((const __m256i *)(wb + 64 * q + 32)), xq);
    }
    acc32[0][0] = _mm256_add_epi32(acc32[0][0], a0);
    acc32[0][1] = _mm256_add_epi32(acc32[0][1], a1);
}
#endif /* SAIL_LUT_VNNI512 */
#else
static const int16_t nq_sixteens[16] __attribute__((aligned(32))) = {
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16};

SAIL_INLINE void nibble_quad8(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    const __m256i *nib = (const __m256i *)nq_nib, *ones = (const __m256i *)nq_ones,
                  *sixteens = (const __m256i *)nq_sixteens;
    for (int h = 0; h < 2; ++h)
        __asm__("vmovdqa %[nib], %%ymm13\n\t"
                NQ_BLOCK(64)
                "vmovdqa %[ones], %%ymm13\n\t"
                "vmovdqa %[sixteens], %%ymm14\n\t"
                NQ_WIDEN8(0, ymm0, ymm1) NQ_WIDEN8(1, ymm2, ymm3) NQ_WIDEN8(2, ymm4, ymm5)
                NQ_WIDEN8(3, ymm6, ymm7)
                : "+m"(*(nibble_quad_acc *)acc32)
                : [w] "r"(wb + 32 * h), [x] "r"(x), [acc] "r"(&acc32[0][h]),
                  "m"(*(const nibble_block8 *)wb), "m"(*(const nibble_quad_rows *)x),
                  [nib] "m"(*nib), [ones] "m"(*ones), [sixteens] "m"(*sixteens)
                : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                  "xmm10", "xmm11", "xmm12", "xmm13", "xmm14");
}

SAIL_INLINE void nibble_one8(const uint8_t *wb, const int8_t *x, __m256i (*acc32)[2]) {
    const __m256i *nib = (const __m256i *)nq_nib, *ones = (const __m256i *)nq_ones,
                  *sixteens = (const __m256i *)nq_sixteens;
    for (int h = 0; h < 2; ++h)
        __asm__("vmovdqa %[nib], %%ymm13\n\t"
                NQ_BLOCK_ONE(64)
                "vmovdqa %[ones], %%ymm13\n\t"
                "vmovdqa %[sixteens], %%ymm14\n\t"
                NQ_WIDEN8(0, ymm0, ymm1)
                : "+m"(*(nibble_one_acc *)acc32)
                : [w] "r"(wb + 32 * h), [x] "r"(x), [acc] "r"(&acc32[0][h]),
                  "m"(*(const nibble_block8 *)wb), "m"(*(const nibble_rows *)x), [nib] "m"(*nib),
                  [ones] "m"(*ones), [sixteens] "m"(*sixteens)
                : "xmm0", "xmm1", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14");
}
#endif /* SAIL_LUT_VNNI */

/* One tile of 4- or 8-bit codes (B) for tokens t0 .. t0 + nt - 1 (nt <= ROWS_PER_PASS): four
 * tokens at a time share each unpacked vector, the rest go one by one. */
SAIL_INLINE void nibble_pass(const sail_lut_call *call, int tile, int t0, const int nt,
                             const int B, const int S) {
    const sail_lut_weight *w = call->w;
    const int n_groups = w->n_groups, bpg = w->blocks_per_group;
    const size_t block_bytes = (size_t)B * 64;
    __m256i acc32[ROWS_PER_PASS][2];
    __m256 yacc[ROWS_PER_PASS][2];
    for (int t = 0; t < nt; ++t) yacc[t][0] = yacc[t][1] = _mm256_setzero_ps();

    FOR_EACH_SUM(w, sb, S) {
        const int grp = sb.grp;
        for (int t = 0; t < nt; ++t) acc32[t][0] = acc32[t][1] = _mm256_setzero_si256();
        const uint8_t *planes = w->planes + ((size_t)tile * (size_t)n_groups + (size_t)grp) *
                                                (size_t)bpg * block_bytes;
        for (int blk = sb.blk0; blk < sb.blk0 + sb.nblk; ++blk) {
            const uint8_t *wb = planes + (size_t)blk * block_bytes;
            const int8_t *x = (const int8_t *)(call->tables +
                                               sail_lut_table_offset(w, call->rows, t0, grp, blk));
            for (size_t i = 0; i < block_bytes; i += 64)
                _mm_prefetch((const char *)(wb + PREFETCH_BYTES + i), _MM_HINT_T0);
            int t = 0;
            for (; t + 4 <= nt; t += 4) {
                const int8_t *xt = x + (size_t)t * SAIL_LUT_ROWS_BYTES_PER_BLOCK;
                if (B == 4)
                    nibble_quad4(wb, xt, acc32 + t);
                else
                    nibble_quad8(wb, xt, acc32 + t);
            }
            for (; t < nt; ++t) {
                const int8_t *xt = x + (size_t)t * SAIL_LUT_ROWS_BYTES_PER_BLOCK;
                if (B == 4)
                    nibble_one4(wb, xt, acc32 + t);
                else
                    nibble_one8(wb, xt, acc32 + t);
            }
        }
        for (int t = 0; t < nt; ++t) finish_sums(call, acc32[t], yacc[t], tile, t0 + t, &sb, B);
    }
    for (int t = 0; t < nt; ++t) {
        const int col0 = tile * SAIL_LUT_TILE_N;
        store_tile_ps(call->y + (size_t)(t0 + t) * (size_t)w->n + (size_t)col0, yacc[t][0],
                      yacc[t][1], w->n - col0);
    }
}

/* Activation bytes of the tokens one sweep over the tiles reads: a prefill's tokens are taken
 * in row blocks of about this size (a multiple of ROWS_PER_PASS tokens), each swept over all
 * tiles of the range before the next, so that the block's activations stay in the core's L2
 * (Zen 3: 512 KiB) while the tiles' weights stream past it; tiles outside, rows inside re-read
 * every token's activations from L3 for each tile (80 MB per 1024 x 2048 x 640 matmul). */
#ifndef ROW_BLOCK_BYTES
#define ROW_BLOCK_BYTES (192 * 1024)
#endif

static inline int row_block(const sail_lut_call *call) {
    const int k = call->w->k > 0 ? call->w->k : 1;
    const int rb = ROW_BLOCK_BYTES / k / ROWS_PER_PASS * ROWS_PER_PASS;
    return rb > ROWS_PER_PASS ? rb : ROWS_PER_PASS;
}

/* Run PASS(call, tile, t0, nt, B, S) over every tile of [tile_begin, tile_end) and the tokens in
 * passes of up to ROWS_PER_PASS, each pass with its token count nt as a constant (the passes are
 * always inlined: constant counts keep their accumulators in registers); tokens in row blocks
 * (row_block), tiles inside. Each (tile, token) output is one pass's work, whatever the order. */
#define TOKEN_SWITCH(PASS, call, tile, t0, nt, B, S)                                               \
    switch (nt) {                                                                                 \
    case 1: PASS(call, tile, t0, 1, B, S); break;                                                 \
    case 2: PASS(call, tile, t0, 2, B, S); break;                                                 \
    case 3: PASS(call, tile, t0, 3, B, S); break;                                                 \
    case 4: PASS(call, tile, t0, 4, B, S); break;                                                 \
    case 5: PASS(call, tile, t0, 5, B, S); break;                                                 \
    case 6: PASS(call, tile, t0, 6, B, S); break;                                                 \
    case 7: PASS(call, tile, t0, 7, B, S); break;                                                 \
    default: PASS(call, tile, t0, 8, B, S); break;                                                \
    }

/* A decode step's few tokens (one pass) keep the plain tile loop, and so does every call of
 * the 8-bit pass: with the row-block loop in the same function, gcc 12's code for the 8-bit
 * pass at one token ran 5-20% slower on an LM-head-sized weight (640 x 65536, g32), while the
 * 4-bit pass was unchanged. B is a constant here, so the unused branch is compiled away. */
#define TOKEN_PASSES(PASS, call, tile_begin, tile_end, B, S)                                       \
    if ((call)->rows <= ROWS_PER_PASS || (B) == 8) {                                              \
        for (int tile = (tile_begin); tile < (tile_end); ++tile)                                  \
            for (int t0 = 0; t0 < (call)->rows; t0 += ROWS_PER_PASS)                              \
                TOKEN_SWITCH(PASS, call, tile, t0,                                                \
                             (call)->rows - t0 < ROWS_PER_PASS ? (call)->rows - t0 : ROWS_PER_PASS, \
                             B, S)                                                                \
    } else {                                                                                      \
        const int rb = row_block(call);                                                           \
        for (int r0 = 0; r0 < (call)->rows; r0 += rb) {                                           \
            const int r1 = r0 + rb < (call)->rows ? r0 + rb : (call)->rows;                       \
            for (int tile = (tile_begin); tile < (tile_end); ++tile)                              \
                for (int t0 = r0; t0 < r1; t0 += ROWS_PER_PASS)                                   \
                    TOKEN_SWITCH(PASS, call, tile, t0,                                            \
                                 r1 - t0 < ROWS_PER_PASS ? r1 - t0 : ROWS_PER_PASS, B, S)         \
        }                                                                                         \
    }

SAIL_INLINE void tiles(const sail_lut_call *call, int tile_begin, int tile_end, const int B,
                       const int S) {
    if (B == 4 || B == 8) {
        TOKEN_PASSES(nibble_pass, call, tile_begin, tile_end, B, S);
        return;
    }
    if (B >= CODES_MIN_BITS && B <= CODES_MAX_BITS && use_codes(call->w, call->rows)) {
        /* the clamp only bounds the instantiations: B is in range here */
        TOKEN_PASSES(codes_pass, call, tile_begin, tile_end,
                     B < CODES_MAX_BITS ? B : CODES_MAX_BITS, S);
        return;
    }
    if (call->rows == 1) {
        /* constant counts: gcc then unrolls the pass and keeps its accumulators in registers
         * (with run-time counts they lived on the stack: 1.4-2.5x slower, tables in cache) */
        for (int tile = tile_begin; tile < tile_end; ++tile) tile_pass(call, tile, 1, 0, 1, B, S);
        return;
    }
    for (int tile = tile_begin; tile < tile_end; tile += TILES_PER_PASS) {
        const int ntl = tile_end - tile < TILES_PER_PASS ? tile_end - tile : TILES_PER_PASS;
        for (int t0 = 0; t0 < call->rows; t0 += ROWS_PER_PASS)
            tile_pass(call, tile, ntl, t0,
                      call->rows - t0 < ROWS_PER_PASS ? call->rows - t0 : ROWS_PER_PASS, B, S);
    }
}

SAIL_LUT_DEFINE_TILES(sail_lut_tiles_avx2)

#else
/* ISO C wants a declaration in every translation unit. */
typedef int sail_lut_avx2_unused;
#endif /* SAIL_LUT_HAVE_AVX2 */
