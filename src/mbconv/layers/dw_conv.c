/* Depthwise convolution (one filter per channel), forward and both gradients, float32, for
 * mbconv.layers.native_depthwise.
 *
 * Why: on the small maps of a training step ATen runs a depthwise conv through oneDNN (a fixed cost of the order of
 * 0.1 ms a call, however small the map) and its backward through a slow generic kernel; mbconv's own backward
 * (layers/depthwise.py) already replaced the latter by ordinary convolutions, but each is still a oneDNN call plus
 * flips, pads and folds. A depthwise conv is K multiply-adds per output: here it is three plain loops.
 *
 * Geometry (one array of longs): n, c, in[3], out[3], kernel[3], stride[3], pad[3] (padding before each axis; the
 * output size fixes the rest), spatial axes D, H, W with unused leading axes of size 1. Input position of output o
 * and tap k: o * stride + k - pad; taps that fall outside the input read zero.
 * Layout: channels-last (every spatial position a contiguous run of C channels; a 1-D map is (N, L, C)); the
 * weight comes and its gradient goes as PyTorch stores it, [C][taps], and the loops read it as [taps][C] (a copy per
 * call: they take a block of 16 channels into a vector register and sum the taps there).
 * (Contiguous N, C, spatial tensors are transposed to it by the caller: kernels along rows of 20-40 values, tried
 * first, ran 2-6x slower than the transposition plus these.)
 * Threads: OpenMP, the count passed in (torch's). Sums over many terms (the weight gradient) are float over short
 * runs flushed to double.
 */
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define FLUSH 64 /* output positions summed in float before adding into the double totals */

typedef struct { long n, c, in[3], out[3], k[3], s[3], p[3]; } geom;

static geom unpack(const long *v) {
    geom g;
    g.n = v[0];
    g.c = v[1];
    for (int a = 0; a < 3; a++) {
        g.in[a] = v[2 + a];
        g.out[a] = v[5 + a];
        g.k[a] = v[8 + a];
        g.s[a] = v[11 + a];
        g.p[a] = v[14 + a];
    }
    return g;
}

/* the input index an output index o reads through tap k on axis a, or -1 outside the input */
static inline long in_index(const geom *g, int a, long o, long k) {
    long i = o * g->s[a] + k - g->p[a];
    return (i >= 0 && i < g->in[a]) ? i : -1;
}

/* the output index that reads input index i through tap k on axis a, or -1 (none: off the stride grid or out) */
static inline long out_index(const geom *g, int a, long i, long k) {
    long t = i + g->p[a] - k;
    if (t < 0 || t % g->s[a]) return -1;
    t /= g->s[a];
    return t < g->out[a] ? t : -1;
}

/* [lo, hi): the outputs along the last axis whose input through tap k lies inside the input (computed once per
 * call: integer division in the inner loops costs more than the multiply-adds of a small map) */
static void out_ranges(const geom *g, long *lo, long *hi) {
    for (long k = 0; k < g->k[2]; k++) {
        long s = g->s[2], first = g->p[2] - k, last = g->in[2] - 1 + g->p[2] - k;
        lo[k] = first > 0 ? (first + s - 1) / s : 0;
        hi[k] = last < 0 ? 0 : last / s + 1;
        if (hi[k] > g->out[2]) hi[k] = g->out[2];
        if (lo[k] > hi[k]) lo[k] = hi[k];
    }
}

/* For each axis, the output index that reads input i through tap k, or -1: table[i * taps + k] (integer division
 * per position and tap would cost more than the multiply-adds) */
static long *out_tables(const geom *g) {
    long size = 0;
    for (int a = 0; a < 3; a++) size += g->in[a] * g->k[a];
    long *t = malloc((size_t)size * sizeof(long));
    if (!t) return NULL;
    long *p = t;
    for (int a = 0; a < 3; a++)
        for (long i = 0; i < g->in[a]; i++)
            for (long k = 0; k < g->k[a]; k++) *p++ = out_index(g, a, i, k);
    return t;
}

/* row r of an (N, D, H) grid of rows (extent `ext` = D, H, W): its sample and D, H indices */
static inline void split_row(long r, const long *ext, long *n, long *d, long *h) {
    *n = r / (ext[0] * ext[1]);
    *d = r / ext[1] % ext[0];
    *h = r % ext[1];
}

