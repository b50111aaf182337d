/* The convolution (+ max pool) with Helium (MVE) for the Cortex-M55: part of int8_kernels.c,
 * included there when I8K_MVE (the compiler targets MVE), after the shared fixed-point helpers.
 *
 * Patches are int8 as the input holds them (no widening), one VMLADAVA.S8 multiplies 16
 * pairs and adds them to a scalar sum. Weights: one row of k16 bytes per output channel
 * (the generated file's `#if I8K_MVE` layout), zeros after the patch's K values. Four patch
 * slots interleave by 16-byte chunks (chunk i of slot j at 64 i + 16 j), so one pointer walks
 * all four in the dot loop. Written for this project from the Arm MVE intrinsics reference. */
#include <arm_mve.h>

static inline int k16_of(const i8k_conv_t *p)
{
    return (p->filter.k_pad + 15) & ~15;
}

static inline __attribute__((always_inline)) void copy_s8(int8_t *d, const int8_t *s, int n)
{
    if (n < 16) { /* short runs (a 3x3 kernel on one channel): bytes beat a predicated vector */
        while (n--) {
            *d++ = *s++;
        }
        return;
    }
    for (; n > 0; n -= 16, d += 16, s += 16) {
        const mve_pred16_t q = vctp8q((uint32_t)n);
        vstrbq_p_s8(d, vldrbq_z_s8(s, q), q);
    }
}

static void fill_s8(int8_t *d, int8_t v, int n)
{
    const int8x16_t x = vdupq_n_s8(v);
    for (; n > 0; n -= 16, d += 16) {
        vstrbq_p_s8(d, x, vctp8q((uint32_t)n));
    }
}

/* n bytes at patch positions k..k+n of a slot (split where the 16-byte chunks end). */
static inline __attribute__((always_inline)) void put_run(int8_t *slot, int k, const int8_t *src, int n)
{
    if (((k | n) & 15) == 0) { /* whole chunks (channels a multiple of 16): one load, one store each */
        for (int8_t *d = slot + (k >> 4) * 64; n > 0; n -= 16, d += 64, src += 16) {
            vstrbq_s8(d, vldrbq_s8(src));
        }
        return;
    }
    while (n > 0) {
        const int at = k & 15, m = 16 - at < n ? 16 - at : n;
        copy_s8(slot + (k >> 4) * 64 + at, src, m);
        k += m;
        src += m;
        n -= m;
    }
}

static inline __attribute__((always_inline)) void put_fill(int8_t *slot, int k, int8_t v, int n)
{
    while (n > 0) {
        const int at = k & 15, m = 16 - at < n ? 16 - at : n;
        fill_s8(slot + (k >> 4) * 64 + at, v, m);
        k += m;
        n -= m;
    }
}

/* The patch of convolution output (cy, cx) into a slot, in (ky, kx, c) order. Positions
 * K..k16 keep whatever they hold: their weights are 0. */
static __attribute__((noinline)) void im2col_s8(const i8k_conv_t *p, const int8_t *in, int cy, int cx,
                                                int8_t *slot) /* (out of line: most patches are gathered) */
{
    const i8k_window_t *k = &p->kernel;
    const int iy0 = cy * k->stride_h - k->pad_top, ix0 = cx * k->stride_w - k->pad_left;
    const int c = p->input.c, run = k->w * c, row = p->input.w * c;
    const int8_t *src = in + iy0 * row + ix0 * c;
    int at = 0;
    if (ix0 >= 0 && ix0 + k->w <= p->input.w && iy0 >= 0 && iy0 + k->h <= p->input.h) { /* all inside */
        if (k->h * run <= 16) { /* the whole patch in one chunk: plain bytes */
            for (int ky = 0; ky < k->h; ky++, src += row) {
                for (int i = 0; i < run; i++) {
                    *slot++ = src[i];
                }
            }
            return;
        }
        for (int ky = 0; ky < k->h; ky++, at += run, src += row) {
            put_run(slot, at, src, run);
        }
        return;
    }
    for (int ky = 0; ky < k->h; ky++, src += row) {
        const int iy = iy0 + ky;
        for (int kx = 0; kx < k->w; kx++, at += c) {
            const int ix = ix0 + kx;
            if (iy >= 0 && iy < p->input.h && ix >= 0 && ix < p->input.w) {
                put_run(slot, at, src + kx * c, c);
            } else {
                put_fill(slot, at, p->in_zp, c);
            }
        }
    }
}

