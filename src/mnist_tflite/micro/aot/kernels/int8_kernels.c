/* int8 inference kernels for code written by `mnist-tflite compile`; see int8_kernels.h. */
#include "int8_kernels.h"

#if I8K_DSP /* (int8_kernels.h chooses) */
#include <arm_acle.h>
/* One group of 4 patch values for two patches and two channels: 16 multiply-accumulates. */
#define I8K_GROUP                                                                              \
    "ldrd %[wa], %[wb], [%[w]], #8\n\t"                                                         \
    "ldrd %[x0], %[x1], [%[p]], #8\n\t"                                                         \
    "sxtb16 %[w0], %[wa]\n\t"                                                                   \
    "sxtb16 %[wa], %[wa], ror #8\n\t"                                                           \
    "sxtb16 %[w1], %[wb]\n\t"                                                                   \
    "sxtb16 %[wb], %[wb], ror #8\n\t"                                                           \
    "smlad %[a0], %[w0], %[x0], %[a0]\n\t"                                                      \
    "smlad %[a0], %[wa], %[x1], %[a0]\n\t"                                                      \
    "smlad %[a1], %[w1], %[x0], %[a1]\n\t"                                                      \
    "smlad %[a1], %[wb], %[x1], %[a1]\n\t"                                                      \
    "ldrd %[x0], %[x1], [%[p]], #8\n\t"                                                         \
    "smlad %[a2], %[w0], %[x0], %[a2]\n\t"                                                      \
    "smlad %[a2], %[wa], %[x1], %[a2]\n\t"                                                      \
    "smlad %[a3], %[w1], %[x0], %[a3]\n\t"                                                      \
    "smlad %[a3], %[wb], %[x1], %[a3]\n\t"
/* Two input words (x0, x1) of a tile position times four output channels' U: 16 products. */
#define I8K_WINO_WORD                                                                          \
    "ldrd %[x0], %[x1], [%[v]], #8\n\t"                                                         \
    "ldrd %[u0], %[u1], [%[U]], #8\n\t"                                                         \
    "smlad %[a0], %[u0], %[x0], %[a0]\n\t"                                                      \
    "smlad %[a1], %[u1], %[x0], %[a1]\n\t"                                                      \
    "ldrd %[u0], %[u1], [%[U]], #8\n\t"                                                         \
    "smlad %[a2], %[u0], %[x0], %[a2]\n\t"                                                      \
    "smlad %[a3], %[u1], %[x0], %[a3]\n\t"                                                      \
    "ldrd %[u0], %[u1], [%[U]], #8\n\t"                                                         \
    "smlad %[a0], %[u0], %[x1], %[a0]\n\t"                                                      \
    "smlad %[a1], %[u1], %[x1], %[a1]\n\t"                                                      \
    "ldrd %[u0], %[u1], [%[U]], #8\n\t"                                                         \
    "smlad %[a2], %[u0], %[x1], %[a2]\n\t"                                                      \
    "smlad %[a3], %[u1], %[x1], %[a3]\n\t"
/* SXTB16 of the word rotated right by 8: bytes 1 and 3, sign-extended to two halves */
static inline uint32_t sxtb16_odd(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
#endif

#if defined(__wasm_simd128__) && !defined(I8K_PLAIN_C)
#include <wasm_simd128.h>
#define I8K_SIMD128 1
#else
#define I8K_SIMD128 0
#endif

/* ---- fixed-point arithmetic (the TFLite int8 rounding rules) ---------------------------- */

/* round(a * b / 2^31), ties toward +infinity: what the reference's "add a nudge of 2^30
 * (1 - 2^30 below zero), then divide truncating" amounts to. b > 0 (a multiplier). */
static inline int32_t mul_high(int32_t a, int32_t b)
{
#if I8K_M0 || defined(I8K_MUL_HIGH_16) /* (the define: the same on any compiler, for tests) */
    /* ARMv6-M has no 32x32->64 multiply: four of 16x16 bits. With a = ah 2^16 + al,
    * b = bh 2^16 + bl: a b + 2^30 = 2^16 (ah bh 2^16 + s) + (al bl mod 2^16), where
    * s = ah bl + al bh + (al bl >> 16) + 2^14; shifting by 31 drops the last term (< 2^16). */
    const int32_t ah = a >> 16, bh = b >> 16;
    const uint32_t al = (uint32_t)a & 0xffffu, bl = (uint32_t)b & 0xffffu;
    const int32_t s1 = ah * (int32_t)bl + (int32_t)((al * bl) >> 16) + (1 << 14); /* < 2^31 */
    const int32_t s2 = (int32_t)al * bh; /* s = s1 + s2 may not fit: s >> 15 in parts */
    const uint32_t low = ((uint32_t)s1 & 0x7fffu) + ((uint32_t)s2 & 0x7fffu);
    return (int32_t)((uint32_t)(ah * bh) * 2u + (uint32_t)(s1 >> 15) + (uint32_t)(s2 >> 15) + (low >> 15));
#else
    return (int32_t)(((int64_t)a * b + (1 << 30)) >> 31);
#endif
}

/* The saturating rounding doubling high multiply: mul_high, except that
 * INT32_MIN * INT32_MIN, the one product that does not fit, saturates. */
static int32_t srdhm(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    return mul_high(a, b);
}

/* x / 2^e rounded to nearest, ties away from zero; 0 <= e <= 31. */
static inline int32_t rdpot(int32_t x, int e)
{
    int32_t mask = (int32_t)((1u << e) - 1u);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (remainder > threshold ? 1 : 0);
}

/* x * 2^e for 0 < e < 31, saturating. */
static int32_t sat_lshift(int32_t x, int e)
{
    int32_t threshold = (int32_t)((1u << (31 - e)) - 1u);
    if (x > threshold) {
        return INT32_MAX;
    }
    if (x < -threshold) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << e);
}

