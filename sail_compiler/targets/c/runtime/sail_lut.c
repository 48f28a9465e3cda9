/* SAIL C runtime: LUT-GEMV API, activation quantizer and the portable C kernels.
 *
 * The portable kernels read the same tables and weight layout as the SIMD ones (sail_lut.h)
 * and compute the same integers; they are the fallback on other CPUs and the readable
 * statement of what the SIMD kernels do.
 */
#include "sail_lut.h"

#include "sail_attention.h" /* sail_f32_from_f16 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Layout helpers shared by every kernel ------------------------------------------------- */

static size_t table_bytes(const sail_lut_weight *w, int rows) {
    return (size_t)rows * (size_t)w->n_groups * (size_t)w->blocks_per_group *
           sail_lut_table_block_bytes(w);
}

static size_t round_up_64(size_t bytes) { return (bytes + 63u) & ~(size_t)63u; }

int sail_lut_derive(sail_lut_weight *w) {
    if (!w || w->k < 1 || w->n < 1 || w->group_size < 1 || w->act_group < 1) return SAIL_EINVAL;
    const int k = w->k, g = w->group_size;
    const int a = w->act_group < k ? w->act_group : k;
    if (a % g && g % a && k > g && a < k) return SAIL_EINVAL; /* A and g do not nest */
    w->act_group = a;
    w->n_groups = (k + g - 1) / g;
    w->blocks_per_group = (g + SAIL_LUT_BLOCK_K - 1) / SAIL_LUT_BLOCK_K;
    w->n_tiles = (w->n + SAIL_LUT_TILE_N - 1) / SAIL_LUT_TILE_N;
    w->n_act_blocks = (k + a - 1) / a;
    w->sum_size = (a % g == 0 || a == k) ? g : a;
    w->n_sums = (k + w->sum_size - 1) / w->sum_size;
    if (w->sum_size != g && w->sum_size % SAIL_LUT_BLOCK_K) return SAIL_EINVAL;
    return SAIL_OK;
}

int sail_lut_check(const sail_lut_weight *w) {
    if (!w || w->bits < 1 || w->bits > 8) return SAIL_EINVAL;
    sail_lut_weight derived = *w;
    if (sail_lut_derive(&derived) != SAIL_OK || derived.act_group != w->act_group ||
        derived.n_groups != w->n_groups || derived.blocks_per_group != w->blocks_per_group ||
        derived.n_tiles != w->n_tiles || derived.n_act_blocks != w->n_act_blocks ||
        derived.sum_size != w->sum_size || derived.n_sums != w->n_sums)
        return SAIL_EINVAL;
    if (!w->planes || !w->scales == !w->scales_f16) return SAIL_EINVAL;
    return SAIL_OK;
}

/* Bytes of the per-token, per-sum-block int32 sums of xq and float scales. */
static size_t per_sum_bytes(const sail_lut_weight *w, int rows) {
    return round_up_64((size_t)rows * (size_t)w->n_sums * sizeof(int32_t));
}

size_t sail_lut_workspace_size(const sail_lut_weight *w, int rows) {
    if (sail_lut_check(w) != SAIL_OK || rows < 1) return 0;
    return round_up_64(table_bytes(w, rows)) + 2 * per_sum_bytes(w, rows);
}

/* ---- Activation quantization ----------------------------------------------------------------- */

int sail_quantize_rows(const float *x, int rows, int k, int act_bits, int act_group, int8_t *xq,
                       float *sx) {
    if (!x || !xq || !sx || rows < 0 || k < 1 || act_bits < 2 || act_bits > 8 || act_group < 1)
        return SAIL_EINVAL;
    const float qmax = (float)((1 << (act_bits - 1)) - 1);
    const int a = act_group < k ? act_group : k, n_blocks = (k + a - 1) / a;
    for (int t = 0; t < rows; ++t) {
        const float *xr = x + (size_t)t * (size_t)k;
        int8_t *qr = xq + (size_t)t * (size_t)k;
        for (int blk = 0; blk < n_blocks; ++blk) {
            const int i0 = blk * a, i1 = k - i0 < a ? k : i0 + a;
            float amax = 0.0f;
            for (int i = i0; i < i1; ++i) {
                float v = fabsf(xr[i]);
                amax = v > amax ? v : amax;
            }
            float s = amax / qmax; /* IEEE division, as the reference */
            if (s == 0.0f) s = 1.0f;
            sx[(size_t)t * (size_t)n_blocks + (size_t)blk] = s;
            for (int i = i0; i < i1; ++i) {
                float r = nearbyintf(xr[i] / s); /* round half to even (default rounding mode) */
                r = r > qmax ? qmax : (r < -qmax ? -qmax : r);
                qr[i] = (int8_t)r;
            }
        }
    }
    return SAIL_OK;
}