/* Byte offsets of a patch's K <= 16 values from its first input byte (0 after K), when they all
 * fit a gather's 8-bit offsets: one VLDRB gather then builds a patch that lies inside. */
static int gather_offsets(const i8k_conv_t *p, uint8x16_t *offsets)
{
    const int c = p->input.c, run = p->kernel.w * c, row = p->input.w * c, k = p->kernel.h * run;
    if (k > 16 || (p->kernel.h - 1) * row + run - 1 > 255) {
        return 0;
    }
    uint8_t o[16] = {0};
    for (int i = 0; i < k; i++) {
        o[i] = (uint8_t)(i / run * row + i % run);
    }
    *offsets = vldrbq_u8(o);
    return 1;
}

static inline __attribute__((always_inline)) void patch(const i8k_conv_t *p, const int8_t *in, int cy, int cx,
                                                        int8_t *slot, int gather, uint8x16_t offsets)
{
    const i8k_window_t *k = &p->kernel;
    const int iy0 = cy * k->stride_h - k->pad_top, ix0 = cx * k->stride_w - k->pad_left;
    if (gather && ix0 >= 0 && ix0 + k->w <= p->input.w && iy0 >= 0 && iy0 + k->h <= p->input.h) {
        vstrbq_s8(slot, vldrbq_gather_offset_s8(in + (iy0 * p->input.w + ix0) * p->input.c, offsets));
        return;
    }
    im2col_s8(p, in, cy, cx, slot);
}

/* Requantize 4 channels' sums at once, with the two roundings of requantize(): VQRDMULH is
 * mul_high; VRSHL rounds half up, so negative values first step down by one (only where the
 * shift is to the right), which makes ties round away from zero as rdpot does. */
static inline __attribute__((always_inline)) void requantize4(const i8k_conv_t *p, int c, int32x4_t v,
                                                              int8_t *out, mve_pred16_t q)
{
    const int32x4_t sh = vldrbq_s32(p->quant.shift + c), zero = vdupq_n_s32(0);
    v = vshlq_s32(v, vmaxq_s32(sh, zero));
    v = vqrdmulhq_s32(v, vldrwq_s32(p->quant.mult + c));
    const int32x4_t down = vpselq_s32(vshrq_n_s32(v, 31), zero, vcmpltq_n_s32(sh, 0));
    v = vrshlq_s32(vqaddq_s32(v, down), vminq_s32(sh, zero));
    v = vaddq_n_s32(v, p->out_zp);
    v = vminq_s32(vmaxq_s32(v, vdupq_n_s32(p->act.min)), vdupq_n_s32(p->act.max));
    vstrbq_p_s32(out + c, v, q);
}

/* Two channels' sums (a: weights w, b: weights v) of the four slots at x, over n chunks:
 * 6 loads feed 8 VMLADAVA (128 multiply-accumulates). VMLADAVA accumulates in even registers
 * only, so the sums are pinned to r0..r14 (the compiler's allocation of the same loop in
 * intrinsics costs a third more). */
