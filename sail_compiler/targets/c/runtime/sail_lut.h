/* SAIL C runtime: LUT-GEMV over low-bit weights, CPU (T-MAC) form.
 *
 * Computes, for a weight W[K, N] quantized in groups of g consecutive k with b-bit unsigned
 * codes q (b = 1..8), scales s[grp, n] and zero points z[grp, n], and int8 activations xq with
 * one scale per token and block of A consecutive k (sail_quantize_rows; DESIGN.md section 3):
 *
 *   S[t, j, n] = sum_{k in j} (q[k, n] - z[grp(j), n]) * xq[t, k]          exact, int32
 *   y[t, n]    = sum_j (s[grp(j), n] * sx[t, blk(j)]) * (float)S[t, j, n]  float32, j in order
 *
 * over the sum blocks j of B rows: B = g when A is a multiple of g (or A = K: one scale per
 * token), else B = A, a weight group split at activation-block boundaries (then B is a
 * multiple of SAIL_LUT_BLOCK_K; the compiler regroups other weights, see kernels.relayout);
 * grp(j) = j B / g, blk(j) = j B / A. The integer sums equal the NumPy reference
 * (sail_compiler.quant.reference.block_sums) exactly; y is computed with the reference's
 * float operations in the reference's order (build without FP contraction: -ffp-contract=off).
 *
 * Method (bit planes: 1-3 and 5-7 bits; 4 and 8 bits use the codes layout below, no tables)
 * ------
 * K is cut into chunks of NBW = 4 rows. For each token and chunk the runtime builds a table
 * of the 16 subset sums of the chunk's 4 activations, V[p] = sum_{j : bit j of p} x_j, in
 * [-512, 508]. The weights are stored as bit planes: the 4 bits of plane i of one column in
 * one chunk form the index p, and sum_i V[p_i] << i = sum_j q_j x_j. A byte shuffle (vpshufb,
 * NEON tbl) looks up 16 or 32 such indices at once. V needs 10 bits, so each table is kept as
 * two byte tables, V = 16 * H + L with L = V & 15 in [0, 15] and H = V >> 4 in [-32, 31]
 * (arithmetic shift): two shuffles per index, both exact. The zero points enter once per
 * token and group as z * sum_{k in grp} xq (what the tables' all-ones entries V[15] add up to,
 * computed with the tables).
 *
 * Weight layout (written at compile time by sail_compiler.targets.c.kernels.relayout)
 * ------------------------------------------------------------------------------------
 * Columns are cut into tiles of SAIL_LUT_TILE_N = 16 (two subtiles of 8); N is padded with
 * zero-scale columns. Each group of g rows is padded to blocks of SAIL_LUT_BLOCK_K = 32 rows
 * (rows past g or K have xq = 0 and code bits 0). Row r of a block belongs to chunk pair
 * cp = r / 8 (0..3), lane L = (r / 4) % 2 and chunk row j = r % 4: the 16-byte shuffle lane L
 * of a 32-byte vector serves chunk 2 * cp + L.
 *
 * Per tile, group and block there are `bits` index vectors v per chunk pair. Byte bp (0..15)
 * of lane L of vector v holds the index of
 *   v < 2 * (bits / 2):        column 8 * (v % 2) + bp / 2,       plane 2 * (v / 2) + bp % 2
 *   v = bits - 1, bits odd:    column 8 * (bp % 2) + bp / 2,      plane bits - 1
 * so adjacent bytes are two planes of one column (summed by one multiply-add with weights
 * 1 and 2), and the odd last plane pairs the two subtiles. Two chunk pairs share a byte:
 * chunk pair 2l in the low nibble, 2l + 1 in the high nibble. The bytes of one tile, group
 * and block are ordered [v][l][L][bp] (bits * 2 * 32 bytes), blocks follow each other, then
 * groups, then tiles:
 *   planes[((tile * n_groups + grp) * blocks_per_group + blk) * bits * 64 + (v * 2 + l) * 32
 *          + L * 16 + bp]
 *
 * Codes layout (4 and 8 bits: sail_lut_codes_layout)
 * --------------------------------------------------
 * At 4 and 8 bits the codes themselves are stored, in the same bits * 64 bytes per tile, group
 * and block as the bit planes; the kernels multiply them with the int8 activations directly
 * (vpmaddubsw on 4-bit nibbles;
 * with VNNI, vpdpbusd on the nibbles, and on whole 8-bit codes), which takes far fewer instructions per token than tables,
 * and need no tables: the workspace holds each token's 32 activations per block (0 past g or
 * K) at sail_lut_table_offset. With order = SAIL_LUT_COLUMN_ORDER, row quad q = 0..7 (rows
 * 4 q .. 4 q + 3 of the block) and byte b = 0..31 of a 32-byte vector:
 *   4 bits: vector q, byte b: row 4 q + b % 4 of column order[b / 4] in the low nibble, of
 *           column order[8 + b / 4] in the high nibble;
 *   8 bits: vector 2 q + h, byte b: the code of row 4 q + b % 4 of column order[8 h + b / 4];
 *   planes[((tile * n_groups + grp) * blocks_per_group + blk) * bits * 64 + vector * 32 + b]
 * A vector's low (or high) nibbles against the row quad's 4 activations, broadcast to every 4
 * bytes, give by vpmaddubsw and vpmaddwd the sums of 8 columns in scale order; an 8-bit code
 * is 16 * (high nibble) + (low nibble).
 *
 * scales[(tile * n_groups + grp) * 16 + i] (float32; or scales_f16[...], IEEE binary16, for
 * weights compiled with --scale-dtype float16: the same values, converted to float32 exactly
 * before use, so the results do not depend on the storage) and zeros[...] (uint8, or NULL for
 * symmetric weights with the implicit zero point 2^(bits-1)) follow the same tile order;
 * entry i belongs to column SAIL_LUT_COLUMN_ORDER[i] of the tile, the order in which the
 * AVX2 kernel's integer sums come out of its lane folding.
 *
 * Threads: sail_lut_gemv splits the tables of a batch by token, then the tiles (contiguous
 * ranges), over the threads of a sail_pool (sail_threads.h). The kernels keep no global
 * state: calls on different pools and workspaces may run at once.
 *
 * Kernels: sail_lut.c holds the portable C kernels and chooses at build time; sail_lut_avx2.c
 * holds the x86-64 AVX2 ones (compiled when __AVX2__ is defined and SAIL_NO_SIMD is not),
 * sail_lut_neon.c the AArch64 NEON ones (when __ARM_NEON is; tbl for vpshufb, 128-bit halves
 * for the two lanes; for the codes layout sdot with __ARM_FEATURE_DOTPROD, else widening
 * multiply-adds), both over the same layouts through the two entry points declared at the end.
 */
