/* Squeeze-and-Excitation, forward and backward, float32, channels-last rows, for mbconv.layers.native_se.
 *
 * Why: in a training step the SE is about twenty ATen calls (the mean, two small matrix products and their
 * gradients, two activations, the gate multiply, the gate's gradient as a multiply and a sum), most on (N, C)
 * values where each call's fixed cost is the whole cost. Here the forward is one call and the backward one: per
 * sample, one pass over the map for the mean, the MLP on that sample's C values, one pass for the gated output; in
 * backward one pass for the gate's gradient sum(gy * x), the MLP's gradients, one pass for gx = gy * g + d(mean).
 *
 * Layout: x is N samples of `spatial` rows of C contiguous channels (channels-last 2-D / 3-D maps, the (N, L, C)
 * 1-D layout of layers/channels_last_1d.py, or one-pixel maps). The reduce conv's weight is [R][C], the expand
 * conv's [C][R]. Threads: OpenMP over samples, the count passed in (torch's). Map sums are float over runs of
 * FLUSH rows added into double, as in bn_act.c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "native_exp.h" /* exp_approx */

enum { SE_SILU = 0, SE_RELU = 1, SE_SIGMOID = 2, SE_HARDSIGMOID = 3 };
#define SE_FLUSH 64
/* per-thread scratch stride in floats: whole 64-byte lines plus one line of gap (no false sharing) */
#define SE_STRIDE(n) ((((size_t)(n)) + 15) / 16 * 16 + 16)

/* the activation (reduce side) or gate (expand side), as PyTorch computes it */
static inline __attribute__((always_inline)) float se_fwd(const int k, float v) {
    switch (k) {
    case SE_SILU: return v / (1.0f + exp_approx(-v));
    case SE_RELU: return v > 0.0f ? v : 0.0f;
    case SE_SIGMOID: return sigmoid_approx(v);
    default: { float t = v + 3.0f; t = t < 0.0f ? 0.0f : (t > 6.0f ? 6.0f : t); return t / 6.0f; }
    }
}

/* g * f'(v) from the input v and output o, with PyTorch's conventions (silu_backward, threshold_backward on the
 * output, sigmoid_backward, hardsigmoid_backward) */
static inline __attribute__((always_inline)) float se_bwd(const int k, float v, float o, float g) {
    switch (k) {
    case SE_SILU: { float s = sigmoid_approx(v); return g * s * (1.0f + v * (1.0f - s)); }
    case SE_RELU: return o <= 0.0f ? 0.0f : g;
    case SE_SIGMOID: return g * (1.0f - o) * o;
    default: return (v > -3.0f && v < 3.0f) ? g * (1.0f / 6.0f) : 0.0f;
    }
}

/* f(v) over n values, the activation chosen outside the loop (a switch inside it keeps the compiler from
 * vectorising the loop, and the gate's exp over N * C values was most of a one-pixel SE's time) */
static void se_fwd_n(const int k, const float *v, float *o, long n) {
#define SE_FWD_LOOP(K) { _Pragma("omp simd") for (long i = 0; i < n; i++) o[i] = se_fwd(K, v[i]); }
    switch (k) {
    case SE_SILU: SE_FWD_LOOP(SE_SILU) break;
    case SE_RELU: SE_FWD_LOOP(SE_RELU) break;
    case SE_SIGMOID: SE_FWD_LOOP(SE_SIGMOID) break;
    default: SE_FWD_LOOP(SE_HARDSIGMOID)
    }
#undef SE_FWD_LOOP
}

/* g[i] = g[i] * f'(v[i]) from inputs v and outputs o, over n values (as se_fwd_n, the switch outside the loop) */
static void se_bwd_n(const int k, const float *v, const float *o, float *g, long n) {
#define SE_BWD_LOOP(K) { _Pragma("omp simd") for (long i = 0; i < n; i++) g[i] = se_bwd(K, v[i], o[i], g[i]); }
    switch (k) {
    case SE_SILU: SE_BWD_LOOP(SE_SILU) break;
    case SE_RELU: SE_BWD_LOOP(SE_RELU) break;
    case SE_SIGMOID: SE_BWD_LOOP(SE_SIGMOID) break;
    default: SE_BWD_LOOP(SE_HARDSIGMOID)
    }
#undef SE_BWD_LOOP
}