static inline __attribute__((always_inline)) void dot_2x4(const int8_t **w, const int8_t **v, const int8_t *x,
                                                          int n, int32_t a, int32_t b, int32_t (*sums)[4], int j,
                                                          int two)
{
    register int32_t r0 __asm__("r0") = a, r2 __asm__("r2") = a, r4 __asm__("r4") = a;
    register int32_t r6 __asm__("r6") = a, r8 __asm__("r8") = b, r10 __asm__("r10") = b;
    register int32_t r12 __asm__("r12") = b, r14 __asm__("r14") = b;
    register const int8_t *r1 __asm__("r1") = *w, *r3 __asm__("r3") = *v, *r5 __asm__("r5") = x;
    register int r9 __asm__("r9") = n;
    __asm__ volatile("1:\n\t"
                     "vldrb.8 q0, [%[w]], #16\n\t"
                     "vldrb.8 q1, [%[v]], #16\n\t"
                     "vldrb.8 q2, [%[x]], #64\n\t"
                     "vmladava.s8 %[a0], q2, q0\n\t"
                     "vmladava.s8 %[b0], q2, q1\n\t"
                     "vldrb.8 q3, [%[x], #-48]\n\t"
                     "vmladava.s8 %[a1], q3, q0\n\t"
                     "vmladava.s8 %[b1], q3, q1\n\t"
                     "vldrb.8 q2, [%[x], #-32]\n\t"
                     "vmladava.s8 %[a2], q2, q0\n\t"
                     "vmladava.s8 %[b2], q2, q1\n\t"
                     "vldrb.8 q3, [%[x], #-16]\n\t"
                     "vmladava.s8 %[a3], q3, q0\n\t"
                     "vmladava.s8 %[b3], q3, q1\n\t"
                     "subs %[n], %[n], #1\n\t"
                     "bne 1b\n\t"
                     : [a0] "+r"(r0), [a1] "+r"(r2), [a2] "+r"(r4), [a3] "+r"(r6), [b0] "+r"(r8),
                       [b1] "+r"(r10), [b2] "+r"(r12), [b3] "+r"(r14), [w] "+r"(r1), [v] "+r"(r3), [x] "+r"(r5),
                       [n] "+r"(r9)
                     :
                     : "cc", "memory", "d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7");
    sums[0][j] = r0, sums[1][j] = r2, sums[2][j] = r4, sums[3][j] = r6;
    if (two) {
        sums[0][j + 1] = r8, sums[1][j + 1] = r10, sums[2][j + 1] = r12, sums[3][j + 1] = r14;
    }
    *w = r1, *v = r3;
}

/* The int8 outputs of npx (1..4) patches in the slots at P, every channel: without pool,
 * patch i's to out + i * out_c; with pool, the largest of their sums and (unless first) of
 * best[], requantized to out if last, else kept in best[] (pool windows of more than 4). */
static inline __attribute__((always_inline)) void conv_block(const i8k_conv_t *p, const int8_t *P, int npx,
                                                             int pool, int8_t *out, int32_t *best, int first,
                                                             int last, int small)
{
    const int k16 = k16_of(p), n = k16 >> 4, out_c = p->conv.c;
    const int8_t *w = p->filter.weights;
    int32_t sums[4][4] __attribute__((aligned(8))); /* [patch][channel of the group of 4] */
    int8x16_t u0 = vdupq_n_s8(0), u1 = u0, u2 = u0, u3 = u0;
    if (small) { /* one vector per patch (K <= 16): the patches stay in registers */
        u0 = vldrbq_s8(P), u1 = vldrbq_s8(P + 16), u2 = vldrbq_s8(P + 32), u3 = vldrbq_s8(P + 48);
    }
    for (int c0 = 0; c0 < out_c; c0 += 4) {
        const int group = out_c - c0 < 4 ? out_c - c0 : 4;
        if (small) {
            for (int j = 0; j < group; j++, w += 16) {
                const int8x16_t f = vldrbq_s8(w);
                const int32_t b = p->filter.bias[c0 + j];
                sums[0][j] = vmladavaq_s8(b, u0, f);
                sums[1][j] = vmladavaq_s8(b, u1, f);
                sums[2][j] = vmladavaq_s8(b, u2, f);
                sums[3][j] = vmladavaq_s8(b, u3, f);
            }
        }
        for (int j = 0; j < group && !small; j += 2) {
            const int two = j + 1 < group;
            const int8_t *v = two ? w + k16 : w;
            const int32_t *bias = p->filter.bias + c0 + j;
            dot_2x4(&w, &v, P, n, bias[0], bias[two], sums, j, two);
            w = v; /* past the second row (or the only one) */
        }
        const mve_pred16_t q = vctp32q((uint32_t)group);
        if (pool) {
            /* npx <= 4: the maximum of slots 0..npx-1, unrolled (a slot taken twice changes nothing) */
            int32x4_t m = vmaxq_s32(vldrwq_s32(sums[0]), vldrwq_s32(sums[npx > 1]));
            if (npx > 2) {
                m = vmaxq_s32(m, vmaxq_s32(vldrwq_s32(sums[2]), vldrwq_s32(sums[npx > 3 ? 3 : 2])));
            }
            if (!first) {
                m = vmaxq_s32(m, vldrwq_z_s32(best + c0, q));
            }
            if (last) {
                requantize4(p, c0, m, out, q);
            } else {
                vstrwq_p_s32(best + c0, m, q);
            }
        } else {
            for (int i = 0; i < npx; i++) {
                requantize4(p, c0, vldrwq_s32(sums[i]), out + i * out_c, q);
            }
        }
    }
}

