/* The convolution (+ max pool) for ARMv6-M (Cortex-M0, M0+): part of int8_kernels.c, included
 * there when I8K_M0 (the compiler targets ARMv6-M), after the shared fixed-point helpers.
 *
 * Thumb-1 has no multiply-accumulate, and its only loads with an immediate offset are LDR,
 * LDRH and LDRB (the signed LDRSB/LDRSH take a register offset). So one patch value, loaded
 * once as an int32, meets four output channels' weights, each loaded with LDRB, multiplied
 * by MULS and added: 13 instructions for 4 MACs. The weights are the generated file's
 * `#if I8K_M0` layout: blocks of four output channels, [block][k][4], then each remaining
 * channel's row [k]; K = kernel.h * kernel.w * input.c values per row, unpadded; each byte is
 * the weight + 128 (0..255, what LDRB reads). The sum of (w + 128) * x is the sum of w * x
 * plus 128 times the patch's sum, which the sums start without. All arithmetic is modulo 2^32,
 * so the result is the exact int32 sum. Written for this project from the ARMv6-M
 * Architecture Reference Manual. Scratch: the patch as K int32, then one int32 per output
 * channel (I8K_CONV_SCRATCH_BYTES: 4 * k_pad + 4 * out_c >= that). */

/* The patch of convolution output (cy, cx) as int32 (padding positions hold in_zp, which the
 * folded bias cancels); returns 128 times the sum of its values. */
static int32_t im2col_m0(const i8k_conv_t *p, const int8_t *in, int cy, int cx, int32_t *dst)
{
    const int iy0 = cy * p->kernel.stride_h - p->kernel.pad_top, ix0 = cx * p->kernel.stride_w - p->kernel.pad_left;
    const int c = p->input.c, zp = p->in_zp;
    int32_t sum = 0;
    for (int ky = 0; ky < p->kernel.h; ky++) {
        const int iy = iy0 + ky;
        for (int kx = 0; kx < p->kernel.w; kx++) {
            const int ix = ix0 + kx;
            if (iy >= 0 && iy < p->input.h && ix >= 0 && ix < p->input.w) {
                const int8_t *src = in + (iy * p->input.w + ix) * c;
                for (int i = 0; i < c; i++) {
                    const int32_t v = src[i];
                    dst[i] = v;
                    sum += v;
                }
            } else {
                for (int i = 0; i < c; i++) {
                    dst[i] = zp;
                }
                sum += zp * c;
            }
            dst += c;
        }
    }
    return sum * 128;
}

/* GCC hands Thumb-1 inline assembly over in divided syntax (and switches back after it) */
#define I8K_M0_UNIFIED ".syntax unified\n\t"

/* One patch value (x[i]) times four channels' weights (w[4 i .. 4 i + 3]). */
#define I8K_M0_TAP(i)                                                                             \
    "ldr %[t], [%[x], #4*" #i "]\n\t"                                                            \
    "ldrb %[u], [%[w], #4*" #i "]\n\t"                                                           \
    "muls %[u], %[t], %[u]\n\t"                                                                  \
    "add %[a0], %[u]\n\t"                                                                        \
    "ldrb %[u], [%[w], #4*" #i "+1]\n\t"                                                         \
    "muls %[u], %[t], %[u]\n\t"                                                                  \
    "add %[a1], %[u]\n\t"                                                                        \
    "ldrb %[u], [%[w], #4*" #i "+2]\n\t"                                                         \
    "muls %[u], %[t], %[u]\n\t"                                                                  \
    "add %[a2], %[u]\n\t"                                                                        \
    "ldrb %[u], [%[w], #4*" #i "+3]\n\t"                                                         \
    "muls %[u], %[t], %[u]\n\t"                                                                  \
    "add %[a3], %[u]\n\t"

/* a[0..3] += the k values of patch x times a block of four channels' weights w ([k][4]). */
static void dot4_m0(const int32_t *x, const uint8_t *w, int k, int32_t *a)
{
    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], t, u;
    int n = k >> 3;
    if (n) { /* 8 values a turn: LDR and LDRB reach them all with immediate offsets */
        __asm__ volatile(I8K_M0_UNIFIED "1:\n\t" I8K_M0_TAP(0) I8K_M0_TAP(1) I8K_M0_TAP(2) I8K_M0_TAP(3) I8K_M0_TAP(4)
                             I8K_M0_TAP(5) I8K_M0_TAP(6) I8K_M0_TAP(7) "adds %[x], #32\n\t"
                                                                       "adds %[w], #32\n\t"
                                                                       "subs %[n], #1\n\t"
                                                                       "bne 1b\n\t"
                         : [a0] "+h"(a0), [a1] "+h"(a1), [a2] "+h"(a2), [a3] "+h"(a3), [x] "+l"(x),
                           [w] "+l"(w), [n] "+l"(n), [t] "=&l"(t), [u] "=&l"(u)
                         :
                         : "cc", "memory");
    }
    for (n = k & 7; n; n--, x++, w += 4) {
        __asm__ volatile(I8K_M0_UNIFIED I8K_M0_TAP(0)
                         : [a0] "+h"(a0), [a1] "+h"(a1), [a2] "+h"(a2), [a3] "+h"(a3), [t] "=&l"(t), [u] "=&l"(u)
                         : [x] "l"(x), [w] "l"(w)
                         : "memory");
    }
    a[0] = a0;
    a[1] = a1;
    a[2] = a2;
    a[3] = a3;
}

/* Every output channel's sum for the patch in scratch; first: set sums, else keep the larger. */
static void conv_channels_m0(const i8k_conv_t *p, const int32_t *x, int32_t corr, int first, int32_t *sums)
{
    const int k = p->kernel.h * p->kernel.w * p->input.c, n = p->conv.c;
    const uint8_t *w = (const uint8_t *)p->filter.weights;
    const int32_t *bias = p->filter.bias;
    int c = 0;
    for (; c + 4 <= n; c += 4, w += 4 * k) {
        int32_t a[4] = {bias[c] - corr, bias[c + 1] - corr, bias[c + 2] - corr, bias[c + 3] - corr};
        dot4_m0(x, w, k, a);
        for (int q = 0; q < 4; q++) {
            sums[c + q] = first || a[q] > sums[c + q] ? a[q] : sums[c + q];
        }
    }
    for (; c < n; c++, w += k) { /* the channels after the last block of four */
        int32_t a = bias[c] - corr;
        for (int i = 0; i < k; i++) {
            a += (int32_t)w[i] * x[i];
        }
        sums[c] = first || a > sums[c] ? a : sums[c];
    }
}

static void conv_m0(const i8k_conv_t *p, const int8_t *in, int8_t *out, void *scratch)
{
    int32_t *patch = (int32_t *)scratch;
    int32_t *sums = (int32_t *)(void *)((int8_t *)scratch + 4 * p->filter.k_pad);
    const int out_c = p->conv.c;
    /* Requantization is monotonic (positive multipliers), so the max pool compares the
     * int32 sums and requantizes only the largest: the same bits as pooling int8 outputs. */
    for (int oy = 0; oy < p->output.h; oy++) {
        for (int ox = 0; ox < p->output.w; ox++) {
            int first = 1;
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
                    conv_channels_m0(p, patch, im2col_m0(p, in, cy, cx, patch), first, sums);
                    first = 0;
                }
            }
            requantize_row(p, sums, out + (oy * p->output.w + ox) * out_c);
        }
    }
}
