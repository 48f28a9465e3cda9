/* SAIL C runtime: LUT-GEMV kernels for AArch64 NEON (Advanced SIMD), with the SDOT dot product
 * instructions where the build targets a CPU that has them (__ARM_FEATURE_DOTPROD:
 * -march=armv8.2-a+dotprod, -mcpu=neoverse-n1, or -march=native on such a CPU).
 *
 * Same tables, layouts and integers as the portable kernels in sail_lut.c; see sail_lut.h. The
 * 32-byte AVX2 vectors of the layout are two 16-byte NEON registers here: lane L of a vector
 * (chunk 2 cp + L of a chunk pair, or half of a codes vector) is its own register.
 *
 * Bit planes (1-3 and 5-7 bits): tbl (vqtbl1q_u8) looks up 16 indices in a 16-byte table.
 *   table bytes    L in [0, 15] (uint8), H in [-32, 31] (int8)
 *   byte sums      L: the 4 chunk pairs x 2 lanes = 8 lookups per byte, <= 120: uint8;
 *                  H: 4 lookups per lane, in [-128, 124]: int8 (the add wraps, but never has to)
 *   int16          per block and byte, sum of 8 values V = 16 H + L in [-512, 508]: [-4096, 4064]
 *                  (smlal by 16 for H, uaddw for L); BLOCKS_PER_FLUSH = 4 blocks: |.| <= 16384
 *   int32          (smlal by the plane weights 2^p <= 64) sum_k q x - z sum_k x, wrapping modulo
 *                  2^32 like the portable kernel: exact whenever the group sum fits int32.
 * Codes (4 and 8 bits):
 *   dotprod        4 bits: sdot of the nibbles (0..15 as int8) with the int8 activations into
 *                  int32, |product| <= 15 * 128. 8 bits: a code c in 0..255 does not fit int8,
 *                  so sdot multiplies c - 128 (c ^ 0x80, in [-128, 127]) and the epilogue adds
 *                  128 sum_k x (the sum block's xsum): sum_k c x = sum_k (c - 128) x +
 *                  128 sum_k x, modulo 2^32 as every int32 here.
 *   plain NEON     4 bits: smlal of nibble by activation into int16, per block and lane 8
 *                  products, |.| <= 8 * 15 * 128 = 15360; then sadalp into int32 row pairs.
 *                  8 bits: smull of (c - 128) by x, in [-16256, 16384] (int16), sadalp into
 *                  int32 at once (two products could reach 32768).
 * The float epilogue is the reference's: y += (scale * sx) * (float)S per sum block in order,
 * one multiply and one add (the runtime builds with -ffp-contract=off: no fmla).
 */
#include "sail_lut.h"

#ifdef SAIL_LUT_HAVE_NEON

#include <arm_neon.h>
#include <string.h>

/* Tokens whose accumulators one pass over a tile holds. */
#define ROWS_PER_PASS 8
/* Blocks whose int16 sums may be added before they are widened (bound in the file comment). */
#define BLOCKS_PER_FLUSH 4
/* Software prefetch distance in the weight stream (as the AVX2 kernels). */
#define PREFETCH_BYTES 2048

#define SAIL_INLINE static inline __attribute__((always_inline))

/* The sum blocks of a pass (sail_lut.h); S a constant: 0 when they are the weight groups. */
#define FOR_EACH_SUM(w, sb, S)                                                                   \
    for (sail_lut_sum sb = sail_lut_sum_first(w); sb.j < sb.n_sums; sail_lut_sum_next(&sb, (S)))

/* The kernels keep a tile's 16 sums as four int32x4 "slots" in scale order: slot s holds the
 * columns SAIL_LUT_COLUMN_ORDER[4 s .. 4 s + 3], i.e. 0-3, 8-11, 4-7, 12-15; the scales and
 * zero points are stored in that order. Column quad cq (columns 4 cq .. 4 cq + 3) -> slot. */
#define QUAD_SLOT(cq) ((cq) == 1 ? 2 : (cq) == 2 ? 1 : (cq))

