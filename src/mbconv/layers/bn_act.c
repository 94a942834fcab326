/* Training-mode batch norm fused with its activation, forward and backward, float32, for mbconv.layers.native.
 *
 * Why: in a training step PyTorch runs BN and the activation as four kernels (BN forward, act forward, act
 * backward, BN backward), each a full pass or two over the tensor, and two autograd nodes. Here the forward is
 * one statistics pass and one apply pass, the backward one pass that writes the pre-BN gradient and its
 * per-channel sums and one that finishes it; the BN output is recomputed, never stored.
 *
 * Layouts: "rows" is channels-last (M = N * spatial rows of C contiguous channels), "planes" is contiguous NC...
 * (N * C planes of S contiguous values). Sums are float over short runs flushed to double, so long reductions
 * keep double precision while the inner loops stay float vectors. Threads: OpenMP, the count passed in (torch's).
 * exp is native_exp.h's vectorisable approximation, so no fast-math flag is needed.
 */
#ifndef ACT
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

enum { ACT_IDENTITY = 0, ACT_RELU = 1, ACT_RELU6 = 2, ACT_SILU = 3, ACT_HARDSWISH = 4 };
#define FLUSH 64 /* rows (or values) summed in float before adding into the double totals */
/* per-thread strides of the sums (doubles, floats): whole 64-byte lines plus one line of gap, so that two threads'
 * accumulators, written in the inner loops, never share a cache line */
#define DSTRIDE(c) ((((size_t)(2 * (c)) + 7) / 8) * 8 + 8)
#define FSTRIDE(c) ((((size_t)(2 * (c)) + 15) / 16) * 16 + 16)

#include "native_exp.h" /* exp_approx */

static inline __attribute__((always_inline)) float act_fwd(const int act, float z) {
    switch (act) {
    case ACT_RELU: return z > 0.0f ? z : 0.0f;
    case ACT_RELU6: return z > 0.0f ? (z < 6.0f ? z : 6.0f) : 0.0f;
    case ACT_SILU: return z / (1.0f + exp_approx(-z));
    case ACT_HARDSWISH: { float t = z + 3.0f; t = t > 0.0f ? (t < 6.0f ? t : 6.0f) : 0.0f; return z * t / 6.0f; }
    default: return z;
    }
}

/* g * act'(z), with PyTorch's conventions at the kinks (threshold_backward, hardtanh_backward, hardswish_backward) */
static inline __attribute__((always_inline)) float act_bwd(const int act, float z, float g) {
    switch (act) {
    case ACT_RELU: return z > 0.0f ? g : 0.0f;
    case ACT_RELU6: return (z > 0.0f && z < 6.0f) ? g : 0.0f;
    case ACT_SILU: { float s = sigmoid_approx(z); return g * s * (1.0f + z * (1.0f - s)); }
    case ACT_HARDSWISH: return z < -3.0f ? 0.0f : (z <= 3.0f ? g * (z / 3.0f + 0.5f) : g);
    default: return g;
    }
}

/* mean, 1/sqrt(var + eps) and the running statistics (unbiased variance), as nn.BatchNorm updates them */
static void finish_stats(const double *sum, const double *sq, long count, long channels, float eps, float momentum,
                         float *mean, float *rstd, float *running_mean, float *running_var) {
    for (long c = 0; c < channels; c++) {
        double mu = sum[c] / count, var = sq[c] / count - mu * mu;
        if (var < 0.0) var = 0.0;
        mean[c] = (float)mu;
        rstd[c] = (float)(1.0 / sqrt(var + (double)eps));
        if (running_mean) {
            running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mu);
            running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * var * count / (count - 1));
        }
    }
}

/* The kernels, once per activation: this file includes itself (by name, so relative to itself) with ACT and NAME
 * defined. */
#define ACT ACT_IDENTITY
#define NAME(f) f##_identity
#include "bn_act.c"
#undef ACT
#undef NAME
#define ACT ACT_RELU
#define NAME(f) f##_relu
#include "bn_act.c"
#undef ACT
#undef NAME
#define ACT ACT_RELU6
#define NAME(f) f##_relu6
#include "bn_act.c"
#undef ACT
#undef NAME
#define ACT ACT_SILU
#define NAME(f) f##_silu
#include "bn_act.c"
#undef ACT
#undef NAME
#define ACT ACT_HARDSWISH
#define NAME(f) f##_hardswish
#include "bn_act.c"
#undef ACT
#undef NAME

/* Entry points (ctypes). running_mean / running_var may be NULL (no running statistics), gweight / gbias too
 * (no affine gradients wanted). `size` < 0 selects the rows layout with `batch` rows. */
#define DISPATCH(call) switch (act) { \
    case ACT_RELU: call(relu); break; case ACT_RELU6: call(relu6); break; \
    case ACT_SILU: call(silu); break; case ACT_HARDSWISH: call(hardswish); break; \
    default: call(identity); }