/* ---- Portable kernels ------------------------------------------------------------------------ */

/* Activation of row r (0..31) of block blk of group grp, 0 past the group or past K. */
static int block_activation(const sail_lut_weight *w, const int8_t *xr, int grp, int blk, int r) {
    int row_in_group = blk * SAIL_LUT_BLOCK_K + r;
    long k = (long)grp * w->group_size + row_in_group;
    return (row_in_group < w->group_size && k < w->k) ? xr[k] : 0;
}

void sail_lut_tables_portable(const sail_lut_weight *w, const int8_t *xq, int rows,
                              int row_begin, int row_end, uint8_t *tables, int32_t *xsum) {
    for (int t = row_begin; t < row_end; ++t) {
        const int8_t *xr = xq + (size_t)t * (size_t)w->k;
        for (sail_lut_sum s = sail_lut_sum_first(w); s.j < s.n_sums; sail_lut_sum_next(&s, 1)) {
            const int grp = s.grp;
            int32_t total = 0;
            for (int blk = s.blk0; blk < s.blk0 + s.nblk; ++blk) {
                uint8_t *tab = tables + sail_lut_table_offset(w, rows, t, grp, blk);
                if (sail_lut_codes_layout(w)) {
                    /* codes layout: the block's activations themselves, 0 past g or K */
                    for (int r = 0; r < SAIL_LUT_BLOCK_K; ++r) {
                        const int x = block_activation(w, xr, grp, blk, r);
                        tab[r] = (uint8_t)(int8_t)x;
                        total += x;
                    }
                    continue;
                }
                for (int cp = 0; cp < 4; ++cp) {
                    for (int lane = 0; lane < 2; ++lane) {
                        int x[SAIL_LUT_NBW];
                        for (int j = 0; j < SAIL_LUT_NBW; ++j) {
                            x[j] = block_activation(w, xr, grp, blk, cp * 8 + lane * 4 + j);
                            total += x[j];
                        }
                        for (int p = 0; p < 16; ++p) {
                            int v = 0; /* in [-512, 508] */
                            for (int j = 0; j < SAIL_LUT_NBW; ++j)
                                if (p >> j & 1) v += x[j];
                            /* V = 16 H + L: L = V mod 16 in [0, 15] (two's complement &),
                             * H = (V - L) / 16 = floor(V / 16) in [-32, 31], exact. */
                            tab[cp * 64 + lane * 16 + p] = (uint8_t)(v & 15);
                            tab[cp * 64 + 32 + lane * 16 + p] =
                                (uint8_t)(int8_t)((v - (v & 15)) / 16);
                        }
                    }
                }
            }
            xsum[(size_t)t * (size_t)w->n_sums + (size_t)s.j] = total;
        }
    }
}

/* Column (0..15 within the tile) and bit plane of byte bp (0..15) of index vector v. */
static void vector_slot(int bits, int v, int bp, int *column, int *plane) {
    if (v < 2 * (bits / 2)) {
        *column = 8 * (v % 2) + bp / 2;
        *plane = 2 * (v / 2) + bp % 2;
    } else {
        *column = 8 * (bp % 2) + bp / 2;
        *plane = bits - 1;
    }
}

