/* Fused reduction of nearest-neighbour matching: one pass over a similarity block that the GEMM just
 * wrote (still in cache) keeps the best two per row and per column and collects the few candidates
 * that may be among the exact best two; candidates are re-scored exactly (float64) and merged.
 *
 * Built and loaded by localfeat/native.py (plain C, no Python headers), driven by
 * localfeat/matchers/nearest_neighbor.py, which documents the method: the GEMM's values are a filter
 * with a rigorous error bound, `eps2` is twice that bound. This file only replaces the torch operations
 * of the per-block search; the exact scores, ties (lowest index) and the result are the same.
 *
 * Threads: OpenMP, linked to the runtime torch already runs (native.py), so the pass runs on the same
 * threads as torch's GEMM, which are still spinning when it starts: no other threads compete for the
 * cores. Each thread has its own nn_state (its own column statistics, exact best twos and candidates;
 * the filter statistics of the rows are shared, each row being handled by one thread per block);
 * lf_nn_finish merges them. The merges are order independent (ties: lowest index), so the result does
 * not depend on the number of threads.
 *
 * Compiled with -ffp-contract=off: the exact re-scoring sums float64 products in a fixed pairwise order
 * that must equal nearest_neighbor.exact_similarity's bit for bit.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16          /* one AVX-512 register of floats; the compiler vectorises the lane loops */