/* -- rows (channels-last): channels in blocks of CB held in a vector register while the taps accumulate --- */
#define CB 16
typedef float vblock __attribute__((vector_size(CB * sizeof(float)))); /* GCC/Clang vector extension */

/* a block of cb <= CB channels (a partial block, the last one when C is not a multiple of CB, reads zeros) */
static inline vblock load_block(const float *p, long cb) {
    vblock v;
    if (cb == CB) {
        memcpy(&v, p, sizeof v);
    } else {
        float t[CB] = {0};
        memcpy(t, p, cb * sizeof(float));
        memcpy(&v, t, sizeof v);
    }
    return v;
}

static inline void store_block(float *p, vblock v, long cb) {
    if (cb == CB) {
        memcpy(p, &v, sizeof v);
    } else {
        float t[CB];
        memcpy(t, &v, sizeof v);
        memcpy(p, t, cb * sizeof(float));
    }
}

static void fwd_rows(const geom *g, const float *restrict x, const float *restrict w, const float *restrict bias,
                     float *restrict y, int threads) {
    const long C = g->c, rows = g->n * g->out[0] * g->out[1], OW = g->out[2], sw = g->s[2];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        long n, od, oh;
        split_row(r, g->out, &n, &od, &oh);
        for (long ow = 0; ow < OW; ow++) {
            for (long c0 = 0; c0 < C; c0 += CB) {
                const long cb = C - c0 < CB ? C - c0 : CB;
                vblock acc = bias ? load_block(bias + c0, cb) : (vblock){0};
                for (long kd = 0; kd < g->k[0]; kd++) {
                    const long id = in_index(g, 0, od, kd);
                    if (id < 0) continue;
                    for (long kh = 0; kh < g->k[1]; kh++) {
                        const long ih = in_index(g, 1, oh, kh);
                        if (ih < 0) continue;
                        const float *xr = x + ((n * g->in[0] + id) * g->in[1] + ih) * g->in[2] * C + c0;
                        const float *wr = w + (kd * g->k[1] + kh) * g->k[2] * C + c0;
                        for (long kw = 0; kw < g->k[2]; kw++) {
                            const long iw = ow * sw + kw - g->p[2];
                            if (iw < 0 || iw >= g->in[2]) continue;
                            acc += load_block(xr + iw * C, cb) * load_block(wr + kw * C, cb);
                        }
                    }
                }
                store_block(y + (r * OW + ow) * C + c0, acc, cb);
            }
        }
    }
}

/* The forward on 1-D and 2-D maps (no depth axis): per output row and channel block, the taps' row and column
 * ranges computed once, and where a run of four outputs reads only inside the map, the four summed together: each
 * weight vector loaded once for four multiply-adds, no bounds test per tap. The general loop above tested every
 * tap and reloaded the weights per output, and ran at about a sixth of the multiply-add rate. */