void sail_lut_tiles_portable(const sail_lut_call *call, int tile_begin, int tile_end) {
    const sail_lut_weight *w = call->w;
    const int bits = w->bits, zero_sym = 1 << (bits - 1);
    static const int order[SAIL_LUT_TILE_N] = SAIL_LUT_COLUMN_ORDER;
    const size_t block_bytes = (size_t)bits * 64;
    for (int tile = tile_begin; tile < tile_end; ++tile) {
        const int col0 = tile * SAIL_LUT_TILE_N;
        const int ncols = w->n - col0 < SAIL_LUT_TILE_N ? w->n - col0 : SAIL_LUT_TILE_N;
        for (int t = 0; t < call->rows; ++t) {
            float yacc[SAIL_LUT_TILE_N] = {0};
            for (sail_lut_sum sb = sail_lut_sum_first(w); sb.j < sb.n_sums;
                 sail_lut_sum_next(&sb, 1)) {
                const int grp = sb.grp;
                const size_t tg = (size_t)tile * (size_t)w->n_groups + (size_t)grp;
                const uint8_t *planes = w->planes + tg * (size_t)w->blocks_per_group * block_bytes;
                /* int64: the partial sums before the zero point may exceed int32 for huge g. */
                int64_t acc[SAIL_LUT_TILE_N] = {0};
                for (int blk = sb.blk0; blk < sb.blk0 + sb.nblk; ++blk) {
                    const uint8_t *tab =
                        call->tables + sail_lut_table_offset(w, call->rows, t, grp, blk);
                    const uint8_t *wb = planes + (size_t)blk * block_bytes;
                    if (sail_lut_codes_layout(w)) {
                        /* 4 bits: byte b of vector q holds row 4q + b % 4 of columns
                         * order[b / 4] (low nibble) and order[8 + b / 4] (high nibble);
                         * 8 bits: byte b of vector 2q + h, row 4q + b % 4 of order[8h + b / 4] */
                        const int8_t *x = (const int8_t *)tab;
                        for (int q = 0; q < SAIL_LUT_BLOCK_K / 4; ++q)
                            for (int b = 0; b < 32; ++b) {
                                const int xr = x[4 * q + b % 4];
                                if (bits == 4) {
                                    const uint8_t byte = wb[q * 32 + b];
                                    acc[order[b / 4]] += (int64_t)(byte & 15) * xr;
                                    acc[order[8 + b / 4]] += (int64_t)(byte >> 4) * xr;
                                } else {
                                    for (int h = 0; h < 2; ++h)
                                        acc[order[8 * h + b / 4]] +=
                                            (int64_t)wb[(2 * q + h) * 32 + b] * xr;
                                }
                            }
                        continue;
                    }
                    for (int v = 0; v < bits; ++v) {
                        for (int l = 0; l < 2; ++l) {
                            for (int pos = 0; pos < 32; ++pos) {
                                const int lane = pos / 16, bp = pos % 16;
                                const uint8_t byte = wb[(v * 2 + l) * 32 + pos];
                                int column, plane;
                                vector_slot(bits, v, bp, &column, &plane);
                                for (int half = 0; half < 2; ++half) {
                                    const int cp = 2 * l + half;
                                    const int p = half ? byte >> 4 : byte & 15;
                                    const uint8_t *tl = tab + cp * 64 + lane * 16;
                                    const int value = tl[p] + 16 * (int8_t)tl[32 + p];
                                    acc[column] += (int64_t)value * (1 << plane);
                                }
                            }
                        }
                    }
                }
                const size_t tj = (size_t)t * (size_t)w->n_sums + (size_t)sb.j;
                const int32_t xs = call->xsum[tj];
                const float ssx = call->sx[tj];
                for (int i = 0; i < SAIL_LUT_TILE_N; ++i) {
                    const int c = order[i];
                    if (c >= ncols) continue;
                    const int z = w->zeros ? w->zeros[tg * SAIL_LUT_TILE_N + (size_t)i] : zero_sym;
                    /* Wrap to int32 like the SIMD kernels: exact whenever the sum fits int32. */
                    const int32_t s = (int32_t)(uint32_t)(uint64_t)(acc[c] - (int64_t)z * xs);
                    if (call->sums) call->sums[tj * (size_t)w->n + (size_t)(col0 + c)] = s;
                    const size_t at = tg * SAIL_LUT_TILE_N + (size_t)i;
                    float ws;
                    if (w->scales_f16)
                        sail_f32_from_f16(&ws, w->scales_f16 + at, 1);
                    else
                        ws = w->scales[at];
                    const float scale = ws * ssx;
                    yacc[c] += scale * (float)s;
                }
            }
            memcpy(call->y + (size_t)t * (size_t)w->n + (size_t)col0, yacc,
                   (size_t)ncols * sizeof(float));
        }
    }
}

/* ---- Dispatch -------------------------------------------------------------------------------- */

