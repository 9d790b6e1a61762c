// Low-bit GEMV / small-M GEMM kernels for efficient.quant (loaded with ctypes, no Python/PyTorch headers).
//
// Kernels (each with an AVX-512, an AVX2 and a scalar path, chosen at run time; all paths compute the same
// integer sums, and the float epilogue uses explicit fmaf in the same order, so paths agree bit for bit):
//   lk_lut_*   T-MAC style bit-serial LUT for uniform b-bit (1..4) weights with per-group scale + min.
//              Activations in groups of 4 -> 16-entry +-1 tables (built here, mirror-symmetric, int8-quantized
//              with one scale per weight group). AVX-512: vpermb looks up 4 tables at once, vpdpbusd sums.
//   lk_i2s_*   BitNet I2_S ternary (2-bit codes w+1) x int8 activations (per-token absmax), lossless.
//   lk_tl_*    Ternary LUT (TL-style): 3 weights -> 5-bit index into a 27-entry int16 table of exact int8
//              activation sums (vpermw), lossless (same integers as I2_S).
//   lk_fp_*    AFPQ: sign+magnitude FP codes (4-bit e2m1 in nibbles, 3-bit fp3 in bit planes) through a
//              16-entry magnitude codebook, two scales per group (positive / negative), int8 activations per group.
// Threads: a small persistent pool; rows are split into chunks claimed from an atomic counter.
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

#define A512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,fma,f16c")))
#define A256 __attribute__((target("avx2,fma,f16c")))

extern "C" {

// Bumped whenever an exported signature or a packed layout changes; the Python loader refuses a stale build.
// 2: lk_lut_gemm takes the table mode, lk_fp_gemm the bit width (fp3 bit planes).
// 3: lk_int8_gemm rounds the activations per 32 columns and centres the codes (other results than 2).
int lk_abi_version(void) { return 3; }

// ---------------------------------------------------------------------------------------------------------
// CPU features and path selection. path: 0 scalar, 1 avx2, 2 avx512.
int lk_cpu_path(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("avx512vnni"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
}

}  // extern "C"

// Thread pool. A job is open until the caller has run out of chunks; workers that wake up late (e.g. the
// VM is oversubscribed and they were descheduled) find it closed and skip it, so the caller never waits for
// a thread that has not started. state = generation << 32 | closed << 16 | active workers.
typedef void (*task_fn)(void *ctx, int64_t begin, int64_t end);

namespace {
const int MAX_THREADS = 64;
const uint64_t CLOSED = 1ull << 16, ACTIVE_MASK = 0xFFFFull;
struct Pool {
    int nworkers = 0;
    pthread_t th[MAX_THREADS];
    std::atomic<uint64_t> state{CLOSED};
    std::atomic<int64_t> next{0};
    int64_t total = 0, chunk = 1;
    task_fn fn = nullptr;
    void *ctx = nullptr;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    std::atomic<int> sleepers{0};
};
Pool g_pool;

void run_chunks(Pool *p) {
    for (;;) {
        int64_t b = p->next.fetch_add(p->chunk, std::memory_order_relaxed);
        if (b >= p->total) break;
        int64_t e = b + p->chunk < p->total ? b + p->chunk : p->total;
        p->fn(p->ctx, b, e);
    }
}

void *worker_main(void *) {
    Pool *p = &g_pool;
    uint64_t seen = 0;
    for (;;) {
        // Spin briefly (decode calls come back to back), then sleep on the condition variable.
        uint64_t s;
        int spins = 0;
        while (((s = p->state.load(std::memory_order_acquire)) >> 32) == seen) {
            if (++spins < 20000) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            p->sleepers.fetch_add(1);
            while (((s = p->state.load(std::memory_order_acquire)) >> 32) == seen) pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers.fetch_sub(1);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        seen = s >> 32;
        // join unless the job is already closed (or a newer one started: then the loop sees it next)
        bool joined = false;
        while ((s >> 32) == seen && !(s & CLOSED)) {
            if (p->state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
                joined = true;
                break;
            }
        }
        if (joined) {
            run_chunks(p);
            p->state.fetch_sub(1, std::memory_order_acq_rel);
        }
    }
    return nullptr;
}

void ensure_workers(int n) {
    if (n > MAX_THREADS) n = MAX_THREADS;
    while (g_pool.nworkers < n) {
        pthread_create(&g_pool.th[g_pool.nworkers], nullptr, worker_main, nullptr);
        g_pool.nworkers++;
    }
}

pthread_mutex_t g_call_mu = PTHREAD_MUTEX_INITIALIZER;
pthread_mutex_t g_job_mu = PTHREAD_MUTEX_INITIALIZER;

// Runs fn over [0, total) in chunks with up to `nthreads` threads (the caller is one of them).
void parallel_for(int nthreads, int64_t total, int64_t chunk, task_fn fn, void *ctx) {
    if (nthreads <= 1 || total <= chunk) {
        fn(ctx, 0, total);
        return;
    }
    pthread_mutex_lock(&g_job_mu);
    ensure_workers(nthreads - 1);
    Pool *p = &g_pool;
    p->total = total;
    p->chunk = chunk;
    p->fn = fn;
    p->ctx = ctx;
    p->next.store(0, std::memory_order_relaxed);
    uint64_t gen = (p->state.load() >> 32) + 1;
    p->state.store(gen << 32, std::memory_order_release);  // open, no active workers
    if (p->sleepers.load() > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_chunks(p);
    p->state.fetch_or(CLOSED, std::memory_order_acq_rel);
    int spins = 0;
    while (p->state.load(std::memory_order_acquire) & ACTIVE_MASK) {  // only threads that took chunks
        if (++spins < 4000)
            _mm_pause();
        else
            sched_yield();
    }
    pthread_mutex_unlock(&g_job_mu);
}

inline float h2f(uint16_t h) {
    // IEEE half -> float (scalar path; SIMD paths use vcvtph2ps which gives identical results).
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0) {
        if (m == 0) {
            bits = s;
        } else {
            e = 127 - 15 + 1;
            while (!(m & 0x400)) {
                m <<= 1;
                e--;
            }
            m &= 0x3ff;
            bits = s | (e << 23) | (m << 13);
        }
    } else if (e == 31) {
        bits = s | 0x7f800000 | (m << 13);
    } else {
        bits = s | ((e + 127 - 15) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// =========================================================================================================
// 1. Uniform b-bit, T-MAC bit-serial LUT.
//
// Packed layout per 16-row block: for each weight group G (g columns): for each chunk of 32 columns: for
// each bit plane i: 64 bytes, byte 4r+s = (idx of act group 8c+s) | (idx of act group 8c+4+s) << 4 for
// row r, where idx bit j = bit i of the code of column 4*group+j. Then 16 fp16 scales and 16 fp16 mins.
// Weight = scale * code + min. Tables per activation row: for chunk c, half h, slot s: 16 int8 entries at
// ((c*2+h)*4+s)*16, entry idx = round(sum_j (bit j ? x_j : -x_j) / lscale[G]).
// =========================================================================================================
struct LutArgs {
    const uint8_t *w;
    const int8_t *tab;       // [M][K/32*128]
    const float *lscale;     // [M][nG]
    const float *sumx;       // [M][nG]
    float *y;                // [M][N]
    int64_t N, K, M, g, bits;
};

inline int64_t lut_block_bytes(int64_t K, int64_t g, int64_t bits) {
    return (K / g) * ((g / 32) * bits * 64 + 64);
}

// Max of (|x0|+|x1|)+|x2|)+|x3| over the group's act groups -> scale; sum of x (bias term).
inline void lut_group_stats(const float *xg, int64_t g, float *lscale, float *sumx, float *inv) {
    float mx = 0.f, sx = 0.f;
    for (int64_t t = 0; t < g / 4; t++) {
        const float *q = xg + 4 * t;
        float a = ((fabsf(q[0]) + fabsf(q[1])) + fabsf(q[2])) + fabsf(q[3]);
        if (a > mx) mx = a;
    }
    for (int64_t k = 0; k < g; k++) sx += xg[k];
    *inv = mx > 0.f ? 127.0f / mx : 0.f;
    *lscale = mx / 127.0f;
    *sumx = sx;
}

void lut_tables_scalar(const float *x, int64_t K, int64_t g, int8_t *tab, float *lscale, float *sumx) {
    int64_t nG = K / g;
    for (int64_t G = 0; G < nG; G++) {
        const float *xg = x + G * g;
        float inv;
        lut_group_stats(xg, g, lscale + G, sumx + G, &inv);
        for (int64_t t = 0; t < g / 4; t++) {
            // act group grp = 8c + 4h + s lives at ((c*2+h)*4+s)*16 = grp*16
            int8_t *e = tab + (G * (g / 4) + t) * 16;
            const float *q = xg + 4 * t;
            for (int idx = 0; idx < 8; idx++) {
                float v = (((idx & 1) ? q[0] : -q[0]) + ((idx & 2) ? q[1] : -q[1])) + ((idx & 4) ? q[2] : -q[2]);
                v = v - q[3];
                float r = nearbyintf(v * inv);
                e[idx] = (int8_t)r;
                e[15 - idx] = (int8_t)(-r);  // mirror: complementing all sign bits negates the sum
            }
        }
    }
}

// Same tables, 4 act groups (one 64-byte table row) per step: lanes = the 16 sign patterns.
A512 void lut_tables_avx512(const float *x, int64_t K, int64_t g, int8_t *tab, float *lscale, float *sumx) {
    const __m512 S0 = _mm512_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
    const __m512 S1 = _mm512_setr_ps(-1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1);
    const __m512 S2 = _mm512_setr_ps(-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1);
    const __m512 S3 = _mm512_setr_ps(-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1);
    int64_t nG = K / g;
    for (int64_t G = 0; G < nG; G++) {
        const float *xg = x + G * g;
        float inv;
        lut_group_stats(xg, g, lscale + G, sumx + G, &inv);
        const __m512 vinv = _mm512_set1_ps(inv);
        for (int64_t t = 0; t < g / 4; t++) {
            const float *q = xg + 4 * t;
            // (S0*x0 + S1*x1) + S2*x2) + S3*x3: products by +-1 are exact, so this equals the scalar sums.
            __m512 v = _mm512_add_ps(_mm512_mul_ps(S0, _mm512_set1_ps(q[0])), _mm512_mul_ps(S1, _mm512_set1_ps(q[1])));
            v = _mm512_add_ps(v, _mm512_mul_ps(S2, _mm512_set1_ps(q[2])));
            v = _mm512_add_ps(v, _mm512_mul_ps(S3, _mm512_set1_ps(q[3])));
            __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));  // round to nearest even = nearbyintf
            _mm_storeu_si128((__m128i *)(tab + (G * (g / 4) + t) * 16), _mm512_cvtepi32_epi8(r));
        }
    }
}

void lut_rows_scalar(void *vctx, int64_t rb0, int64_t rb1) {
    LutArgs *a = (LutArgs *)vctx;
    const int64_t nG = a->K / a->g, cpg = a->g / 32, B = a->bits;
    const int64_t blk = lut_block_bytes(a->K, a->g, B), tstride = a->K / 32 * 128;
    const float half_range = 0.5f * (float)((1 << B) - 1);
    for (int64_t rb = rb0; rb < rb1; rb++) {
        for (int64_t m = 0; m < a->M; m++) {
            const uint8_t *p = a->w + rb * blk;
            const int8_t *T = a->tab + m * tstride;
            float y[16] = {0};
            for (int64_t G = 0; G < nG; G++) {
                int32_t acc[4][16] = {{0}};
                for (int64_t cc = 0; cc < cpg; cc++) {
                    int64_t c = G * cpg + cc;
                    const int8_t *t0 = T + c * 128, *t1 = t0 + 64;
                    for (int64_t i = 0; i < B; i++) {
                        for (int r = 0; r < 16; r++)
                            for (int s = 0; s < 4; s++) {
                                uint8_t v = p[4 * r + s];
                                acc[i][r] += t0[s * 16 + (v & 15)] + t1[s * 16 + (v >> 4)];
                            }
                        p += 64;
                    }
                }
                const uint16_t *sc = (const uint16_t *)p, *mn = sc + 16;
                p += 64;
                float ls = a->lscale[m * nG + G] * 0.5f, sx = a->sumx[m * nG + G];
                for (int r = 0; r < 16; r++) {
                    int32_t comb = acc[0][r];
                    for (int64_t i = 1; i < B; i++) comb += acc[i][r] << i;
                    float s = h2f(sc[r]);
                    float c = fmaf(s, half_range, h2f(mn[r]));
                    y[r] = fmaf((float)comb, s * ls, y[r]);
                    y[r] = fmaf(c, sx, y[r]);
                }
            }
            int64_t n0 = rb * 16;
            for (int r = 0; r < 16 && n0 + r < a->N; r++) a->y[m * a->N + n0 + r] = y[r];
        }
    }
}

template <int B>
A512 void lut_rows_avx512_t(LutArgs *a, int64_t rb0, int64_t rb1) {
    const int64_t nG = a->K / a->g, cpg = a->g / 32;
    const int64_t blk = lut_block_bytes(a->K, a->g, B), tstride = a->K / 32 * 128;
    const __m512 half_range = _mm512_set1_ps(0.5f * (float)((1 << B) - 1));
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i slot = _mm512_set1_epi32(0x30201000);
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t rb = rb0; rb < rb1; rb++) {
        for (int64_t m = 0; m < a->M; m++) {
            const uint8_t *p = a->w + rb * blk;
            const int8_t *T = a->tab + m * tstride;
            const float *lsc = a->lscale + m * nG, *sxp = a->sumx + m * nG;
            __m512 y = _mm512_setzero_ps();
            for (int64_t G = 0; G < nG; G++) {
                __m512i acc[B];
                for (int i = 0; i < B; i++) acc[i] = _mm512_setzero_si512();
                const int8_t *tc = T + G * cpg * 128;
                for (int64_t cc = 0; cc < cpg; cc++) {
                    __m512i t0 = _mm512_loadu_si512(tc), t1 = _mm512_loadu_si512(tc + 64);
                    tc += 128;
#pragma GCC unroll 4
                    for (int i = 0; i < B; i++) {
                        __m512i v = _mm512_loadu_si512(p + i * 64);
                        __m512i lo = _mm512_ternarylogic_epi32(v, low4, slot, 0xEA);
                        __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), low4, slot, 0xEA);
                        acc[i] = _mm512_dpbusd_epi32(acc[i], ones, _mm512_permutexvar_epi8(lo, t0));
                        acc[i] = _mm512_dpbusd_epi32(acc[i], ones, _mm512_permutexvar_epi8(hi, t1));
                    }
                    p += B * 64;
                }
                __m512i comb = acc[0];
                for (int i = 1; i < B; i++) comb = _mm512_add_epi32(comb, _mm512_slli_epi32(acc[i], i));
                __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
                __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
                p += 64;
                __m512 c = _mm512_fmadd_ps(s, half_range, mn);
                __m512 f = _mm512_mul_ps(s, _mm512_set1_ps(lsc[G] * 0.5f));
                y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(comb), f, y);
                y = _mm512_fmadd_ps(c, _mm512_set1_ps(sxp[G]), y);
            }
            int64_t n0 = rb * 16, left = a->N - n0;
            __mmask16 km = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            _mm512_mask_storeu_ps(a->y + m * a->N + n0, km, y);
        }
    }
}