#ifndef SAIL_LUT_H
#define SAIL_LUT_H

#include <stddef.h>
#include <stdint.h>

#include "sail_threads.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SAIL_LUT_NBW 4
#define SAIL_LUT_TILE_N 16
#define SAIL_LUT_BLOCK_K 32
/* Tile column of scale / zero point entry i (see the layout above). */
#define SAIL_LUT_COLUMN_ORDER {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15}
/* Bytes of activation tables per token and block: 4 chunk pairs x (lo 32 B, hi 32 B). */
#define SAIL_LUT_TABLE_BYTES_PER_BLOCK 256
/* Bytes of activations per token and block in the codes layout. */
#define SAIL_LUT_ROWS_BYTES_PER_BLOCK 32

/* Return codes. */
#define SAIL_OK 0
#define SAIL_EINVAL (-1) /* an argument is out of range or inconsistent */
#define SAIL_ENOMEM (-2) /* the workspace could not be allocated */

/* A weight re-laid out for the kernels (see the layout above). The arrays are borrowed. */
typedef struct sail_lut_weight {
    int bits;             /* code width b, 1..8 */
    int k;                /* reduction length K (rows of W) */
    int n;                /* output columns N */
    int group_size;       /* g, rows per group; K for one group per column */
    int n_groups;         /* ceil(K / g) */
    int blocks_per_group; /* ceil(g / SAIL_LUT_BLOCK_K) */
    int n_tiles;          /* ceil(N / SAIL_LUT_TILE_N) */
    int act_group;        /* A, columns per activation scale, 1..K (K: one scale per token) */
    int n_act_blocks;     /* ceil(K / A): activation scales per token */
    int sum_size;         /* B, rows per sum block (see the contract above) */
    int n_sums;           /* ceil(K / B): sums per token and column */
    const uint8_t *planes;  /* n_tiles * n_groups * blocks_per_group * bits * 64 bytes */
    const float *scales;    /* [n_tiles][n_groups][16], or NULL when scales_f16 is set */
    const uint8_t *zeros;   /* [n_tiles][n_groups][16], or NULL: zero point 2^(bits-1) */
    const uint16_t *scales_f16; /* the scales as binary16, or NULL: exactly one of the two */
} sail_lut_weight;