#ifdef SAIL_LUT_HAVE_AVX2
#define SAIL_LUT_TABLES sail_lut_tables_avx2
#define SAIL_LUT_TILES sail_lut_tiles_avx2
#define SAIL_LUT_ISA "avx2"
#elif defined(SAIL_LUT_HAVE_NEON)
#define SAIL_LUT_TABLES sail_lut_tables_neon
#define SAIL_LUT_TILES sail_lut_tiles_neon
#ifdef __ARM_FEATURE_DOTPROD
#define SAIL_LUT_ISA "neon-dotprod"
#else
#define SAIL_LUT_ISA "neon"
#endif
#else
#define SAIL_LUT_TABLES sail_lut_tables_portable
#define SAIL_LUT_TILES sail_lut_tiles_portable
#define SAIL_LUT_ISA "portable"
#endif

const char *sail_lut_isa(void) { return SAIL_LUT_ISA; }

/* Tables of a batch are split into parts by token. */
typedef struct table_task {
    const sail_lut_weight *w;
    const int8_t *xq;
    const float *sx;
    int rows;
    uint8_t *tables;
    int32_t *xsum;
    float *sum_sx;
} table_task;

static void run_tables(void *ctx, int part, int n_parts) {
    const table_task *task = (const table_task *)ctx;
    const sail_lut_weight *w = task->w;
    const int begin = (int)((long)task->rows * part / n_parts);
    const int end = (int)((long)task->rows * (part + 1) / n_parts);
    if (begin >= end) return;
    SAIL_LUT_TABLES(w, task->xq, task->rows, begin, end, task->tables, task->xsum);
    /* the activation scale of each sum block: sx[t][j B / A] */
    for (int t = begin; t < end; ++t)
        for (int j = 0; j < w->n_sums; ++j)
            task->sum_sx[(size_t)t * (size_t)w->n_sums + (size_t)j] =
                task->sx[(size_t)t * (size_t)w->n_act_blocks +
                         (size_t)((long)j * w->sum_size / w->act_group)];
}

/* Tiles are split into contiguous ranges, a few per thread (sail_pool_parts), so each part
 * streams its stretch of the weights front to back and a thread the machine deschedules holds
 * up one part, not a thread's share. */
static void run_tiles(void *ctx, int part, int n_parts) {
    const sail_lut_call *call = (const sail_lut_call *)ctx;
    const long n_tiles = call->w->n_tiles;
    int begin = (int)(n_tiles * part / n_parts);
    int end = (int)(n_tiles * (part + 1) / n_parts);
    if (begin < end) SAIL_LUT_TILES(call, begin, end);
}

/* Tiles per part at least: a part's weights (16 columns x K codes per tile) stay well above the
 * cost of claiming it. */
#define SAIL_LUT_MIN_TILES_PER_PART 2

int sail_lut_gemv(const sail_lut_weight *w, const int8_t *xq, const float *sx, int rows,
                  float *y, int32_t *sums, void *workspace, sail_pool *pool) {
    if (sail_lut_check(w) != SAIL_OK || !xq || !sx || !y || rows < 0) return SAIL_EINVAL;
    if (rows == 0) return SAIL_OK;
    void *owned = NULL;
    if (!workspace) {
        owned = malloc(sail_lut_workspace_size(w, rows) + 63u);
        if (!owned) return SAIL_ENOMEM;
        workspace = (void *)(((uintptr_t)owned + 63u) & ~(uintptr_t)63u);
    } else if ((uintptr_t)workspace & 63u) {
        return SAIL_EINVAL;
    }
    uint8_t *tables = (uint8_t *)workspace;
    int32_t *xsum = (int32_t *)(tables + round_up_64(table_bytes(w, rows)));
    float *sum_sx = (float *)((uint8_t *)xsum + per_sum_bytes(w, rows));
    table_task task = {w, xq, sx, rows, tables, xsum, sum_sx};
    sail_pool_run_parts(pool, run_tables, &task, sail_pool_parts(pool, rows, 1));
    sail_lut_call call = {w, tables, xsum, sum_sx, rows, y, sums};
    sail_pool_run_parts(pool, run_tiles, &call,
                        sail_pool_parts(pool, w->n_tiles, SAIL_LUT_MIN_TILES_PER_PART));
    free(owned);
    return SAIL_OK;
}