int mbconv_bn_act_forward(int act, const float *x, float *y, long batch, long channels, long size,
                          const float *weight, const float *bias, float eps, float momentum, float *mean, float *rstd,
                          float *running_mean, float *running_var, int threads) {
    if (threads < 1) threads = 1;
#define FWD_ROWS(A) err = forward_rows_##A(x, y, batch, channels, weight, bias, eps, momentum, mean, rstd, \
                                           running_mean, running_var, threads)
#define FWD_PLANES(A) err = forward_planes_##A(x, y, batch, channels, size, weight, bias, eps, momentum, mean, \
                                               rstd, running_mean, running_var, threads)
    int err;
    if (size < 0) { DISPATCH(FWD_ROWS) } else { DISPATCH(FWD_PLANES) }
    return err; /* 1: out of memory for the per-thread sums */
}

int mbconv_bn_act_backward(int act, const float *gy, const float *x, float *gx, long batch, long channels, long size,
                           const float *weight, const float *bias, const float *mean, const float *rstd,
                           float *gweight, float *gbias, int threads) {
    if (threads < 1) threads = 1;
#define BWD_ROWS(A) err = backward_rows_##A(gy, x, gx, batch, channels, weight, bias, mean, rstd, gweight, gbias, \
                                            threads)
#define BWD_PLANES(A) err = backward_planes_##A(gy, x, gx, batch, channels, size, weight, bias, mean, rstd, \
                                                gweight, gbias, threads)
    int err;
    if (size < 0) { DISPATCH(BWD_ROWS) } else { DISPATCH(BWD_PLANES) }
    return err;
}

#else /* one activation's kernels: ACT, NAME(f) */

static int
NAME(forward_rows)(const float *x, float *y, long rows, long channels, const float *weight,
             const float *bias, float eps, float momentum, float *mean, float *rstd, float *running_mean,
             float *running_var, int threads) {
    /* one allocation: per-thread double totals, per-thread float run sums, the per-channel coefficients.
     * backward_rows repeats this set-up and the flush below on purpose: shared through a helper and a struct they
     * measured about 15 % slower on a 64 x 96 x 8 x 8 layer at two threads. */
    size_t ds = DSTRIDE(channels), fs_stride = FSTRIDE(channels);
    double *part = calloc((size_t)threads * ds, sizeof(double));
    float *work = calloc((size_t)threads * fs_stride + 2 * channels, sizeof(float));
    if (!part || !work) { free(part); free(work); return 1; }
    float *coef = work + (size_t)threads * fs_stride;
    #pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        long m0 = rows * t / nt, m1 = rows * (t + 1) / nt;
        double *s = part + (size_t)t * ds, *q = s + channels;
        float *fs = work + (size_t)t * fs_stride, *fq = fs + channels;
        for (long m = m0; m < m1; m++) {
            const float *xr = x + m * channels;
            #pragma omp simd
            for (long c = 0; c < channels; c++) { float v = xr[c]; fs[c] += v; fq[c] += v * v; }
            if ((m - m0) % FLUSH == FLUSH - 1 || m == m1 - 1)
                for (long c = 0; c < channels; c++) { s[c] += fs[c]; q[c] += fq[c]; fs[c] = 0.0f; fq[c] = 0.0f; }
        }
    }
    for (int t = 1; t < threads; t++)
        for (long c = 0; c < 2 * channels; c++) part[c] += part[(size_t)t * ds + c];
    finish_stats(part, part + channels, rows, channels, eps, momentum, mean, rstd, running_mean, running_var);
    float *a = coef, *b = coef + channels;
    for (long c = 0; c < channels; c++) { a[c] = weight[c] * rstd[c]; b[c] = bias[c] - mean[c] * a[c]; }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long m = 0; m < rows; m++) {
        const float *xr = x + m * channels;
        float *yr = y + m * channels;
        #pragma omp simd
        for (long c = 0; c < channels; c++) yr[c] = act_fwd(ACT, xr[c] * a[c] + b[c]);
    }
    free(work);
    free(part);
    return 0;
}