/* Fill the derived fields of w (n_groups, blocks_per_group, n_tiles, n_act_blocks, sum_size,
 * n_sums) from bits, k, n, group_size and act_group (above K: one scale per token, stored as K).
 * SAIL_EINVAL if A and g do not nest (A a multiple or a divisor of g, or one block or one group
 * covering K) or a sum block smaller than g is not a multiple of SAIL_LUT_BLOCK_K. */
int sail_lut_derive(sail_lut_weight *w);

/* SAIL_OK if w is consistent (fields in range, derived counts right, arrays present: planes
 * and exactly one of scales and scales_f16). */
int sail_lut_check(const sail_lut_weight *w);

/* Symmetric quantization with one scale per row and block of act_group columns (the last block
 * may be partial; act_group >= k: one per row), exactly
 * sail_compiler.quant.reference.quantize_activations: sx[t][blk] = max |x[t, blk]| /
 * (2^(act_bits-1) - 1) (1 where that is 0), xq = nearbyint(x / sx) (IEEE division, round half
 * to even in the default rounding mode) clamped to +-qmax. x: [rows][k] finite float32;
 * act_bits 2..8; sx: [rows][ceil(k / act_group)]. Returns SAIL_OK or SAIL_EINVAL. */
int sail_quantize_rows(const float *x, int rows, int k, int act_bits, int act_group, int8_t *xq,
                       float *sx);

/* Bytes of workspace sail_lut_gemv needs for `rows` tokens (tables, sums of xq and scales per
 * sum block). */
size_t sail_lut_workspace_size(const sail_lut_weight *w, int rows);

/* y[rows][n] = xq[rows][k] times the weight, as in the contract at the top of this file.
 * sx: [rows][n_act_blocks] activation scales. sums: NULL, or [rows][n_sums][n] to receive the
 * exact int32 sums. workspace: NULL (allocated and freed per call) or sail_lut_workspace_size()
 * bytes aligned to 64. pool: NULL runs on the calling thread; one call at a time per pool.
 * xq may hold any int8 value (-128 included). Returns SAIL_OK, SAIL_EINVAL or SAIL_ENOMEM. */
int sail_lut_gemv(const sail_lut_weight *w, const int8_t *xq, const float *sx, int rows,
                  float *y, int32_t *sums, void *workspace, sail_pool *pool);

/* The kernel family this library was built with: "avx2", "neon-dotprod", "neon" or
 * "portable". */
const char *sail_lut_isa(void);

/* ---- Kernel interface (one implementation per instruction set) ---------------------------- */

/* One call's operands as the kernels see them. */
typedef struct sail_lut_call {
    const sail_lut_weight *w;
    const uint8_t *tables; /* see sail_lut_table_offset */
    const int32_t *xsum;   /* [rows][n_sums]: sum of xq over each sum block */
    const float *sx;       /* [rows][n_sums]: the activation scale of each sum block */
    int rows;
    float *y;              /* [rows][n] */
    int32_t *sums;         /* [rows][n_sums][n] or NULL */
} sail_lut_call;