/* acc * mult * 2^shift / 2^31 with the reference's two roundings; mult in [0, 2^31). */
static inline int32_t requantize(int32_t acc, int32_t mult, int shift)
{
    if (__builtin_expect(shift > 0, 0)) {
        return mul_high((int32_t)((uint32_t)acc << shift), mult);
    }
    const int32_t x = mul_high(acc, mult);
    const int32_t mask = (int32_t)((1u << -shift) - 1u);
    return (x >> -shift) + ((x & mask) > (mask >> 1) + (x < 0) ? 1 : 0);
}

int32_t i8k_requantize(int32_t acc, int32_t mult, int32_t shift)
{
    return requantize(acc, mult, shift);
}

static inline int8_t clamp8(int32_t v, int8_t lo, int8_t hi)
{
    return (int8_t)(v < lo ? lo : v > hi ? hi : v);
}

#if !I8K_MVE /* the plain and DSP convolution, on int16 patches */
#if !I8K_M0 /* (the M0's is in int8_conv_m0.h) */
static uint32_t load32(const int8_t *p)
{
#if defined(__arm__) && !defined(__ARM_FEATURE_UNALIGNED) /* ARMv6-M (M0): no unaligned LDR */
    const uint8_t *b = (const uint8_t *)p; /* (memcpy would be a call into our byte loop) */
    return b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
#else
    uint32_t v;
    __builtin_memcpy(&v, p, 4); /* one LDR where unaligned loads are allowed */
    return v;
#endif
}

/* ---- convolution (+ max pool) ----------------------------------------------------------- */

/* Within each group of 4 patch values x0..x3 the scratch holds x0, x2, x1, x3: the two
 * words SXTB16 makes of one int8 word, so SMLAD pairs them with the weights expanded the
 * same way. Two patches interleave: group g of patch s is at int16 offset 8 * g + 4 * s. */
static void expand4(uint32_t v, int16_t *dst)
{
#if I8K_DSP
    uint32_t *d = (uint32_t *)(void *)dst;
    d[0] = __sxtb16(v);
    d[1] = sxtb16_odd(v);
#else
    dst[0] = (int8_t)(v & 0xff);
    dst[1] = (int8_t)((v >> 16) & 0xff);
    dst[2] = (int8_t)((v >> 8) & 0xff);
    dst[3] = (int8_t)(v >> 24);
#endif
}