typedef struct {
    /* descriptors for the exact re-scoring: desc0, desc1 (float32) */
    const float *a, *b;
    int64_t n0, n1, dim, width;     /* width: dim rounded up to a power of two (pairwise summation) */
    int64_t need_second;
    float eps2;
    /* filter domain (GEMM values): best and second best seen, per row (shared) and per column */
    float *row1, *row2, *col1, *col2;
    /* exact best two: float64 values, index of the best (ties: lowest index) */
    double *row_best, *row_second, *col_best, *col_second;
    int64_t *row_idx, *col_idx;
    /* pending candidates (i, j) and their filter values, per direction; capacity each */
    int64_t *row_cand, *col_cand;
    float *row_cand_v, *col_cand_v;
    int64_t capacity, n_row_cand, n_col_cand;
    /* scratch: width doubles (pairwise sums), block_cols floats (the columns' thresholds in a block) */
    double *sums;
    float *col_block;
    int64_t block_cols;
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

/* Merge a candidate (value v at index `other`) into the exact best two of one key. Order independent:
 * a tie keeps the lowest index and makes the second equal to the best (no candidate comes twice). */
static inline void merge_exact(double *best, double *second, int64_t *idx, double v, int64_t other) {
    if (v > *best) {
        *second = *best;
        *best = v;
        *idx = other;
    } else if (v == *best) {
        *second = v;
        if (other < *idx) *idx = other;
    } else if (v > *second) {
        *second = v;
    }
}

/* Re-score the pending candidates that still pass the (now tighter) thresholds; empty the buffers. */
static void flush(nn_state *s) {
    int64_t c;
    for (c = 0; c < s->n_row_cand; c++) {
        int64_t i = s->row_cand[2 * c], j = s->row_cand[2 * c + 1];
        float bound = (s->need_second ? s->row2[i] : s->row1[i]) - s->eps2;
        if (s->row_cand_v[c] < bound) continue;
        merge_exact(s->row_best + i, s->row_second + i, s->row_idx + i,
                    exact_dot(s, s->a + i * s->dim, s->b + j * s->dim), j);
    }
    for (c = 0; c < s->n_col_cand; c++) {
        int64_t i = s->col_cand[2 * c], j = s->col_cand[2 * c + 1];
        float bound = (s->need_second ? s->col2[j] : s->col1[j]) - s->eps2;
        if (s->col_cand_v[c] < bound) continue;
        merge_exact(s->col_best + j, s->col_second + j, s->col_idx + j,
                    exact_dot(s, s->a + i * s->dim, s->b + j * s->dim), i);
    }
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
 * CPU that has them, pairs of AVX2 or groups of SSE registers elsewhere). max/min as comparisons and
 * blends: `x > y ? x : y`, the same value as the scalar code for finite inputs. */
typedef float vfloat __attribute__((vector_size(4 * LANES)));
typedef int32_t vint __attribute__((vector_size(4 * LANES)));
typedef uint32_t vuint __attribute__((vector_size(4 * LANES)));
typedef uint16_t vhalf __attribute__((vector_size(2 * LANES)));

static inline vfloat vmax(vfloat x, vfloat y) { vint m = x > y; return (vfloat)(((vint)x & m) | ((vint)y & ~m)); }
static inline vfloat vmin(vfloat x, vfloat y) { vint m = x < y; return (vfloat)(((vint)x & m) | ((vint)y & ~m)); }
static inline vfloat vsplat(float x) { vfloat v; for (int k = 0; k < LANES; k++) v[k] = x; return v; }
static inline vfloat vload(const float *p) { vfloat v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vfloat v) { memcpy(p, &v, sizeof v); }
static inline vfloat vload_f32(const float *p) { return vload(p); }
static inline vfloat vload_bf16(const uint16_t *p) {
    vhalf h;
    memcpy(&h, p, sizeof h);
    return (vfloat)(__builtin_convertvector(h, vuint) << 16);
}
static inline float load_f32(const float *p) { return *p; }
static inline float load_bf16(const uint16_t *p) { return bf16_to_float(*p); }
/* Whether any lane of a comparison mask is set. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline int vany(vint m) { return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0; }
#else
static inline int vany(vint m) {
    int32_t any = 0;
    for (int k = 0; k < LANES; k++) any |= m[k];
    return any != 0;
}
#endif

/* The pass over one block (h, w) at rows r0.., columns c0.. of this part; T: float or uint16_t (bf16).
 *
 * Pass 1 keeps the running best two per row (LANES lanes, merged at the end of the row) and per column.
 * Pass 2 reads the block again while it is in cache and pushes the elements that pass their row's or
 * their column's threshold t (the running second best - eps2, or the best - eps2 without a ratio test):
 * a vector compare per LANES elements, scalar work only where one passes (a few per row and column).
 * NEED2 (ratio test) is a compile-time constant in each instance. */
#define DEFINE_BLOCK(NAME, T, VLOAD, LOAD, NEED2)                                                       \
static void NAME(nn_state *s, const T *sim, int64_t h, int64_t w, int64_t r0, int64_t c0) {             \
    float *c1 = s->col1 + c0, *c2 = s->col2 + c0, *thr = s->col_block;                                  \
    const float ninf = -__builtin_inff();                                                               \
    const int64_t wv = w / LANES * LANES;                                                               \
    int64_t i, j, k;                                                                                    \
    for (i = 0; i < h; i++) {                                                                           \
        const T *row = sim + i * w;                                                                     \
        vfloat m1 = vsplat(ninf), m2 = vsplat(ninf);                                                    \
        for (j = 0; j < wv; j += LANES) {                                                               \
            vfloat v = VLOAD(row + j), x1 = vload(c1 + j);                                              \
            if (NEED2) {                                                                                \
                vstore(c2 + j, vmax(vload(c2 + j), vmin(x1, v)));                                       \
                m2 = vmax(m2, vmin(m1, v));                                                             \
            }                                                                                           \
            vstore(c1 + j, vmax(x1, v));                                                                \
            m1 = vmax(m1, v);                                                                           \
        }                                                                                               \
        float b1 = s->row1[r0 + i], b2 = s->row2[r0 + i];                                               \
        for (; j < w; j++) {                                                                            \
            float v = LOAD(row + j);                                                                    \
            if (NEED2) c2[j] = maxf(c2[j], minf(c1[j], v));                                             \
            c1[j] = maxf(c1[j], v);                                                                     \
            merge_two(&b1, &b2, v, ninf);                                                               \
        }                                                                                               \
        for (k = 0; k < LANES; k++) merge_two(&b1, &b2, m1[k], NEED2 ? m2[k] : ninf);                   \
        s->row1[r0 + i] = b1;                                                                           \
        if (NEED2) s->row2[r0 + i] = b2;                                                                \
    }                                                                                                   \
    for (j = 0; j < w; j++) thr[j] = (NEED2 ? c2[j] : c1[j]) - s->eps2;                                 \
    for (i = 0; i < h; i++) {                                                                           \
        const T *row = sim + i * w;                                                                     \
        const float t = (NEED2 ? s->row2[r0 + i] : s->row1[r0 + i]) - s->eps2;                          \
        const vfloat vt = vsplat(t);                                                                    \
        for (j = 0; j < w; j += LANES) {                                                                \
            if (j + LANES <= w) {                                                                       \
                vfloat v = VLOAD(row + j);                                                              \
                if (!vany((v >= vt) | (v >= vload(thr + j)))) continue;                                 \
            }                                                                                           \
            for (k = j; k < j + LANES && k < w; k++) {                                                  \
                float v = LOAD(row + k);                                                                \
                if (v >= t) push_row(s, r0 + i, c0 + k, v);                                             \
                if (v >= thr[k]) push_col(s, r0 + i, c0 + k, v);                                        \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
}

DEFINE_BLOCK(block_f32_best, float, vload_f32, load_f32, 0)
DEFINE_BLOCK(block_f32_two, float, vload_f32, load_f32, 1)
DEFINE_BLOCK(block_bf16_best, uint16_t, vload_bf16, load_bf16, 0)
DEFINE_BLOCK(block_bf16_two, uint16_t, vload_bf16, load_bf16, 1)

/* Entry points. states: nthreads per-thread states; sim (h, w) row-major, float32 or bfloat16 bits,
 * the block at rows r0.., columns c0..; its rows are split between the threads. */
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

void lf_nn_block_f32(nn_state *states, int64_t nthreads, const float *sim, int64_t h, int64_t w, int64_t r0,
                     int64_t c0) {
    #pragma omp parallel num_threads(nthreads)
    {
        int64_t t = thread_id(), nt = thread_count(), lo = h * t / nt, hi = h * (t + 1) / nt;
        nn_state *s = states + t;
        if (hi > lo && s->need_second) block_f32_two(s, sim + lo * w, hi - lo, w, r0 + lo, c0);
        else if (hi > lo) block_f32_best(s, sim + lo * w, hi - lo, w, r0 + lo, c0);
    }
}

void lf_nn_block_bf16(nn_state *states, int64_t nthreads, const uint16_t *sim, int64_t h, int64_t w,
                      int64_t r0, int64_t c0) {
    #pragma omp parallel num_threads(nthreads)
    {
        int64_t t = thread_id(), nt = thread_count(), lo = h * t / nt, hi = h * (t + 1) / nt;
        nn_state *s = states + t;
        if (hi > lo && s->need_second) block_bf16_two(s, sim + lo * w, hi - lo, w, r0 + lo, c0);
        else if (hi > lo) block_bf16_best(s, sim + lo * w, hi - lo, w, r0 + lo, c0);
    }
}

/* Merge the best two (b, s, i) of another thread into (*best, *second, *idx); ties: lowest index. */
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

/* Re-score every thread's last candidates, then merge the threads' exact best twos into states[0]. */
void lf_nn_finish(nn_state *states, int64_t nthreads) {
    int64_t t, k;
    #pragma omp parallel for num_threads(nthreads)
    for (t = 0; t < nthreads; t++) flush(states + t);
    for (t = 1; t < nthreads; t++) {
        const nn_state *o = states + t;
        nn_state *s = states;
        for (k = 0; k < s->n0; k++)
            if (o->row_best[k] > -__builtin_inf())
                merge_best_two(s->row_best + k, s->row_second + k, s->row_idx + k, o->row_best[k],
                               o->row_second[k], o->row_idx[k]);
        for (k = 0; k < s->n1; k++)
            if (o->col_best[k] > -__builtin_inf())
                merge_best_two(s->col_best + k, s->col_second + k, s->col_idx + k, o->col_best[k],
                               o->col_second[k], o->col_idx[k]);
    }
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