static void fwd_rows_2d(const geom *g, const float *restrict x, const float *restrict w, const float *restrict bias,
                        float *restrict y, int threads) {
    const long C = g->c, IH = g->in[1], IW = g->in[2], OH = g->out[1], OW = g->out[2], KH = g->k[1], KW = g->k[2];
    const long sh = g->s[1], sw = g->s[2], ph = g->p[1], pw = g->p[2], rows = g->n * OH;
    /* [in_lo, in_hi): the outputs whose every column tap lies inside the map */
    long in_lo = (pw + sw - 1) / sw, in_hi = IW - KW + pw >= 0 ? (IW - KW + pw) / sw + 1 : 0;
    if (in_hi > OW) in_hi = OW;
    if (in_lo > in_hi) in_lo = in_hi;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const long n = r / OH, oh = r % OH;
        const long kh0 = ph - oh * sh > 0 ? ph - oh * sh : 0, kh1 = IH + ph - oh * sh < KH ? IH + ph - oh * sh : KH;
        const float *xn = x + n * IH * IW * C;
        float *yr = y + r * OW * C;
        for (long c0 = 0; c0 < C; c0 += CB) {
            const long cb = C - c0 < CB ? C - c0 : CB;
            const vblock b0 = bias ? load_block(bias + c0, cb) : (vblock){0};
            long ow = 0;
            while (ow < OW) {
                if (cb == CB && ow >= in_lo && ow + 4 <= in_hi) {
                    vblock a0 = b0, a1 = b0, a2 = b0, a3 = b0;
                    for (long kh = kh0; kh < kh1; kh++) {
                        const float *xr = xn + ((oh * sh + kh - ph) * IW + ow * sw - pw) * C + c0;
                        const float *wr = w + kh * KW * C + c0;
                        for (long kw = 0; kw < KW; kw++) {
                            vblock wv, x0, x1, x2, x3;
                            memcpy(&wv, wr + kw * C, sizeof wv);
                            memcpy(&x0, xr + kw * C, sizeof x0);
                            memcpy(&x1, xr + (sw + kw) * C, sizeof x1);
                            memcpy(&x2, xr + (2 * sw + kw) * C, sizeof x2);
                            memcpy(&x3, xr + (3 * sw + kw) * C, sizeof x3);
                            a0 += x0 * wv;
                            a1 += x1 * wv;
                            a2 += x2 * wv;
                            a3 += x3 * wv;
                        }
                    }
                    float *o = yr + ow * C + c0;
                    memcpy(o, &a0, sizeof a0);
                    memcpy(o + C, &a1, sizeof a1);
                    memcpy(o + 2 * C, &a2, sizeof a2);
                    memcpy(o + 3 * C, &a3, sizeof a3);
                    ow += 4;
                    continue;
                }
                const long kw0 = pw - ow * sw > 0 ? pw - ow * sw : 0;
                const long kw1 = IW + pw - ow * sw < KW ? IW + pw - ow * sw : KW;
                vblock acc = b0;
                for (long kh = kh0; kh < kh1; kh++) {
                    const float *xr = xn + ((oh * sh + kh - ph) * IW + ow * sw - pw) * C + c0;
                    const float *wr = w + kh * KW * C + c0;
                    for (long kw = kw0; kw < kw1; kw++) acc += load_block(xr + kw * C, cb) * load_block(wr + kw * C, cb);
                }
                store_block(yr + ow * C + c0, acc, cb);
                ow++;
            }
        }
    }
}

/* gather: every input position sums the outputs that read it (input rows in parallel, no write races);
 * returns 1 if out of memory */
static int bwd_input_rows(const geom *g, const float *restrict gy, const float *restrict w, float *restrict gx,
                          int threads) {
    const long C = g->c, rows = g->n * g->in[0] * g->in[1], IW = g->in[2];
    long *tab = out_tables(g);
    if (!tab) return 1;
    const long *td = tab, *th = td + g->in[0] * g->k[0], *tw = th + g->in[1] * g->k[1];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        long n, id, ih;
        split_row(r, g->in, &n, &id, &ih);
        for (long iw = 0; iw < IW; iw++) {
            for (long c0 = 0; c0 < C; c0 += CB) {
                const long cb = C - c0 < CB ? C - c0 : CB;
                vblock acc = {0};
                for (long kd = 0; kd < g->k[0]; kd++) {
                    const long od = td[id * g->k[0] + kd];
                    if (od < 0) continue;
                    for (long kh = 0; kh < g->k[1]; kh++) {
                        const long oh = th[ih * g->k[1] + kh];
                        if (oh < 0) continue;
                        const float *yr = gy + ((n * g->out[0] + od) * g->out[1] + oh) * g->out[2] * C + c0;
                        const float *wr = w + (kd * g->k[1] + kh) * g->k[2] * C + c0;
                        for (long kw = 0; kw < g->k[2]; kw++) {
                            const long ow = tw[iw * g->k[2] + kw];
                            if (ow < 0) continue;
                            acc += load_block(yr + ow * C, cb) * load_block(wr + kw * C, cb);
                        }
                    }
                }
                store_block(gx + (r * IW + iw) * C + c0, acc, cb);
            }
        }
    }
    free(tab);
    return 0;
}

/* The input gradient on 1-D and 2-D maps, any stride: for an input row, the row taps that reach an output row are
 * listed once; the columns are taken by phase (iw mod stride), for which the same column taps apply and consecutive
 * columns of a phase read consecutive output columns, so that, as in fwd_rows_2d, four columns are summed together
 * where every tap lies inside the output (each weight vector loaded once for four multiply-adds). The gather above
 * tested every tap of every position and ran at a fraction of the multiply-add rate. */
