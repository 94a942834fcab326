/* An inverted-residual block's training step, one call each way, float32, for mbconv.layers.block_step:
 * [1x1 expand -> BN -> act] -> depthwise -> BN -> act -> [SE] -> 1x1 project -> BN [-> act].
 *
 * Why: on the small maps of a training step the Python between a block's kernels cost more than the kernels.
 * Called one by one from Python, the block's seven kernels and two or four matrix products were each a wrapper,
 * a few allocations and a ctypes call, about 0.5 ms per block forward and backward at batch 2 (twelfth session,
 * docs/bench/depthwise.md); here they run in a straight line in C. The kernels are the library's own entry points
 * (bn_act.c, dw_conv.c, se.c); the products are the BLAS sgemm that PyTorch's torch.mm calls (MKL's in PyTorch's
 * x86 wheels, found in libtorch_cpu by the caller and handed over with mbconv_set_sgemm): the same products, the
 * same bits.
 *
 * Layout: every map channels-last, as (rows = N * spatial) x C row-major matrices; 1x1 weights [out][in], the
 * depthwise weight [C][taps]. Per-block sizes ("dims", longs): n, h, w, c_in, c_mid (c_in without expansion),
 * expand (0/1), h2, w2 (after the depthwise stride), c_out, se_reduced (0: no SE), the three BN activations (expand,
 * depthwise, project: bn_act.c's codes), the SE's activation and gate (se.c's codes). Everything the backward needs
 * lives in one workspace the caller allocates (mbconv_block_workspace floats), each part on a 64-byte boundary.
 */
#include <stddef.h>

int mbconv_bn_act_forward(int act, const float *x, float *y, long batch, long channels, long size,
                          const float *weight, const float *bias, float eps, float momentum, float *mean, float *rstd,
                          float *running_mean, float *running_var, int threads);
int mbconv_bn_act_backward(int act, const float *gy, const float *x, float *gx, long batch, long channels, long size,
                           const float *weight, const float *bias, const float *mean, const float *rstd,
                           float *gweight, float *gbias, int threads);
int mbconv_dw_forward(const long *geometry, const float *x, const float *w, const float *bias, float *y, int threads);
int mbconv_dw_backward_input(const long *geometry, const float *gy, const float *w, float *gx, int threads);
int mbconv_dw_backward_weight(const long *geometry, const float *gy, const float *x, float *gw, int threads);
int mbconv_se_forward(int act, int gate, const float *x, float *y, long batch, long spatial, long channels,
                      long reduced, const float *w1, const float *b1, const float *w2, const float *b2, float *s,
                      float *h, float *a, float *z, float *g, int threads);
int mbconv_se_backward(int act, int gate, const float *gy, const float *x, float *gx, long batch, long spatial,
                       long channels, long reduced, const float *w1, const float *w2, const float *s, const float *h,
                       const float *a, const float *z, const float *g, float *gw1, float *gb1, float *gw2,
                       float *gb2, int threads);

/* Fortran BLAS sgemm (column-major, 32-bit integers: the LP64 interface PyTorch's wheels link) */
typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *, const float *,
                         const float *, const int *, const float *, const int *, const float *, float *, const int *);
static sgemm_fn sgemm;

/* Hands over the sgemm the products call; 0 (unset) keeps mbconv_block_forward / _backward refusing. */
void mbconv_set_sgemm(void *f) { sgemm = (sgemm_fn)f; }

/* Row-major products through the column-major sgemm (a row-major matrix is its transpose in column-major):
 * c[m][n] = a[m][k] w[n][k]^T */
static void mm_nt(long m, long k, long n, const float *a, const float *w, float *c) {
    const int M = (int)m, K = (int)k, N = (int)n;
    const float one = 1.0f, zero = 0.0f;
    sgemm("T", "N", &N, &M, &K, &one, w, &K, a, &K, &zero, c, &N);
}

/* gw[n][k] = g[m][n]^T a[m][k] */
static void mm_tn(long m, long k, long n, const float *g, const float *a, float *gw) {
    const int M = (int)m, K = (int)k, N = (int)n;
    const float one = 1.0f, zero = 0.0f;
    sgemm("N", "T", &K, &N, &M, &one, a, &K, g, &N, &zero, gw, &K);
}

/* ga[m][k] = g[m][n] w[n][k] */
static void mm_nn(long m, long k, long n, const float *g, const float *w, float *ga) {
    const int M = (int)m, K = (int)k, N = (int)n;
    const float one = 1.0f, zero = 0.0f;
    sgemm("N", "N", &K, &M, &N, &one, w, &K, g, &N, &zero, ga, &K);
}