/* conv_block for K <= 16 (no pinned registers: the patches stay in vector registers), and for more */
static void conv_block_small(const i8k_conv_t *p, const int8_t *P, int npx, int pool, int8_t *out, int32_t *best,
                             int first, int last)
{
    conv_block(p, P, npx, pool, out, best, first, last, 1);
}

static void conv_block_mve(const i8k_conv_t *p, const int8_t *P, int npx, int pool, int8_t *out, int32_t *best,
                           int first, int last)
{
    if (k16_of(p) == 16) {
        conv_block_small(p, P, npx, pool, out, best, first, last);
        return;
    }
    conv_block(p, P, npx, pool, out, best, first, last, 0);
}

/* i8k_conv with Helium: each pool window's patches (up to 4) at once, or 4 outputs in a row.
 * Requantization is monotonic, so the pool compares int32 sums (as the plain path does). */
static void conv_mve(const i8k_conv_t *p, const int8_t *in, int8_t *out, void *scratch)
{
    int8_t *slots = scratch; /* the layout I8K_CONV_SCRATCH_BYTES states: 4 slots, then best[] */
    int32_t *best = (int32_t *)(void *)(slots + 4 * k16_of(p));
    const i8k_window_t *pool = &p->pool;
    const int out_c = p->conv.c, pooled = pool->h * pool->w > 1;
    uint8x16_t offsets = vdupq_n_u8(0);
    const int gather = gather_offsets(p, &offsets);
    for (int oy = 0; oy < p->output.h; oy++) {
        for (int ox = 0; ox < p->output.w;) {
            int8_t *o = out + (oy * p->output.w + ox) * out_c;
            if (!pooled) {
                const int cy = oy * pool->stride_h - pool->pad_top;
                const int npx = p->output.w - ox < 4 ? p->output.w - ox : 4;
                for (int j = 0; j < npx; j++) {
                    patch(p, in, cy, (ox + j) * pool->stride_w - pool->pad_left, slots + 16 * j, gather, offsets);
                }
                conv_block_mve(p, slots, npx, 0, o, best, 1, 1);
                ox += npx;
                continue;
            }
            /* the window's positions inside the convolution output */
            const int cy0 = oy * pool->stride_h - pool->pad_top, cx0 = ox * pool->stride_w - pool->pad_left;
            const int rows = (cy0 + pool->h < p->conv.h ? cy0 + pool->h : p->conv.h) - (cy0 > 0 ? cy0 : 0);
            const int cols = (cx0 + pool->w < p->conv.w ? cx0 + pool->w : p->conv.w) - (cx0 > 0 ? cx0 : 0);
            int n = 0, first = 1, left = rows * cols;
            for (int wy = 0; wy < pool->h; wy++) {
                const int cy = oy * pool->stride_h - pool->pad_top + wy;
                for (int wx = 0; cy >= 0 && cy < p->conv.h && wx < pool->w; wx++) {
                    const int cx = ox * pool->stride_w - pool->pad_left + wx;
                    if (cx < 0 || cx >= p->conv.w) {
                        continue;
                    }
                    patch(p, in, cy, cx, slots + 16 * n++, gather, offsets);
                    if (n == 4 || n == left) {
                        conv_block_mve(p, slots, n, 1, o, best, first, n == left);
                        left -= n;
                        n = first = 0;
                    }
                }
            }
            ox++;
        }
    }
}