A512 void lut_rows_avx512(void *vctx, int64_t rb0, int64_t rb1) {
    LutArgs *a = (LutArgs *)vctx;
    switch (a->bits) {
        case 1: lut_rows_avx512_t<1>(a, rb0, rb1); break;
        case 2: lut_rows_avx512_t<2>(a, rb0, rb1); break;
        case 3: lut_rows_avx512_t<3>(a, rb0, rb1); break;
        default: lut_rows_avx512_t<4>(a, rb0, rb1); break;
    }
}

// AVX2: no byte permute across 64 bytes, so the four slot tables are looked up separately (pshufb) and
// blended by byte position; maddubs + madd sum the 4 slots of a row into int32 (same integers).
template <int B>
A256 void lut_rows_avx2_t(LutArgs *a, int64_t rb0, int64_t rb1) {
    const int64_t nG = a->K / a->g, cpg = a->g / 32;
    const int64_t blk = lut_block_bytes(a->K, a->g, B), tstride = a->K / 32 * 128;
    const __m256 half_range = _mm256_set1_ps(0.5f * (float)((1 << B) - 1));
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i ones8 = _mm256_set1_epi8(1);
    const __m256i ones16 = _mm256_set1_epi16(1);
    const __m256i m1 = _mm256_set1_epi32(0x0000FF00), m2 = _mm256_set1_epi32(0x00FF0000),
                  m3 = _mm256_set1_epi32((int)0xFF000000u);
    for (int64_t rb = rb0; rb < rb1; rb++) {
        for (int64_t m = 0; m < a->M; m++) {
            const uint8_t *p = a->w + rb * blk;
            const int8_t *T = a->tab + m * tstride;
            const float *lsc = a->lscale + m * nG, *sxp = a->sumx + m * nG;
            __m256 y0 = _mm256_setzero_ps(), y1 = _mm256_setzero_ps();
            for (int64_t G = 0; G < nG; G++) {
                __m256i acc[B][2];
                for (int i = 0; i < B; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
                const int8_t *tc = T + G * cpg * 128;
                for (int64_t cc = 0; cc < cpg; cc++) {
                    __m256i tb[2][4];
                    for (int h = 0; h < 2; h++)
                        for (int s = 0; s < 4; s++)
                            tb[h][s] = _mm256_broadcastsi128_si256(
                                _mm_loadu_si128((const __m128i *)(tc + (h * 4 + s) * 16)));
                    tc += 128;
                    for (int i = 0; i < B; i++) {
                        for (int half = 0; half < 2; half++) {
                            __m256i v = _mm256_loadu_si256((const __m256i *)(p + i * 64 + half * 32));
                            __m256i idx[2] = {_mm256_and_si256(v, low4),
                                              _mm256_and_si256(_mm256_srli_epi16(v, 4), low4)};
                            __m256i sum = _mm256_setzero_si256();
                            for (int h = 0; h < 2; h++) {
                                __m256i r = _mm256_shuffle_epi8(tb[h][0], idx[h]);
                                r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(tb[h][1], idx[h]), m1);
                                r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(tb[h][2], idx[h]), m2);
                                r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(tb[h][3], idx[h]), m3);
                                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(ones8, r));
                            }
                            acc[i][half] = _mm256_add_epi32(acc[i][half], _mm256_madd_epi16(sum, ones16));
                        }
                    }
                    p += B * 64;
                }
                for (int half = 0; half < 2; half++) {
                    __m256i comb = acc[0][half];
                    for (int i = 1; i < B; i++) comb = _mm256_add_epi32(comb, _mm256_slli_epi32(acc[i][half], i));
                    __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + half * 16)));
                    __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 32 + half * 16)));
                    __m256 c = _mm256_fmadd_ps(s, half_range, mn);
                    __m256 f = _mm256_mul_ps(s, _mm256_set1_ps(lsc[G] * 0.5f));
                    __m256 &y = half ? y1 : y0;
                    y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(comb), f, y);
                    y = _mm256_fmadd_ps(c, _mm256_set1_ps(sxp[G]), y);
                }
                p += 64;
            }
            float tmp[16];
            _mm256_storeu_ps(tmp, y0);
            _mm256_storeu_ps(tmp + 8, y1);
            int64_t n0 = rb * 16;
            for (int r = 0; r < 16 && n0 + r < a->N; r++) a->y[m * a->N + n0 + r] = tmp[r];
        }
    }
}