static void bwd_input_rows_2d(const geom *g, const float *restrict gy, const float *restrict w, float *restrict gx,
                              int threads) {
    const long C = g->c, IH = g->in[1], IW = g->in[2], OH = g->out[1], OW = g->out[2], KH = g->k[1], KW = g->k[2];
    const long sh = g->s[1], sw = g->s[2], ph = g->p[1], pw = g->p[2], rows = g->n * IH;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const long n = r / IH, ih = r % IH;
        long khs[KH], ohs[KH], nk = 0, kws[KW], ds[KW];
        for (long kh = 0; kh < KH; kh++) {
            const long t = ih + ph - kh;
            if (t >= 0 && t % sh == 0 && t / sh < OH) {
                khs[nk] = kh;
                ohs[nk++] = t / sh;
            }
        }
        const float *gn = gy + n * OH * OW * C;
        float *xr = gx + r * IW * C;
        for (long phase = 0; phase < sw && phase < IW; phase++) {
            /* column taps of this phase and their offsets: input column phase + sw * j reads output j + d */
            long nw = 0, dmin = 0, dmax = 0;
            for (long kw = 0; kw < KW; kw++) {
                const long t = phase + pw - kw;
                if (((t % sw) + sw) % sw) continue;
                const long d = t >= 0 ? t / sw : -((-t) / sw);
                kws[nw] = kw;
                ds[nw] = d;
                if (nw == 0 || d < dmin) dmin = d;
                if (nw == 0 || d > dmax) dmax = d;
                nw++;
            }
            const long nj = (IW - phase + sw - 1) / sw, fast_lo = -dmin > 0 ? -dmin : 0, fast_hi = OW - dmax;
            for (long c0 = 0; c0 < C; c0 += CB) {
                const long cb = C - c0 < CB ? C - c0 : CB;
                long j = 0;
                while (j < nj) {
                    float *o = xr + (phase + sw * j) * C + c0;
                    if (cb == CB && nw > 0 && j >= fast_lo && j + 4 <= fast_hi && j + 4 <= nj) {
                        vblock a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                        for (long a = 0; a < nk; a++) {
                            const float *yr = gn + ohs[a] * OW * C + c0, *wr = w + khs[a] * KW * C + c0;
                            for (long b = 0; b < nw; b++) {
                                const float *yp = yr + (j + ds[b]) * C;
                                vblock wv, y0, y1, y2, y3;
                                memcpy(&wv, wr + kws[b] * C, sizeof wv);
                                memcpy(&y0, yp, sizeof y0);
                                memcpy(&y1, yp + C, sizeof y1);
                                memcpy(&y2, yp + 2 * C, sizeof y2);
                                memcpy(&y3, yp + 3 * C, sizeof y3);
                                a0 += y0 * wv;
                                a1 += y1 * wv;
                                a2 += y2 * wv;
                                a3 += y3 * wv;
                            }
                        }
                        memcpy(o, &a0, sizeof a0);
                        memcpy(o + sw * C, &a1, sizeof a1);
                        memcpy(o + 2 * sw * C, &a2, sizeof a2);
                        memcpy(o + 3 * sw * C, &a3, sizeof a3);
                        j += 4;
                        continue;
                    }
                    vblock acc = {0};
                    for (long a = 0; a < nk; a++) {
                        const float *yr = gn + ohs[a] * OW * C + c0, *wr = w + khs[a] * KW * C + c0;
                        for (long b = 0; b < nw; b++) {
                            const long ow = j + ds[b];
                            if (ow >= 0 && ow < OW) acc += load_block(yr + ow * C, cb) * load_block(wr + kws[b] * C, cb);
                        }
                    }
                    store_block(o, acc, cb);
                    j++;
                }
            }
        }
    }
}

/* per-thread [taps][C] sums over the output rows each thread takes, reduced at the end; each (tap, channel
 * block) sums a whole output row in a register; returns 1 if out of memory */
