// int8-activation GEMV / small-M GEMM for uniform 2- and 4-bit weights on CPUs with AVX512-VNNI.
//
// The LUT kernel (lutkernels.cpp) turns every 4 weight bits into a table look-up; at 4 bits that costs four
// vpermb + vpdpbusd per 64 weights. Here the codes themselves are the unsigned operand of vpdpbusd: the
// activations are quantized once per call to int8 per block of 32 columns (scale d_b = max|x_b| / 127, as
// llama.cpp's Q8_0), the 2/4-bit codes are unpacked to bytes in registers, and one vpdpbusd multiplies 64 codes
// by 64 activations. With w = s * q + m per (row, group G of g columns) and a centre c = (2^bits - 1) / 2:
//     y[n] = sum_G s[n,G] * (sum_{b in G} d_b * dot_b[n] + corr_G) + m[n,G] * sumx_G,
//     dot_b[n] = sum_{k in b} q[n,k] * a[k],   corr_G = c * (sumx_G - sum_{b in G} d_b * sum_{k in b} a[k])
// i.e. sum_k s (q_k - c) a_k d_b + (m + c s) sum_k x_k: the activation rounding error is multiplied by the
// centred code q - c (|q - c| <= 7.5) instead of q (<= 15), and the sums use the float activations, so only
// the rounding of a (per 32, not per weight group: outlier channels then cost one block, not the whole group)
// is lossy. (Uncentred per-group rounding cost SmolLM2-135M w4g128 27.74 perplexity vs 25.29 on the LUT kernel.)
//
// Layout (built from the canonical LUT layout when a layer is loaded; the same size): 16-row blocks; per
// block, per group of g columns: g / 4 / F vectors of 64 bytes (F = 8 / bits k-quads per byte), byte j of
// vector v holds, in bits [bits*i, bits*i + bits), the code of row j / 4, column 4 * (v * F + i) + j % 4; then
// the group's 16 fp16 scales and 16 fp16 mins. Lane j / 4 of a vpdpbusd accumulator is row j / 4 of the
// block, so no horizontal sums are needed; four row blocks run together for independent dependency chains.
// Ternary weights (I2_S codes) get the same treatment below (lk_int8_ternary_gemm).
//
// Symmetric 4-bit (w4g{g}s, lk_int8_sym_gemm): w = s * (u - 8), u in [0, 15], one fp16 scale per (row, group),
// no min (4 + 16 / g bits per weight: 4.5 at g = 32, as llama.cpp's Q4_0). The same code vectors, then only the
// group's 16 fp16 scales (g * 8 + 32 bytes per 16 rows and group); per activation block the integer sum of a is
// kept and y[n] = sum_G s[n,G] * sum_{b in G} d_b * (dot_b[n] - 8 * sum_{k in b} a[k]): the integer part is
// exact (Q4_0 x Q8_0 arithmetic), no float correction term.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "pool.h"

#define V512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

namespace {

constexpr int AB = 32;  // activation block (columns per int8 scale)

struct I8Args {
    const uint8_t *w;
    const int8_t *act;     // [M][K]
    const float *dsc;      // [M][K / AB] activation block scales
    const float *corr;     // [M][nG] centring correction (see above); symmetric: unused
    const float *sumx;     // [M][nG]; symmetric: unused
    float *y;              // [M][N]
    int64_t N, K, M, g, bits;
    const int32_t *asum8;  // symmetric: [M][K / AB] 8 * sum of the block's int8 activations
};

// Software prefetch distance in bytes along each of the R weight streams: one thread alone does not keep
// enough cache misses in flight (measured 4096x4096 w4g128, 1 thread: 12.9 -> 15.6 GB/s; 1-2 KiB is best).
constexpr int PREFETCH = 1024;
// Plus, once per group and stream, the group's scale line (the per-vector prefetches skip it) and a line far
// ahead into L2 (w4g32 4096x4096 cold, 1 thread, one interleaved run: 675 -> 653 us CPU time).
constexpr int PREFETCH_L2 = 4096;

// Bytes per 16 rows and group: the code vectors, then 16 fp16 scales (+ 16 fp16 mins unless symmetric).
inline int64_t group_bytes(int64_t g, int64_t bits, bool sym = false) { return 2 * g * bits + (sym ? 32 : 64); }

// Per block of AB columns: a = rint(x * 127 / max|x|) (round to nearest even, as torch.round), d = max / 127;
// per weight group: the float sum of x and corr = c * (sum x - sum_b d_b * sum_b a).
V512 void quant_blocks(const float *x, int64_t K, int64_t g, float c, int8_t *q, float *dsc, float *corr,
                       float *sum) {
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int64_t G = 0; G < K / g; G++) {
        float sg = 0.f, qd = 0.f;
        for (int64_t b = G * g; b < (G + 1) * g; b += AB) {
            __m512 v0 = _mm512_loadu_ps(x + b), v1 = _mm512_loadu_ps(x + b + 16);
            float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            float inv = m > 0.f ? 127.0f / m : 0.f;
            const __m512 vinv = _mm512_set1_ps(inv);
            __m512i r0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, vinv)), lo), hi);
            __m512i r1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, vinv)), lo), hi);
            _mm_storeu_si128((__m128i *)(q + b), _mm512_cvtepi32_epi8(r0));
            _mm_storeu_si128((__m128i *)(q + b + 16), _mm512_cvtepi32_epi8(r1));
            const float d = m / 127.0f;
            dsc[b / AB] = d;
            qd += d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(r0, r1));
            sg += _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
        }
        sum[G] = sg;
        corr[G] = c * (sg - qd);
    }
}