A256 void lut_rows_avx2(void *vctx, int64_t rb0, int64_t rb1) {
    LutArgs *a = (LutArgs *)vctx;
    switch (a->bits) {
        case 1: lut_rows_avx2_t<1>(a, rb0, rb1); break;
        case 2: lut_rows_avx2_t<2>(a, rb0, rb1); break;
        case 3: lut_rows_avx2_t<3>(a, rb0, rb1); break;
        default: lut_rows_avx2_t<4>(a, rb0, rb1); break;
    }
}

// ---- Float tables (the exact option): entry idx of act group t = ((+-x0 +- x1) +- x2) +- x3 in fp32 (the
// int8 path's value before rounding), 16 floats per act group at t*16. Per row and bit plane, the 8 lookups
// of a 32-column chunk are summed as ((u0 + u1) + (u2 + u3)), u_s = T[8c+s][lo] + T[8c+4+s][hi]; bit planes
// are combined in float (x 2^i, exact) at the end of each weight group. All paths use this order.
void lut_ftables(const float *x, int64_t K, float *tab, float *sumx, int64_t g) {
    for (int64_t t = 0; t < K / 4; t++) {
        const float *q = x + 4 * t;
        float *e = tab + t * 16;
        for (int idx = 0; idx < 8; idx++) {
            float v = (((idx & 1) ? q[0] : -q[0]) + ((idx & 2) ? q[1] : -q[1])) + ((idx & 4) ? q[2] : -q[2]);
            v = v - q[3];
            e[idx] = v;
            e[15 - idx] = -v;
        }
    }
    for (int64_t G = 0; G < K / g; G++) {
        float sx = 0.f;
        for (int64_t k = G * g; k < (G + 1) * g; k++) sx += x[k];
        sumx[G] = sx;
    }
}

struct LutFArgs {
    const uint8_t *w;
    const float *tab;   // [M][K/4][16]
    const float *sumx;  // [M][nG]
    float *y;
    int64_t N, K, M, g, bits;
};

void lutf_rows_scalar(void *vctx, int64_t rb0, int64_t rb1) {
    LutFArgs *a = (LutFArgs *)vctx;
    const int64_t nG = a->K / a->g, cpg = a->g / 32, B = a->bits;
    const int64_t blk = lut_block_bytes(a->K, a->g, B);
    const float half_range = 0.5f * (float)((1 << B) - 1);
    for (int64_t rb = rb0; rb < rb1; rb++) {
        for (int64_t m = 0; m < a->M; m++) {
            const uint8_t *p = a->w + rb * blk;
            const float *T = a->tab + m * (a->K / 4) * 16;
            float y[16] = {0};
            for (int64_t G = 0; G < nG; G++) {
                float acc[4][16] = {{0}};
                for (int64_t cc = 0; cc < cpg; cc++) {
                    const float *tc = T + (G * cpg + cc) * 8 * 16;
                    for (int64_t i = 0; i < B; i++) {
                        for (int r = 0; r < 16; r++) {
                            float u[4];
                            for (int s = 0; s < 4; s++) {
                                uint8_t v = p[4 * r + s];
                                u[s] = tc[s * 16 + (v & 15)] + tc[(4 + s) * 16 + (v >> 4)];
                            }
                            acc[i][r] += (u[0] + u[1]) + (u[2] + u[3]);
                        }
                        p += 64;
                    }
                }
                const uint16_t *sc = (const uint16_t *)p, *mn = sc + 16;
                p += 64;
                float sx = a->sumx[m * nG + G];
                for (int r = 0; r < 16; r++) {
                    float comb = acc[0][r];
                    for (int64_t i = 1; i < B; i++) comb = comb + acc[i][r] * (float)(1 << i);
                    float s = h2f(sc[r]);
                    float c = fmaf(s, half_range, h2f(mn[r]));
                    y[r] = fmaf(comb, s * 0.5f, y[r]);
                    y[r] = fmaf(c, sx, y[r]);
                }
            }
            int64_t n0 = rb * 16;
            for (int r = 0; r < 16 && n0 + r < a->N; r++) a->y[m * a->N + n0 + r] = y[r];
        }
    }
}

// AVX-512: the 16 rows of a block are the 16 lanes; one vpermps looks up one act group's table for all of
// them (it reads only the low 4 bits of each lane, so the row's dword needs just a shift).
template <int B>
A512 void lutf_rows_avx512_t(LutFArgs *a, int64_t rb0, int64_t rb1) {
    const int64_t nG = a->K / a->g, cpg = a->g / 32;
    const int64_t blk = lut_block_bytes(a->K, a->g, B);
    const __m512 half_range = _mm512_set1_ps(0.5f * (float)((1 << B) - 1)), halfv = _mm512_set1_ps(0.5f);
    for (int64_t rb = rb0; rb < rb1; rb++) {
        for (int64_t m = 0; m < a->M; m++) {
            const uint8_t *p = a->w + rb * blk;
            const float *T = a->tab + m * (a->K / 4) * 16;
            const float *sxp = a->sumx + m * nG;
            __m512 y = _mm512_setzero_ps();
            for (int64_t G = 0; G < nG; G++) {
                __m512 acc[B];
                for (int i = 0; i < B; i++) acc[i] = _mm512_setzero_ps();
                for (int64_t cc = 0; cc < cpg; cc++) {
                    const float *tc = T + (G * cpg + cc) * 8 * 16;
                    __m512 tb[8];
                    for (int k = 0; k < 8; k++) tb[k] = _mm512_loadu_ps(tc + 16 * k);
                    for (int i = 0; i < B; i++) {
                        __m512i v = _mm512_loadu_si512(p + i * 64);
                        __m512 u[4];
                        for (int s = 0; s < 4; s++)
                            u[s] = _mm512_add_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 8 * s), tb[s]),
                                                 _mm512_permutexvar_ps(_mm512_srli_epi32(v, 8 * s + 4), tb[4 + s]));
                        acc[i] = _mm512_add_ps(acc[i], _mm512_add_ps(_mm512_add_ps(u[0], u[1]), _mm512_add_ps(u[2], u[3])));
                    }
                    p += B * 64;
                }
                __m512 comb = acc[0];
                for (int i = 1; i < B; i++) comb = _mm512_add_ps(comb, _mm512_mul_ps(acc[i], _mm512_set1_ps((float)(1 << i))));
                __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
                __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
                p += 64;
                __m512 c = _mm512_fmadd_ps(s, half_range, mn);
                y = _mm512_fmadd_ps(comb, _mm512_mul_ps(s, halfv), y);
                y = _mm512_fmadd_ps(c, _mm512_set1_ps(sxp[G]), y);
            }
            int64_t n0 = rb * 16, left = a->N - n0;
            __mmask16 km = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            _mm512_mask_storeu_ps(a->y + m * a->N + n0, km, y);
        }
    }
}

A512 void lutf_rows_avx512(void *vctx, int64_t rb0, int64_t rb1) {
    LutFArgs *a = (LutFArgs *)vctx;
    switch (a->bits) {
        case 1: lutf_rows_avx512_t<1>(a, rb0, rb1); break;
        case 2: lutf_rows_avx512_t<2>(a, rb0, rb1); break;
        case 3: lutf_rows_avx512_t<3>(a, rb0, rb1); break;
        default: lutf_rows_avx512_t<4>(a, rb0, rb1); break;
    }
}

// AVX2: 8 rows per vector; vpermps covers 8 entries, so entries 0-7 and 8-15 are looked up separately and
// blended on bit 3 of the index (moved to the sign bit).
A256 inline __m256 lutf_look8(__m256i v, int lo_shift, __m256 t0, __m256 t1) {
    __m256i idx = _mm256_srli_epi32(v, lo_shift);
    __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx), sel);
}

