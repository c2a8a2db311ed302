/* Fused nearest-neighbour matching: each thread computes tiles of the similarity matrix with torch's MKL
 * (packed sgemm, single-threaded calls, so a tile stays in this core's cache) and makes two passes over
 * each tile right after: it keeps the best two per row and per column and collects the few candidates
 * that may be among the exact best two; candidates are re-scored exactly (float64) and merged.
 *
 * Built and loaded by localfeat/native.py (plain C, no Python headers), driven by
 * localfeat/matchers/nearest_neighbor.py, which documents the method: the GEMM's values are a filter
 * with a rigorous error bound, `eps2` is twice that bound. This file replaces the torch operations of the
 * per-block search (`_sweep`); the exact scores, ties (lowest index) and the result are the same.
 *
 * Threads: OpenMP, linked to the runtime torch already runs (native.py), so the work runs on torch's own
 * threads. Float32 (lf_nn_sweep): each thread owns a range of rows for the whole sweep and has its own
 * nn_state: its rows' filter statistics, its own running statistics of every column (over its rows), its
 * candidates and exact best twos. No thread waits for another until lf_nn_finish, where the columns'
 * statistics are merged, the last candidates re-scored against the final thresholds, and the exact best
 * twos merged. bfloat16 (lf_nn_block_bf16): torch's bf16 GEMM writes a block, the threads share its rows
 * and merge its columns' statistics between two barriers (shared running values: the bf16 bound is wide,
 * and thresholds over all rows push fewer candidates). The merges are order independent (ties: lowest
 * index), so the result does not depend on the number of threads or the tile sizes.
 *
 * A candidate is pushed when its filter value reaches the running threshold of its row or column (the
 * running second best - eps2, or the best - eps2 without a ratio test). Running values only grow, so the
 * pushed set holds every element that passes the final thresholds; the pushed candidates are filtered
 * again by the thresholds of the moment before they are re-scored (when the buffer is full, and at the
 * end by the final ones).
 *
 * Compiled with -ffp-contract=off: the exact re-scoring sums float64 products in a fixed pairwise order
 * that must equal nearest_neighbor.exact_similarity's bit for bit.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef LANES
#define LANES 16          /* one AVX-512 register of floats (vector extensions, below) */
#endif
#define ROWS_AT_ONCE 4    /* rows per sweep of the columns' statistics (pass 1) and thresholds (pass 2) */

typedef struct {
    /* descriptors for the exact re-scoring: desc0, desc1 (float32) */
    const float *a, *b;
    int64_t n0, n1, dim, width;     /* width: dim rounded up to a power of two (pairwise summation) */
    int64_t need_second;
    float eps2;
    /* filter domain (GEMM values): best and second best seen, per row (shared array: a row belongs to
     * one thread) and per column (this thread's running values over its rows; after the sweep, the
     * merged values of all threads, `col1_all`, `col2_all`, shared) */
    float *row1, *row2, *col1, *col2, *col1_all, *col2_all;
    /* exact best two: float64 values, index of the best (ties: lowest index) */
    double *row_best, *row_second, *col_best, *col_second;
    int64_t *row_idx, *col_idx;
    /* pending candidates (i, j) and their filter values, per direction; capacity each */
    int64_t *row_cand, *col_cand;
    float *row_cand_v, *col_cand_v;
    int64_t capacity, n_row_cand, n_col_cand;
    /* scratch: width doubles (pairwise sums); a tile of the similarity matrix (tile_rows x tile_cols
     * floats) and its columns' thresholds (tile_cols floats); bf16 blocks: this thread's best two of a
     * block's columns (2 x tile_cols floats) and the block's column thresholds (tile_cols, shared) */
    double *sums;
    float *tile, *col_thr, *col_block, *col_thr_all;
    int64_t tile_rows, tile_cols;
} nn_state;