// Symmetric weights: the same int8 blocks, plus 8 * (integer sum of each block) for the code offset.
V512 void quant_blocks_sym(const float *x, int64_t K, int8_t *q, float *dsc, int32_t *asum8) {
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int64_t b = 0; b < K; b += AB) {
        __m512 v0 = _mm512_loadu_ps(x + b), v1 = _mm512_loadu_ps(x + b + 16);
        float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const __m512 vinv = _mm512_set1_ps(m > 0.f ? 127.0f / m : 0.f);
        __m512i r0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, vinv)), lo), hi);
        __m512i r1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, vinv)), lo), hi);
        _mm_storeu_si128((__m128i *)(q + b), _mm512_cvtepi32_epi8(r0));
        _mm_storeu_si128((__m128i *)(q + b + 16), _mm512_cvtepi32_epi8(r1));
        dsc[b / AB] = m / 127.0f;
        asum8[b / AB] = 8 * _mm512_reduce_add_epi32(_mm512_add_epi32(r0, r1));
    }
}

// Integer dot products of one block of AB columns for R row blocks (pointers at the block's first vector).
// 4-bit: the low nibbles (V & 15) and the high ones kept in place (V & 0xF0 = 16 * code) go to two
// accumulators, the second divided by 16 once per block (exact); 2-bit: shift + and per code plane.
template <int B, int R>
V512 inline void block_dots(const uint8_t *const *p, const int32_t *aq, __m512i *acc) {
    constexpr int F = 8 / B, NV = AB / 4 / F;  // vectors per activation block
    __m512i a0[R], a1[R];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        __m512i V[R];
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(p[r] + v * 64 + PREFETCH), _MM_HINT_T0);
            V[r] = _mm512_loadu_si512(p[r] + v * 64);
        }
        if (B == 4) {
            const __m512i m4 = _mm512_set1_epi8(0x0F);
            const __m512i b0 = _mm512_set1_epi32(aq[v * 2]), b1 = _mm512_set1_epi32(aq[v * 2 + 1]);
            for (int r = 0; r < R; r++) {
                a0[r] = _mm512_dpbusd_epi32(a0[r], _mm512_and_si512(V[r], m4), b0);
                a1[r] = _mm512_dpbusd_epi32(a1[r], _mm512_andnot_si512(m4, V[r]), b1);
            }
        } else {
            const __m512i mask = _mm512_set1_epi8((char)((1 << B) - 1));
#pragma GCC unroll 4
            for (int i = 0; i < F; i++) {
                const __m512i ab = _mm512_set1_epi32(aq[v * F + i]);
                for (int r = 0; r < R; r++) {
                    __m512i c = i == 0 ? _mm512_and_si512(V[r], mask)
                                       : _mm512_and_si512(_mm512_srli_epi16(V[r], B * i), mask);
                    if (i & 1)
                        a1[r] = _mm512_dpbusd_epi32(a1[r], c, ab);
                    else
                        a0[r] = _mm512_dpbusd_epi32(a0[r], c, ab);
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        acc[r] = B == 4 ? _mm512_add_epi32(a0[r], _mm512_srai_epi32(a1[r], 4)) : _mm512_add_epi32(a0[r], a1[r]);
}

// The float part, in this order in every path (GEMV and GEMM give the same bits for a row):
// t = corr_G; t = fma(dot_b, d_b, t) per block; y = fma(s, t, y); y = fma(m, sumx_G, y).

// R row blocks (16 rows each) starting at rb, activation row m. S: symmetric codes (no min, see above).
template <int B, int R, bool S>
V512 inline void rows(const I8Args *a, int64_t rb, int64_t m) {
    constexpr int F = 8 / B, NV = AB / 4 / F;
    const int64_t g = a->g, nG = a->K / g, gb = group_bytes(g, B, S), nb = g / AB;
    const int32_t *act = (const int32_t *)(a->act + m * a->K);
    const float *dsc = a->dsc + m * (a->K / AB);
    const float *cr = S ? nullptr : a->corr + m * nG, *sx = S ? nullptr : a->sumx + m * nG;
    const int32_t *as8 = S ? a->asum8 + m * (a->K / AB) : nullptr;
    const uint8_t *p[R];
    __m512 y[R];
    for (int r = 0; r < R; r++) {
        p[r] = a->w + (rb + r) * nG * gb;
        y[r] = _mm512_setzero_ps();
    }
    for (int64_t G = 0; G < nG; G++) {
        __m512 t[R];
        for (int r = 0; r < R; r++) t[r] = S ? _mm512_setzero_ps() : _mm512_set1_ps(cr[G]);
        for (int64_t b = 0; b < nb; b++) {
            __m512i acc[R];
            block_dots<B, R>(p, act + (G * nb + b) * (AB / 4), acc);
            const __m512 d = _mm512_set1_ps(dsc[G * nb + b]);
            for (int r = 0; r < R; r++) {
                if (S) acc[r] = _mm512_sub_epi32(acc[r], _mm512_set1_epi32(as8[G * nb + b]));
                t[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]), d, t[r]);
                p[r] += NV * 64;
            }
        }
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(p[r] + PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(p[r] + PREFETCH_L2), _MM_HINT_T1);
            __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p[r]));
            y[r] = _mm512_fmadd_ps(s, t[r], y[r]);
            if (!S) {
                __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p[r] + 32)));
                y[r] = _mm512_fmadd_ps(mn, _mm512_set1_ps(sx[G]), y[r]);
            }
            p[r] += S ? 32 : 64;
        }
    }
    for (int r = 0; r < R; r++) {
        int64_t n0 = (rb + r) * 16, left = a->N - n0;
        __mmask16 km = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        _mm512_mask_storeu_ps(a->y + m * a->N + n0, km, y[r]);
    }
}