static int bwd_weight_rows(const geom *g, const float *restrict gy, const float *restrict x, float *restrict gw,
                           int threads) {
    const long C = g->c, K = g->k[0] * g->k[1] * g->k[2], KC = K * C, rows = g->n * g->out[0] * g->out[1];
    const long OW = g->out[2], sw = g->s[2];
    const size_t stride = ((size_t)KC + 15) / 16 * 16 + 16; /* whole cache lines apart between threads */
    long lo[g->k[2]], hi[g->k[2]];
    out_ranges(g, lo, hi);
    double *total = calloc((size_t)threads * stride, sizeof(double));
    float *part = calloc((size_t)threads * stride, sizeof(float));
    if (!total || !part) {
        free(total);
        free(part);
        return 1;
    }
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num();
        double *restrict tot = total + t * stride;
        float *restrict part_t = part + t * stride;
        long count = 0;
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            long n, od, oh;
            split_row(r, g->out, &n, &od, &oh);
            const float *yr = gy + r * OW * C;
            for (long kd = 0; kd < g->k[0]; kd++) {
                const long id = in_index(g, 0, od, kd);
                if (id < 0) continue;
                for (long kh = 0; kh < g->k[1]; kh++) {
                    const long ih = in_index(g, 1, oh, kh);
                    if (ih < 0) continue;
                    const float *xr = x + ((n * g->in[0] + id) * g->in[1] + ih) * g->in[2] * C;
                    for (long kw = 0; kw < g->k[2]; kw++) {
                        float *ap = part_t + ((kd * g->k[1] + kh) * g->k[2] + kw) * C;
                        const float *xs = xr + (kw - g->p[2]) * C;
                        for (long c0 = 0; c0 < C; c0 += CB) {
                            const long cb = C - c0 < CB ? C - c0 : CB;
                            vblock acc = {0};
                            for (long ow = lo[kw]; ow < hi[kw]; ow++)
                                acc += load_block(yr + ow * C + c0, cb) * load_block(xs + ow * sw * C + c0, cb);
                            store_block(ap + c0, load_block(ap + c0, cb) + acc, cb);
                        }
                    }
                }
            }
            count += OW;
            if (count >= FLUSH) {
                for (long i = 0; i < KC; i++) tot[i] += part_t[i];
                memset(part_t, 0, KC * sizeof(float));
                count = 0;
            }
        }
        for (long i = 0; i < KC; i++) tot[i] += part_t[i];
    }
    for (long i = 0; i < KC; i++) {
        double s = 0.0;
        for (int t = 0; t < threads; t++) s += total[t * stride + i];
        gw[i] = (float)s;
    }
    free(total);
    free(part);
    return 0;
}

/* [rows][cols] -> a new [cols][rows] (NULL when out of memory): the weight between PyTorch's [C][taps] and the
 * loops' [taps][C] */
static float *transposed(const float *a, long rows, long cols) {
    float *t = malloc((size_t)rows * cols * sizeof(float));
    if (t)
        for (long r = 0; r < rows; r++)
            for (long c = 0; c < cols; c++) t[c * rows + r] = a[r * cols + c];
    return t;
}

static long taps(const geom *g) { return g->k[0] * g->k[1] * g->k[2]; }

/* -- entry points (x, y, gx, gy channels-last; w and gw as PyTorch stores a depthwise weight, [C][taps]): each
 * returns 1 when out of memory, else 0 ------------------------------------------------------------------------ */
int mbconv_dw_forward(const long *geometry, const float *x, const float *w, const float *bias, float *y, int threads) {
    const geom g = unpack(geometry);
    float *wt = transposed(w, g.c, taps(&g));
    if (!wt) return 1;
    if (g.k[0] == 1 && g.in[0] == 1 && g.out[0] == 1)
        fwd_rows_2d(&g, x, wt, bias, y, threads);
    else
        fwd_rows(&g, x, wt, bias, y, threads);
    free(wt);
    return 0;
}

int mbconv_dw_backward_input(const long *geometry, const float *gy, const float *w, float *gx, int threads) {
    const geom g = unpack(geometry);
    float *wt = transposed(w, g.c, taps(&g));
    if (!wt) return 1;
    int err = 0;
    if (g.k[0] == 1 && g.in[0] == 1 && g.out[0] == 1)
        bwd_input_rows_2d(&g, gy, wt, gx, threads);
    else
        err = bwd_input_rows(&g, gy, wt, gx, threads);
    free(wt);
    return err;
}

int mbconv_dw_backward_weight(const long *geometry, const float *gy, const float *x, float *gw, int threads) {
    const geom g = unpack(geometry);
    const long K = taps(&g);
    float *part = malloc((size_t)K * g.c * sizeof(float)); /* [taps][C] */
    if (!part) return 1;
    int err = bwd_weight_rows(&g, gy, x, part, threads);
    if (!err)
        for (long k = 0; k < K; k++)
            for (long c = 0; c < g.c; c++) gw[c * K + k] = part[k * g.c + c];
    free(part);
    return err;
}