/* The patch of convolution output (cy, cx) into patch slot dst (scratch + 4 * slot). */
static void im2col(const i8k_conv_t *p, const int8_t *in, int cy, int cx, int16_t *dst)
{
    const int iy0 = cy * p->kernel.stride_h - p->kernel.pad_top, ix0 = cx * p->kernel.stride_w - p->kernel.pad_left;
    const int c = p->input.c;
    if ((c & 3) == 0) { /* whole words: 4 channels at a time */
        const uint32_t zp4 = (uint8_t)p->in_zp * 0x01010101u;
        for (int ky = 0; ky < p->kernel.h; ky++) {
            const int iy = iy0 + ky;
            for (int kx = 0; kx < p->kernel.w; kx++) {
                const int ix = ix0 + kx;
                if (iy >= 0 && iy < p->input.h && ix >= 0 && ix < p->input.w) {
                    const int8_t *src = in + (iy * p->input.w + ix) * c;
                    for (int i = 0; i < c; i += 4, dst += 8) {
                        expand4(load32(src + i), dst);
                    }
                } else {
                    for (int i = 0; i < c; i += 4, dst += 8) {
                        expand4(zp4, dst);
                    }
                }
            }
        }
        return;
    }
    /* any channel count: gather 4 values at a time, then expand them as a word */
    uint32_t word = 0;
    int bits = 0;
    const int run = p->kernel.w * c; /* bytes of one patch row, contiguous when it is all inside */
    const int cols_inside = ix0 >= 0 && ix0 + p->kernel.w <= p->input.w;
    for (int ky = 0; ky < p->kernel.h; ky++) {
        const int iy = iy0 + ky;
        const int row_inside = iy >= 0 && iy < p->input.h;
        const int8_t *src = row_inside ? in + (iy * p->input.w + ix0) * c : in;
        if (row_inside && cols_inside) {
            for (int i = 0; i < run; i++) {
                word |= (uint32_t)(uint8_t)src[i] << bits;
                if ((bits += 8) == 32) {
                    expand4(word, dst);
                    dst += 8;
                    word = 0;
                    bits = 0;
                }
            }
            continue;
        }
        for (int i = 0; i < run; i++) { /* part of the row is padding */
            const int ix = ix0 + i / c;
            const int8_t v = row_inside && ix >= 0 && ix < p->input.w ? src[i] : p->in_zp;
            word |= (uint32_t)(uint8_t)v << bits;
            if ((bits += 8) == 32) {
                expand4(word, dst);
                dst += 8;
                word = 0;
                bits = 0;
            }
        }
    }
    if (bits) {
        expand4(word, dst); /* the rest of the last group is 0; so are its weights */
    }
}

#if I8K_DSP
/* a0..a3 (patch 0 and 1, channels 0 and 1 of a pair) += the groups of the pair's weights W
 * (advanced past them) times the two interleaved patches at P. */
#define I8K_DOT_2X2(a0, a1, a2, a3, W, P, groups)                                                   \
    do {                                                                                         \
        uint32_t wa, wb, w0, w1, x0, x1;                                                         \
        const uint32_t *pp = (P);                                                                \
        int n = (groups);                                                                        \
        __asm__ volatile("tst %[n], #1\n\t"                                                     \
                         "beq 2f\n\t" I8K_GROUP "2:\n\t"                                        \
                         "lsrs %[n], %[n], #1\n\t"                                              \
                         "beq 3f\n\t"                                                           \
                         "1:\n\t" I8K_GROUP I8K_GROUP "subs %[n], %[n], #1\n\t"                 \
                         "bne 1b\n\t"                                                           \
                         "3:\n\t"                                                               \
                         : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3),          \
                           [w] "+r"(W), [p] "+r"(pp), [n] "+r"(n), [wa] "=&r"(wa), [wb] "=&r"(wb), \
                           [w0] "=&r"(w0), [w1] "=&r"(w1), [x0] "=&r"(x0), [x1] "=&r"(x1)       \
                         :                                                                      \
                         : "cc", "memory");                                                     \
    } while (0)

/* Two positions of a pool window, every channel pair: best = max(best, both sums). */
static void pool_pairs(const uint32_t *P, const uint32_t *W, const int32_t *bias, int32_t *best, int pairs,
                       int groups, int first)
{
    do {
        int32_t a0 = bias[0], a1 = bias[1], a2 = a0, a3 = a1;
        I8K_DOT_2X2(a0, a1, a2, a3, W, P, groups);
        a0 = a2 > a0 ? a2 : a0;
        a1 = a3 > a1 ? a3 : a1;
        if (!first) {
            a0 = best[0] > a0 ? best[0] : a0;
            a1 = best[1] > a1 ? best[1] : a1;
        }
        best[0] = a0;
        best[1] = a1;
        bias += 2;
        best += 2;
    } while (--pairs);
}

/* Two neighbouring outputs (no pool), every channel pair: their sums to sums0 and sums1. */
static void output_pairs(const uint32_t *P, const uint32_t *W, const int32_t *bias, int32_t *sums0,
                         int32_t *sums1, int pairs, int groups)
{
    do {
        int32_t a0 = bias[0], a1 = bias[1], a2 = a0, a3 = a1;
        I8K_DOT_2X2(a0, a1, a2, a3, W, P, groups);
        sums0[0] = a0;
        sums0[1] = a1;
        sums1[0] = a2;
        sums1[1] = a3;
        bias += 2;
        sums0 += 2;
        sums1 += 2;
    } while (--pairs);
}
#endif