static int
NAME(backward_rows)(const float *gy, const float *x, float *gx, long rows, long channels,
              const float *weight, const float *bias, const float *mean, const float *rstd, float *gweight,
              float *gbias, int threads) {
    size_t ds = DSTRIDE(channels), fs_stride = FSTRIDE(channels);
    double *part = calloc((size_t)threads * ds, sizeof(double));
    float *work = calloc((size_t)threads * fs_stride + 5 * channels, sizeof(float));
    if (!part || !work) { free(part); free(work); return 1; }
    float *coef = work + (size_t)threads * fs_stride;
    float *a = coef, *b = a + channels, *k1 = b + channels, *k2 = k1 + channels, *k3 = k2 + channels;
    for (long c = 0; c < channels; c++) { a[c] = weight[c] * rstd[c]; b[c] = bias[c] - mean[c] * a[c]; }
    #pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        long m0 = rows * t / nt, m1 = rows * (t + 1) / nt;
        double *s = part + (size_t)t * ds, *q = s + channels;
        float *fs = work + (size_t)t * fs_stride, *fq = fs + channels;
        for (long m = m0; m < m1; m++) {
            const float *xr = x + m * channels, *gyr = gy + m * channels;
            float *out = gx + m * channels;
            #pragma omp simd
            for (long c = 0; c < channels; c++) {
                float d = act_bwd(ACT, xr[c] * a[c] + b[c], gyr[c]);
                out[c] = d; fs[c] += d; fq[c] += d * xr[c];
            }
            if ((m - m0) % FLUSH == FLUSH - 1 || m == m1 - 1)
                for (long c = 0; c < channels; c++) { s[c] += fs[c]; q[c] += fq[c]; fs[c] = 0.0f; fq[c] = 0.0f; }
        }
    }
    for (int t = 1; t < threads; t++)
        for (long c = 0; c < 2 * channels; c++) part[c] += part[(size_t)t * ds + c];
    /* gx = gamma*rstd*(dz - mean(dz) - xhat*mean(dz*xhat)) = dz*k1 + x*k2 + k3 */
    for (long c = 0; c < channels; c++) {
        double sdz = part[c], r = rstd[c], mu = mean[c], sdxh = r * (part[channels + c] - mu * sdz);
        double gr = weight[c] * r, mdz = sdz / rows, mdxh = sdxh / rows;
        if (gweight) { gweight[c] = (float)sdxh; gbias[c] = (float)sdz; }
        k1[c] = (float)gr; k2[c] = (float)(-gr * r * mdxh); k3[c] = (float)(-gr * mdz + gr * r * mu * mdxh);
    }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long m = 0; m < rows; m++) {
        const float *xr = x + m * channels;
        float *out = gx + m * channels;
        #pragma omp simd
        for (long c = 0; c < channels; c++) out[c] = out[c] * k1[c] + xr[c] * k2[c] + k3[c];
    }
    free(work);
    free(part);
    return 0;
}

static int
NAME(forward_planes)(const float *x, float *y, long batch, long channels, long size, const float *weight,
               const float *bias, float eps, float momentum, float *mean, float *rstd, float *running_mean,
               float *running_var, int threads) {
    double *sums = calloc(2 * channels, sizeof(double));
    if (!sums) return 1;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long c = 0; c < channels; c++) {
        double s = 0.0, q = 0.0;
        for (long n = 0; n < batch; n++) {
            const float *xp = x + (n * channels + c) * size;
            for (long i0 = 0; i0 < size; i0 += FLUSH) {
                long i1 = i0 + FLUSH < size ? i0 + FLUSH : size;
                float fs = 0.0f, fq = 0.0f;
                #pragma omp simd reduction(+:fs, fq)
                for (long i = i0; i < i1; i++) { fs += xp[i]; fq += xp[i] * xp[i]; }
                s += fs; q += fq;
            }
        }
        sums[c] = s; sums[channels + c] = q;
    }
    finish_stats(sums, sums + channels, batch * size, channels, eps, momentum, mean, rstd, running_mean,
                 running_var);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long p = 0; p < batch * channels; p++) {
        long c = p % channels;
        float a = weight[c] * rstd[c], b = bias[c] - mean[c] * a;
        const float *xp = x + p * size;
        float *yp = y + p * size;
        #pragma omp simd
        for (long i = 0; i < size; i++) yp[i] = act_fwd(ACT, xp[i] * a + b);
    }
    free(sums);
    return 0;
}

static int
NAME(backward_planes)(const float *gy, const float *x, float *gx, long batch, long channels, long size,
                const float *weight, const float *bias, const float *mean, const float *rstd, float *gweight,
                float *gbias, int threads) {
    long count = batch * size;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long c = 0; c < channels; c++) {
        double r = rstd[c], mu = mean[c];
        float a = weight[c] * rstd[c], b = bias[c] - mean[c] * a;
        double s = 0.0, q = 0.0;
        for (long n = 0; n < batch; n++) {
            long off = (n * channels + c) * size;
            const float *xp = x + off, *gp = gy + off;
            float *op = gx + off;
            for (long i0 = 0; i0 < size; i0 += FLUSH) {
                long i1 = i0 + FLUSH < size ? i0 + FLUSH : size;
                float fs = 0.0f, fq = 0.0f;
                #pragma omp simd reduction(+:fs, fq)
                for (long i = i0; i < i1; i++) {
                    float d = act_bwd(ACT, xp[i] * a + b, gp[i]);
                    op[i] = d; fs += d; fq += d * xp[i];
                }
                s += fs; q += fq;
            }
        }
        double sdxh = r * (q - mu * s), gr = weight[c] * r, mdz = s / count, mdxh = sdxh / count;
        if (gweight) { gweight[c] = (float)sdxh; gbias[c] = (float)s; }
        float k1 = (float)gr, k2 = (float)(-gr * r * mdxh), k3 = (float)(-gr * mdz + gr * r * mu * mdxh);
        for (long n = 0; n < batch; n++) {
            long off = (n * channels + c) * size;
            const float *xp = x + off;
            float *op = gx + off;
            #pragma omp simd
            for (long i = 0; i < size; i++) op[i] = op[i] * k1 + xp[i] * k2 + k3;
        }
    }
    return 0;
}

#endif