/* ---- Tables ---------------------------------------------------------------------------------- */

/* The 16 subset sums V[p] of one chunk's 4 activations as L (V & 15) and H (V >> 4) bytes. */
SAIL_INLINE void chunk_table(const int8_t *x, uint8_t *lo, uint8_t *hi) {
    static const int16_t bit0[8] = {0, 1, 0, 1, 0, 1, 0, 1};
    static const int16_t bit1[8] = {0, 0, 1, 1, 0, 0, 1, 1};
    static const int16_t bit2[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    /* entries p = 0..7, then p = 8..15 (bit 3 set: + x3); |V| <= 512 fits int16 */
    int16x8_t v0 = vmulq_n_s16(vld1q_s16(bit0), x[0]);
    v0 = vmlaq_n_s16(v0, vld1q_s16(bit1), x[1]);
    v0 = vmlaq_n_s16(v0, vld1q_s16(bit2), x[2]);
    const int16x8_t v1 = vaddq_s16(v0, vdupq_n_s16(x[3]));
    const int16x8_t m15 = vdupq_n_s16(15);
    /* L = V mod 16 (two's complement &), H = floor(V / 16) in [-32, 31]: narrowing is exact */
    vst1q_u8(lo, vreinterpretq_u8_s8(vcombine_s8(vmovn_s16(vandq_s16(v0, m15)),
                                                 vmovn_s16(vandq_s16(v1, m15)))));
    vst1q_s8((int8_t *)hi,
             vcombine_s8(vmovn_s16(vshrq_n_s16(v0, 4)), vmovn_s16(vshrq_n_s16(v1, 4))));
}

void sail_lut_tables_neon(const sail_lut_weight *w, const int8_t *xq, int rows, int row_begin,
                          int row_end, uint8_t *tables, int32_t *xsum) {
    int8_t scratch[SAIL_LUT_BLOCK_K];
    const int codes = sail_lut_codes_layout(w);
    for (int t = row_begin; t < row_end; ++t) {
        const int8_t *xr = xq + (size_t)t * (size_t)w->k;
        for (sail_lut_sum s = sail_lut_sum_first(w); s.j < s.n_sums; sail_lut_sum_next(&s, 1)) {
            int32_t total = 0;
            for (int blk = s.blk0; blk < s.blk0 + s.nblk; ++blk) {
                const int8_t *x = sail_lut_block_rows(w, xr, s.grp, blk, scratch);
                uint8_t *tab = tables + sail_lut_table_offset(w, rows, t, s.grp, blk);
                const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
                /* sum of 32 int8: |.| <= 4096 (saddlv widens to int16) */
                total += vaddlvq_s8(x0) + vaddlvq_s8(x1);
                if (codes) {
                    vst1q_s8((int8_t *)tab, x0);
                    vst1q_s8((int8_t *)tab + 16, x1);
                    continue;
                }
                for (int cp = 0; cp < 4; ++cp)
                    for (int lane = 0; lane < 2; ++lane)
                        chunk_table(x + cp * 8 + lane * 4, tab + cp * 64 + lane * 16,
                                    tab + cp * 64 + 32 + lane * 16);
            }
            xsum[(size_t)t * (size_t)w->n_sums + (size_t)s.j] = total;
        }
    }
}

/* ---- Epilogue -------------------------------------------------------------------------------- */

/* Store the 16 values of a tile held in slots (scale order) as tile columns 0..15, the first
 * `count` of them. */
SAIL_INLINE void store_tile_f32(float *dst, const float32x4_t *v, int count) {
    float tmp[SAIL_LUT_TILE_N];
    float *out = count >= SAIL_LUT_TILE_N ? dst : tmp;
    vst1q_f32(out, v[0]);
    vst1q_f32(out + 4, v[2]);
    vst1q_f32(out + 8, v[1]);
    vst1q_f32(out + 12, v[3]);
    if (out == tmp && count > 0) memcpy(dst, tmp, (size_t)count * sizeof(float));
}

SAIL_INLINE void store_tile_s32(int32_t *dst, const int32x4_t *v, int count) {
    int32_t tmp[SAIL_LUT_TILE_N];
    int32_t *out = count >= SAIL_LUT_TILE_N ? dst : tmp;
    vst1q_s32(out, v[0]);
    vst1q_s32(out + 4, v[2]);
    vst1q_s32(out + 8, v[1]);
    vst1q_s32(out + 12, v[3]);
    if (out == tmp && count > 0) memcpy(dst, tmp, (size_t)count * sizeof(int32_t));
}

/* One sum block, token and tile: sum[s] (slots) gets 128 xsum added when `biased` (8-bit codes
 * multiplied as c - 128), the zero point term subtracted (all modulo 2^32), is stored if asked
 * for, and (scale * sx) * S is added to yacc. */
SAIL_INLINE void finish_sums(const sail_lut_call *call, int32x4_t *sum, float32x4_t *yacc,
                             int tile, int t, const sail_lut_sum *sb, const int B,
                             const int biased) {
    const sail_lut_weight *w = call->w;
    const size_t tg = (size_t)tile * (size_t)w->n_groups + (size_t)sb->grp;
    const size_t tj = (size_t)t * (size_t)w->n_sums + (size_t)sb->j;
    const int32_t xs = call->xsum[tj];
    if (biased) {
        const int32x4_t bias = vdupq_n_s32((int32_t)((uint32_t)xs << 7));
        for (int s = 0; s < 4; ++s) sum[s] = vaddq_s32(sum[s], bias);
    }
    if (w->zeros) {
        const uint8x16_t z = vld1q_u8(w->zeros + tg * SAIL_LUT_TILE_N);
        const uint16x8_t z0 = vmovl_u8(vget_low_u8(z)), z1 = vmovl_high_u8(z);
        const int32x4_t zs[4] = {vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(z0))),
                                 vreinterpretq_s32_u32(vmovl_high_u16(z0)),
                                 vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(z1))),
                                 vreinterpretq_s32_u32(vmovl_high_u16(z1))};
        for (int s = 0; s < 4; ++s) sum[s] = vmlsq_n_s32(sum[s], zs[s], xs);
    } else {
        const int32x4_t zx = vdupq_n_s32((int32_t)((uint32_t)xs << (B - 1)));
        for (int s = 0; s < 4; ++s) sum[s] = vsubq_s32(sum[s], zx);
    }
    if (call->sums) {
        const int col0 = tile * SAIL_LUT_TILE_N;
        store_tile_s32(call->sums + tj * (size_t)w->n + (size_t)col0, sum, w->n - col0);
    }
    const float ssx = call->sx[tj];
    for (int s = 0; s < 4; ++s) {
        const size_t at = tg * SAIL_LUT_TILE_N + 4 * (size_t)s;
        const float32x4_t ws = w->scales_f16
            ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(w->scales_f16 + at)))
            : vld1q_f32(w->scales + at);
        const float32x4_t scale = vmulq_n_f32(ws, ssx);
        yacc[s] = vaddq_f32(yacc[s], vmulq_f32(scale, vcvtq_f32_s32(sum[s])));
    }
}