// Small-M GEMM (prefill): R row blocks x MB activation rows at m0; each weight vector is loaded and unpacked
// once for the MB rows (the weights are read from memory once per call whatever M, as in a GEMV).
template <int B, int R, int MB, bool S>
V512 inline void rows_mb(const I8Args *a, int64_t rb, int64_t m0) {
    constexpr int F = 8 / B, NV = AB / 4 / F;
    const int64_t g = a->g, nG = a->K / g, gb = group_bytes(g, B, S), nb = g / AB, nab = a->K / AB;
    const __m512i mask = _mm512_set1_epi8((char)((1 << B) - 1));
    const int32_t *act[MB];
    for (int j = 0; j < MB; j++) act[j] = (const int32_t *)(a->act + (m0 + j) * a->K);
    const uint8_t *p[R];
    __m512 y[R][MB];
    for (int r = 0; r < R; r++) {
        p[r] = a->w + (rb + r) * nG * gb;
        for (int j = 0; j < MB; j++) y[r][j] = _mm512_setzero_ps();
    }
    for (int64_t G = 0; G < nG; G++) {
        __m512 t[R][MB];
        for (int j = 0; j < MB; j++) {
            const __m512 c0 = S ? _mm512_setzero_ps() : _mm512_set1_ps(a->corr[(m0 + j) * nG + G]);
            for (int r = 0; r < R; r++) t[r][j] = c0;
        }
        for (int64_t b = 0; b < nb; b++) {
            const int64_t q0 = (G * nb + b) * (AB / 4);
            __m512i acc[R][MB];
            for (int r = 0; r < R; r++)
                for (int j = 0; j < MB; j++) acc[r][j] = _mm512_setzero_si512();
            for (int v = 0; v < NV; v++) {
                __m512i V[R];
                for (int r = 0; r < R; r++) {
                    _mm_prefetch((const char *)(p[r] + v * 64 + PREFETCH), _MM_HINT_T0);
                    V[r] = _mm512_loadu_si512(p[r] + v * 64);
                }
#pragma GCC unroll 4
                for (int i = 0; i < F; i++) {
                    __m512i c[R];
                    for (int r = 0; r < R; r++)
                        c[r] = i == 0 ? _mm512_and_si512(V[r], mask)
                                      : _mm512_and_si512(_mm512_srli_epi16(V[r], B * i), mask);
                    for (int j = 0; j < MB; j++) {
                        const __m512i ab = _mm512_set1_epi32(act[j][q0 + v * F + i]);
                        for (int r = 0; r < R; r++) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], c[r], ab);
                    }
                }
            }
            for (int j = 0; j < MB; j++) {
                const __m512 d = _mm512_set1_ps(a->dsc[(m0 + j) * nab + G * nb + b]);
                for (int r = 0; r < R; r++) {
                    if (S) acc[r][j] = _mm512_sub_epi32(acc[r][j], _mm512_set1_epi32(a->asum8[(m0 + j) * nab + G * nb + b]));
                    t[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), d, t[r][j]);
                }
            }
            for (int r = 0; r < R; r++) p[r] += NV * 64;
        }
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(p[r] + PREFETCH), _MM_HINT_T0);
            __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p[r]));
            for (int j = 0; j < MB; j++) y[r][j] = _mm512_fmadd_ps(s, t[r][j], y[r][j]);
            if (!S) {
                __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p[r] + 32)));
                for (int j = 0; j < MB; j++)
                    y[r][j] = _mm512_fmadd_ps(mn, _mm512_set1_ps(a->sumx[(m0 + j) * nG + G]), y[r][j]);
            }
            p[r] += S ? 32 : 64;
        }
    }
    for (int r = 0; r < R; r++) {
        int64_t n0 = (rb + r) * 16, left = a->N - n0;
        __mmask16 km = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (int j = 0; j < MB; j++) _mm512_mask_storeu_ps(a->y + (m0 + j) * a->N + n0, km, y[r][j]);
    }
}

