/* exp for the native kernels (bn_act.c, se.c): a Cephes-style expf, about 2 ulp, that the compiler vectorises
 * (libm's expf is a call per value unless -ffast-math, which would also change NaN and inf handling: here they
 * behave as in IEEE arithmetic). Included by each kernel file; native.py keys its build cache on this file too. */
#ifndef MBCONV_NATIVE_EXP_H
#define MBCONV_NATIVE_EXP_H
#include <math.h>
#include <stdint.h>

static inline float exp_approx(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

/* 1 / (1 + exp(-x)), 0 below x = -87 (the true value there is under 1.7e-38, and under float's smallest
 * normal, 1.2e-38, from -87.34 on): a subnormal result, and every product it enters, costs each SIMD lane a
 * microcode assist (twelfth session: the tour model with weights blown up to pre-activations near -87 ran its
 * native training step 5x slower) */
static inline float sigmoid_approx(float x) {
    return x < -87.0f ? 0.0f : 1.0f / (1.0f + exp_approx(-x));
}

#endif
