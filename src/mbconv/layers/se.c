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
    case SE_SIGMOID: return 1.0f / (1.0f + exp_approx(-v));
    default: { float t = v + 3.0f; t = t < 0.0f ? 0.0f : (t > 6.0f ? 6.0f : t); return t / 6.0f; }
    }
}

/* g * f'(v) from the input v and output o, with PyTorch's conventions (silu_backward, threshold_backward on the
 * output, sigmoid_backward, hardsigmoid_backward) */
static inline __attribute__((always_inline)) float se_bwd(const int k, float v, float o, float g) {
    switch (k) {
    case SE_SILU: { float s = 1.0f / (1.0f + exp_approx(-v)); return g * s * (1.0f + v * (1.0f - s)); }
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
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long n = 0; n < batch; n++) {
        int t = omp_get_thread_num();
        const float *xn = x + n * spatial * channels;
        float *sn = s + n * channels, *zn = z + n * channels, *gn = g + n * channels;
        float *hn = h + n * reduced, *an = a + n * reduced;
        se_row_sums(xn, NULL, spatial, channels, run + t * st, acc + t * st, sn);
        const float inv = 1.0f / (float)spatial;
        for (long c = 0; c < channels; c++) sn[c] *= inv;
        se_dots(sn, w1, reduced, channels, hn);
        for (long r = 0; r < reduced; r++) hn[r] += b1[r];
        se_fwd_n(act, hn, an, reduced);
        for (long c = 0; c < channels; c++) zn[c] = 0.0f;
        se_axpys(an, 1, w2t, channels, reduced, zn, channels);
        #pragma omp simd
        for (long c = 0; c < channels; c++) zn[c] += b2[c];
        se_fwd_n(gate, zn, gn, channels);
        float *yn = y + n * spatial * channels;
        for (long p = 0; p < spatial; p++) {
            const float *xr = xn + p * channels;
            float *yr = yn + p * channels;
            #pragma omp simd
            for (long c = 0; c < channels; c++) yr[c] = xr[c] * gn[c];
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
    float *run = malloc((size_t)threads * st * sizeof(float) * 2);
    double *acc = malloc((size_t)threads * st * sizeof(double));
    if (!w2t || !gz || !gh || !run || !acc) { free(w2t); free(gz); free(gh); free(run); free(acc); return 1; }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long n = 0; n < batch; n++) {
        int t = omp_get_thread_num();
        const float *xn = x + n * spatial * channels, *gyn = gy + n * spatial * channels;
        const float *zn = z + n * channels, *gn = g + n * channels, *hn = h + n * reduced, *an = a + n * reduced;
        float *gzn = gz + n * channels, *ghn = gh + n * reduced, *gs = run + t * 2 * st + st;
        se_row_sums(gyn, xn, spatial, channels, run + t * 2 * st, acc + t * st, gzn); /* d loss / d gate */
        se_bwd_n(gate, zn, gn, gzn, channels);
        se_dots(gzn, w2t, reduced, channels, ghn);
        se_bwd_n(act, hn, an, ghn, reduced);
        for (long c = 0; c < channels; c++) gs[c] = 0.0f;
        se_axpys(ghn, 1, w1, channels, reduced, gs, channels);
        const float inv = 1.0f / (float)spatial;
        for (long c = 0; c < channels; c++) gs[c] *= inv; /* the mean's gradient, the same for every pixel */
        float *gxn = gx + n * spatial * channels;
        for (long p = 0; p < spatial; p++) {
            const float *gr = gyn + p * channels;
            float *o = gxn + p * channels;
            #pragma omp simd
            for (long c = 0; c < channels; c++) o[c] = gr[c] * gn[c] + gs[c];
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
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < reduced; r++) {
        float *o2 = gw2t + r * channels, b = 0.0f;
        for (long c = 0; c < channels; c++) o2[c] = 0.0f;
        se_axpys(a + r, reduced, gz, channels, batch, o2, channels);
        if (gw1) {
            float *o1 = gw1 + r * channels;
            for (long c = 0; c < channels; c++) o1[c] = 0.0f;
            se_axpys(gh + r, reduced, s, channels, batch, o1, channels);
        }
        for (long n = 0; n < batch; n++) b += gh[n * reduced + r];
        if (gb1) gb1[r] = b;
    }
    if (gw2)
        for (long c = 0; c < channels; c++)
            for (long r = 0; r < reduced; r++) gw2[c * reduced + r] = gw2t[r * channels + c];
    free(w2t); free(gz); free(gh); free(run); free(acc);
    return 0;
}
