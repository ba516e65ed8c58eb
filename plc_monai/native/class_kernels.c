/*
 * CPU kernels for the class sums of PixelContrastiveLoss (x86-64 with AVX2 and FMA).
 *
 * Why native code: at the paper's size (B=20, D=16, 192x192) the loss spends most of its CPU time
 * in two batched GEMMs with an inner dimension of 3 or 4 classes: the per-class feature sums
 * (one-hot [B, K, N] @ features [B, N, D]) and their backward (gradient [B, D, K] @ one-hot
 * [B, K, N], which writes a 47 MiB gradient). MKL runs them far from memory speed. Here the
 * forward compares the labels with each class once per 8 pixels and reuses the masks for 4
 * feature channels, and the backward is a table look-up (one AVX2 permute per 8 pixels): both
 * stay close to the cost of reading or writing the features once. See docs/loss.md.
 *
 * Layouts (all C-contiguous): features [B, D, N] float32, labels [B, N] float32 holding integral
 * class ids, class ids [K] float32, sums [B, D, K] float64, table [B, D, C] float32 with C <= 8,
 * block counts [B, K, nb] int64.
 *
 * Loaded with ctypes by plc_monai/native/loader.py; every pointer and size is validated there.
 */
#include <immintrin.h>
#include <stdint.h>

#define MAX_K 8      /* classes per table / candidate list */
#define ROWS 4       /* feature channels that share one set of label masks */
#define FLUSH 1024   /* 8-pixel steps between float32 -> float64 flushes of the sums */

/* Compiled for the baseline x86-64 target, so that a CPU without AVX2 can call it and get 0. */
int plc_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Everything below uses AVX2 and FMA (only called after plc_cpu_supported() returned 1). */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

/* ------------------------------------------------------------------ class sums */

static inline __attribute__((always_inline)) void sums_rows(
    const float* rows, int64_t nr, const float* lab, int64_t N, const float* cls, const int64_t K, double* out) {
    /* out[r * K + k] = sum over n with lab[n] == cls[k] of rows[r * N + n], for r < nr <= ROWS */
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 cv[MAX_K];
    for (int64_t k = 0; k < K; ++k) cv[k] = _mm256_set1_ps(cls[k]);
    double total[ROWS][MAX_K];
    for (int64_t r = 0; r < ROWS; ++r)
        for (int64_t k = 0; k < K; ++k) total[r][k] = 0.0;
    const int64_t n8 = N - N % 8;
    for (int64_t s = 0; s < n8; s += 8 * FLUSH) {
        const int64_t e = s + 8 * FLUSH < n8 ? s + 8 * FLUSH : n8;
        __m256 acc[ROWS][MAX_K];
        for (int64_t r = 0; r < ROWS; ++r)
            for (int64_t k = 0; k < K; ++k) acc[r][k] = _mm256_setzero_ps();
        if (nr == ROWS) {
            for (int64_t n = s; n < e; n += 8) {
                const __m256 l = _mm256_loadu_ps(lab + n);
                __m256 m[MAX_K];
                for (int64_t k = 0; k < K; ++k) m[k] = _mm256_and_ps(_mm256_cmp_ps(l, cv[k], _CMP_EQ_OQ), one);
                for (int64_t r = 0; r < ROWS; ++r) {
                    const __m256 v = _mm256_loadu_ps(rows + r * N + n);
                    for (int64_t k = 0; k < K; ++k) acc[r][k] = _mm256_fmadd_ps(m[k], v, acc[r][k]);
                }
            }
        } else {
            for (int64_t n = s; n < e; n += 8) {
                const __m256 l = _mm256_loadu_ps(lab + n);
                for (int64_t r = 0; r < nr; ++r) {
                    const __m256 v = _mm256_loadu_ps(rows + r * N + n);
                    for (int64_t k = 0; k < K; ++k)
                        acc[r][k] = _mm256_fmadd_ps(_mm256_and_ps(_mm256_cmp_ps(l, cv[k], _CMP_EQ_OQ), one), v, acc[r][k]);
                }
            }
        }
        for (int64_t r = 0; r < nr; ++r)
            for (int64_t k = 0; k < K; ++k) {
                float lanes[8];
                _mm256_storeu_ps(lanes, acc[r][k]);
                for (int j = 0; j < 8; ++j) total[r][k] += lanes[j];
            }
    }
    for (int64_t r = 0; r < nr; ++r)
        for (int64_t k = 0; k < K; ++k) {
            /* multiplying by the 0/1 mask (not selecting) keeps NaN/Inf anywhere in the image visible, as a GEMM would */
            for (int64_t n = n8; n < N; ++n) total[r][k] += (double)(lab[n] == cls[k] ? 1.0f : 0.0f) * rows[r * N + n];
            out[r * K + k] = total[r][k];
        }
}