template <int B>
A256 void lutf_rows_avx2_t(LutFArgs *a, int64_t rb0, int64_t rb1) {
    const int64_t nG = a->K / a->g, cpg = a->g / 32;
    const int64_t blk = lut_block_bytes(a->K, a->g, B);
    const __m256 half_range = _mm256_set1_ps(0.5f * (float)((1 << B) - 1)), halfv = _mm256_set1_ps(0.5f);
    for (int64_t rb = rb0; rb < rb1; rb++) {
        for (int64_t m = 0; m < a->M; m++) {
            const uint8_t *p = a->w + rb * blk;
            const float *T = a->tab + m * (a->K / 4) * 16;
            const float *sxp = a->sumx + m * nG;
            __m256 y[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t G = 0; G < nG; G++) {
                __m256 acc[B][2];
                for (int i = 0; i < B; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
                for (int64_t cc = 0; cc < cpg; cc++) {
                    const float *tc = T + (G * cpg + cc) * 8 * 16;
                    for (int i = 0; i < B; i++) {
                        for (int h = 0; h < 2; h++) {
                            __m256i v = _mm256_loadu_si256((const __m256i *)(p + i * 64 + h * 32));
                            __m256 u[4];
                            for (int s = 0; s < 4; s++) {
                                const float *ta = tc + 16 * s, *tb = tc + 16 * (4 + s);
                                u[s] = _mm256_add_ps(
                                    lutf_look8(v, 8 * s, _mm256_loadu_ps(ta), _mm256_loadu_ps(ta + 8)),
                                    lutf_look8(v, 8 * s + 4, _mm256_loadu_ps(tb), _mm256_loadu_ps(tb + 8)));
                            }
                            acc[i][h] = _mm256_add_ps(acc[i][h], _mm256_add_ps(_mm256_add_ps(u[0], u[1]),
                                                                               _mm256_add_ps(u[2], u[3])));
                        }
                    }
                    p += B * 64;
                }
                for (int h = 0; h < 2; h++) {
                    __m256 comb = acc[0][h];
                    for (int i = 1; i < B; i++)
                        comb = _mm256_add_ps(comb, _mm256_mul_ps(acc[i][h], _mm256_set1_ps((float)(1 << i))));
                    __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + h * 16)));
                    __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 32 + h * 16)));
                    __m256 c = _mm256_fmadd_ps(s, half_range, mn);
                    y[h] = _mm256_fmadd_ps(comb, _mm256_mul_ps(s, halfv), y[h]);
                    y[h] = _mm256_fmadd_ps(c, _mm256_set1_ps(sxp[G]), y[h]);
                }
                p += 64;
            }
            float tmp[16];
            _mm256_storeu_ps(tmp, y[0]);
            _mm256_storeu_ps(tmp + 8, y[1]);
            int64_t n0 = rb * 16;
            for (int r = 0; r < 16 && n0 + r < a->N; r++) a->y[m * a->N + n0 + r] = tmp[r];
        }
    }
}

A256 void lutf_rows_avx2(void *vctx, int64_t rb0, int64_t rb1) {
    LutFArgs *a = (LutFArgs *)vctx;
    switch (a->bits) {
        case 1: lutf_rows_avx2_t<1>(a, rb0, rb1); break;
        case 2: lutf_rows_avx2_t<2>(a, rb0, rb1); break;
        case 3: lutf_rows_avx2_t<3>(a, rb0, rb1); break;
        default: lutf_rows_avx2_t<4>(a, rb0, rb1); break;
    }
}

// Per-thread scratch for tables (grown on demand, never freed: one per process).
struct Scratch {
    void *p = nullptr;
    size_t n = 0;
    void *get(size_t bytes) {
        if (bytes > n) {
            free(p);
            n = bytes + 4096;
            p = aligned_alloc(64, (n + 63) / 64 * 64);
        }
        return p;
    }
};
Scratch g_scratch;

int64_t pick_chunk(int64_t nblocks, int nthreads) {
    // ~4 chunks per thread so a descheduled thread's work is picked up by the other one.
    int64_t c = nblocks / (4 * (nthreads > 0 ? nthreads : 1));
    return c < 1 ? 1 : c;
}
}  // namespace

// Shared with the other kernel files of this library (csrc/pool.h).
namespace lk {
void parallel_for(int nthreads, int64_t total, int64_t chunk, task_fn fn, void *ctx) {
    ::parallel_for(nthreads, total, chunk, fn, ctx);
}
void lock_call(void) { pthread_mutex_lock(&g_call_mu); }
void unlock_call(void) { pthread_mutex_unlock(&g_call_mu); }
void *scratch(size_t bytes) { return g_scratch.get(bytes); }
int64_t pick_chunk(int64_t nblocks, int nthreads) { return ::pick_chunk(nblocks, nthreads); }
}  // namespace lk

extern "C" {

// Packed size in bytes of an N x K uniform LUT weight (K multiple of g, g multiple of 32).
int64_t lk_lut_packed_bytes(int64_t N, int64_t K, int64_t g, int64_t bits) {
    return (N + 15) / 16 * lut_block_bytes(K, g, bits);
}

// Build the int8 tables for M activation rows (exposed for tests and the torch cross-check).
void lk_lut_tables(const float *x, int64_t M, int64_t K, int64_t g, int8_t *tab, float *lscale, float *sumx,
                   int path) {
    for (int64_t m = 0; m < M; m++) {
        if (path == 2)
            lut_tables_avx512(x + m * K, K, g, tab + m * (K / 32 * 128), lscale + m * (K / g), sumx + m * (K / g));
        else
            lut_tables_scalar(x + m * K, K, g, tab + m * (K / 32 * 128), lscale + m * (K / g), sumx + m * (K / g));
    }
}

// y[M][N] = x[M][K] @ W^T. tables: 0 = int8 (fast, error bound in the docs), 1 = float32 (exact up to fp32
// rounding, slower).
int lk_lut_gemm(const uint8_t *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int64_t g,
                int64_t bits, int path, int nthreads, int tables) {
    if (K % g || g % 32 || bits < 1 || bits > 4) return -1;
    int64_t nG = K / g, tsz = K / 32 * 128;
    if (tables == 1) {
        size_t fb = ((size_t)M * (K / 4) * 16 + 16) * sizeof(float);
        pthread_mutex_lock(&g_call_mu);
        char *s = (char *)g_scratch.get(fb + sizeof(float) * M * nG + 128);
        float *tab = (float *)s, *sx = (float *)(s + fb);
        for (int64_t m = 0; m < M; m++) lut_ftables(x + m * K, K, tab + m * (K / 4) * 16, sx + m * nG, g);
        LutFArgs a{w, tab, sx, y, N, K, M, g, bits};
        int64_t nrb = (N + 15) / 16;
        task_fn fn = path == 2 ? lutf_rows_avx512 : path == 1 ? lutf_rows_avx2 : lutf_rows_scalar;
        parallel_for(nthreads, nrb, pick_chunk(nrb, nthreads), fn, &a);
        pthread_mutex_unlock(&g_call_mu);
        return 0;
    }
    if (tables != 0) return -1;
    size_t bytes = (size_t)M * tsz + 2 * sizeof(float) * M * nG + 128;
    pthread_mutex_lock(&g_call_mu);  // one call at a time: the table scratch is shared
    char *s = (char *)g_scratch.get(bytes);
    int8_t *tab = (int8_t *)s;
    float *lsc = (float *)(s + ((M * tsz + 63) / 64) * 64);
    float *sx = lsc + M * nG;
    lk_lut_tables(x, M, K, g, tab, lsc, sx, path);
    LutArgs a{w, tab, lsc, sx, y, N, K, M, g, bits};
    int64_t nrb = (N + 15) / 16;
    task_fn fn = path == 2 ? lut_rows_avx512 : path == 1 ? lut_rows_avx2 : lut_rows_scalar;
    parallel_for(nthreads, nrb, pick_chunk(nrb, nthreads), fn, &a);
    pthread_mutex_unlock(&g_call_mu);
    return 0;
}

}  // extern "C"

// =========================================================================================================
// 2. Ternary. Activations: per-row absmax int8, a = rint(x * 127 / max|x|) (clamped to +-127).
// =========================================================================================================
namespace {
void quant_act_row(const float *x, int64_t K, int64_t Kp, int8_t *q, float *scale, int32_t *sum) {
    float mx = 0.f;
    for (int64_t k = 0; k < K; k++) mx = fmaxf(mx, fabsf(x[k]));
    float inv = mx > 0.f ? 127.0f / mx : 0.f;
    int32_t s = 0;
    for (int64_t k = 0; k < K; k++) {
        float r = nearbyintf(x[k] * inv);
        r = r > 127.f ? 127.f : (r < -127.f ? -127.f : r);
        q[k] = (int8_t)r;
        s += (int32_t)r;
    }
    for (int64_t k = K; k < Kp; k++) q[k] = 0;
    *scale = mx / 127.0f;
    *sum = s;
}

// AVX-512 versions: identical results (max is exact, vcvtps2dq rounds to nearest even like nearbyintf).
A512 float absmax_avx512(const float *x, int64_t n) {
    __m512 m = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    float mx = _mm512_reduce_max_ps(m);
    for (; k < n; k++) mx = fmaxf(mx, fabsf(x[k]));
    return mx;
}

A512 int32_t quant_int8_avx512(const float *x, int64_t n, float inv, int8_t *q) {
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i sum = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), vinv));
        r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
        sum = _mm512_add_epi32(sum, r);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(r));
    }
    int32_t s = _mm512_reduce_add_epi32(sum);
    for (; k < n; k++) {
        float r = nearbyintf(x[k] * inv);
        r = r > 127.f ? 127.f : (r < -127.f ? -127.f : r);
        q[k] = (int8_t)r;
        s += (int32_t)r;
    }
    return s;
}