/* out[c] = sum over `rows` rows of a[r][c] (* b[r][c] when b is given), float runs added into double */
static void se_row_sums(const float *a, const float *b, long rows, long channels, float *run, double *acc,
                        float *out) {
    for (long c = 0; c < channels; c++) acc[c] = 0.0;
    for (long r0 = 0; r0 < rows; r0 += SE_FLUSH) {
        long r1 = r0 + SE_FLUSH < rows ? r0 + SE_FLUSH : rows;
        for (long c = 0; c < channels; c++) run[c] = 0.0f;
        for (long r = r0; r < r1; r++) {
            const float *ar = a + r * channels;
            if (b) {
                const float *br = b + r * channels;
                #pragma omp simd
                for (long c = 0; c < channels; c++) run[c] += ar[c] * br[c];
            } else {
                #pragma omp simd
                for (long c = 0; c < channels; c++) run[c] += ar[c];
            }
        }
        for (long c = 0; c < channels; c++) acc[c] += run[c];
    }
    for (long c = 0; c < channels; c++) out[c] = (float)acc[c];
}

/* out[r] = dot(v, m[r]) for the `rows` rows of m (length `len` each), four rows at a time: one running sum is a
 * chain of dependent multiply-adds (latency-bound); four independent ones keep the vector unit busy and read v once */
static void se_dots(const float *v, const float *m, long rows, long len, float *out) {
    long r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *m0 = m + r * len, *m1 = m0 + len, *m2 = m1 + len, *m3 = m2 + len;
        float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
        #pragma omp simd reduction(+:d0, d1, d2, d3)
        for (long c = 0; c < len; c++) {
            float x = v[c];
            d0 += x * m0[c]; d1 += x * m1[c]; d2 += x * m2[c]; d3 += x * m3[c];
        }
        out[r] = d0; out[r + 1] = d1; out[r + 2] = d2; out[r + 3] = d3;
    }
    for (; r < rows; r++) {
        const float *mr = m + r * len;
        float d = 0.0f;
        #pragma omp simd reduction(+:d)
        for (long c = 0; c < len; c++) d += v[c] * mr[c];
        out[r] = d;
    }
}

/* out[c] += sum_j coef[j * cs] * m[j * ms + c] over `count` rows j of m, four rows per pass over out (a pass per
 * row would load and store out once per row: the stores, not the multiply-adds, bounded that loop) */
static void se_axpys(const float *coef, long cs, const float *m, long ms, long count, float *out, long len) {
    long j = 0;
    for (; j + 4 <= count; j += 4) {
        const float a0 = coef[j * cs], a1 = coef[(j + 1) * cs], a2 = coef[(j + 2) * cs], a3 = coef[(j + 3) * cs];
        const float *m0 = m + j * ms, *m1 = m0 + ms, *m2 = m1 + ms, *m3 = m2 + ms;
        #pragma omp simd
        for (long c = 0; c < len; c++) out[c] += (a0 * m0[c] + a1 * m1[c]) + (a2 * m2[c] + a3 * m3[c]);
    }
    for (; j < count; j++) {
        const float a = coef[j * cs], *mj = m + j * ms;
        #pragma omp simd
        for (long c = 0; c < len; c++) out[c] += a * mj[c];
    }
}

/* Four vectors at once (samples, or gradient rows of the weight sums): the MLP's products are matrix-vector per
 * sample, bound by loading the weight rows (a 4-row dot reads five values per four multiply-adds); with four
 * vectors a weight row loaded once feeds four of them, so the multiply-adds, not the loads, bound the loop. */