enum { D_N, D_H, D_W, D_CIN, D_CMID, D_EXPAND, D_H2, D_W2, D_COUT, D_SE, D_ACT_E, D_ACT_D, D_ACT_P, D_SE_ACT,
       D_SE_GATE };

/* the workspace's parts (float offsets; -1 where the block has no such part) */
typedef struct { long e_pre, e_mean, e_rstd, d_in, d_pre, d_mean, d_rstd, d_out, s, h, a, z, g, se_out, p_pre,
                 p_mean, p_rstd, total; } parts;

static long up16(long v) { return (v + 15) / 16 * 16; }

static parts layout(const long *d) {
    const long r1 = d[D_N] * d[D_H] * d[D_W], r2 = d[D_N] * d[D_H2] * d[D_W2], cm = d[D_CMID];
    parts p;
    long o = 0;
#define TAKE(field, count) do { p.field = o; o += up16(count); } while (0)
    if (d[D_EXPAND]) { TAKE(e_pre, r1 * cm); TAKE(e_mean, cm); TAKE(e_rstd, cm); TAKE(d_in, r1 * cm); }
    else p.e_pre = p.e_mean = p.e_rstd = p.d_in = -1;
    TAKE(d_pre, r2 * cm); TAKE(d_mean, cm); TAKE(d_rstd, cm); TAKE(d_out, r2 * cm);
    if (d[D_SE]) {
        TAKE(s, d[D_N] * cm); TAKE(h, d[D_N] * d[D_SE]); TAKE(a, d[D_N] * d[D_SE]); TAKE(z, d[D_N] * cm);
        TAKE(g, d[D_N] * cm); TAKE(se_out, r2 * cm);
    } else p.s = p.h = p.a = p.z = p.g = p.se_out = -1;
    TAKE(p_pre, r2 * d[D_COUT]); TAKE(p_mean, d[D_COUT]); TAKE(p_rstd, d[D_COUT]);
#undef TAKE
    p.total = o;
    return p;
}

/* floats of workspace a block of these dims needs (mbconv_block_forward writes it, _backward reads it) */
long mbconv_block_workspace(const long *dims) { return layout(dims).total; }

/* floats of scratch mbconv_block_backward needs */
long mbconv_block_scratch(const long *d) {
    const long r1 = d[D_N] * d[D_H] * d[D_W], r2 = d[D_N] * d[D_H2] * d[D_W2];
    return up16(r2 * d[D_COUT]) + 2 * up16(r1 * d[D_CMID]);
}

#define AT(field) (ws + lay.field)

/* The block's forward. ptr: x, expand weight, BN weight, BN bias, running mean, running var (the last five NULL
 * without expansion; the running statistics NULL when not tracked), depthwise weight (cropped to its live taps
 * where the caller's geometry says so), its BN's four, the SE's reduce weight, reduce bias, expand weight, expand
 * bias (NULL without SE), the project weight and its BN's four, the workspace, the output. sc: eps and momentum
 * per BN (expand, depthwise, project). Returns 1 when out of memory (a kernel's scratch), 2 without sgemm. */
int mbconv_block_forward(const long *d, const long *geometry, float *const *ptr, const float *sc, int threads) {
    if (!sgemm) return 2;
    const parts lay = layout(d);
    float *ws = ptr[20];
    const long r1 = d[D_N] * d[D_H] * d[D_W], r2 = d[D_N] * d[D_H2] * d[D_W2], cm = d[D_CMID], co = d[D_COUT];
    const float *t = ptr[0];
    int err = 0;
    if (d[D_EXPAND]) {
        mm_nt(r1, d[D_CIN], cm, ptr[0], ptr[1], AT(e_pre));
        err |= mbconv_bn_act_forward((int)d[D_ACT_E], AT(e_pre), AT(d_in), r1, cm, -1, ptr[2], ptr[3], sc[0], sc[3],
                                     AT(e_mean), AT(e_rstd), ptr[4], ptr[5], threads);
        t = AT(d_in);
    }
    err |= mbconv_dw_forward(geometry, t, ptr[6], NULL, AT(d_pre), threads);
    err |= mbconv_bn_act_forward((int)d[D_ACT_D], AT(d_pre), AT(d_out), r2, cm, -1, ptr[7], ptr[8], sc[1], sc[4],
                                 AT(d_mean), AT(d_rstd), ptr[9], ptr[10], threads);
    t = AT(d_out);
    if (d[D_SE]) {
        err |= mbconv_se_forward((int)d[D_SE_ACT], (int)d[D_SE_GATE], AT(d_out), AT(se_out), d[D_N],
                                 d[D_H2] * d[D_W2], cm, d[D_SE], ptr[11], ptr[12], ptr[13], ptr[14], AT(s), AT(h),
                                 AT(a), AT(z), AT(g), threads);
        t = AT(se_out);
    }
    mm_nt(r2, cm, co, t, ptr[15], AT(p_pre));
    err |= mbconv_bn_act_forward((int)d[D_ACT_P], AT(p_pre), ptr[21], r2, co, -1, ptr[16], ptr[17], sc[2], sc[5],
                                 AT(p_mean), AT(p_rstd), ptr[18], ptr[19], threads);
    return err ? 1 : 0;
}