void quant_act_row_path(const float *x, int64_t K, int64_t Kp, int8_t *q, float *scale, int32_t *sum, int path) {
    if (path != 2) {
        quant_act_row(x, K, Kp, q, scale, sum);
        return;
    }
    float mx = absmax_avx512(x, K);
    float inv = mx > 0.f ? 127.0f / mx : 0.f;
    *sum = quant_int8_avx512(x, K, inv, q);
    for (int64_t k = K; k < Kp; k++) q[k] = 0;
    *scale = mx / 127.0f;
}

// TL tables with 16-bit multiplies: e[i] = (i/9-1) a0 + ((i/3)%3-1) a1 + (i%3-1) a2 for 32 lanes.
A512 void tl_tables_avx512(const int8_t *q, int64_t Kt, int16_t *tab) {
    int16_t c0[32], c1[32], c2[32];
    for (int i = 0; i < 32; i++) {
        c0[i] = i < 27 ? (int16_t)(i / 9 - 1) : 0;
        c1[i] = i < 27 ? (int16_t)((i / 3) % 3 - 1) : 0;
        c2[i] = i < 27 ? (int16_t)(i % 3 - 1) : 0;
    }
    const __m512i w0 = _mm512_loadu_si512(c0), w1 = _mm512_loadu_si512(c1), w2 = _mm512_loadu_si512(c2);
    for (int64_t t = 0; t < Kt / 3; t++) {
        const int8_t *a = q + 3 * t;
        __m512i e = _mm512_mullo_epi16(w0, _mm512_set1_epi16(a[0]));
        e = _mm512_add_epi16(e, _mm512_mullo_epi16(w1, _mm512_set1_epi16(a[1])));
        e = _mm512_add_epi16(e, _mm512_mullo_epi16(w2, _mm512_set1_epi16(a[2])));
        _mm512_storeu_si512(tab + t * 32, e);
    }
}

// ---- I2_S: per row, blocks of 128 weights in 32 bytes; byte j: bits 7-6 w[j], 5-4 w[j+32], 3-2 w[j+64],
// 1-0 w[j+96]; code = w + 1. Row stride Kp/4 bytes (Kp = K rounded up to 128). Per-row fp32 scale.
struct I2Args {
    const uint8_t *w;
    const float *wscale;
    const int8_t *act;    // [M][Kp]
    const float *ascale;  // [M]
    const int32_t *asum;  // [M]
    float *y;
    int64_t N, Kp, M;
};

void i2s_rows_scalar(void *vctx, int64_t r0, int64_t r1) {
    I2Args *a = (I2Args *)vctx;
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * (a->Kp / 4);
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->Kp;
            int32_t dot = 0;
            for (int64_t b = 0; b < a->Kp / 128; b++)
                for (int j = 0; j < 32; j++) {
                    uint8_t v = p[b * 32 + j];
                    const int8_t *xb = x + b * 128 + j;
                    dot += (v >> 6) * xb[0] + ((v >> 4) & 3) * xb[32] + ((v >> 2) & 3) * xb[64] + (v & 3) * xb[96];
                }
            a->y[m * a->N + n] = (float)(dot - a->asum[m]) * (a->wscale[n] * a->ascale[m]);
        }
    }
}

// AVX-512 VNNI on 256-bit vectors, one row per pass: masked (unshifted) codes 64c/16c/4c/c against the four
// 32-byte activation slices, vpdpbusd into four accumulators, shifts applied once per row. (A 512-bit version
// that shared activation loads between two rows was ~1.9x faster hot but ~1.8x slower on DRAM-streamed
// weights on Zen 4: measured 500 vs 270 us CPU time, 4096x4096 cold, 1 thread.)
A512 void i2s_rows_avx512(void *vctx, int64_t r0, int64_t r1) {
    I2Args *a = (I2Args *)vctx;
    const __m256i M0 = _mm256_set1_epi8((char)0xC0), M1 = _mm256_set1_epi8(0x30), M2 = _mm256_set1_epi8(0x0C),
                  M3 = _mm256_set1_epi8(0x03);
    const int64_t nb = a->Kp / 128, rs = a->Kp / 4;
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * rs;
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->Kp;
            __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
            for (int64_t b = 0; b < nb; b++) {
                const int8_t *xb = x + b * 128;
                __m256i v = _mm256_loadu_si256((const __m256i *)(p + b * 32));
                c0 = _mm256_dpbusd_epi32(c0, _mm256_and_si256(v, M0), _mm256_loadu_si256((const __m256i *)xb));
                c1 = _mm256_dpbusd_epi32(c1, _mm256_and_si256(v, M1), _mm256_loadu_si256((const __m256i *)(xb + 32)));
                c2 = _mm256_dpbusd_epi32(c2, _mm256_and_si256(v, M2), _mm256_loadu_si256((const __m256i *)(xb + 64)));
                c3 = _mm256_dpbusd_epi32(c3, _mm256_and_si256(v, M3), _mm256_loadu_si256((const __m256i *)(xb + 96)));
            }
            __m256i t = _mm256_add_epi32(_mm256_add_epi32(_mm256_srai_epi32(c0, 6), _mm256_srai_epi32(c1, 4)),
                                         _mm256_add_epi32(_mm256_srai_epi32(c2, 2), c3));
            __m128i r = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4E));
            r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xB1));
            a->y[m * a->N + n] = (float)(_mm_cvtsi128_si32(r) - a->asum[m]) * (a->wscale[n] * a->ascale[m]);
        }
    }
}

A256 void i2s_rows_avx2(void *vctx, int64_t r0, int64_t r1) {
    I2Args *a = (I2Args *)vctx;
    const __m256i three = _mm256_set1_epi8(3), ones16 = _mm256_set1_epi16(1);
    const int64_t nb = a->Kp / 128;
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * (a->Kp / 4);
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->Kp;
            __m256i acc = _mm256_setzero_si256();
            for (int64_t b = 0; b < nb; b++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(p + b * 32));
                const int8_t *xb = x + b * 128;
                __m256i s = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 6), three),
                                                 _mm256_loadu_si256((const __m256i *)xb));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), three),
                                                             _mm256_loadu_si256((const __m256i *)(xb + 32))));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2), three),
                                                             _mm256_loadu_si256((const __m256i *)(xb + 64))));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(v, three),
                                                             _mm256_loadu_si256((const __m256i *)(xb + 96))));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones16));
            }
            __m128i r = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            r = _mm_hadd_epi32(r, r);
            r = _mm_hadd_epi32(r, r);
            int32_t dot = _mm_cvtsi128_si32(r);
            a->y[m * a->N + n] = (float)(dot - a->asum[m]) * (a->wscale[n] * a->ascale[m]);
        }
    }
}

// ---- TL (ternary LUT): K padded to Kt (multiple of 9). Rows in blocks of 32; per block, per chunk of 9
// columns: 32 uint16 words, word bits 0-4/5-9/10-14 = index of triple 0/1/2, index = 9(w0+1)+3(w1+1)+(w2+1).
// Tables: per triple 32 int16 entries (27 used) = exact sums of int8 activations.
struct TlArgs {
    const uint16_t *w;
    const float *wscale;
    const int16_t *tab;   // [M][Kt/3][32]
    const float *ascale;  // [M]
    float *y;
    int64_t N, Kt, M;
};

void tl_tables(const int8_t *q, int64_t Kt, int16_t *tab) {
    for (int64_t t = 0; t < Kt / 3; t++) {
        int16_t *e = tab + t * 32;
        const int8_t *a = q + 3 * t;
        for (int i = 0; i < 27; i++) e[i] = (int16_t)((i / 9 - 1) * a[0] + ((i / 3) % 3 - 1) * a[1] + (i % 3 - 1) * a[2]);
        for (int i = 27; i < 32; i++) e[i] = 0;
    }
}

void tl_rows_scalar(void *vctx, int64_t rb0, int64_t rb1) {
    TlArgs *a = (TlArgs *)vctx;
    const int64_t nc = a->Kt / 9;
    for (int64_t rb = rb0; rb < rb1; rb++) {
        for (int64_t m = 0; m < a->M; m++) {
            const int16_t *T = a->tab + m * (a->Kt / 3) * 32;
            const uint16_t *p = a->w + rb * nc * 32;
            int32_t acc[32] = {0};
            for (int64_t c = 0; c < nc; c++, p += 32)
                for (int r = 0; r < 32; r++) {
                    uint16_t v = p[r];
                    acc[r] += T[(3 * c) * 32 + (v & 31)] + T[(3 * c + 1) * 32 + ((v >> 5) & 31)] +
                              T[(3 * c + 2) * 32 + ((v >> 10) & 31)];
                }
            for (int r = 0; r < 32 && rb * 32 + r < a->N; r++) {
                int64_t n = rb * 32 + r;
                a->y[m * a->N + n] = (float)acc[r] * (a->wscale[n] * a->ascale[m]);
            }
        }
    }
}