/* out[i * os + r] = dot(v + i * vs, m + r * len) for the four vectors i and the `rows` rows r of m */
static void se_dots4(const float *v, long vs, const float *m, long rows, long len, float *out, long os) {
    const float *v0 = v, *v1 = v + vs, *v2 = v + 2 * vs, *v3 = v + 3 * vs;
    long r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *m0 = m + r * len, *m1 = m0 + len, *m2 = m1 + len, *m3 = m2 + len;
        float d00 = 0, d01 = 0, d02 = 0, d03 = 0, d10 = 0, d11 = 0, d12 = 0, d13 = 0;
        float d20 = 0, d21 = 0, d22 = 0, d23 = 0, d30 = 0, d31 = 0, d32 = 0, d33 = 0;
        #pragma omp simd reduction(+:d00, d01, d02, d03, d10, d11, d12, d13, d20, d21, d22, d23, d30, d31, d32, d33)
        for (long c = 0; c < len; c++) {
            float a0 = m0[c], a1 = m1[c], a2 = m2[c], a3 = m3[c];
            float x0 = v0[c], x1 = v1[c], x2 = v2[c], x3 = v3[c];
            d00 += x0 * a0; d01 += x0 * a1; d02 += x0 * a2; d03 += x0 * a3;
            d10 += x1 * a0; d11 += x1 * a1; d12 += x1 * a2; d13 += x1 * a3;
            d20 += x2 * a0; d21 += x2 * a1; d22 += x2 * a2; d23 += x2 * a3;
            d30 += x3 * a0; d31 += x3 * a1; d32 += x3 * a2; d33 += x3 * a3;
        }
        out[r] = d00; out[r + 1] = d01; out[r + 2] = d02; out[r + 3] = d03;
        out[os + r] = d10; out[os + r + 1] = d11; out[os + r + 2] = d12; out[os + r + 3] = d13;
        out[2 * os + r] = d20; out[2 * os + r + 1] = d21; out[2 * os + r + 2] = d22; out[2 * os + r + 3] = d23;
        out[3 * os + r] = d30; out[3 * os + r + 1] = d31; out[3 * os + r + 2] = d32; out[3 * os + r + 3] = d33;
    }
    for (; r < rows; r++)
        for (long i = 0; i < 4; i++) se_dots(v + i * vs, m + r * len, 1, len, out + i * os + r);
}

/* out_i[c] += sum_j coef[i * ci + j * cj] * m[j * ms + c] for the four outputs out_i = out + i * os over `count`
 * rows j of m, four rows per pass */
static void se_axpys4(const float *coef, long ci, long cj, const float *m, long ms, long count, float *out, long os,
                      long len) {
    float *o0 = out, *o1 = out + os, *o2 = out + 2 * os, *o3 = out + 3 * os;
    long j = 0;
    for (; j + 4 <= count; j += 4) {
        const float *k0 = coef + j * cj, *k1 = k0 + ci, *k2 = k1 + ci, *k3 = k2 + ci;
        const float a00 = k0[0], a01 = k0[cj], a02 = k0[2 * cj], a03 = k0[3 * cj];
        const float a10 = k1[0], a11 = k1[cj], a12 = k1[2 * cj], a13 = k1[3 * cj];
        const float a20 = k2[0], a21 = k2[cj], a22 = k2[2 * cj], a23 = k2[3 * cj];
        const float a30 = k3[0], a31 = k3[cj], a32 = k3[2 * cj], a33 = k3[3 * cj];
        const float *m0 = m + j * ms, *m1 = m0 + ms, *m2 = m1 + ms, *m3 = m2 + ms;
        #pragma omp simd
        for (long c = 0; c < len; c++) {
            float b0 = m0[c], b1 = m1[c], b2 = m2[c], b3 = m3[c];
            o0[c] += (a00 * b0 + a01 * b1) + (a02 * b2 + a03 * b3);
            o1[c] += (a10 * b0 + a11 * b1) + (a12 * b2 + a13 * b3);
            o2[c] += (a20 * b0 + a21 * b1) + (a22 * b2 + a23 * b3);
            o3[c] += (a30 * b0 + a31 * b1) + (a32 * b2 + a33 * b3);
        }
    }
    if (j < count)
        for (long i = 0; i < 4; i++) se_axpys(coef + i * ci + j * cj, cj, m + j * ms, ms, count - j, out + i * os, len);
}

static float *se_transpose(const float *w, long rows, long cols) { /* [rows][cols] -> [cols][rows] */
    float *t = malloc((size_t)rows * cols * sizeof(float));
    if (t)
        for (long i = 0; i < rows; i++)
            for (long j = 0; j < cols; j++) t[j * rows + i] = w[i * cols + j];
    return t;
}

/* y = x * gate(w2 act(w1 mean(x) + b1) + b2); writes the per-sample values backward reads: s = mean [N][C],
 * h = w1 s + b1 and a = act(h) [N][R], z = w2 a + b2 and g = gate(z) [N][C]. Returns 1 when out of memory. */