/* Sum block j of a weight: its group, its first block in the group and the blocks holding rows
 * of W (the rest, past K, hold zero codes and meet zero activations: nobody reads them), with the
 * walk's counts kept in the struct (the kernels walk the sums once per tile and token pass):
 *   for (sail_lut_sum s = sail_lut_sum_first(w); s.j < s.n_sums; sail_lut_sum_next(&s, split))
 * split = 1 walks any weight; split = 0 (a constant in the kernels) only weights whose sums are
 * their groups (sum_size == group_size), with a plain step from group to group. */
typedef struct sail_lut_sum {
    int j, grp, blk0, nblk;
    int n_sums, blocks_per_sum, blocks_per_group, last_nblk;
} sail_lut_sum;

static inline sail_lut_sum sail_lut_sum_first(const sail_lut_weight *w) {
    sail_lut_sum s;
    s.j = s.grp = s.blk0 = 0;
    s.n_sums = w->n_sums;
    s.blocks_per_group = w->blocks_per_group;
    s.blocks_per_sum =
        w->sum_size == w->group_size ? w->blocks_per_group : w->sum_size / SAIL_LUT_BLOCK_K;
    /* only the last sum can end before its last block */
    const long rows = (long)w->k - (long)(w->n_sums - 1) * w->sum_size;
    const long live = (rows + SAIL_LUT_BLOCK_K - 1) / SAIL_LUT_BLOCK_K;
    s.last_nblk = live < s.blocks_per_sum ? (int)live : s.blocks_per_sum;
    s.nblk = s.n_sums == 1 ? s.last_nblk : s.blocks_per_sum;
    return s;
}

static inline void sail_lut_sum_next(sail_lut_sum *s, const int split) {
    s->j += 1;
    if (split) {
        s->blk0 += s->blocks_per_sum;
        if (s->blk0 >= s->blocks_per_group) {
            s->grp += 1;
            s->blk0 = 0;
        }
    } else {
        s->grp += 1;
    }
    s->nblk = s->j == s->n_sums - 1 ? s->last_nblk : s->blocks_per_sum;
}

/* Weights of 4 and 8 bits use the codes layout; the kernels' workspace then holds each token's
 * activations per block (SAIL_LUT_ROWS_BYTES_PER_BLOCK bytes) instead of tables. */
static inline int sail_lut_codes_layout(const sail_lut_weight *w) {
    return w->bits == 4 || w->bits == 8;
}

static inline size_t sail_lut_table_block_bytes(const sail_lut_weight *w) {
    return sail_lut_codes_layout(w) ? SAIL_LUT_ROWS_BYTES_PER_BLOCK
                                     : SAIL_LUT_TABLE_BYTES_PER_BLOCK;
}

/* Byte offset of the tables of token t (of `rows`), group grp and block blk: the tokens of one
 * block are adjacent, so a pass over a block reads one contiguous stretch for all tokens. */
static inline size_t sail_lut_table_offset(const sail_lut_weight *w, int rows, int t, int grp,
                                           int blk) {
    return (((size_t)grp * (size_t)w->blocks_per_group + (size_t)blk) * (size_t)rows +
            (size_t)t) * sail_lut_table_block_bytes(w);
}

/* Tables of tokens [row_begin, row_end) of `rows`: for token t, group grp, block blk and chunk
 * pair cp, 64 bytes at sail_lut_table_offset(w, rows, t, grp, blk) + cp * 64:
 * L of chunk 2cp (16 B), L of chunk 2cp + 1, H of chunk 2cp, H of chunk 2cp + 1 (entries as
 * uint8 / int8), where V[p] = 16 H[p] + L[p] (codes layout: the block's 32 activations); and
 * xsum[t][j]. Only the blocks of the sum blocks are written (sail_lut_sum). */
void sail_lut_tables_portable(const sail_lut_weight *w, const int8_t *xq, int rows,
                              int row_begin, int row_end, uint8_t *tables, int32_t *xsum);