/* one copy per K, so that the accumulators stay in registers */
static void sums_rows_k(const float* rows, int64_t nr, const float* lab, int64_t N, const float* cls, int64_t K, double* out) {
    switch (K) {
    case 1: sums_rows(rows, nr, lab, N, cls, 1, out); break;
    case 2: sums_rows(rows, nr, lab, N, cls, 2, out); break;
    case 3: sums_rows(rows, nr, lab, N, cls, 3, out); break;
    case 4: sums_rows(rows, nr, lab, N, cls, 4, out); break;
    case 5: sums_rows(rows, nr, lab, N, cls, 5, out); break;
    case 6: sums_rows(rows, nr, lab, N, cls, 6, out); break;
    case 7: sums_rows(rows, nr, lab, N, cls, 7, out); break;
    default: sums_rows(rows, nr, lab, N, cls, 8, out); break;
    }
}

/* ------------------------------------------------------------------ table fill */

static void fill_row(const float* table, const float* lab, int64_t N, int64_t C, float* out) {
    /* out[n] = table[lab[n]] for ids in [0, C) */
    float t8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t c = 0; c < C; ++c) t8[c] = table[c];
    const __m256 tv = _mm256_loadu_ps(t8);
    const int64_t n8 = N - N % 8;
    /* the permute reads the low 3 bits of each id: an id outside [0, C) gets some table entry (never memory
       outside the table); the caller guarantees ids in [0, C) */
    for (int64_t n = 0; n < n8; n += 8)
        _mm256_storeu_ps(out + n, _mm256_permutevar8x32_ps(tv, _mm256_cvttps_epi32(_mm256_loadu_ps(lab + n))));
    for (int64_t n = n8; n < N; ++n) out[n] = (lab[n] >= 0.0f && lab[n] < (float)C) ? t8[(int)lab[n]] : 0.0f;
}

/* ------------------------------------------------------------------ block counts */

static void count_image(const float* lab, int64_t N, const float* cls, int64_t K, int64_t block, int64_t* counts) {
    /* counts[k * nb + j] = pixels of class cls[k] among lab[j * block : (j + 1) * block] */
    const int64_t nb = (N + block - 1) / block;
    for (int64_t k = 0; k < K; ++k) {
        const __m256 c = _mm256_set1_ps(cls[k]);
        for (int64_t j = 0; j < nb; ++j) {
            const int64_t s = j * block, e = s + block < N ? s + block : N;
            __m256i acc = _mm256_setzero_si256();
            int64_t n = s;
            for (; n + 8 <= e; n += 8)  /* a true compare is all ones, i.e. -1 as an integer */
                acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(lab + n), c, _CMP_EQ_OQ)));
            int32_t lanes[8];
            _mm256_storeu_si256((__m256i*)lanes, acc);
            int64_t total = 0;
            for (int i = 0; i < 8; ++i) total += lanes[i];
            for (; n < e; ++n) total += lab[n] == cls[k];
            counts[k * nb + j] = total;
        }
    }
}

/* ------------------------------------------------------------------ threading */

/* OpenMP, built with -fopenmp: libgomp's soname is that of the runtime PyTorch ships and has already
 * loaded, so these loops run on PyTorch's own worker threads (which are still spinning after the last
 * PyTorch operator; threads of our own would compete with them for the cores). Static schedules over
 * fixed work items keep every result independent of timing. Without OpenMP the loops run serially. */
#ifdef _OPENMP
#define PARALLEL_FOR _Pragma("omp parallel for schedule(static) num_threads(threads)")
#else
#define PARALLEL_FOR
#endif

/* ------------------------------------------------------------------ entry points */

void plc_class_sums(const float* feats, const float* lab, int64_t B, int64_t D, int64_t N, const float* cls,
                    int64_t K, double* sums, int threads) {
    /* work item: (image, group of ROWS channels) */
    const int64_t groups = (D + ROWS - 1) / ROWS;
    PARALLEL_FOR
    for (int64_t item = 0; item < B * groups; ++item) {
        const int64_t b = item / groups, d0 = (item % groups) * ROWS;
        const int64_t nr = D - d0 < ROWS ? D - d0 : ROWS;
        sums_rows_k(feats + (b * D + d0) * N, nr, lab + b * N, N, cls, K, sums + (b * D + d0) * K);
    }
}

void plc_class_fill(const float* table, const float* lab, int64_t B, int64_t D, int64_t N, int64_t C, float* out,
                    int threads) {
    /* work item: (image, channel) */
    PARALLEL_FOR
    for (int64_t item = 0; item < B * D; ++item) fill_row(table + item * C, lab + (item / D) * N, N, C, out + item * N);
}

void plc_block_counts(const float* lab, int64_t B, int64_t N, const float* cls, int64_t K, int64_t block,
                      int64_t* counts, int threads) {
    /* work item: image */
    const int64_t nb = (N + block - 1) / block;
    PARALLEL_FOR
    for (int64_t b = 0; b < B; ++b) count_image(lab + b * N, N, cls, K, block, counts + b * K * nb);
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