/* ---- Bit planes (1-3, 5-7 bits) --------------------------------------------------------------- */

/* The 16 table registers of one token and block: [chunk pair][lane]. */
typedef struct block_tables {
    uint8x16_t lo[4][2];
    int8x16_t hi[4][2];
} block_tables;

SAIL_INLINE void load_tables(const uint8_t *tab, block_tables *t) {
    for (int cp = 0; cp < 4; ++cp)
        for (int lane = 0; lane < 2; ++lane) {
            t->lo[cp][lane] = vld1q_u8(tab + cp * 64 + lane * 16);
            t->hi[cp][lane] = vld1q_s8((const int8_t *)tab + cp * 64 + 32 + lane * 16);
        }
}

/* One token, tile and block: acc16[v][h] += the values V of index vector v's bytes 8h..8h+7,
 * both lanes and all 4 chunk pairs added. Vector v, pair l, lane L sits at wb + v 64 + l 32 +
 * L 16; its low nibbles index chunk pair 2 l, its high nibbles chunk pair 2 l + 1. */
SAIL_INLINE void lookup_block(const uint8_t *wb, const block_tables *t, int16x8_t (*acc16)[2],
                              const int B) {
    const uint8x16_t nib = vdupq_n_u8(15);
    const int8x16_t sixteen = vdupq_n_s8(16);
#pragma GCC unroll 8
    for (int v = 0; v < B; ++v) {
        uint8x16_t lo_sum = vdupq_n_u8(0);
        for (int lane = 0; lane < 2; ++lane) {
            const uint8x16_t raw0 = vld1q_u8(wb + v * 64 + lane * 16);
            const uint8x16_t raw1 = vld1q_u8(wb + v * 64 + 32 + lane * 16);
            const uint8x16_t i0 = vandq_u8(raw0, nib), i1 = vshrq_n_u8(raw0, 4);
            const uint8x16_t i2 = vandq_u8(raw1, nib), i3 = vshrq_n_u8(raw1, 4);
            const uint8x16_t lo =
                vaddq_u8(vaddq_u8(vqtbl1q_u8(t->lo[0][lane], i0), vqtbl1q_u8(t->lo[1][lane], i1)),
                         vaddq_u8(vqtbl1q_u8(t->lo[2][lane], i2), vqtbl1q_u8(t->lo[3][lane], i3)));
            const int8x16_t hi =
                vaddq_s8(vaddq_s8(vqtbl1q_s8(t->hi[0][lane], i0), vqtbl1q_s8(t->hi[1][lane], i1)),
                         vaddq_s8(vqtbl1q_s8(t->hi[2][lane], i2), vqtbl1q_s8(t->hi[3][lane], i3)));
            lo_sum = vaddq_u8(lo_sum, lo);
            acc16[v][0] = vmlal_s8(acc16[v][0], vget_low_s8(hi), vget_low_s8(sixteen));
            acc16[v][1] = vmlal_high_s8(acc16[v][1], hi, sixteen);
        }
        /* + L, as unsigned: the same bits modulo 2^16 */
        acc16[v][0] = vreinterpretq_s16_u16(
            vaddw_u8(vreinterpretq_u16_s16(acc16[v][0]), vget_low_u8(lo_sum)));
        acc16[v][1] = vreinterpretq_s16_u16(
            vaddw_high_u8(vreinterpretq_u16_s16(acc16[v][1]), lo_sum));
    }
}