#if I8K_SIMD128
/* WebAssembly SIMD128: the dot products of one channel pair (weights W, group layout as
 * in the header) with two interleaved patches P: s = {patch 0 . channel 0, patch 0 .
 * channel 1, patch 1 . channel 0, patch 1 . channel 1}, without the bias. Each group's 8
 * weight bytes are put in the patches' order (x0, x2, x1, x3) and widened to int16, so one
 * i32x4.dot_i16x8 multiplies both patches by one channel's 4 weights. */
static void dot_2x2(const int16_t *P, const int8_t *W, int groups, int32_t s[4])
{
    v128_t acc0 = wasm_i32x4_splat(0), acc1 = acc0;
    int g = 0;
    for (; g + 1 < groups; g += 2, P += 16, W += 16) { /* two groups: one 16-byte weight load */
        const v128_t x0 = wasm_v128_load(P), x1 = wasm_v128_load(P + 8);
        const v128_t w = wasm_v128_load(W);
        const v128_t w0 = wasm_i8x16_shuffle(w, w, 0, 2, 1, 3, 0, 2, 1, 3, 4, 6, 5, 7, 4, 6, 5, 7);
        const v128_t w1 = wasm_i8x16_shuffle(w, w, 8, 10, 9, 11, 8, 10, 9, 11, 12, 14, 13, 15, 12, 14, 13, 15);
        acc0 = wasm_i32x4_add(acc0, wasm_i32x4_dot_i16x8(x0, wasm_i16x8_extend_low_i8x16(w0)));
        acc1 = wasm_i32x4_add(acc1, wasm_i32x4_dot_i16x8(x0, wasm_i16x8_extend_high_i8x16(w0)));
        acc0 = wasm_i32x4_add(acc0, wasm_i32x4_dot_i16x8(x1, wasm_i16x8_extend_low_i8x16(w1)));
        acc1 = wasm_i32x4_add(acc1, wasm_i32x4_dot_i16x8(x1, wasm_i16x8_extend_high_i8x16(w1)));
    }
    if (g < groups) { /* an odd last group */
        const v128_t x = wasm_v128_load(P);
        const v128_t w = wasm_v128_load64_zero(W);
        const v128_t wp = wasm_i8x16_shuffle(w, w, 0, 2, 1, 3, 0, 2, 1, 3, 4, 6, 5, 7, 4, 6, 5, 7);
        acc0 = wasm_i32x4_add(acc0, wasm_i32x4_dot_i16x8(x, wasm_i16x8_extend_low_i8x16(wp)));
        acc1 = wasm_i32x4_add(acc1, wasm_i32x4_dot_i16x8(x, wasm_i16x8_extend_high_i8x16(wp)));
    }
    /* lanes: patch 0 (two halves), patch 1 (two halves); integer sums, any order is exact */
    acc0 = wasm_i32x4_add(acc0, wasm_i32x4_shuffle(acc0, acc0, 1, 0, 3, 2));
    acc1 = wasm_i32x4_add(acc1, wasm_i32x4_shuffle(acc1, acc1, 1, 0, 3, 2));
    s[0] = wasm_i32x4_extract_lane(acc0, 0);
    s[1] = wasm_i32x4_extract_lane(acc1, 0);
    s[2] = wasm_i32x4_extract_lane(acc0, 2);
    s[3] = wasm_i32x4_extract_lane(acc1, 2);
}
#endif

/* Every output channel's sum (bias + patch . weights) for the npx patches in scratch.
 * With two patches and sums1 == NULL the larger of the two is kept (a pool window);
 * otherwise patch 1's sums go to sums1. first: set sums0, else keep the larger. */