static inline float bf16_to_float(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float maxf(float x, float y) { return x > y ? x : y; }
static inline float minf(float x, float y) { return x < y ? x : y; }

/* a . b of float32 vectors in float64: exact products, summed by halving (as exact_similarity). */
static double exact_dot(const nn_state *s, const float *x, const float *y) {
    double *p = s->sums;
    int64_t k, h;
    for (k = 0; k < s->dim; k++) p[k] = (double)x[k] * (double)y[k];
    for (; k < s->width; k++) p[k] = 0.0;
    for (h = s->width / 2; h >= 1; h /= 2)
        for (k = 0; k < h; k++) p[k] = p[k] + p[k + h];
    return p[0];
}

/* Merge a best two (b >= s, index i of b) into (*best, *second, *idx), e.g. another thread's. Order
 * independent: a tie keeps the lowest index and makes the second equal to the best. */
static inline void merge_best_two(double *best, double *second, int64_t *idx, double b, double s, int64_t i) {
    if (b > *best) {
        *second = *best > s ? *best : s;
        *best = b;
        *idx = i;
    } else if (b == *best) {
        *second = b;
        if (i < *idx) *idx = i;
    } else if (b > *second) {
        *second = b;
    }
}

/* Merge one candidate (value v at index `other`; no candidate comes twice) into the exact best two of a key. */
static inline void merge_exact(double *best, double *second, int64_t *idx, double v, int64_t other) {
    merge_best_two(best, second, idx, v, -__builtin_inf(), other);
}

static inline void prefetch_row(const float *x, int64_t dim) {
    for (int64_t k = 0; k < dim; k += 16) __builtin_prefetch(x + k);
}

/* Re-score the candidates of one direction (pairs (i, j), filter values v) that still pass their
 * key's threshold; the descriptors of the candidate PREFETCH places ahead are fetched meanwhile. */
#define PREFETCH 4
static void flush_direction(nn_state *s, const int64_t *cand, const float *v, int64_t n, int by_row) {
    const int64_t dim = s->dim;
    for (int64_t c = 0; c < n; c++) {
        if (c + PREFETCH < n) {
            prefetch_row(s->a + cand[2 * (c + PREFETCH)] * dim, dim);
            prefetch_row(s->b + cand[2 * (c + PREFETCH) + 1] * dim, dim);
        }
        const int64_t i = cand[2 * c], j = cand[2 * c + 1], key = by_row ? i : j;
        const float *f1 = by_row ? s->row1 : s->col1, *f2 = by_row ? s->row2 : s->col2;
        if (v[c] < (s->need_second ? f2[key] : f1[key]) - s->eps2) continue;
        /* row_best[i] is the exact value of (i, row_idx[i]): a pair scored for its row is not scored
         * again for its column (the rows are flushed first) */
        const double e = !by_row && s->row_idx[i] == j && s->row_best[i] > -__builtin_inf()
                         ? s->row_best[i] : exact_dot(s, s->a + i * dim, s->b + j * dim);
        if (by_row) merge_exact(s->row_best + i, s->row_second + i, s->row_idx + i, e, j);
        else merge_exact(s->col_best + j, s->col_second + j, s->col_idx + j, e, i);
    }
}

/* Re-score the pending candidates that still pass the (now tighter) thresholds; empty the buffers. */
static void flush(nn_state *s) {
    flush_direction(s, s->row_cand, s->row_cand_v, s->n_row_cand, 1);
    flush_direction(s, s->col_cand, s->col_cand_v, s->n_col_cand, 0);
    s->n_row_cand = 0;
    s->n_col_cand = 0;
}

static inline void push_row(nn_state *s, int64_t i, int64_t j, float v) {
    if (s->n_row_cand == s->capacity) flush(s);
    s->row_cand[2 * s->n_row_cand] = i;
    s->row_cand[2 * s->n_row_cand + 1] = j;
    s->row_cand_v[s->n_row_cand++] = v;
}

static inline void push_col(nn_state *s, int64_t i, int64_t j, float v) {
    if (s->n_col_cand == s->capacity) flush(s);
    s->col_cand[2 * s->n_col_cand] = i;
    s->col_cand[2 * s->n_col_cand + 1] = j;
    s->col_cand_v[s->n_col_cand++] = v;
}

/* Merge a best-two pair (x1 >= x2) into (*b1, *b2). */
static inline void merge_two(float *b1, float *b2, float x1, float x2) {
    float lo = minf(*b1, x1);
    *b2 = maxf(*b2, maxf(lo, x2));
    *b1 = maxf(*b1, x1);
}

/* Vectors of LANES floats with GCC/Clang vector extensions (AVX-512 registers with -march=native on a
 * CPU that has them, pairs of AVX2 or groups of SSE registers elsewhere). vmax(x, y) = x > y ? x : y
 * and vmin(x, y) = x < y ? x : y, lane by lane, as maxf / minf. */
typedef float vfloat __attribute__((vector_size(4 * LANES)));
typedef int32_t vint __attribute__((vector_size(4 * LANES)));
typedef uint32_t vuint __attribute__((vector_size(4 * LANES)));
typedef uint16_t vhalf __attribute__((vector_size(2 * LANES)));

#if defined(__AVX512F__) && LANES == 16
#include <immintrin.h>
/* vmaxps / vminps compute exactly x > y ? x : y and x < y ? x : y (one instruction each). */
static inline vfloat vmax(vfloat x, vfloat y) { return (vfloat)_mm512_max_ps((__m512)x, (__m512)y); }
static inline vfloat vmin(vfloat x, vfloat y) { return (vfloat)_mm512_min_ps((__m512)x, (__m512)y); }
#else
static inline vfloat vmax(vfloat x, vfloat y) { vint m = x > y; return (vfloat)(((vint)x & m) | ((vint)y & ~m)); }
static inline vfloat vmin(vfloat x, vfloat y) { vint m = x < y; return (vfloat)(((vint)x & m) | ((vint)y & ~m)); }
#endif
static inline vfloat vsplat(float x) { return x - (vfloat){0}; }   /* x - (+0) = x exactly, -0 included */
static inline vfloat vload(const float *p) { vfloat v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vfloat v) { memcpy(p, &v, sizeof v); }
static inline vfloat vload_bf16(const uint16_t *p) {
    vhalf h;
    memcpy(&h, p, sizeof h);
    return (vfloat)(__builtin_convertvector(h, vuint) << 16);
}
static inline float load_f32(const float *p) { return *p; }
static inline float load_bf16(const uint16_t *p) { return bf16_to_float(*p); }
/* The lanes k where x[k] >= y[k] (ordered: false for NaN), as bits (lane k: bit k). */
#if defined(__AVX512F__) && LANES == 16
static inline uint32_t vge_bits(vfloat x, vfloat y) { return _mm512_cmp_ps_mask((__m512)x, (__m512)y, _CMP_GE_OQ); }
#else
static inline uint32_t vge_bits(vfloat x, vfloat y) {
    vint m = x >= y;
    uint32_t bits = 0;
    for (int k = 0; k < LANES; k++) bits |= (uint32_t)(m[k] != 0) << k;
    return bits;
}
#endif

/* Pass 1 over R consecutive rows i0.. of a tile (R a constant after inlining, so the running maxima
 * stay in registers): the columns' best two (c1, c2: this thread's, at the tile's first column) are
 * loaded and stored once per R rows; each row's LANES running maxima are merged into its best two. */
#define DEFINE_ROWS(NAME, T, VLOAD, LOAD, NEED2)                                                        \
static inline __attribute__((always_inline)) void NAME(nn_state *s, const T *sim, int64_t w,            \
                                                       int64_t i0, const int R, int64_t r0, float *c1,  \
                                                       float *c2) {                                     \
    const float ninf = -__builtin_inff();                                                               \
    const int64_t wv = w / LANES * LANES;                                                               \
    vfloat m1[ROWS_AT_ONCE], m2[ROWS_AT_ONCE];                                                          \
    int64_t j, k;                                                                                       \
    int r;                                                                                              \
    for (r = 0; r < R; r++) { m1[r] = vsplat(ninf); m2[r] = vsplat(ninf); }                             \
    for (j = 0; j < wv; j += LANES) {                                                                   \
        vfloat x1 = vload(c1 + j), x2 = NEED2 ? vload(c2 + j) : x1;                                     \
        for (r = 0; r < R; r++) {                                                                       \
            vfloat v = VLOAD(sim + (i0 + r) * w + j);                                                   \
            if (NEED2) {                                                                                \
                x2 = vmax(x2, vmin(x1, v));                                                             \
                m2[r] = vmax(m2[r], vmin(m1[r], v));                                                    \
            }                                                                                           \
            x1 = vmax(x1, v);                                                                           \
            m1[r] = vmax(m1[r], v);                                                                     \
        }                                                                                               \
        vstore(c1 + j, x1);                                                                             \
        if (NEED2) vstore(c2 + j, x2);                                                                  \
    }                                                                                                   \
    for (r = 0; r < R; r++) {                                                                           \
        const T *row = sim + (i0 + r) * w;                                                              \
        float b1 = s->row1[r0 + i0 + r], b2 = s->row2[r0 + i0 + r];                                     \
        for (j = wv; j < w; j++) {                                                                      \
            float v = LOAD(row + j);                                                                    \
            if (NEED2) c2[j] = maxf(c2[j], minf(c1[j], v));                                             \
            c1[j] = maxf(c1[j], v);                                                                     \
            merge_two(&b1, &b2, v, ninf);                                                               \
        }                                                                                               \
        for (k = 0; k < LANES; k++) merge_two(&b1, &b2, m1[r][k], NEED2 ? m2[r][k] : ninf);             \
        s->row1[r0 + i0 + r] = b1;                                                                      \
        if (NEED2) s->row2[r0 + i0 + r] = b2;                                                           \
    }                                                                                                   \
}

/* The two passes over a tile (h, w) at rows r0.., columns c0..; NEED2 (ratio test) is a compile-time
 * constant in each instance.
 *
 * Pass 1 (ROWS) updates the best two of the tile's rows and this thread's running best two of its
 * columns, then sets the columns' thresholds. Pass 2 reads the tile again (from this core's cache) and
 * pushes every element that passes its row's or its column's threshold: one vector compare per LANES
 * elements of ROWS_AT_ONCE rows (their maximum), scalar work only where an element passes. */
#define DEFINE_PASS1(NAME, ROWS, T, NEED2)                                                              \
static void NAME(nn_state *s, const T *sim, int64_t h, int64_t w, int64_t r0, int64_t c0) {             \
    float *c1 = s->col1 + c0, *c2 = s->col2 + c0;                                                       \
    int64_t i, j;                                                                                       \
    for (i = 0; i + ROWS_AT_ONCE <= h; i += ROWS_AT_ONCE) ROWS(s, sim, w, i, ROWS_AT_ONCE, r0, c1, c2); \
    for (; i < h; i++) ROWS(s, sim, w, i, 1, r0, c1, c2);                                               \
    for (j = 0; j < w; j++) s->col_thr[j] = (NEED2 ? c2[j] : c1[j]) - s->eps2;                          \
}

/* The same over this thread's rows of a bf16 block, into its best two of the block's columns only
 * (col_block); `merge_block_columns` merges the threads' into the shared running values and thresholds. */
#define DEFINE_PASS1_BLOCK(NAME, ROWS, T)                                                               \
static void NAME(nn_state *s, const T *sim, int64_t h, int64_t w, int64_t r0) {                         \
    float *c1 = s->col_block, *c2 = s->col_block + s->tile_cols;                                        \
    int64_t i, j;                                                                                       \
    for (j = 0; j < w; j++) c1[j] = c2[j] = -__builtin_inff();                                          \
    for (i = 0; i + ROWS_AT_ONCE <= h; i += ROWS_AT_ONCE) ROWS(s, sim, w, i, ROWS_AT_ONCE, r0, c1, c2); \
    for (; i < h; i++) ROWS(s, sim, w, i, 1, r0, c1, c2);                                               \
}

#define DEFINE_PASS2(NAME, T, VLOAD, LOAD, NEED2)                                                       \
static void NAME(nn_state *s, const T *sim, int64_t h, int64_t w, int64_t r0, int64_t c0,               \
                 const float *thr) {                                                                    \
    int64_t i, j, k;                                                                                    \
    for (i = 0; i < h; i += ROWS_AT_ONCE) {  /* by groups of rows: their maximum first */               \
        const int64_t g = h - i < ROWS_AT_ONCE ? h - i : ROWS_AT_ONCE;                                  \
        const T *rows[ROWS_AT_ONCE];                                                                    \
        float t[ROWS_AT_ONCE], tmin = __builtin_inff();                                                 \
        vfloat vt[ROWS_AT_ONCE];   /* the rows' thresholds, broadcast once per group */                 \
        int r;                                                                                          \
        for (r = 0; r < ROWS_AT_ONCE; r++) {   /* a short last group repeats its last row */            \
            const int64_t ir = i + (r < g ? r : g - 1);                                                 \
            rows[r] = sim + ir * w;                                                                     \
            t[r] = (NEED2 ? s->row2[r0 + ir] : s->row1[r0 + ir]) - s->eps2;                             \
            vt[r] = vsplat(t[r]);                                                                       \
            tmin = minf(tmin, t[r]);                                                                    \
        }                                                                                               \
        const vfloat vtmin = vsplat(tmin);                                                              \
        for (j = 0; j < w; j += LANES) {                                                                \
            if (j + LANES <= w) {                                                                       \
                vfloat m = VLOAD(rows[0] + j);                                                          \
                for (r = 1; r < ROWS_AT_ONCE; r++) m = vmax(m, VLOAD(rows[r] + j));                     \
                if (!(vge_bits(m, vtmin) | vge_bits(m, vload(thr + j)))) continue;                      \
            }                                                                                           \
            for (r = 0; r < g; r++) {                                                                   \
                if (j + LANES > w) {   /* the tail of the rows */                                       \
                    for (k = j; k < w; k++) {                                                           \
                        float v = LOAD(rows[r] + k);                                                    \
                        if (v >= t[r]) push_row(s, r0 + i + r, c0 + k, v);                              \
                        if (v >= thr[k]) push_col(s, r0 + i + r, c0 + k, v);                            \
                    }                                                                                   \
                    continue;                                                                           \
                }                                                                                       \
                vfloat v = VLOAD(rows[r] + j);                                                          \
                for (uint32_t m = vge_bits(v, vt[r]); m; m &= m - 1)                                    \
                    push_row(s, r0 + i + r, c0 + j + __builtin_ctz(m), v[__builtin_ctz(m)]);            \
                for (uint32_t m = vge_bits(v, vload(thr + j)); m; m &= m - 1)                           \
                    push_col(s, r0 + i + r, c0 + j + __builtin_ctz(m), v[__builtin_ctz(m)]);            \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
}

DEFINE_ROWS(rows_best, float, vload, load_f32, 0)
DEFINE_ROWS(rows_two, float, vload, load_f32, 1)
DEFINE_ROWS(rows_bf16_best, uint16_t, vload_bf16, load_bf16, 0)
DEFINE_ROWS(rows_bf16_two, uint16_t, vload_bf16, load_bf16, 1)
DEFINE_PASS1(pass1_best, rows_best, float, 0)
DEFINE_PASS1(pass1_two, rows_two, float, 1)
DEFINE_PASS1_BLOCK(pass1_bf16_best, rows_bf16_best, uint16_t)
DEFINE_PASS1_BLOCK(pass1_bf16_two, rows_bf16_two, uint16_t)
DEFINE_PASS2(pass2_best, float, vload, load_f32, 0)
DEFINE_PASS2(pass2_two, float, vload, load_f32, 1)
DEFINE_PASS2(pass2_bf16_best, uint16_t, vload_bf16, load_bf16, 0)
DEFINE_PASS2(pass2_bf16_two, uint16_t, vload_bf16, load_bf16, 1)

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int thread_count(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* MKL's packed GEMM (CBLAS interface, 32-bit integers): a block of columns of desc1 is packed once per
 * thread and column block, and every tile of rows multiplies it without packing it again (a plain GEMM
 * call packs both operands each time: 5-8% of a 256 x 1024 x 128 tile). */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, PACKED = 151, B_MATRIX = 162 };
typedef size_t (*pack_size_fn)(int32_t identifier, int32_t m, int32_t n, int32_t k);
typedef void (*pack_fn)(int32_t layout, int32_t identifier, int32_t trans, int32_t m, int32_t n, int32_t k,
                        float alpha, const float *src, int32_t ld, float *dest);
typedef void (*compute_fn)(int32_t layout, int32_t transa, int32_t transb, int32_t m, int32_t n, int32_t k,
                           const float *a, int32_t lda, const float *b, int32_t ldb, float beta, float *c,
                           int32_t ldc);

/* Both passes over a tile (h, w) of this thread at rows r0.., columns c0... */
static void tile_passes(nn_state *s, const float *tile, int64_t h, int64_t w, int64_t r0, int64_t c0) {
    if (s->need_second) {
        pass1_two(s, tile, h, w, r0, c0);
        pass2_two(s, tile, h, w, r0, c0, s->col_thr);
    } else {
        pass1_best(s, tile, h, w, r0, c0);
        pass2_best(s, tile, h, w, r0, c0, s->col_thr);
    }
}

/* The whole sweep with float32 descriptors. states: nthreads per-thread states (lf_nn_init); pack_size,
 * pack, compute: the addresses of cblas_sgemm_pack_get_size, cblas_sgemm_pack, cblas_sgemm_compute.
 * Thread t takes rows [n0 t / nt, n0 (t + 1) / nt) and sweeps them tile by tile, columns outer: it packs
 * a block of tile_cols columns of b (op(B) = b_block^T), then each tile (h, w) = a_rows . b_block^T is
 * one single-threaded call (inside a parallel region MKL does not start threads of its own) and both
 * passes. Returns 0, or -1 when the packed buffer cannot be allocated (nothing is computed then).
 * lf_nn_finish completes the search. */
int64_t lf_nn_sweep(nn_state *states, int64_t nthreads, void *pack_size, void *pack, void *compute) {
    int64_t failed = 0;
    _Pragma("omp parallel num_threads(nthreads)")
    {
        int64_t t = thread_id(), nt = thread_count();
        nn_state *s = states + t;
        const int64_t dim = s->dim, lo = s->n0 * t / nt, hi = s->n0 * (t + 1) / nt;
        const int32_t k = (int32_t)dim;
        float *packed = hi > lo ? malloc(((pack_size_fn)pack_size)(B_MATRIX, (int32_t)s->tile_rows,
                                                                    (int32_t)s->tile_cols, k)) : NULL;
        if (hi > lo && packed == NULL) {
            _Pragma("omp atomic write")
            failed = 1;
        }
        for (int64_t cs = 0; packed != NULL && cs < s->n1; cs += s->tile_cols) {
            const int64_t w = s->n1 - cs < s->tile_cols ? s->n1 - cs : s->tile_cols;
            ((pack_fn)pack)(ROW_MAJOR, B_MATRIX, TRANS, (int32_t)s->tile_rows, (int32_t)w, k, 1.0f,
                            s->b + cs * dim, k, packed);
            for (int64_t rs = lo; rs < hi; rs += s->tile_rows) {
                const int64_t h = hi - rs < s->tile_rows ? hi - rs : s->tile_rows;
                ((compute_fn)compute)(ROW_MAJOR, NO_TRANS, PACKED, (int32_t)h, (int32_t)w, k, s->a + rs * dim, k,
                                      packed, k, 0.0f, s->tile, (int32_t)w);
                tile_passes(s, s->tile, h, w, rs, cs);
            }
        }
        free(packed);
    }
    return failed ? -1 : 0;
}

/* Merge the nt threads' best two of a bf16 block's columns [lo, hi) into the shared running best two of
 * the columns (col1_all, col2_all at c0..) and set the block's shared thresholds. */
static void merge_block_columns(nn_state *states, int64_t nt, int64_t lo, int64_t hi, int64_t c0) {
    const nn_state *s = states;
    for (int64_t j = lo; j < hi; j++) {
        float *g1 = s->col1_all + c0 + j, *g2 = s->col2_all + c0 + j;
        for (int64_t u = 0; u < nt; u++)
            merge_two(g1, g2, states[u].col_block[j], states[u].col_block[s->tile_cols + j]);
        s->col_thr_all[j] = (s->need_second ? *g2 : *g1) - s->eps2;
    }
}

/* One block (h, w) of bfloat16 similarities (the bits, row major; torch's bf16 GEMM) at rows r0..,
 * columns c0.. (w <= tile_cols): each thread takes a share of its rows; pass 1, the columns merged
 * between two barriers (so pass 2 meets the block's thresholds over all rows: the bf16 error bound is
 * wide, and thresholds of one thread's rows would push many more candidates), pass 2. The columns'
 * running values are the shared col1_all, col2_all (each state's col1, col2 point there: lf_nn_init). */
void lf_nn_block_bf16(nn_state *states, int64_t nthreads, const uint16_t *sim, int64_t h, int64_t w, int64_t r0,
                      int64_t c0) {
    _Pragma("omp parallel num_threads(nthreads)")
    {
        int64_t t = thread_id(), nt = thread_count(), lo = h * t / nt, hi = h * (t + 1) / nt;
        nn_state *s = states + t;
        if (s->need_second) pass1_bf16_two(s, sim + lo * w, hi - lo, w, r0 + lo);
        else pass1_bf16_best(s, sim + lo * w, hi - lo, w, r0 + lo);
        _Pragma("omp barrier")
        merge_block_columns(states, nt, w * t / nt, w * (t + 1) / nt, c0);
        _Pragma("omp barrier")
        if (s->need_second) pass2_bf16_two(s, sim + lo * w, hi - lo, w, r0 + lo, c0, s->col_thr_all);
        else pass2_bf16_best(s, sim + lo * w, hi - lo, w, r0 + lo, c0, s->col_thr_all);
    }
}

/* After the sweep: the threads' column statistics merged into col1_all, col2_all (final thresholds), each thread's last
 * candidates re-scored against them, the exact best twos merged into states[0]. */
void lf_nn_finish(nn_state *states, int64_t nthreads) {
    _Pragma("omp parallel num_threads(nthreads)")
    {
        int64_t t = thread_id(), nt = thread_count();
        nn_state *s = states + t;
        for (int64_t j = s->n1 * t / nt; j < s->n1 * (t + 1) / nt; j++)   /* the columns, split */
            for (int64_t u = 0; u < nthreads; u++)
                if (states[u].col1 != s->col1_all)   /* bf16 blocks: already merged there */
                    merge_two(s->col1_all + j, s->col2_all + j, states[u].col1[j], states[u].col2[j]);
        _Pragma("omp barrier")
        s->col1 = s->col1_all;   /* the last candidates meet the final thresholds */
        s->col2 = s->col2_all;
        flush(s);
    }
    for (int64_t t = 1; t < nthreads; t++) {
        const nn_state *o = states + t;
        nn_state *s = states;
        for (int64_t k = 0; k < s->n0; k++)
            if (o->row_best[k] > -__builtin_inf())
                merge_best_two(s->row_best + k, s->row_second + k, s->row_idx + k, o->row_best[k],
                               o->row_second[k], o->row_idx[k]);
        for (int64_t k = 0; k < s->n1; k++)
            if (o->col_best[k] > -__builtin_inf())
                merge_best_two(s->col_best + k, s->col_second + k, s->col_idx + k, o->col_best[k],
                               o->col_second[k], o->col_idx[k]);
    }
}

/* Set every statistic to -inf and every index to 0, for each of the nthreads states (the shared row
 * and column statistics through the first). shared_columns (bf16 blocks): each state's running column
 * values are the shared col1_all, col2_all. */
void lf_nn_init(nn_state *states, int64_t nthreads, int64_t shared_columns) {
    const float finf = -__builtin_inff();
    const double dinf = -__builtin_inf();
    int64_t t, k;
    for (k = 0; k < states->n0; k++) states->row1[k] = states->row2[k] = finf;
    for (k = 0; k < states->n1; k++) states->col1_all[k] = states->col2_all[k] = finf;
    for (t = 0; t < nthreads; t++) {
        nn_state *s = states + t;
        if (shared_columns) {
            s->col1 = s->col1_all;
            s->col2 = s->col2_all;
        }
        for (k = 0; k < s->n1; k++) s->col1[k] = s->col2[k] = finf;
        for (k = 0; k < s->n0; k++) { s->row_best[k] = s->row_second[k] = dinf; s->row_idx[k] = 0; }
        for (k = 0; k < s->n1; k++) { s->col_best[k] = s->col_second[k] = dinf; s->col_idx[k] = 0; }
        s->n_row_cand = s->n_col_cand = 0;
    }
}

/* max_i ||x_i||^2 of x (n, dim) float32, summed in float32 over LANES lanes: relative error below
 * dim * 2^-24 (the caller adds a margin). */
double lf_max_sq_norm(const float *x, int64_t n, int64_t dim) {
    const int64_t dv = dim / LANES * LANES;
    float best = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float *row = x + i * dim;
        vfloat acc = vsplat(0.0f);
        int64_t k;
        for (k = 0; k < dv; k += LANES) {
            vfloat v = vload(row + k);
            acc += v * v;
        }
        float sum = 0.0f;
        for (int l = 0; l < LANES; l++) sum += acc[l];
        for (; k < dim; k++) sum += row[k] * row[k];
        best = sum > best ? sum : best;
    }
    return best;
}

/* 1 when built with OpenMP (then the states are per thread), 0 when every call runs on one thread. */
int64_t lf_nn_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* The size of nn_state, checked against the ctypes mirror when the library is loaded. */
int64_t lf_nn_state_size(void) { return (int64_t)sizeof(nn_state); }