/* Widen the int16 sums to int32 with the plane weights and reset them. Pair vector v: int16
 * lane i of half h is column 8 (v % 2) + 4 h + i / 2, plane 2 (v / 2) + i % 2; smlal by
 * (2^p0, 2^p1, ...) leaves column pairs in pair32[slot][h]'s adjacent lanes (added pairwise at
 * the end). The odd last vector (B odd): lane i of half h is column 8 (i % 2) + 4 h + i / 2;
 * uzp1 / uzp2 sort its lanes into columns 0-7 and 8-15, weighted by 2^(B - 1) into odd32. */
SAIL_INLINE void flush(int16x8_t (*acc16)[2], int32x4_t (*pair32)[2], int32x4_t *odd32,
                       const int B) {
#pragma GCC unroll 8
    for (int v = 0; v < 2 * (B / 2); ++v) {
        const int p0 = 2 * (v / 2);
        const int16x8_t weight =
            vreinterpretq_s16_u32(vdupq_n_u32((uint32_t)(1 << p0) | (uint32_t)(2 << p0) << 16));
        for (int h = 0; h < 2; ++h) {
            const int s = QUAD_SLOT(2 * (v % 2) + h);
            pair32[s][0] = vmlal_s16(pair32[s][0], vget_low_s16(acc16[v][h]), vget_low_s16(weight));
            pair32[s][1] = vmlal_high_s16(pair32[s][1], acc16[v][h], weight);
            acc16[v][h] = vdupq_n_s16(0);
        }
    }
    if (B & 1) {
        const int16_t weight = (int16_t)(1 << (B - 1));
        const int16x8_t low = vuzp1q_s16(acc16[B - 1][0], acc16[B - 1][1]); /* columns 0-7 */
        const int16x8_t high = vuzp2q_s16(acc16[B - 1][0], acc16[B - 1][1]); /* 8-15 */
        odd32[0] = vmlal_n_s16(odd32[0], vget_low_s16(low), weight);
        odd32[2] = vmlal_high_n_s16(odd32[2], low, weight);
        odd32[1] = vmlal_n_s16(odd32[1], vget_low_s16(high), weight);
        odd32[3] = vmlal_high_n_s16(odd32[3], high, weight);
        acc16[B - 1][0] = acc16[B - 1][1] = vdupq_n_s16(0);
    }
}