// AVX-512: vpermw looks up 32 rows at once. Eight row blocks per pass share each triple's three table loads
// (the tables, 64 bytes per triple, come from L2); measured cold 4096x4096, 1 thread: 430 -> 300 us CPU time.
const int TL_RB = 8;
A512 void tl_rows_avx512(void *vctx, int64_t rb0, int64_t rb1) {
    TlArgs *a = (TlArgs *)vctx;
    const int64_t nc = a->Kt / 9;
    for (int64_t rb = rb0; rb < rb1; rb += TL_RB) {
        const int nr = rb + TL_RB <= rb1 ? TL_RB : (int)(rb1 - rb);
        for (int64_t m = 0; m < a->M; m++) {
            const int16_t *T = a->tab + m * (a->Kt / 3) * 32;
            const uint16_t *p[TL_RB];
            for (int r = 0; r < TL_RB; r++) p[r] = a->w + (rb + (r < nr ? r : 0)) * nc * 32;
            __m512i lo[TL_RB], hi[TL_RB];
            for (int r = 0; r < TL_RB; r++) lo[r] = hi[r] = _mm512_setzero_si512();
            int64_t c = 0;
            while (c < nc) {
                // int16 partial sums: |entry| <= 381, 3 entries per chunk, 16 chunks -> < 2^15.
                int64_t cend = c + 16 < nc ? c + 16 : nc;
                __m512i s16[TL_RB];
                for (int r = 0; r < TL_RB; r++) s16[r] = _mm512_setzero_si512();
                for (; c < cend; c++) {
                    const int16_t *t = T + 3 * c * 32;
                    __m512i t0 = _mm512_loadu_si512(t), t1 = _mm512_loadu_si512(t + 32), t2 = _mm512_loadu_si512(t + 64);
                    for (int r = 0; r < TL_RB; r++) {
                        __m512i v = _mm512_loadu_si512(p[r] + c * 32);
                        s16[r] = _mm512_add_epi16(s16[r], _mm512_permutexvar_epi16(v, t0));
                        s16[r] = _mm512_add_epi16(s16[r], _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 5), t1));
                        s16[r] = _mm512_add_epi16(s16[r], _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 10), t2));
                    }
                }
                for (int r = 0; r < TL_RB; r++) {
                    lo[r] = _mm512_add_epi32(lo[r], _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s16[r])));
                    hi[r] = _mm512_add_epi32(hi[r], _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s16[r], 1)));
                }
            }
            for (int r = 0; r < nr; r++) {
                int32_t acc[32];
                _mm512_storeu_si512(acc, lo[r]);
                _mm512_storeu_si512(acc + 16, hi[r]);
                for (int q = 0; q < 32 && (rb + r) * 32 + q < a->N; q++) {
                    int64_t n = (rb + r) * 32 + q;
                    a->y[m * a->N + n] = (float)acc[q] * (a->wscale[n] * a->ascale[m]);
                }
            }
        }
    }
}

// AVX2 has no 16-bit permute over 32 entries, so it uses the table's mirror symmetry (TL2's sign trick):
// with c = idx - 13, value(idx) = sign(c) * V[|c|], V[m] = value(13 + m), m in 0..13. V is stored as two
// 16-byte pshufb tables (int16 entries 0-7 and 8-15, little-endian byte pairs); 64 bytes per triple.
void tl_tables_avx2(const int8_t *q, int64_t Kt, int16_t *tab) {
    for (int64_t t = 0; t < Kt / 3; t++) {
        int16_t *e = tab + t * 32;
        const int8_t *a = q + 3 * t;
        for (int m = 0; m < 16; m++) {
            int i = 13 + m;
            e[m] = m < 14 ? (int16_t)((i / 9 - 1) * a[0] + ((i / 3) % 3 - 1) * a[1] + (i % 3 - 1) * a[2]) : 0;
        }
        for (int m = 16; m < 32; m++) e[m] = 0;
    }
}

A256 void tl_rows_avx2(void *vctx, int64_t rb0, int64_t rb1) {
    TlArgs *a = (TlArgs *)vctx;
    const int64_t nc = a->Kt / 9;
    const __m256i five = _mm256_set1_epi16(31), thirteen = _mm256_set1_epi16(13), seven = _mm256_set1_epi16(7);
    const __m256i pair = _mm256_set1_epi16(0x0202), hibyte = _mm256_set1_epi16(0x0100);
    for (int64_t rb = rb0; rb < rb1; rb++) {
        for (int64_t m = 0; m < a->M; m++) {
            const int16_t *T = a->tab + m * (a->Kt / 3) * 32;
            int32_t acc[32];
            for (int half = 0; half < 2; half++) {
                const uint16_t *p = a->w + rb * nc * 32 + half * 16;
                __m256i lo = _mm256_setzero_si256(), hi = lo;
                int64_t c = 0;
                while (c < nc) {
                    int64_t cend = c + 16 < nc ? c + 16 : nc;  // int16 bound as in the AVX-512 loop
                    __m256i s16 = _mm256_setzero_si256();
                    for (; c < cend; c++, p += 32) {
                        __m256i v = _mm256_loadu_si256((const __m256i *)p);
                        for (int j = 0; j < 3; j++) {
                            const int8_t *t = (const int8_t *)(T + (3 * c + j) * 32);
                            __m256i idx = _mm256_and_si256(_mm256_srli_epi16(v, 5 * j), five);
                            __m256i d = _mm256_sub_epi16(idx, thirteen);
                            __m256i sg = _mm256_srai_epi16(d, 15), mg = _mm256_abs_epi16(d);
                            __m256i bi = _mm256_add_epi16(_mm256_mullo_epi16(_mm256_and_si256(mg, seven), pair), hibyte);
                            __m256i ra = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t)), bi);
                            __m256i rh = _mm256_shuffle_epi8(
                                _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t + 16))), bi);
                            __m256i r = _mm256_blendv_epi8(ra, rh, _mm256_cmpgt_epi16(mg, seven));
                            s16 = _mm256_add_epi16(s16, _mm256_sub_epi16(_mm256_xor_si256(r, sg), sg));
                        }
                    }
                    lo = _mm256_add_epi32(lo, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s16)));
                    hi = _mm256_add_epi32(hi, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s16, 1)));
                }
                _mm256_storeu_si256((__m256i *)(acc + half * 16), lo);
                _mm256_storeu_si256((__m256i *)(acc + half * 16 + 8), hi);
            }
            for (int r = 0; r < 32 && rb * 32 + r < a->N; r++) {
                int64_t n = rb * 32 + r;
                a->y[m * a->N + n] = (float)acc[r] * (a->wscale[n] * a->ascale[m]);
            }
        }
    }
}

// =========================================================================================================
// 3. AFPQ: 4-bit codes (bit 3 = sign, bits 0-2 = magnitude index into the format's table, in half units of
// the scale for e2m1). Per row, per group of g: g/2 bytes, byte j of each 32-byte piece: lo nibble =
// code 64p+j, hi nibble = code 64p+32+j. After each row's codes: fp16 s+ and s- per group ([N][nG][2]).
// Group value: y += ascale_g * (s+ * P - s- * Nn) * unit, P/Nn = sums of mag*a over positive/negative codes.
// =========================================================================================================
struct FpArgs {
    const uint8_t *w;
    const uint16_t *sc;   // [N][nG][2]
    const int8_t *act;    // [M][K]
    const int8_t *actp;   // [M][K]; per 128 columns: [0,32) [64,96) [32,64) [96,128) (AVX-512, g % 128 == 0)
    const float *ascale;  // [M][nG]
    const uint8_t *mag;   // 16 entries (magnitudes in integer units)
    float unit;           // value of one magnitude unit (0.5 for e2m1, 1 for fp3)
    float *y;
    int64_t N, K, M, g;
};

void fp_rows_scalar(void *vctx, int64_t r0, int64_t r1) {
    FpArgs *a = (FpArgs *)vctx;
    const int64_t nG = a->K / a->g;
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * (a->K / 2);
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->K;
            float y = 0.f;
            for (int64_t G = 0; G < nG; G++) {
                int32_t tot = 0, neg = 0;
                for (int64_t k = G * a->g; k < (G + 1) * a->g; k += 64) {
                    const uint8_t *q = p + k / 2;
                    for (int j = 0; j < 32; j++) {
                        uint8_t lo = q[j] & 15, hi = q[j] >> 4;
                        int32_t vl = a->mag[lo] * x[k + j], vh = a->mag[hi] * x[k + 32 + j];
                        tot += vl + vh;
                        if (lo & 8) neg += vl;
                        if (hi & 8) neg += vh;
                    }
                }
                float sp = h2f(a->sc[(n * nG + G) * 2]), sn = h2f(a->sc[(n * nG + G) * 2 + 1]);
                float d = fmaf((float)(tot - neg), sp, -(float)neg * sn);
                y = fmaf(d, a->ascale[m * nG + G] * a->unit, y);
            }
            a->y[m * a->N + n] = y;
        }
    }
}