/* The block's backward from the output gradient. ptr: gy, x, workspace, scratch (mbconv_block_scratch floats),
 * the weights (expand weight, BN weight, BN bias, depthwise weight as the forward ran it, BN weight, BN bias, SE
 * reduce weight, SE expand weight, project weight, BN weight, BN bias: NULL where the block has no such part),
 * then the gradients to write, in the same order, with x's first (a gradient of a part the block lacks: NULL).
 * Returns as mbconv_block_forward. */
int mbconv_block_backward(const long *d, const long *geometry, float *const *ptr, int threads) {
    if (!sgemm) return 2;
    const parts lay = layout(d);
    const float *gy = ptr[0], *x = ptr[1];
    float *ws = ptr[2], *scratch = ptr[3];
    const float *we = ptr[4], *e_w = ptr[5], *e_b = ptr[6], *wd = ptr[7], *d_w = ptr[8], *d_b = ptr[9],
                *r_w = ptr[10], *x_w = ptr[11], *wp = ptr[12], *p_w = ptr[13], *p_b = ptr[14];
    float *gx = ptr[15], *gwe = ptr[16], *ge_w = ptr[17], *ge_b = ptr[18], *gwd = ptr[19], *gd_w = ptr[20],
          *gd_b = ptr[21], *gr_w = ptr[22], *gr_b = ptr[23], *gx_w = ptr[24], *gx_b = ptr[25], *gwp = ptr[26],
          *gp_w = ptr[27], *gp_b = ptr[28];
    const long r1 = d[D_N] * d[D_H] * d[D_W], r2 = d[D_N] * d[D_H2] * d[D_W2], cm = d[D_CMID], co = d[D_COUT];
    float *gp = scratch, *b1 = scratch + up16(r2 * co), *b2 = b1 + up16(r1 * cm), *tmp;
    int err = 0;
    err |= mbconv_bn_act_backward((int)d[D_ACT_P], gy, AT(p_pre), gp, r2, co, -1, p_w, p_b, AT(p_mean), AT(p_rstd),
                                  gp_w, gp_b, threads);
    const float *p_in = d[D_SE] ? AT(se_out) : AT(d_out);
    mm_tn(r2, cm, co, gp, p_in, gwp);
    mm_nn(r2, cm, co, gp, wp, b1);
    if (d[D_SE]) {
        err |= mbconv_se_backward((int)d[D_SE_ACT], (int)d[D_SE_GATE], b1, AT(d_out), b2, d[D_N], d[D_H2] * d[D_W2],
                                  cm, d[D_SE], r_w, x_w, AT(s), AT(h), AT(a), AT(z), AT(g), gr_w, gr_b, gx_w, gx_b,
                                  threads);
        tmp = b1; b1 = b2; b2 = tmp;
    }
    /* b1: the gradient at the depthwise BN's output */
    err |= mbconv_bn_act_backward((int)d[D_ACT_D], b1, AT(d_pre), b2, r2, cm, -1, d_w, d_b, AT(d_mean), AT(d_rstd),
                                  gd_w, gd_b, threads);
    const float *d_in = d[D_EXPAND] ? AT(d_in) : x;
    err |= mbconv_dw_backward_weight(geometry, b2, d_in, gwd, threads);
    if (!d[D_EXPAND])
        return (mbconv_dw_backward_input(geometry, b2, wd, gx, threads) | err) ? 1 : 0;
    err |= mbconv_dw_backward_input(geometry, b2, wd, b1, threads);
    err |= mbconv_bn_act_backward((int)d[D_ACT_E], b1, AT(e_pre), b2, r1, cm, -1, e_w, e_b, AT(e_mean),
                                  AT(e_rstd), ge_w, ge_b, threads);
    mm_tn(r1, d[D_CIN], cm, b2, x, gwe);
    mm_nn(r1, d[D_CIN], cm, b2, we, gx);
    return err ? 1 : 0;
}