/* One tile for tokens t0 .. t0 + nt - 1 (nt <= ROWS_PER_PASS), B = bits: per block the weight
 * bytes are read from memory once (then from L1 for the further tokens of the pass). */
SAIL_INLINE void plane_pass(const sail_lut_call *call, int tile, int t0, const int nt,
                            const int B, const int S) {
    const sail_lut_weight *w = call->w;
    const int n_groups = w->n_groups, bpg = w->blocks_per_group;
    const size_t block_bytes = (size_t)B * 64;
    int16x8_t acc16[ROWS_PER_PASS][8][2];
    int32x4_t pair32[ROWS_PER_PASS][4][2], odd32[ROWS_PER_PASS][4];
    float32x4_t yacc[ROWS_PER_PASS][4];
    for (int t = 0; t < nt; ++t) {
        for (int v = 0; v < B; ++v) acc16[t][v][0] = acc16[t][v][1] = vdupq_n_s16(0);
        for (int s = 0; s < 4; ++s) yacc[t][s] = vdupq_n_f32(0.0f);
    }
    FOR_EACH_SUM(w, sb, S) {
        const int grp = sb.grp, blk_end = sb.blk0 + sb.nblk;
        for (int t = 0; t < nt; ++t)
            for (int s = 0; s < 4; ++s)
                pair32[t][s][0] = pair32[t][s][1] = odd32[t][s] = vdupq_n_s32(0);
        const uint8_t *planes = w->planes + ((size_t)tile * (size_t)n_groups + (size_t)grp) *
                                                (size_t)bpg * block_bytes;
        for (int blk = sb.blk0; blk < blk_end; ++blk) {
            const uint8_t *wb = planes + (size_t)blk * block_bytes;
            const uint8_t *tab = call->tables + sail_lut_table_offset(w, call->rows, t0, grp, blk);
            for (size_t i = 0; i < block_bytes; i += 64)
                __builtin_prefetch(wb + PREFETCH_BYTES + i);
            for (int t = 0; t < nt; ++t) {
                block_tables tb;
                load_tables(tab + (size_t)t * SAIL_LUT_TABLE_BYTES_PER_BLOCK, &tb);
                lookup_block(wb, &tb, acc16[t], B);
            }
            if ((blk - sb.blk0) % BLOCKS_PER_FLUSH == BLOCKS_PER_FLUSH - 1 || blk == blk_end - 1)
                for (int t = 0; t < nt; ++t) flush(acc16[t], pair32[t], odd32[t], B);
        }
        for (int t = 0; t < nt; ++t) {
            int32x4_t sum[4];
            for (int s = 0; s < 4; ++s)
                sum[s] = vaddq_s32(vpaddq_s32(pair32[t][s][0], pair32[t][s][1]), odd32[t][s]);
            finish_sums(call, sum, yacc[t], tile, t0 + t, &sb, B, 0);
        }
    }
    for (int t = 0; t < nt; ++t) {
        const int col0 = tile * SAIL_LUT_TILE_N;
        store_tile_f32(call->y + (size_t)(t0 + t) * (size_t)w->n + (size_t)col0, yacc[t],
                       w->n - col0);
    }
}