/* y and sums of the tiles [tile_begin, tile_end) for every token of the call. */
void sail_lut_tiles_portable(const sail_lut_call *call, int tile_begin, int tile_end);

/* For a SIMD kernel file: the 32 activations of block blk of group grp of one token row xr,
 * direct from xr when the block lies inside the group and K, else copied into scratch with
 * zeros for the rows past them. */
static inline const int8_t *sail_lut_block_rows(const sail_lut_weight *w, const int8_t *xr,
                                                int grp, int blk, int8_t *scratch) {
    const int row0 = blk * SAIL_LUT_BLOCK_K;
    const long k0 = (long)grp * w->group_size + row0;
    if (row0 + SAIL_LUT_BLOCK_K <= w->group_size && k0 + SAIL_LUT_BLOCK_K <= w->k) return xr + k0;
    for (int r = 0; r < SAIL_LUT_BLOCK_K; ++r)
        scratch[r] = (row0 + r < w->group_size && k0 + r < w->k) ? xr[k0 + r] : 0;
    return scratch;
}

/* For a SIMD kernel file: defines `void NAME(const sail_lut_call *, int, int)` (the tiles entry
 * point) from the file's `static void tiles(call, tile_begin, tile_end, bits, split_sums)`,
 * called with constant bits (1-8) and split_sums (sum blocks smaller than the weight group) so
 * that the compiler specialises one copy per width. */
#define SAIL_LUT_TILES_FOR_(B)                                                             \
    static void sail_tiles_b##B(const sail_lut_call *call, int tile_begin, int tile_end) { \
        if (call->w->sum_size == call->w->group_size)                                      \
            tiles(call, tile_begin, tile_end, B, 0);                                       \
        else                                                                               \
            tiles(call, tile_begin, tile_end, B, 1);                                       \
    }
#define SAIL_LUT_DEFINE_TILES(NAME)                                                        \
    SAIL_LUT_TILES_FOR_(1) SAIL_LUT_TILES_FOR_(2) SAIL_LUT_TILES_FOR_(3)                   \
    SAIL_LUT_TILES_FOR_(4) SAIL_LUT_TILES_FOR_(5) SAIL_LUT_TILES_FOR_(6)                   \
    SAIL_LUT_TILES_FOR_(7) SAIL_LUT_TILES_FOR_(8)                                          \
    void NAME(const sail_lut_call *call, int tile_begin, int tile_end) {                   \
        static void (*const by_bits[9])(const sail_lut_call *, int, int) = {               \
            NULL,            sail_tiles_b1, sail_tiles_b2, sail_tiles_b3, sail_tiles_b4,   \
            sail_tiles_b5, sail_tiles_b6, sail_tiles_b7, sail_tiles_b8};                   \
        by_bits[call->w->bits](call, tile_begin, tile_end);                                \
    }

#if defined(__AVX2__) && !defined(SAIL_NO_SIMD)
#define SAIL_LUT_HAVE_AVX2 1
void sail_lut_tables_avx2(const sail_lut_weight *w, const int8_t *xq, int rows, int row_begin,
                          int row_end, uint8_t *tables, int32_t *xsum);
void sail_lut_tiles_avx2(const sail_lut_call *call, int tile_begin, int tile_end);
#endif

/* AArch64 NEON (sail_lut_neon.c): tbl lookups, and sdot for the codes layout where the build
 * targets a CPU with the dot product extension (__ARM_FEATURE_DOTPROD). */
#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(SAIL_NO_SIMD)
#define SAIL_LUT_HAVE_NEON 1
void sail_lut_tables_neon(const sail_lut_weight *w, const int8_t *xq, int rows, int row_begin,
                          int row_end, uint8_t *tables, int32_t *xsum);
void sail_lut_tiles_neon(const sail_lut_call *call, int tile_begin, int tile_end);
#endif

#ifdef __cplusplus
}
#endif

#endif /* SAIL_LUT_H */