template <int B, int R, bool S>
V512 inline void rows_m(const I8Args *a, int64_t rb) {
    int64_t m = 0;
    for (; m + 4 <= a->M; m += 4) rows_mb<B, R, 4, S>(a, rb, m);
    switch (a->M - m) {
        case 3: rows_mb<B, R, 3, S>(a, rb, m); break;
        case 2: rows_mb<B, R, 2, S>(a, rb, m); break;
        case 1: rows<B, R, S>(a, rb, m); break;
        default: break;
    }
}

template <int B, bool S>
V512 void rows_task_t(const I8Args *a, int64_t rb0, int64_t rb1) {
    int64_t rb = rb0;
    if (a->M == 1) {  // GEMV: four row blocks at a time
        for (; rb + 4 <= rb1; rb += 4) rows<B, 4, S>(a, rb, 0);
        for (; rb < rb1; rb++) rows<B, 1, S>(a, rb, 0);
        return;
    }
    // Four row blocks at a time here too: four weight streams in flight keep the memory busier than two while
    // the MB x R dot products run (one thread, cold 4096-wide layer, M = 2..4: 0.5-0.9 ms less per layer,
    // within ~10% of the GEMV); up to M = 8 (two MB = 4 blocks re-reading the four blocks' weights from L2).
    if (a->M <= 8)
        for (; rb + 4 <= rb1; rb += 4) rows_m<B, 4, S>(a, rb);
    for (; rb + 2 <= rb1; rb += 2) rows_m<B, 2, S>(a, rb);
    for (; rb < rb1; rb++) rows_m<B, 1, S>(a, rb);
}

V512 void rows_task(void *vctx, int64_t rb0, int64_t rb1) {
    const I8Args *a = (const I8Args *)vctx;
    if (a->bits == 2)
        rows_task_t<2, false>(a, rb0, rb1);
    else
        rows_task_t<4, false>(a, rb0, rb1);
}

V512 void rows_task_sym(void *vctx, int64_t rb0, int64_t rb1) { rows_task_t<4, true>((const I8Args *)vctx, rb0, rb1); }