/* ---- Codes layout (4- and 8-bit weights) ------------------------------------------------------ */

/* Row quad q's 4 activations are 32-bit element q % 4 of the block's activation register q / 4.
 * 4 bits: vector q (bytes wb + 32 q: two registers, halves m = 0, 1) holds in its low nibbles
 * the columns of slots m (order[4 m .. 4 m + 3], 4 rows each), in its high nibbles slots 2 + m.
 * 8 bits: vectors 2 q + h, half m: the columns of slot 2 h + m. */
#ifdef __ARM_FEATURE_DOTPROD

/* sdot per 4 bytes: int32 lane i += the 4 products of column i of the register's slot. */
#define DOT4(q, xr, e)                                                                            \
    do {                                                                                          \
        const uint8x16_t c0 = vld1q_u8(wb + 32 * (q)), c1 = vld1q_u8(wb + 32 * (q) + 16);         \
        acc[0] = vdotq_laneq_s32(acc[0], vreinterpretq_s8_u8(vandq_u8(c0, nib)), xr, e);          \
        acc[1] = vdotq_laneq_s32(acc[1], vreinterpretq_s8_u8(vandq_u8(c1, nib)), xr, e);          \
        acc[2] = vdotq_laneq_s32(acc[2], vreinterpretq_s8_u8(vshrq_n_u8(c0, 4)), xr, e);          \
        acc[3] = vdotq_laneq_s32(acc[3], vreinterpretq_s8_u8(vshrq_n_u8(c1, 4)), xr, e);          \
    } while (0)
#define DOT8(q, xr, e)                                                                            \
    do {                                                                                          \
        for (int h = 0; h < 2; ++h) {                                                             \
            const uint8x16_t c0 = vld1q_u8(wb + 32 * (2 * (q) + h));                              \
            const uint8x16_t c1 = vld1q_u8(wb + 32 * (2 * (q) + h) + 16);                         \
            acc[2 * h] = vdotq_laneq_s32(acc[2 * h], vreinterpretq_s8_u8(veorq_u8(c0, bias)),   \
                                         xr, e);                                                  \
            acc[2 * h + 1] = vdotq_laneq_s32(acc[2 * h + 1],                                      \
                                             vreinterpretq_s8_u8(veorq_u8(c1, bias)), xr, e);     \
        }                                                                                         \
    } while (0)

/* One token and block of codes: acc[slot] += the exact int32 sums (8 bits: of (c - 128) x). */
SAIL_INLINE void codes_block(const uint8_t *wb, const int8_t *x, int32x4_t *acc, const int B) {
    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    const uint8x16_t nib = vdupq_n_u8(15), bias = vdupq_n_u8(0x80);
    (void)nib;
    (void)bias;
    if (B == 4) {
        DOT4(0, x0, 0); DOT4(1, x0, 1); DOT4(2, x0, 2); DOT4(3, x0, 3);
        DOT4(4, x1, 0); DOT4(5, x1, 1); DOT4(6, x1, 2); DOT4(7, x1, 3);
    } else {
        DOT8(0, x0, 0); DOT8(1, x0, 1); DOT8(2, x0, 2); DOT8(3, x0, 3);
        DOT8(4, x1, 0); DOT8(5, x1, 1); DOT8(6, x1, 2); DOT8(7, x1, 3);
    }
}

typedef struct { int32x4_t v[4]; } codes_acc;

SAIL_INLINE void codes_reset(codes_acc *a) {
    for (int s = 0; s < 4; ++s) a->v[s] = vdupq_n_s32(0);
}

SAIL_INLINE void codes_add(codes_acc *a, const uint8_t *wb, const int8_t *x, const int B) {
    codes_block(wb, x, a->v, B);
}

SAIL_INLINE void codes_sums(codes_acc *a, int32x4_t *sum) {
    for (int s = 0; s < 4; ++s) sum[s] = a->v[s];
}

#else /* plain NEON */