A512 void fp_rows_avx512(void *vctx, int64_t r0, int64_t r1) {
    FpArgs *a = (FpArgs *)vctx;
    const int64_t nG = a->K / a->g;
    const __m512i low4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
    const __m512i tab = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a->mag));
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * (a->K / 2);
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->K, *xq = a->actp + m * a->K;
            __m512 yv = _mm512_setzero_ps();
            for (int64_t G = 0; G < nG; G++) {
                __m512i tot = _mm512_setzero_si512(), neg = tot;
                int64_t k = G * a->g;
                for (; k + 128 <= (G + 1) * a->g; k += 128) {
                    // 64 bytes = two 32-byte pieces: lo nibbles are codes [k, k+32) and [k+64, k+96).
                    __m512i v = _mm512_loadu_si512(p + k / 2);
                    _mm_prefetch((const char *)(p + a->K + k / 2), _MM_HINT_T0);  // two rows ahead
                    __m512i il = _mm512_and_si512(v, low4), ih = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                    __m512i xl = _mm512_loadu_si512(xq + k), xh = _mm512_loadu_si512(xq + k + 64);
                    __m512i ml = _mm512_shuffle_epi8(tab, il), mh = _mm512_shuffle_epi8(tab, ih);
                    tot = _mm512_dpbusd_epi32(tot, ml, xl);
                    tot = _mm512_dpbusd_epi32(tot, mh, xh);
                    neg = _mm512_dpbusd_epi32(neg, _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(il, eight), ml), xl);
                    neg = _mm512_dpbusd_epi32(neg, _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(ih, eight), mh), xh);
                }
                for (; k < (G + 1) * a->g; k += 64) {  // g = 64 or a leftover 64
                    __m256i v = _mm256_loadu_si256((const __m256i *)(p + k / 2));
                    __m512i vv = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
                    __m512i i2 = _mm512_and_si512(vv, low4);
                    __m512i xx = _mm512_loadu_si512(x + k);
                    __m512i mm = _mm512_shuffle_epi8(tab, i2);
                    tot = _mm512_dpbusd_epi32(tot, mm, xx);
                    neg = _mm512_dpbusd_epi32(neg, _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(i2, eight), mm), xx);
                }
                float sp = _cvtsh_ss(a->sc[(n * nG + G) * 2]), sn = _cvtsh_ss(a->sc[(n * nG + G) * 2 + 1]);
                float f = a->ascale[m * nG + G] * a->unit;
                // y_lanes += (tot - neg) * s+ * f - neg * s- * f   (one horizontal sum per row, at the end)
                yv = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(tot, neg)), _mm512_set1_ps(sp * f), yv);
                yv = _mm512_fmadd_ps(_mm512_cvtepi32_ps(neg), _mm512_set1_ps(-(sn * f)), yv);
            }
            float y = _mm512_reduce_add_ps(yv);
            a->y[m * a->N + n] = y;
        }
    }
}

A256 void fp_rows_avx2(void *vctx, int64_t r0, int64_t r1) {
    FpArgs *a = (FpArgs *)vctx;
    const int64_t nG = a->K / a->g;
    const __m256i low4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8), ones16 = _mm256_set1_epi16(1);
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)a->mag));
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * (a->K / 2);
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->K;
            __m256 yv = _mm256_setzero_ps();
            for (int64_t G = 0; G < nG; G++) {
                __m256i tot = _mm256_setzero_si256(), neg = tot;
                for (int64_t k = G * a->g; k < (G + 1) * a->g; k += 64) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(p + k / 2));
                    __m256i il = _mm256_and_si256(v, low4), ih = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                    __m256i xl = _mm256_loadu_si256((const __m256i *)(x + k));
                    __m256i xh = _mm256_loadu_si256((const __m256i *)(x + k + 32));
                    __m256i ml = _mm256_shuffle_epi8(tab, il), mh = _mm256_shuffle_epi8(tab, ih);
                    __m256i nl = _mm256_and_si256(ml, _mm256_cmpeq_epi8(_mm256_and_si256(il, eight), eight));
                    __m256i nh = _mm256_and_si256(mh, _mm256_cmpeq_epi8(_mm256_and_si256(ih, eight), eight));
                    __m256i st = _mm256_add_epi16(_mm256_maddubs_epi16(ml, xl), _mm256_maddubs_epi16(mh, xh));
                    __m256i sn = _mm256_add_epi16(_mm256_maddubs_epi16(nl, xl), _mm256_maddubs_epi16(nh, xh));
                    tot = _mm256_add_epi32(tot, _mm256_madd_epi16(st, ones16));
                    neg = _mm256_add_epi32(neg, _mm256_madd_epi16(sn, ones16));
                }
                float sp = _cvtsh_ss(a->sc[(n * nG + G) * 2]), sn = _cvtsh_ss(a->sc[(n * nG + G) * 2 + 1]);
                float f = a->ascale[m * nG + G] * a->unit;
                yv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(tot, neg)), _mm256_set1_ps(sp * f), yv);
                yv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(neg), _mm256_set1_ps(-(sn * f)), yv);
            }
            float yl[8];
            _mm256_storeu_ps(yl, yv);
            float y = ((yl[0] + yl[1]) + (yl[2] + yl[3])) + ((yl[4] + yl[5]) + (yl[6] + yl[7]));
            a->y[m * a->N + n] = y;
        }
    }
}

// ---- fp3 (sign + 2-bit magnitude index) packed at 3 bits: per row, per 64 columns, 3 bit planes of 8 bytes
// (plane 0/1: magnitude index bits, plane 2: sign; bit j of a plane = column 64b + j). Row stride 3K/8 bytes.
void fp3_rows_scalar(void *vctx, int64_t r0, int64_t r1) {
    FpArgs *a = (FpArgs *)vctx;
    const int64_t nG = a->K / a->g, rs = a->K / 64 * 24;
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * rs;
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->K;
            float y = 0.f;
            for (int64_t G = 0; G < nG; G++) {
                int32_t tot = 0, neg = 0;
                for (int64_t k = G * a->g; k < (G + 1) * a->g; k += 64) {
                    uint64_t b0, b1, b2;
                    memcpy(&b0, p + k / 64 * 24, 8);
                    memcpy(&b1, p + k / 64 * 24 + 8, 8);
                    memcpy(&b2, p + k / 64 * 24 + 16, 8);
                    for (int j = 0; j < 64; j++) {
                        int32_t v = a->mag[((b0 >> j) & 1) | (((b1 >> j) & 1) << 1)] * x[k + j];
                        tot += v;
                        if ((b2 >> j) & 1) neg += v;
                    }
                }
                float sp = h2f(a->sc[(n * nG + G) * 2]), sn = h2f(a->sc[(n * nG + G) * 2 + 1]);
                float d = fmaf((float)(tot - neg), sp, -(float)neg * sn);
                y = fmaf(d, a->ascale[m * nG + G] * a->unit, y);
            }
            a->y[m * a->N + n] = y;
        }
    }
}

// AVX-512: the bit planes are loaded straight into mask registers; code = plane0 + 2 plane1, pshufb gives the
// magnitude, the sign mask selects the negative part.
A512 void fp3_rows_avx512(void *vctx, int64_t r0, int64_t r1) {
    FpArgs *a = (FpArgs *)vctx;
    const int64_t nG = a->K / a->g, rs = a->K / 64 * 24;
    const __m512i one = _mm512_set1_epi8(1), two = _mm512_set1_epi8(2);
    const __m512i tab = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a->mag));
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * rs;
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->K;
            __m512 yv = _mm512_setzero_ps();
            for (int64_t G = 0; G < nG; G++) {
                __m512i tot = _mm512_setzero_si512(), neg = tot, tot2 = tot, neg2 = tot;
                int64_t k = G * a->g;
                const int64_t kend = (G + 1) * a->g;
                for (; k < kend; k += 128) {  // two blocks per step, separate accumulators (g = 64: one)
                    const uint8_t *q = p + k / 64 * 24;
                    _mm_prefetch((const char *)(q + 2 * rs), _MM_HINT_T0);  // two rows ahead
                    __m512i c = _mm512_maskz_mov_epi8(_load_mask64((__mmask64 *)q), one);
                    c = _mm512_mask_add_epi8(c, _load_mask64((__mmask64 *)(q + 8)), c, two);
                    __m512i mg = _mm512_shuffle_epi8(tab, c), xx = _mm512_loadu_si512(x + k);
                    tot = _mm512_dpbusd_epi32(tot, mg, xx);
                    neg = _mm512_dpbusd_epi32(neg, _mm512_maskz_mov_epi8(_load_mask64((__mmask64 *)(q + 16)), mg), xx);
                    if (k + 64 < kend) {
                        q += 24;
                        __m512i c2 = _mm512_maskz_mov_epi8(_load_mask64((__mmask64 *)q), one);
                        c2 = _mm512_mask_add_epi8(c2, _load_mask64((__mmask64 *)(q + 8)), c2, two);
                        __m512i mg2 = _mm512_shuffle_epi8(tab, c2), xx2 = _mm512_loadu_si512(x + k + 64);
                        tot2 = _mm512_dpbusd_epi32(tot2, mg2, xx2);
                        neg2 = _mm512_dpbusd_epi32(
                            neg2, _mm512_maskz_mov_epi8(_load_mask64((__mmask64 *)(q + 16)), mg2), xx2);
                    }
                }
                tot = _mm512_add_epi32(tot, tot2);
                neg = _mm512_add_epi32(neg, neg2);
                float sp = _cvtsh_ss(a->sc[(n * nG + G) * 2]), sn = _cvtsh_ss(a->sc[(n * nG + G) * 2 + 1]);
                float f = a->ascale[m * nG + G] * a->unit;
                yv = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(tot, neg)), _mm512_set1_ps(sp * f), yv);
                yv = _mm512_fmadd_ps(_mm512_cvtepi32_ps(neg), _mm512_set1_ps(-(sn * f)), yv);
            }
            a->y[m * a->N + n] = _mm512_reduce_add_ps(yv);
        }
    }
}

// AVX2: 32 bits of a plane -> 32 bytes of 0x00 / 0xFF (broadcast, byte shuffle, bit test).
A256 inline __m256i fp3_bits(const uint8_t *q) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                          3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    uint32_t u;
    memcpy(&u, q, 4);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)u), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