// ---- Ternary (BitNet I2_S arithmetic, other layout): per 16-row block Kp / 16 vectors of 64 bytes as above
// with 2-bit codes w + 1 (the whole row is one group), then the 16 rows' fp32 scales. Activations per row
// (absmax int8, as lk_i2s_gemm), y = (dot - sum a) * (wscale * ascale): bit-identical to lk_i2s_gemm.
struct TArgs {
    const uint8_t *w;
    const int8_t *act;     // [M][Kp]
    const float *ascale;   // [M]
    const int32_t *asum;   // [M]
    float *y;
    int64_t N, Kp, M;
};

template <int R>
V512 inline void trows(const TArgs *a, int64_t rb, int64_t m) {
    const int64_t nv = a->Kp / 16, blk = a->Kp * 4 + 64;
    const __m512i mask = _mm512_set1_epi8(3);
    const int32_t *aq = (const int32_t *)(a->act + m * a->Kp);
    const uint8_t *p[R];
    __m512i acc0[R], acc1[R];
    for (int r = 0; r < R; r++) {
        p[r] = a->w + (rb + r) * blk;
        acc0[r] = acc1[r] = _mm512_setzero_si512();
    }
    for (int64_t v = 0; v < nv; v++) {
        __m512i V[R];
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(p[r] + v * 64 + PREFETCH), _MM_HINT_T0);
            V[r] = _mm512_loadu_si512(p[r] + v * 64);
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const __m512i ab = _mm512_set1_epi32(aq[v * 4 + i]);
            for (int r = 0; r < R; r++) {
                __m512i c = i == 0 ? _mm512_and_si512(V[r], mask)
                                   : _mm512_and_si512(_mm512_srli_epi16(V[r], 2 * i), mask);
                if (i & 1)
                    acc1[r] = _mm512_dpbusd_epi32(acc1[r], c, ab);
                else
                    acc0[r] = _mm512_dpbusd_epi32(acc0[r], c, ab);
            }
        }
    }
    const __m512i asum = _mm512_set1_epi32(a->asum[m]);
    const __m512 asc = _mm512_set1_ps(a->ascale[m]);
    for (int r = 0; r < R; r++) {
        __m512 ws = _mm512_loadu_ps((const float *)(p[r] + nv * 64));
        __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(acc0[r], acc1[r]), asum);
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws, asc));
        int64_t n0 = (rb + r) * 16, left = a->N - n0;
        __mmask16 km = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        _mm512_mask_storeu_ps(a->y + m * a->N + n0, km, y);
    }
}

V512 void trows_task(void *vctx, int64_t rb0, int64_t rb1) {
    const TArgs *a = (const TArgs *)vctx;
    int64_t rb = rb0;
    for (; rb + 4 <= rb1; rb += 4)
        for (int64_t m = 0; m < a->M; m++) trows<4>(a, rb, m);
    for (; rb < rb1; rb++)
        for (int64_t m = 0; m < a->M; m++) trows<1>(a, rb, m);
}

// Per-row absmax int8 (as lk_i2s_gemm's quant_act_row: rint(x * (127 / max)), clamped), zero padding to Kp.
V512 void quant_row(const float *x, int64_t K, int64_t Kp, int8_t *q, float *scale, int32_t *sum) {
    __m512 mx = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    float m = _mm512_reduce_max_ps(mx);
    for (; k < K; k++) m = fmaxf(m, fabsf(x[k]));
    float inv = m > 0.f ? 127.0f / m : 0.f;
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i vs = _mm512_setzero_si512();
    for (k = 0; k + 16 <= K; k += 16) {  // vcvtps2dq rounds to nearest even, as nearbyintf
        __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), vinv));
        r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
        vs = _mm512_add_epi32(vs, r);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(r));
    }
    int32_t s = _mm512_reduce_add_epi32(vs);
    for (; k < K; k++) {
        float r = nearbyintf(x[k] * inv);
        r = r > 127.f ? 127.f : (r < -127.f ? -127.f : r);
        q[k] = (int8_t)r;
        s += (int32_t)r;
    }
    for (; k < Kp; k++) q[k] = 0;
    *scale = m / 127.0f;
    *sum = s;
}

bool cpu_ok() {
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return v == 1;
}
}  // namespace