int mbconv_se_forward(int act, int gate, const float *x, float *y, long batch, long spatial, long channels,
                      long reduced, const float *w1, const float *b1, const float *w2, const float *b2, float *s,
                      float *h, float *a, float *z, float *g, int threads) {
    if (threads < 1) threads = 1;
    float *w2t = se_transpose(w2, channels, reduced); /* [R][C]: the expand product runs along C */
    size_t st = SE_STRIDE(channels);
    float *run = malloc((size_t)threads * st * sizeof(float));
    double *acc = malloc((size_t)threads * st * sizeof(double));
    if (!w2t || !run || !acc) { free(w2t); free(run); free(acc); return 1; }
    const float inv = 1.0f / (float)spatial;
    const long groups = (batch + 3) / 4; /* samples in fours (the last group may be short): see se_dots4 */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long q = 0; q < groups; q++) {
        const int t = omp_get_thread_num();
        const long n0 = 4 * q, nn = batch - n0 < 4 ? batch - n0 : 4;
        for (long n = n0; n < n0 + nn; n++) {
            float *sn = s + n * channels;
            se_row_sums(x + n * spatial * channels, NULL, spatial, channels, run + t * st, acc + t * st, sn);
            for (long c = 0; c < channels; c++) sn[c] *= inv;
        }
        float *sq = s + n0 * channels, *hq = h + n0 * reduced, *zq = z + n0 * channels;
        if (nn == 4) se_dots4(sq, channels, w1, reduced, channels, hq, reduced);
        else for (long i = 0; i < nn; i++) se_dots(sq + i * channels, w1, reduced, channels, hq + i * reduced);
        for (long i = 0; i < nn * reduced; i++) hq[i] += b1[i % reduced];
        se_fwd_n(act, hq, a + n0 * reduced, nn * reduced);
        for (long i = 0; i < nn * channels; i++) zq[i] = 0.0f;
        if (nn == 4) se_axpys4(a + n0 * reduced, reduced, 1, w2t, channels, reduced, zq, channels, channels);
        else for (long i = 0; i < nn; i++)
            se_axpys(a + (n0 + i) * reduced, 1, w2t, channels, reduced, zq + i * channels, channels);
        for (long i = 0; i < nn; i++) {
            float *zn = zq + i * channels;
            #pragma omp simd
            for (long c = 0; c < channels; c++) zn[c] += b2[c];
        }
        se_fwd_n(gate, zq, g + n0 * channels, nn * channels);
        for (long n = n0; n < n0 + nn; n++) {
            const float *xn = x + n * spatial * channels, *gn = g + n * channels;
            float *yn = y + n * spatial * channels;
            for (long p = 0; p < spatial; p++) {
                const float *xr = xn + p * channels;
                float *yr = yn + p * channels;
                #pragma omp simd
                for (long c = 0; c < channels; c++) yr[c] = xr[c] * gn[c];
            }
        }
    }
    free(w2t); free(run); free(acc);
    return 0;
}

/* Gradients of mbconv_se_forward from gy and the values it wrote: gx (always), gw1 [R][C], gb1 [R], gw2 [C][R],
 * gb2 [C] (each may be NULL: not wanted). Returns 1 when out of memory. */