static void conv_channels(const i8k_conv_t *p, const int16_t *patches, int npx, int first, int32_t *sums0,
                          int32_t *sums1)
{
    const int groups = p->filter.k_pad >> 2;
    int c = 0;
#if I8K_DSP
    const int pairs = p->conv.c >> 1;
    if (npx == 2 && pairs) { /* the hot path */
        const uint32_t *P = (const uint32_t *)(const void *)patches;
        const uint32_t *W = (const uint32_t *)(const void *)p->filter.weights;
        if (sums1) {
            output_pairs(P, W, p->filter.bias, sums0, sums1, pairs, groups);
        } else {
            pool_pairs(P, W, p->filter.bias, sums0, pairs, groups, first);
        }
        c = 2 * pairs;
    }
#elif I8K_SIMD128
    for (; npx == 2 && c + 1 < p->conv.c; c += 2) { /* channel pairs, as the DSP path */
        int32_t s[4];
        dot_2x2(patches, p->filter.weights + c * p->filter.k_pad, groups, s);
        const int32_t a0 = p->filter.bias[c] + s[0], a1 = p->filter.bias[c + 1] + s[1];
        const int32_t a2 = p->filter.bias[c] + s[2], a3 = p->filter.bias[c + 1] + s[3];
        if (sums1) {
            sums0[c] = a0, sums0[c + 1] = a1, sums1[c] = a2, sums1[c + 1] = a3;
            continue;
        }
        const int32_t m0 = a2 > a0 ? a2 : a0, m1 = a3 > a1 ? a3 : a1;
        sums0[c] = first || m0 > sums0[c] ? m0 : sums0[c];
        sums0[c + 1] = first || m1 > sums0[c + 1] ? m1 : sums0[c + 1];
    }
#else
    const int pairs = p->conv.c >> 1;
    if (npx == 2 && pairs) { /* two patches by two channels: each value loaded feeds two MACs */
        const int8_t *w = p->filter.weights;
        const int32_t *bias = p->filter.bias;
        for (int k = 0; k < pairs; k++, bias += 2) {
            int32_t a0 = bias[0], a1 = bias[1], a2 = a0, a3 = a1;
            const int16_t *x = patches;
            for (int g = 0; g < groups; g++, w += 8, x += 8) {
                const int32_t x0 = x[0], x2 = x[1], x1 = x[2], x3 = x[3]; /* stored x0, x2, x1, x3 */
                const int32_t y0 = x[4], y2 = x[5], y1 = x[6], y3 = x[7];
                int32_t u = w[0], v = w[1];
                a0 += x0 * u;
                a2 += y0 * u;
                a0 += x1 * v;
                a2 += y1 * v;
                u = w[2];
                v = w[3];
                a0 += x2 * u;
                a2 += y2 * u;
                a0 += x3 * v;
                a2 += y3 * v;
                u = w[4];
                v = w[5];
                a1 += x0 * u;
                a3 += y0 * u;
                a1 += x1 * v;
                a3 += y1 * v;
                u = w[6];
                v = w[7];
                a1 += x2 * u;
                a3 += y2 * u;
                a1 += x3 * v;
                a3 += y3 * v;
            }
            int32_t *s = sums0 + 2 * k;
            if (sums1) {
                s[0] = a0;
                s[1] = a1;
                sums1[2 * k] = a2;
                sums1[2 * k + 1] = a3;
                continue;
            }
            a0 = a2 > a0 ? a2 : a0;
            a1 = a3 > a1 ? a3 : a1;
            s[0] = first || a0 > s[0] ? a0 : s[0];
            s[1] = first || a1 > s[1] ? a1 : s[1];
        }
        c = 2 * pairs;
    }
#endif
    /* the rest (plain C; with two patches only the last channel of an odd count) */
    for (; c < p->conv.c; c++) {
        const int in_pair = (c & ~1) + 1 < p->conv.c; /* weights interleaved with a neighbour */
        const int8_t *w = p->filter.weights + (c & ~1) * p->filter.k_pad + (in_pair && (c & 1) ? 4 : 0);
        const int stride = in_pair ? 8 : 4;
        int32_t a0 = p->filter.bias[c], a1 = a0;
        for (int g = 0; g < groups; g++, w += stride) {
            const int16_t *x = patches + g * 8, *y = x + 4; /* x0, x2, x1, x3 */
            a0 += x[0] * w[0] + x[2] * w[1] + x[1] * w[2] + x[3] * w[3];
            a1 += y[0] * w[0] + y[2] * w[1] + y[1] * w[2] + y[3] * w[3];
        }
        if (npx == 2 && sums1) {
            sums1[c] = a1;
        } else if (npx == 2 && a1 > a0) {
            a0 = a1;
        }
        if (first || a0 > sums0[c]) {
            sums0[c] = a0;
        }
    }
}

#endif /* !I8K_M0 */

static void requantize_row(const i8k_conv_t *p, const int32_t *sums, int8_t *out)
{
    const int32_t *mult = p->quant.mult;
    const int8_t *shift = p->quant.shift;
    const int n = p->conv.c, zp = p->out_zp, lo = p->act.min, hi = p->act.max;
    for (int c = 0; c < n; c++) {
        const int32_t v = requantize(sums[c], mult[c], shift[c]) + zp;
        out[c] = (int8_t)(v < lo ? lo : v > hi ? hi : v);
    }
}


#if I8K_WINO
/* ---- Winograd F(2x2, 3x3) + 2x2 max pool (see int8_kernels.h, micro/aot/winograd.py) ------- */

/* A^T m A (4 times the 2x2 block of sums; the sum of tile position k at m[k * step]), its
 * maximum (the pool), / 4, + bias, requantized. */