extern "C" {

// 1 when this CPU runs lk_int8_gemm (AVX512-VNNI), else 0 (callers keep the LUT kernel).
int lk_int8_supported(void) { return cpu_ok() ? 1 : 0; }

// y[M][N] = x[M][K] @ W^T, W in the int8-kernel layout above (bits 2 or 4, g a multiple of 32, K of g).
// Returns -1 on shapes it does not take or a CPU without AVX512-VNNI.
int lk_int8_gemm(const uint8_t *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int64_t g,
                 int64_t bits, int nthreads) {
    if (!cpu_ok() || (bits != 2 && bits != 4) || g % AB || g < AB || K % g || M < 1) return -1;
    int64_t nG = K / g, nab = K / AB;
    size_t qb = ((size_t)M * K + 63) / 64 * 64;
    lk::lock_call();  // the scratch is shared by all kernels of the library
    char *s = (char *)lk::scratch(qb + sizeof(float) * M * (nab + 2 * nG) + 64);
    int8_t *q = (int8_t *)s;
    float *dsc = (float *)(s + qb), *corr = dsc + M * nab, *sx = corr + M * nG;
    const float c = (float)((1 << bits) - 1) / 2;
    for (int64_t m = 0; m < M; m++)
        quant_blocks(x + m * K, K, g, c, q + m * K, dsc + m * nab, corr + m * nG, sx + m * nG);
    I8Args a{w, q, dsc, corr, sx, y, N, K, M, g, bits, nullptr};
    int64_t nrb = (N + 15) / 16;
    int64_t chunk = lk::pick_chunk(nrb, nthreads);
    if (chunk > 4) chunk = chunk / 4 * 4;  // whole groups of four row blocks
    lk::parallel_for(nthreads, nrb, chunk, rows_task, &a);
    lk::unlock_call();
    return 0;
}

// Symmetric 4-bit: y[M][N] = x[M][K] @ W^T, W in the symmetric layout above (g a multiple of 32, K of g).
// Returns -1 on shapes it does not take or a CPU without AVX512-VNNI.
int lk_int8_sym_gemm(const uint8_t *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int64_t g,
                     int nthreads) {
    if (!cpu_ok() || g % AB || g < AB || K % g || M < 1 || N < 1) return -1;
    int64_t nab = K / AB;
    size_t qb = ((size_t)M * K + 63) / 64 * 64;
    lk::lock_call();
    char *s = (char *)lk::scratch(qb + (sizeof(float) + sizeof(int32_t)) * M * nab + 64);
    int8_t *q = (int8_t *)s;
    float *dsc = (float *)(s + qb);
    int32_t *as8 = (int32_t *)(dsc + M * nab);
    for (int64_t m = 0; m < M; m++) quant_blocks_sym(x + m * K, K, q + m * K, dsc + m * nab, as8 + m * nab);
    I8Args a{w, q, dsc, nullptr, nullptr, y, N, K, M, g, 4, as8};
    int64_t nrb = (N + 15) / 16;
    int64_t chunk = lk::pick_chunk(nrb, nthreads);
    if (chunk > 4) chunk = chunk / 4 * 4;
    lk::parallel_for(nthreads, nrb, chunk, rows_task_sym, &a);
    lk::unlock_call();
    return 0;
}

// Ternary: y[M][N] = x[M][K] @ W^T, W in the ternary int8-kernel layout (Kp = K rounded up to 128).
int lk_int8_ternary_gemm(const uint8_t *w, const float *x, float *y, int64_t M, int64_t N, int64_t K,
                         int nthreads) {
    if (!cpu_ok() || M < 1 || K < 1) return -1;
    int64_t Kp = (K + 127) / 128 * 128;
    size_t qb = ((size_t)M * Kp + 63) / 64 * 64;
    lk::lock_call();
    char *s = (char *)lk::scratch(qb + 8 * M + 64);
    int8_t *q = (int8_t *)s;
    float *asc = (float *)(s + qb);
    int32_t *asum = (int32_t *)(asc + M);
    for (int64_t m = 0; m < M; m++) quant_row(x + m * K, K, Kp, q + m * Kp, asc + m, asum + m);
    TArgs a{w, q, asc, asum, y, N, Kp, M};
    int64_t nrb = (N + 15) / 16;
    int64_t chunk = lk::pick_chunk(nrb, nthreads);
    if (chunk > 4) chunk = chunk / 4 * 4;
    lk::parallel_for(nthreads, nrb, chunk, trows_task, &a);
    lk::unlock_call();
    return 0;
}

}  // extern "C"