int mbconv_se_backward(int act, int gate, const float *gy, const float *x, float *gx, long batch, long spatial,
                       long channels, long reduced, const float *w1, const float *w2, const float *s, const float *h,
                       const float *a, const float *z, const float *g, float *gw1, float *gb1, float *gw2,
                       float *gb2, int threads) {
    if (threads < 1) threads = 1;
    float *w2t = se_transpose(w2, channels, reduced);
    float *gz = malloc((size_t)batch * channels * sizeof(float)), *gh = malloc((size_t)batch * reduced * sizeof(float));
    size_t st = SE_STRIDE(channels);
    float *run = malloc((size_t)threads * st * sizeof(float) * 5); /* per thread: the run sums, four gs rows */
    double *acc = malloc((size_t)threads * st * sizeof(double));
    if (!w2t || !gz || !gh || !run || !acc) { free(w2t); free(gz); free(gh); free(run); free(acc); return 1; }
    const float inv = 1.0f / (float)spatial;
    const long groups = (batch + 3) / 4; /* samples in fours, as the forward */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long q = 0; q < groups; q++) {
        const int t = omp_get_thread_num();
        const long n0 = 4 * q, nn = batch - n0 < 4 ? batch - n0 : 4;
        float *gs = run + t * 5 * st + st; /* [4][st]: the mean's gradient per sample */
        for (long n = n0; n < n0 + nn; n++) { /* d loss / d gate */
            se_row_sums(gy + n * spatial * channels, x + n * spatial * channels, spatial, channels, run + t * 5 * st,
                        acc + t * st, gz + n * channels);
        }
        float *gzq = gz + n0 * channels, *ghq = gh + n0 * reduced;
        se_bwd_n(gate, z + n0 * channels, g + n0 * channels, gzq, nn * channels);
        if (nn == 4) se_dots4(gzq, channels, w2t, reduced, channels, ghq, reduced);
        else for (long i = 0; i < nn; i++) se_dots(gzq + i * channels, w2t, reduced, channels, ghq + i * reduced);
        se_bwd_n(act, h + n0 * reduced, a + n0 * reduced, ghq, nn * reduced);
        for (long i = 0; i < nn; i++)
            for (long c = 0; c < channels; c++) gs[i * st + c] = 0.0f;
        if (nn == 4) se_axpys4(ghq, reduced, 1, w1, channels, reduced, gs, st, channels);
        else for (long i = 0; i < nn; i++) se_axpys(ghq + i * reduced, 1, w1, channels, reduced, gs + i * st, channels);
        for (long i = 0; i < nn; i++) {
            const long n = n0 + i;
            const float *gyn = gy + n * spatial * channels, *gn = g + n * channels;
            float *gsn = gs + i * st, *gxn = gx + n * spatial * channels;
            for (long c = 0; c < channels; c++) gsn[c] *= inv; /* the mean's gradient, the same for every pixel */
            for (long p = 0; p < spatial; p++) {
                const float *gr = gyn + p * channels;
                float *o = gxn + p * channels;
                #pragma omp simd
                for (long c = 0; c < channels; c++) o[c] = gr[c] * gn[c] + gsn[c];
            }
        }
    }
    /* the weights' gradients: sums over samples, threads over the R squeezed channels (each owns its rows) */
    if (gb2) {
        for (long c = 0; c < channels; c++) gb2[c] = 0.0f;
        for (long n = 0; n < batch; n++) {
            const float *gzn = gz + n * channels;
            #pragma omp simd
            for (long c = 0; c < channels; c++) gb2[c] += gzn[c];
        }
    }
    float *gw2t = w2t; /* reused as [R][C] */
    const long rgroups = (reduced + 3) / 4; /* squeezed channels in fours (se_axpys4: four outputs per pass) */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long q = 0; q < rgroups; q++) {
        const long r0 = 4 * q, nr = reduced - r0 < 4 ? reduced - r0 : 4;
        float *o2 = gw2t + r0 * channels, *o1 = gw1 ? gw1 + r0 * channels : NULL;
        for (long c = 0; c < nr * channels; c++) o2[c] = 0.0f;
        if (o1) for (long c = 0; c < nr * channels; c++) o1[c] = 0.0f;
        if (nr == 4) {
            se_axpys4(a + r0, 1, reduced, gz, channels, batch, o2, channels, channels);
            if (o1) se_axpys4(gh + r0, 1, reduced, s, channels, batch, o1, channels, channels);
        } else {
            for (long i = 0; i < nr; i++) {
                se_axpys(a + r0 + i, reduced, gz, channels, batch, o2 + i * channels, channels);
                if (o1) se_axpys(gh + r0 + i, reduced, s, channels, batch, o1 + i * channels, channels);
            }
        }
        for (long r = r0; r < r0 + nr; r++) {
            float b = 0.0f;
            for (long n = 0; n < batch; n++) b += gh[n * reduced + r];
            if (gb1) gb1[r] = b;
        }
    }
    if (gw2)
        for (long c = 0; c < channels; c++)
            for (long r = 0; r < reduced; r++) gw2[c * reduced + r] = gw2t[r * channels + c];
    free(w2t); free(gz); free(gh); free(run); free(acc);
    return 0;
}