/* smlal of a nibble register with the quad's activations (the 4 bytes repeated) into int16:
 * lane i of half k (0: bytes 0-7, 1: bytes 8-15) is row i % 4 of column 2 k + i / 4. */
#define MLA4(q, xr, e)                                                                            \
    do {                                                                                          \
        const uint8x16_t c0 = vld1q_u8(wb + 32 * (q)), c1 = vld1q_u8(wb + 32 * (q) + 16);         \
        const int8x16_t xd = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(xr), e)); \
        const int8x16_t n[4] = {vreinterpretq_s8_u8(vandq_u8(c0, nib)),                           \
                                vreinterpretq_s8_u8(vandq_u8(c1, nib)),                           \
                                vreinterpretq_s8_u8(vshrq_n_u8(c0, 4)),                           \
                                vreinterpretq_s8_u8(vshrq_n_u8(c1, 4))};                          \
        for (int s = 0; s < 4; ++s) {                                                             \
            acc16[s][0] = vmlal_s8(acc16[s][0], vget_low_s8(n[s]), vget_low_s8(xd));             \
            acc16[s][1] = vmlal_high_s8(acc16[s][1], n[s], xd);                                   \
        }                                                                                         \
    } while (0)
/* smull of (c - 128) with the activations, sadalp into int32 row pairs at once. */
#define MUL8(q, xr, e)                                                                            \
    do {                                                                                          \
        const int8x16_t xd = vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(xr), e)); \
        for (int h = 0; h < 2; ++h)                                                               \
            for (int m = 0; m < 2; ++m) {                                                         \
                const int8x16_t c = vreinterpretq_s8_u8(                                          \
                    veorq_u8(vld1q_u8(wb + 32 * (2 * (q) + h) + 16 * m), bias));                  \
                pair[2 * h + m][0] =                                                              \
                    vpadalq_s16(pair[2 * h + m][0], vmull_s8(vget_low_s8(c), vget_low_s8(xd)));   \
                pair[2 * h + m][1] = vpadalq_s16(pair[2 * h + m][1], vmull_high_s8(c, xd));      \
            }                                                                                     \
    } while (0)

/* One token and block of codes: pair[slot][k] += row-pair sums, lane 2 c + r of column 2 k + c
 * of the slot (added pairwise at the end). */
SAIL_INLINE void codes_block(const uint8_t *wb, const int8_t *x, int32x4_t (*pair)[2],
                             const int B) {
    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    const uint8x16_t nib = vdupq_n_u8(15), bias = vdupq_n_u8(0x80);
    (void)nib;
    (void)bias;
    if (B == 4) {
        int16x8_t acc16[4][2];
        for (int s = 0; s < 4; ++s) acc16[s][0] = acc16[s][1] = vdupq_n_s16(0);
        MLA4(0, x0, 0); MLA4(1, x0, 1); MLA4(2, x0, 2); MLA4(3, x0, 3);
        MLA4(4, x1, 0); MLA4(5, x1, 1); MLA4(6, x1, 2); MLA4(7, x1, 3);
        for (int s = 0; s < 4; ++s) {
            pair[s][0] = vpadalq_s16(pair[s][0], acc16[s][0]);
            pair[s][1] = vpadalq_s16(pair[s][1], acc16[s][1]);
        }
    } else {
        MUL8(0, x0, 0); MUL8(1, x0, 1); MUL8(2, x0, 2); MUL8(3, x0, 3);
        MUL8(4, x1, 0); MUL8(5, x1, 1); MUL8(6, x1, 2); MUL8(7, x1, 3);
    }
}

typedef struct { int32x4_t v[4][2]; } codes_acc;

SAIL_INLINE void codes_reset(codes_acc *a) {
    for (int s = 0; s < 4; ++s) a->v[s][0] = a->v[s][1] = vdupq_n_s32(0);
}

SAIL_INLINE void codes_add(codes_acc *a, const uint8_t *wb, const int8_t *x, const int B) {
    codes_block(wb, x, a->v, B);
}