A256 void fp3_rows_avx2(void *vctx, int64_t r0, int64_t r1) {
    FpArgs *a = (FpArgs *)vctx;
    const int64_t nG = a->K / a->g, rs = a->K / 64 * 24;
    const __m256i one = _mm256_set1_epi8(1), two = _mm256_set1_epi8(2), ones16 = _mm256_set1_epi16(1);
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)a->mag));
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *p = a->w + n * rs;
        for (int64_t m = 0; m < a->M; m++) {
            const int8_t *x = a->act + m * a->K;
            __m256 yv = _mm256_setzero_ps();
            for (int64_t G = 0; G < nG; G++) {
                __m256i tot = _mm256_setzero_si256(), neg = tot;
                for (int64_t k = G * a->g; k < (G + 1) * a->g; k += 64) {
                    const uint8_t *q = p + k / 64 * 24;
                    for (int h = 0; h < 2; h++) {
                        __m256i c = _mm256_or_si256(_mm256_and_si256(fp3_bits(q + 4 * h), one),
                                                    _mm256_and_si256(fp3_bits(q + 8 + 4 * h), two));
                        __m256i mg = _mm256_shuffle_epi8(tab, c);
                        __m256i ng = _mm256_and_si256(mg, fp3_bits(q + 16 + 4 * h));
                        __m256i xx = _mm256_loadu_si256((const __m256i *)(x + k + 32 * h));
                        tot = _mm256_add_epi32(tot, _mm256_madd_epi16(_mm256_maddubs_epi16(mg, xx), ones16));
                        neg = _mm256_add_epi32(neg, _mm256_madd_epi16(_mm256_maddubs_epi16(ng, xx), ones16));
                    }
                }
                float sp = _cvtsh_ss(a->sc[(n * nG + G) * 2]), sn = _cvtsh_ss(a->sc[(n * nG + G) * 2 + 1]);
                float f = a->ascale[m * nG + G] * a->unit;
                yv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(tot, neg)), _mm256_set1_ps(sp * f), yv);
                yv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(neg), _mm256_set1_ps(-(sn * f)), yv);
            }
            float yl[8];
            _mm256_storeu_ps(yl, yv);
            a->y[m * a->N + n] = ((yl[0] + yl[1]) + (yl[2] + yl[3])) + ((yl[4] + yl[5]) + (yl[6] + yl[7]));
        }
    }
}

void quant_act_groups(const float *x, int64_t K, int64_t g, int8_t *q, float *scale) {
    for (int64_t G = 0; G < K / g; G++) {
        float mx = 0.f;
        for (int64_t k = G * g; k < (G + 1) * g; k++) mx = fmaxf(mx, fabsf(x[k]));
        float inv = mx > 0.f ? 127.0f / mx : 0.f;
        for (int64_t k = G * g; k < (G + 1) * g; k++) {
            float r = nearbyintf(x[k] * inv);
            q[k] = (int8_t)(r > 127.f ? 127.f : (r < -127.f ? -127.f : r));
        }
        scale[G] = mx / 127.0f;
    }
}
}  // namespace

extern "C" {

int lk_i2s_gemm(const uint8_t *w, const float *wscale, const float *x, float *y, int64_t M, int64_t N, int64_t K,
                int path, int nthreads) {
    int64_t Kp = (K + 127) / 128 * 128;
    pthread_mutex_lock(&g_call_mu);
    size_t ab = ((size_t)M * Kp + 63) / 64 * 64;
    char *s = (char *)g_scratch.get(ab + 8 * M + 64);
    int8_t *act = (int8_t *)s;
    float *asc = (float *)(s + ab);
    int32_t *asum = (int32_t *)(asc + M);
    for (int64_t m = 0; m < M; m++) quant_act_row_path(x + m * K, K, Kp, act + m * Kp, asc + m, asum + m, path);
    I2Args a{w, wscale, act, asc, asum, y, N, Kp, M};
    task_fn fn = path == 2 ? i2s_rows_avx512 : path == 1 ? i2s_rows_avx2 : i2s_rows_scalar;
    parallel_for(nthreads, N, pick_chunk(N, nthreads), fn, &a);
    pthread_mutex_unlock(&g_call_mu);
    return 0;
}

int lk_tl_gemm(const uint16_t *w, const float *wscale, const float *x, float *y, int64_t M, int64_t N, int64_t K,
               int path, int nthreads) {
    int64_t Kt = (K + 8) / 9 * 9;
    size_t tb = (size_t)M * (Kt / 3) * 32 * 2;
    pthread_mutex_lock(&g_call_mu);
    char *s = (char *)g_scratch.get(tb + (size_t)Kt + 8 * M + 128);
    int16_t *tab = (int16_t *)s;
    int8_t *q = (int8_t *)(s + tb);
    float *asc = (float *)(s + tb + (Kt + 63) / 64 * 64);
    for (int64_t m = 0; m < M; m++) {
        int32_t sum;
        quant_act_row_path(x + m * K, K, Kt, q, asc + m, &sum, path);
        if (path == 2)
            tl_tables_avx512(q, Kt, tab + m * (Kt / 3) * 32);
        else if (path == 1)
            tl_tables_avx2(q, Kt, tab + m * (Kt / 3) * 32);
        else
            tl_tables(q, Kt, tab + m * (Kt / 3) * 32);
    }
    TlArgs a{w, wscale, tab, asc, y, N, Kt, M};
    int64_t nrb = (N + 31) / 32;
    task_fn fn = path == 2 ? tl_rows_avx512 : path == 1 ? tl_rows_avx2 : tl_rows_scalar;
    int64_t chunk = pick_chunk(nrb, nthreads);
    if (path == 2) chunk = (chunk + TL_RB - 1) / TL_RB * TL_RB;  // whole passes of TL_RB row blocks
    parallel_for(nthreads, nrb, chunk, fn, &a);
    pthread_mutex_unlock(&g_call_mu);
    return 0;
}

// bits 4: nibble codes (e2m1 or fp3 in 4-bit containers); bits 3: fp3 bit planes.
int lk_fp_gemm(const uint8_t *w, const uint16_t *sc, const uint8_t *mag16, float unit, const float *x, float *y,
               int64_t M, int64_t N, int64_t K, int64_t g, int path, int nthreads, int bits) {
    if (bits != 3 && bits != 4) return -1;
    if (K % g || g % 64) return -1;
    int64_t nG = K / g;
    pthread_mutex_lock(&g_call_mu);
    size_t ab = ((size_t)M * K + 63) / 64 * 64;
    char *s = (char *)g_scratch.get(2 * ab + 4 * M * nG + 128);
    int8_t *act = (int8_t *)s, *actp = (int8_t *)(s + ab);
    float *asc = (float *)(s + 2 * ab);
    for (int64_t m = 0; m < M; m++) {
        if (path == 2) {
            for (int64_t G = 0; G < nG; G++) {
                float mx = absmax_avx512(x + m * K + G * g, g);
                quant_int8_avx512(x + m * K + G * g, g, mx > 0.f ? 127.0f / mx : 0.f, act + m * K + G * g);
                asc[m * nG + G] = mx / 127.0f;
            }
        } else {
            quant_act_groups(x + m * K, K, g, act + m * K, asc + m * nG);
        }
        const int8_t *src = act + m * K;
        int8_t *dst = actp + m * K;
        if (g % 128 == 0) {
            static const int order[4] = {0, 2, 1, 3};
            for (int64_t k = 0; k < K; k += 128)
                for (int q = 0; q < 4; q++) memcpy(dst + k + 32 * q, src + k + 32 * order[q], 32);
        } else {
            memcpy(dst, src, K);
        }
    }
    FpArgs a{w, sc, act, actp, asc, mag16, unit, y, N, K, M, g};
    task_fn fn = path == 2 ? fp_rows_avx512 : path == 1 ? fp_rows_avx2 : fp_rows_scalar;
    if (bits == 3) fn = path == 2 ? fp3_rows_avx512 : path == 1 ? fp3_rows_avx2 : fp3_rows_scalar;
    parallel_for(nthreads, N, pick_chunk(N, nthreads), fn, &a);
    pthread_mutex_unlock(&g_call_mu);
    return 0;
}

// Read-bandwidth probe for the benchmark: sums `bytes` of memory with `nthreads` threads, returns a checksum.
struct BwArgs {
    const uint8_t *p;
    int64_t per;
    std::atomic<int64_t> sum;
};
static A256 void bw_task(void *vctx, int64_t b, int64_t e) {
    BwArgs *a = (BwArgs *)vctx;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = b; i < e; i++) {
        const __m256i *q = (const __m256i *)(a->p + i * a->per);
        for (int64_t j = 0; j < a->per / 32; j += 4) {
            s0 = _mm256_add_epi64(s0, _mm256_load_si256(q + j));
            s1 = _mm256_add_epi64(s1, _mm256_load_si256(q + j + 1));
            s2 = _mm256_add_epi64(s2, _mm256_load_si256(q + j + 2));
            s3 = _mm256_add_epi64(s3, _mm256_load_si256(q + j + 3));
        }
    }
    s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    int64_t t[4];
    _mm256_storeu_si256((__m256i *)t, s0);
    a->sum.fetch_add(t[0] + t[1] + t[2] + t[3]);
}

int64_t lk_read_bw(const uint8_t *p, int64_t bytes, int nthreads) {
    BwArgs a;
    a.p = p;
    a.per = 1 << 20;
    a.sum = 0;
    parallel_for(nthreads, bytes / a.per, 1, bw_task, &a);
    return a.sum.load();
}

}  // extern "C"