static int8_t wino_output(const i8k_conv_t *p, const int32_t *m, int step, int c)
{
    int32_t s0[4], s1[4];
    for (int b = 0; b < 4; b++) {
        s0[b] = m[b * step] + m[(4 + b) * step] + m[(8 + b) * step];
        s1[b] = m[(4 + b) * step] - m[(8 + b) * step] - m[(12 + b) * step];
    }
    int32_t y = s0[0] + s0[1] + s0[2], t = s0[1] - s0[2] - s0[3];
    y = t > y ? t : y;
    t = s1[0] + s1[1] + s1[2];
    y = t > y ? t : y;
    t = s1[1] - s1[2] - s1[3];
    y = t > y ? t : y;
    /* y is exactly 4 times a sum: the shift is exact */
    const int32_t v = requantize((y >> 2) + p->filter.bias[c], p->quant.mult[c], p->quant.shift[c]) + p->out_zp;
    return (int8_t)(v < p->act.min ? p->act.min : v > p->act.max ? p->act.max : v);
}

#endif

#if I8K_DSP

/* B^T d B of one 4x4 tile, on words of two int16 channels: d[16] (position 4 * row + column)
 * in, v[position * stride] out. |values| <= 512: the halves never carry into each other. */
static void wino_input(const uint32_t *d, uint32_t *v, int stride)
{
    uint32_t t[16];
    for (int c = 0; c < 4; c++) { /* B^T d: down the columns */
        const uint32_t d0 = d[c], d1 = d[4 + c], d2 = d[8 + c], d3 = d[12 + c];
        t[c] = __ssub16(d0, d2);
        t[4 + c] = __sadd16(d1, d2);
        t[8 + c] = __ssub16(d2, d1);
        t[12 + c] = __ssub16(d1, d3);
    }
    for (int r = 0; r < 4; r++) { /* (B^T d) B: along the rows */
        const uint32_t *q = t + 4 * r;
        uint32_t *o = v + 4 * r * stride;
        o[0] = __ssub16(q[0], q[2]);
        o[stride] = __sadd16(q[1], q[2]);
        o[2 * stride] = __ssub16(q[2], q[1]);
        o[3 * stride] = __ssub16(q[1], q[3]);
    }
}

void i8k_conv_wino(const i8k_conv_t *p, const int8_t *in, int8_t *out, void *scratch)
{
    const int ic = p->input.c, words = ic >> 1, oc = p->conv.c, row = p->input.w * ic;
    uint32_t *V = (uint32_t *)scratch; /* [16 positions][words] */
    for (int ty = 0; ty < p->output.h; ty++) {
        for (int tx = 0; tx < p->output.w; tx++) {
            const int8_t *base = in + 2 * ty * row + 2 * tx * ic;
            for (int g = 0; g < ic; g += 4) {
                uint32_t *d0 = V + 16 * words, *d1 = d0 + 16; /* the sums' space, free until then */
                for (int k = 0; k < 16; k++) {
                    const uint32_t x = load32(base + (k >> 2) * row + (k & 3) * ic + g);
                    d0[k] = __sxtb16(x);
                    d1[k] = sxtb16_odd(x);
                }
                wino_input(d0, V + (g >> 1), words);
                wino_input(d1, V + (g >> 1) + 1, words);
            }
            const uint32_t *U = (const uint32_t *)(const void *)p->wino;
            int8_t *o = out + (ty * p->output.w + tx) * oc;
            for (int c = 0; c < oc; c += 4) {
                int32_t(*m)[16] = (int32_t(*)[16])(void *)(V + 16 * words); /* after V in the scratch */
                const uint32_t *v = V;
                for (int k = 0; k < 16; k++) {
                    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                    uint32_t x0, x1, u0, u1;
                    int n = words >> 2;
                    __asm__ volatile("1:\n\t" I8K_WINO_WORD I8K_WINO_WORD "subs %[n], %[n], #1\n\t"
                                     "bne 1b\n\t"
                                     : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3),
                                       [v] "+r"(v), [U] "+r"(U), [n] "+r"(n), [x0] "=&r"(x0), [x1] "=&r"(x1),
                                       [u0] "=&r"(u0), [u1] "=&r"(u1)
                                     :
                                     : "cc", "memory");
                    m[0][k] = a0;
                    m[1][k] = a1;
                    m[2][k] = a2;
                    m[3][k] = a3;
                }
                for (int q = 0; q < 4; q++) {
                    o[c + q] = wino_output(p, m[q], 1, c + q);
                }
            }
        }
    }
}
#endif

#if I8K_M0
#include "int8_conv_m0.h"
#endif
#else
#include "int8_conv_mve.h"
#endif