SAIL_INLINE void codes_sums(codes_acc *a, int32x4_t *sum) {
    for (int s = 0; s < 4; ++s) sum[s] = vpaddq_s32(a->v[s][0], a->v[s][1]);
}

#endif /* __ARM_FEATURE_DOTPROD */

/* One tile of 4- or 8-bit codes for tokens t0 .. t0 + nt - 1: per block the codes are read from
 * memory once, each token multiplies them with its 32 activations. */
SAIL_INLINE void codes_pass(const sail_lut_call *call, int tile, int t0, const int nt,
                            const int B, const int S) {
    const sail_lut_weight *w = call->w;
    const int n_groups = w->n_groups, bpg = w->blocks_per_group;
    const size_t block_bytes = (size_t)B * 64;
    codes_acc acc[ROWS_PER_PASS];
    float32x4_t yacc[ROWS_PER_PASS][4];
    for (int t = 0; t < nt; ++t)
        for (int s = 0; s < 4; ++s) yacc[t][s] = vdupq_n_f32(0.0f);
    FOR_EACH_SUM(w, sb, S) {
        const int grp = sb.grp;
        for (int t = 0; t < nt; ++t) codes_reset(&acc[t]);
        const uint8_t *planes = w->planes + ((size_t)tile * (size_t)n_groups + (size_t)grp) *
                                                (size_t)bpg * block_bytes;
        for (int blk = sb.blk0; blk < sb.blk0 + sb.nblk; ++blk) {
            const uint8_t *wb = planes + (size_t)blk * block_bytes;
            const int8_t *x = (const int8_t *)(call->tables +
                                               sail_lut_table_offset(w, call->rows, t0, grp, blk));
            for (size_t i = 0; i < block_bytes; i += 64)
                __builtin_prefetch(wb + PREFETCH_BYTES + i);
            for (int t = 0; t < nt; ++t)
                codes_add(&acc[t], wb, x + (size_t)t * SAIL_LUT_ROWS_BYTES_PER_BLOCK, B);
        }
        for (int t = 0; t < nt; ++t) {
            int32x4_t sum[4];
            codes_sums(&acc[t], sum);
            finish_sums(call, sum, yacc[t], tile, t0 + t, &sb, B, B == 8);
        }
    }
    for (int t = 0; t < nt; ++t) {
        const int col0 = tile * SAIL_LUT_TILE_N;
        store_tile_f32(call->y + (size_t)(t0 + t) * (size_t)w->n + (size_t)col0, yacc[t],
                       w->n - col0);
    }
}

/* ---- Dispatch -------------------------------------------------------------------------------- */

/* Every tile of [tile_begin, tile_end) and the tokens in passes of up to ROWS_PER_PASS; a
 * pass of one token (batch 1, the decode step) is instantiated with that count a constant, so
 * that its accumulators stay in registers; the others share one instance (code size). */
#define TOKEN_PASSES(PASS, call, tile_begin, tile_end, B, S)                                       \
    for (int tile = (tile_begin); tile < (tile_end); ++tile)                                      \
        for (int t0 = 0; t0 < (call)->rows; t0 += ROWS_PER_PASS) {                                \
            const int nt = (call)->rows - t0 < ROWS_PER_PASS ? (call)->rows - t0 : ROWS_PER_PASS; \
            if (nt == 1)                                                                          \
                PASS(call, tile, t0, 1, B, S);                                                    \
            else                                                                                  \
                PASS(call, tile, t0, nt, B, S);                                                   \
        }

SAIL_INLINE void tiles(const sail_lut_call *call, int tile_begin, int tile_end, const int B,
                       const int S) {
    if (B == 4 || B == 8) {
        TOKEN_PASSES(codes_pass, call, tile_begin, tile_end, B, S);
    } else {
        TOKEN_PASSES(plane_pass, call, tile_begin, tile_end, B, S);
    }
}

SAIL_LUT_DEFINE_TILES(sail_lut_tiles_neon)

#else
/* ISO C wants a declaration in every translation unit. */
typedef int sail_lut_neon_unused;
#endif /* SAIL_LUT_HAVE_NEON */