void i8k_conv(const i8k_conv_t *p, const int8_t *in, int8_t *out, void *scratch)
{
#if I8K_MVE
    conv_mve(p, in, out, scratch);
#elif I8K_M0
    conv_m0(p, in, out, scratch);
#else
    int16_t *patches = (int16_t *)scratch;
    /* the layout I8K_CONV_SCRATCH_BYTES states: two patches, then the sums */
    int32_t *sums = (int32_t *)(void *)((int8_t *)scratch + 4 * p->filter.k_pad);
    const int out_c = p->conv.c;
    const int pooled = p->pool.h * p->pool.w > 1;
    /* Requantization is monotonic (positive multipliers), so the max pool compares the
     * int32 sums and requantizes only the largest: the same bits as pooling int8 outputs. */
    for (int oy = 0; oy < p->output.h; oy++) {
        for (int ox = 0; ox < p->output.w; ox++) {
            int8_t *o = out + (oy * p->output.w + ox) * out_c;
            if (!pooled && ox + 1 < p->output.w) { /* no pool: two outputs at a time */
                const int cy = oy * p->pool.stride_h - p->pool.pad_top, cx = ox * p->pool.stride_w - p->pool.pad_left;
                im2col(p, in, cy, cx, patches);
                im2col(p, in, cy, cx + p->pool.stride_w, patches + 4);
                conv_channels(p, patches, 2, 1, sums, sums + out_c);
                requantize_row(p, sums, o);
                requantize_row(p, sums + out_c, o + out_c);
                ox++;
                continue;
            }
            int n = 0, first = 1;
            for (int wy = 0; wy < p->pool.h; wy++) {
                const int cy = oy * p->pool.stride_h - p->pool.pad_top + wy;
                if (cy < 0 || cy >= p->conv.h) {
                    continue;
                }
                for (int wx = 0; wx < p->pool.w; wx++) {
                    const int cx = ox * p->pool.stride_w - p->pool.pad_left + wx;
                    if (cx < 0 || cx >= p->conv.w) {
                        continue;
                    }
                    im2col(p, in, cy, cx, patches + 4 * n);
                    if (++n == 2) {
                        conv_channels(p, patches, 2, first, sums, 0);
                        n = first = 0;
                    }
                }
            }
            if (n == 1) {
                conv_channels(p, patches, 1, first, sums, 0);
            }
            requantize_row(p, sums, o);
        }
    }
#endif
}

/* ---- fully connected -------------------------------------------------------------------- */

void i8k_fc(const i8k_fc_t *p, const int8_t *in, int8_t *out)
{
    const int words = p->in_n >> 2;
    for (int o = 0; o < p->out_n; o++) {
        const int8_t *w = p->filter.weights + o * p->filter.k_pad;
        int32_t acc = p->filter.bias[o];
        int done = 4 * words;
#if I8K_MVE
        for (int i = 0; i < p->in_n; i += 16) { /* predicated: the row's tail, no padding read */
            const mve_pred16_t q = vctp8q((uint32_t)(p->in_n - i));
            acc = vmladavaq_p_s8(acc, vldrbq_z_s8(in + i, q), vldrbq_z_s8(w + i, q), q);
        }
        done = p->in_n;
#elif I8K_DSP
        const uint32_t *W = (const uint32_t *)(const void *)w;
        for (int i = 0; i < words; i++) {
            const uint32_t x = load32(in + 4 * i), wv = W[i];
            acc = __smlad(__sxtb16(x), __sxtb16(wv), acc);
            acc = __smlad(sxtb16_odd(x), sxtb16_odd(wv), acc);
        }
#else
        for (int i = 0; i < 4 * words; i++) {
            acc += (int32_t)in[i] * w[i];
        }
#endif
        for (int i = done; i < p->in_n; i++) {
            acc += (int32_t)in[i] * w[i];
        }
        const int q = p->per_channel ? o : 0;
        out[o] = clamp8(requantize(acc, p->quant.mult[q], p->quant.shift[q]) + p->out_zp, p->act.min, p->act.max);
    }
}

/* ---- max pool --------------------------------------------------------------------------- */

void i8k_maxpool(const i8k_pool_t *p, const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < p->output.h; oy++) {
        for (int ox = 0; ox < p->output.w; ox++) {
            for (int c = 0; c < p->input.c; c++) {
                int32_t m = -128;
                for (int wy = 0; wy < p->pool.h; wy++) {
                    const int iy = oy * p->pool.stride_h - p->pool.pad_top + wy;
                    if (iy < 0 || iy >= p->input.h) {
                        continue;
                    }
                    for (int wx = 0; wx < p->pool.w; wx++) {
                        const int ix = ox * p->pool.stride_w - p->pool.pad_left + wx;
                        if (ix >= 0 && ix < p->input.w && in[(iy * p->input.w + ix) * p->input.c + c] > m) {
                            m = in[(iy * p->input.w + ix) * p->input.c + c];
                        }
                    }
                }
                *out++ = clamp8(m, p->act.min, p->act.max);
            }
        }
    }
}

/* ---- softmax ---------------------------------------------------------------------------- */
/* Fixed-point formats below: Qm.n with m integer bits in an int32 (m + n = 31). */

/* exp(a) for a in [-1/4, 0), Q0.31 in and out: a Taylor expansion around -1/8. */
static int32_t exp_quarter(int32_t a)
{
    const int32_t exp_minus_eighth = 1895147668; /* round(exp(-1/8) * 2^31) */
    const int32_t one_third = 715827883;         /* round(2^31 / 3) */
    const int32_t x = a + (1 << 28);             /* a + 1/8 */
    const int32_t x2 = srdhm(x, x), x3 = srdhm(x2, x), x4 = srdhm(x2, x2);
    /* x^2/2 + x^3/6 + x^4/24 = ((x^4/4 + x^3) / 3 + x^2) / 2 */
    const int32_t poly = rdpot(srdhm(rdpot(x4, 2) + x3, one_third) + x2, 1);
    return exp_minus_eighth + srdhm(exp_minus_eighth, x + poly);
}

/* exp(a) for a <= 0 in Q5.26; result in Q0.31. exp(a) = exp(a mod 1/4 - 1/4) times
 * exp(-2^k) for each bit k of the rest. */
static int32_t exp_negative(int32_t a)
{
    static const int32_t exp_minus_pow2[7] = {
        /* round(exp(-2^k) * 2^31), k = -2 .. 4 */
        1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242,
    };
    const int32_t quarter = 1 << 24;
    const int32_t low = (a & (quarter - 1)) - quarter;
    int32_t r = exp_quarter(sat_lshift(low, 5));
    const int32_t rest = low - a;
    for (int k = 0; k < 7; k++) {
        if (rest & (1 << (24 + k))) {
            r = srdhm(r, exp_minus_pow2[k]);
        }
    }
    return a == 0 ? INT32_MAX : r;
}

/* 1 / (1 + x) for x in [0, 1), Q0.31 in and out, by three Newton-Raphson steps on the
 * half denominator, in Q2.29, from the initial guess 48/17 - 32/17 * d. */
static int32_t reciprocal_one_plus(int32_t x)
{
    const int64_t sum = (int64_t)x + INT32_MAX;
    const int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    const int32_t c48_17 = 1515870810, c_minus32_17 = -1010580540; /* round(+-c * 2^29) */
    int32_t r = c48_17 + srdhm(half_den, c_minus32_17);
    for (int i = 0; i < 3; i++) {
        const int32_t one_minus = (1 << 29) - srdhm(half_den, r);
        r = r + sat_lshift(srdhm(r, one_minus), 2);
    }
    return sat_lshift(r, 1);
}

void i8k_softmax(const i8k_softmax_t *p, const int8_t *in, int8_t *out)
{
    for (int row = 0; row < p->rows; row++, in += p->depth, out += p->depth) {
        int32_t max = -128;
        for (int i = 0; i < p->depth; i++) {
            max = in[i] > max ? in[i] : max;
        }
        int32_t sum = 0; /* Q12.19 */
        for (int i = 0; i < p->depth; i++) {
            const int32_t diff = in[i] - max;
            if (diff >= p->diff_min) {
                const int32_t scaled = srdhm((int32_t)((uint32_t)diff << p->in_left_shift), p->in_mult);
                sum += rdpot(exp_negative(scaled), 12);
            }
        }
        const int headroom = __builtin_clz((uint32_t)sum); /* sum >= exp(0) > 0 */
        const int bits_over_unit = 12 - headroom;
        const int32_t scale = reciprocal_one_plus((int32_t)(((uint32_t)sum << headroom) - (1u << 31)));
        for (int i = 0; i < p->depth; i++) {
            const int32_t diff = in[i] - max;
            if (diff >= p->diff_min) {
                const int32_t scaled = srdhm((int32_t)((uint32_t)diff << p->in_left_shift), p->in_mult);
                const int32_t e = exp_negative(scaled);
                const int32_t v = rdpot(srdhm(scale, e), bits_over_unit + 31 - 8) - 128;
                out[i] = clamp8(v, -128, 127);
            } else {
                out[i] = -128;
            }
        }
    }
}

void i8k_copy(const int8_t *in, int8_t *out, uint32_t n)
{
    if (out < in) {
        for (uint32_t i = 0; i < n; i++) {
            out[i] = in[i];
        }
    } else if (out > in) {
        while (n--) {
            out[n] = in[n];
        }
    }
}
