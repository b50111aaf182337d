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
    const int c = p->input.c, run = p->kernel.w * c; /* a patch row: contiguous when all inside */
    const int cols_inside = ix0 >= 0 && ix0 + p->kernel.w <= p->input.w;
    int32_t sum = 0;
    for (int ky = 0; ky < p->kernel.h; ky++) {
        const int iy = iy0 + ky, row_inside = iy >= 0 && iy < p->input.h;
        const int8_t *src = in + (iy * p->input.w + ix0) * c;
        if (row_inside && cols_inside) {
            for (const int32_t *end = dst + run; dst != end;) {
                const int32_t v = *src++;
                *dst++ = v;
                sum += v;
            }
            continue;
        }
        for (int kx = 0; kx < p->kernel.w; kx++, src += c) { /* part of the row is padding */
            const int ix = ix0 + kx, inside = row_inside && ix >= 0 && ix < p->input.w;
            for (int i = 0; i < c; i++) {
                const int32_t v = inside ? src[i] : p->in_zp;
                *dst++ = v;
                sum += v;
            }
        }
    }
    return sum * 128;
}

/* One patch value (x[i], at r0 + 4 i) times four channels' weights (bytes r1 + 4 i .. r1 + 4 i + 3),
 * added to the sums in r4..r7; r2 and r3 are scratch. */
#define I8K_M0_TAP(i)                                                                             \
    "ldr r2, [r0, #4*" #i "]\n\t"                                                                \
    "ldrb r3, [r1, #4*" #i "]\n\t"                                                               \
    "muls r3, r2, r3\n\t"                                                                        \
    "adds r4, r4, r3\n\t"                                                                        \
    "ldrb r3, [r1, #4*" #i "+1]\n\t"                                                             \
    "muls r3, r2, r3\n\t"                                                                        \
    "adds r5, r5, r3\n\t"                                                                        \
    "ldrb r3, [r1, #4*" #i "+2]\n\t"                                                             \
    "muls r3, r2, r3\n\t"                                                                        \
    "adds r6, r6, r3\n\t"                                                                        \
    "ldrb r3, [r1, #4*" #i "+3]\n\t"                                                             \
    "muls r3, r2, r3\n\t"                                                                        \
    "adds r7, r7, r3\n\t"

/* The sum of one register (r4..r7) and the stored one at [r2, #off]: the larger stays. */
#define I8K_M0_MAX(reg, off, skip)                                                                \
    "ldr r3, [r2, #" #off "]\n\t"                                                                \
    "cmp " reg ", r3\n\t"                                                                        \
    "bge " skip "\n\t"                                                                           \
    "movs " reg ", r3\n\t"

/* What dot_blocks_m0 reads besides its three pointers. */
typedef struct {
    const int32_t *bias;
    int32_t corr;   /* 128 times the patch's sum: subtracted from every bias */
    int32_t k;      /* values in the patch */
    int32_t blocks; /* blocks of four output channels (> 0) */
    int32_t first;  /* 1: set sums; 0: keep the larger of sums and the new sum */
} m0_dot_t;

/* For each block of four output channels: bias - corr + the patch x (k int32) times the block's
 * weights w ([k][4] bytes), into sums (or the larger, see first). Called as AAPCS says: r0 x,
 * r1 w, r2 sums, r3 args. Inside: r0 walks the patch, r1 the weights, r4..r7 hold four sums;
 * r8 the patch, r9 sums, r10 bias, r11 corr, r12 where the turns of 8 values end, lr the
 * patch's end; [sp] where sums end, [sp, #4] first. */
#define I8K_M0_ARG __attribute__((unused)) /* (read by the assembly, through r0..r3) */
/* Entry and exit of the assembly routines: r4..r11 are the caller's (AAPCS); Thumb-1 pushes only
 * r0..r7 and lr, so r8..r11 go through r4..r7. */
#define I8K_M0_ENTER                                                                              \
    ".syntax unified\n\t"                                                                        \
    "push {r4-r7, lr}\n\t"                                                                       \
    "mov r4, r8\n\tmov r5, r9\n\tmov r6, r10\n\tmov r7, r11\n\t"                                   \
    "push {r4-r7}\n\t"
#define I8K_M0_LEAVE                                                                              \
    "pop {r4-r7}\n\t"                                                                            \
    "mov r8, r4\n\tmov r9, r5\n\tmov r10, r6\n\tmov r11, r7\n\t"                                   \
    "pop {r4-r7, pc}\n\t"
/* noipa: the compiler must not judge what this does from its body, which it cannot read */
__attribute__((naked, noipa)) static void dot_blocks_m0(I8K_M0_ARG const int32_t *x, I8K_M0_ARG const uint8_t *w,
                                                        I8K_M0_ARG int32_t *sums, I8K_M0_ARG const m0_dot_t *args)
{
    __asm__ volatile(
        I8K_M0_ENTER
        "sub sp, #8\n\t"
        "mov r8, r0\n\t"
        "mov r9, r2\n\t"
        "ldr r4, [r3, #0]\n\t"
        "mov r10, r4\n\t"
        "ldr r4, [r3, #4]\n\t"
        "mov r11, r4\n\t"
        "ldr r4, [r3, #16]\n\t"
        "str r4, [sp, #4]\n\t"
        "ldr r4, [r3, #12]\n\t"
        "lsls r4, r4, #4\n\t"
        "adds r4, r2, r4\n\t"
        "str r4, [sp, #0]\n\t"
        "ldr r4, [r3, #8]\n\t"
        "lsls r5, r4, #2\n\t"
        "adds r5, r0, r5\n\t"
        "mov lr, r5\n\t"
        "lsrs r4, r4, #3\n\t"
        "lsls r4, r4, #5\n\t"
        "adds r4, r0, r4\n\t"
        "mov r12, r4\n\t"
        "6:\n\t" /* a block: the four sums start at bias - corr */
        "mov r2, r10\n\t"
        "ldmia r2!, {r4-r7}\n\t"
        "mov r10, r2\n\t"
        "mov r3, r11\n\t"
        "subs r4, r4, r3\n\t"
        "subs r5, r5, r3\n\t"
        "subs r6, r6, r3\n\t"
        "subs r7, r7, r3\n\t"
        "mov r0, r8\n\t"
        "cmp r0, r12\n\t"
        "beq 3f\n\t"
        "2:\n\t" /* 8 values a turn: LDR and LDRB reach them with immediate offsets */
        I8K_M0_TAP(0) I8K_M0_TAP(1) I8K_M0_TAP(2) I8K_M0_TAP(3)
        I8K_M0_TAP(4) I8K_M0_TAP(5) I8K_M0_TAP(6) I8K_M0_TAP(7)
        "adds r0, #32\n\t"
        "adds r1, #32\n\t"
        "cmp r0, r12\n\t"
        "bne 2b\n\t"
        "3:\n\t" /* the last k % 8 values */
        "cmp r0, lr\n\t"
        "beq 5f\n\t"
        "4:\n\t" I8K_M0_TAP(0)
        "adds r0, #4\n\t"
        "adds r1, #4\n\t"
        "cmp r0, lr\n\t"
        "bne 4b\n\t"
        "5:\n\t"
        "mov r2, r9\n\t"
        "ldr r3, [sp, #4]\n\t"
        "cmp r3, #0\n\t"
        "bne 7f\n\t"
        I8K_M0_MAX("r4", 0, "8f") "8:\n\t"
        I8K_M0_MAX("r5", 4, "9f") "9:\n\t"
        I8K_M0_MAX("r6", 8, "10f") "10:\n\t"
        I8K_M0_MAX("r7", 12, "7f")
        "7:\n\t"
        "stmia r2!, {r4-r7}\n\t"
        "mov r9, r2\n\t"
        "ldr r3, [sp, #0]\n\t"
        "cmp r2, r3\n\t"
        "beq 11f\n\t"
        "b 6b\n\t" /* (a conditional branch does not reach back that far) */
        "11:\n\t"
        "add sp, #8\n\t"
        I8K_M0_LEAVE);
}

/* Every output channel's sum for the patch x; first: set sums, else keep the larger. */
static void conv_channels_m0(const i8k_conv_t *p, const int32_t *x, int32_t corr, int first, int32_t *sums)
{
    const int k = p->kernel.h * p->kernel.w * p->input.c, n = p->conv.c;
    const uint8_t *w = (const uint8_t *)p->filter.weights;
    const int32_t *bias = p->filter.bias;
    int c = 4 * (n >> 2);
    if (c) {
        const m0_dot_t args = {bias, corr, k, n >> 2, first};
        dot_blocks_m0(x, w, sums, &args);
        w += c * k;
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
        const int top = oy * p->pool.stride_h - p->pool.pad_top; /* the window's rows inside the conv */
        const int y0 = top < 0 ? 0 : top, y1 = top + p->pool.h < p->conv.h ? top + p->pool.h : p->conv.h;
        for (int ox = 0; ox < p->output.w; ox++) {
            const int left = ox * p->pool.stride_w - p->pool.pad_left;
            const int x0 = left < 0 ? 0 : left, x1 = left + p->pool.w < p->conv.w ? left + p->pool.w : p->conv.w;
            for (int cy = y0, first = 1; cy < y1; cy++) {
                for (int cx = x0; cx < x1; cx++, first = 0) {
                    conv_channels_m0(p, patch, im2col_m0(p, in, cy, cx, patch), first, sums);
                }
            }
            requantize_row(p, sums, out + (oy * p->output.w + ox) * out_c);
        }
    }
}

/* ---- Winograd F(2x2, 3x3) + 2x2 max pool (int8_kernels.h, micro/aot/winograd.py) ------------ */
/* The same loop on the transformed tile: 16 products per input channel and 2x2 outputs instead
 * of 36. V = B^T d B (|V| <= 512) is stored as V + 512 and U as U + 2048 (LDRH reads both); the
 * sum of (U + 2048)(V + 512) over the input channels is the sum of U V plus 512 times the sum of
 * U (folded with the constant 2048 * 512 * in_c into the start values the generated file
 * holds), plus 2048 times the sum of V, which each tile's rows carry. */

/* One value of a row (r0 + 2 i) times the U of four channels (r1 + 8 i .. + 6). */
#define I8K_M0_WTAP(i)                                                                            \
    "ldrh r2, [r0, #2*" #i "]\n\t"                                                               \
    "ldrh r3, [r1, #8*" #i "]\n\t"                                                               \
    "muls r3, r2, r3\n\t"                                                                        \
    "adds r4, r4, r3\n\t"                                                                        \
    "ldrh r3, [r1, #8*" #i "+2]\n\t"                                                             \
    "muls r3, r2, r3\n\t"                                                                        \
    "adds r5, r5, r3\n\t"                                                                        \
    "ldrh r3, [r1, #8*" #i "+4]\n\t"                                                             \
    "muls r3, r2, r3\n\t"                                                                        \
    "adds r6, r6, r3\n\t"                                                                        \
    "ldrh r3, [r1, #8*" #i "+6]\n\t"                                                             \
    "muls r3, r2, r3\n\t"                                                                        \
    "adds r7, r7, r3\n\t"

/* What dot_wino_m0 reads besides its pointers. */
typedef struct {
    const int32_t *start; /* the block's start values [16 positions][4] */
    int32_t row_bytes;    /* 2 * input channels (a multiple of 16) */
} m0_wino_t;

/* For each of the 16 tile positions: the block's 4 start values - the row's correction + the
 * row's values times the block's U ([position][input channel][4] uint16), into m[position][4].
 * rows: per position an int32 correction (2048 times the sum of V), then the input channels'
 * V + 512 (uint16). AAPCS: r0 rows, r1 U, r2 m, r3 args. Inside: r0 walks the rows, r1 U,
 * r4..r7 the sums; r9 m, r10 the start values, r11 where m ends, r12 where a row ends, lr
 * row_bytes. */
__attribute__((naked, noipa)) static void dot_wino_m0(I8K_M0_ARG const void *rows, I8K_M0_ARG const int16_t *u,
                                                      I8K_M0_ARG int32_t *m, I8K_M0_ARG const m0_wino_t *args)
{
    __asm__ volatile(
        I8K_M0_ENTER
        "mov r9, r2\n\t"
        "ldr r4, [r3, #0]\n\t"
        "mov r10, r4\n\t"
        "ldr r4, [r3, #4]\n\t"
        "mov lr, r4\n\t"
        "movs r4, #1\n\t"
        "lsls r4, r4, #8\n\t"
        "adds r4, r4, r2\n\t" /* m + 16 positions * 4 sums * 4 bytes */
        "mov r11, r4\n\t"
        "6:\n\t"
        "mov r2, r10\n\t"
        "ldmia r2!, {r4-r7}\n\t"
        "mov r10, r2\n\t"
        "ldmia r0!, {r3}\n\t" /* the row's correction; r0 then points at its values */
        "subs r4, r4, r3\n\t"
        "subs r5, r5, r3\n\t"
        "subs r6, r6, r3\n\t"
        "subs r7, r7, r3\n\t"
        "mov r2, lr\n\t"
        "adds r2, r2, r0\n\t"
        "mov r12, r2\n\t"
        "2:\n\t" /* 8 input channels a turn */
        I8K_M0_WTAP(0) I8K_M0_WTAP(1) I8K_M0_WTAP(2) I8K_M0_WTAP(3)
        I8K_M0_WTAP(4) I8K_M0_WTAP(5) I8K_M0_WTAP(6) I8K_M0_WTAP(7)
        "adds r0, #16\n\t"
        "adds r1, #64\n\t"
        "cmp r0, r12\n\t"
        "bne 2b\n\t"
        "mov r2, r9\n\t"
        "stmia r2!, {r4-r7}\n\t"
        "mov r9, r2\n\t"
        "cmp r2, r11\n\t"
        "beq 7f\n\t"
        "b 6b\n\t"
        "7:\n\t"
        I8K_M0_LEAVE);
}

/* The rows of one tile (input at base): per position the correction, then V + 512 per channel. */
static void wino_rows_m0(const i8k_conv_t *p, const int8_t *base, uint8_t *rows)
{
    const int ic = p->input.c, row = p->input.w * ic, stride = 4 + 2 * ic;
    int32_t sum[16] = {0};
    for (int c = 0; c < ic; c++) {
        int32_t t[16];
        for (int x = 0; x < 4; x++) { /* B^T d: down the columns */
            const int8_t *d = base + x * ic + c;
            const int32_t d0 = d[0], d1 = d[row], d2 = d[2 * row], d3 = d[3 * row];
            t[x] = d0 - d2;
            t[4 + x] = d1 + d2;
            t[8 + x] = d2 - d1;
            t[12 + x] = d1 - d3;
        }
        uint8_t *o = rows + 4 + 2 * c;
        for (int y = 0; y < 4; y++, o += 4 * stride) { /* (B^T d) B: along the rows */
            const int32_t *q = t + 4 * y;
            const int32_t v0 = q[0] - q[2], v1 = q[1] + q[2], v2 = q[2] - q[1], v3 = q[1] - q[3];
            *(uint16_t *)(void *)o = (uint16_t)(v0 + 512);
            *(uint16_t *)(void *)(o + stride) = (uint16_t)(v1 + 512);
            *(uint16_t *)(void *)(o + 2 * stride) = (uint16_t)(v2 + 512);
            *(uint16_t *)(void *)(o + 3 * stride) = (uint16_t)(v3 + 512);
            sum[4 * y] += v0;
            sum[4 * y + 1] += v1;
            sum[4 * y + 2] += v2;
            sum[4 * y + 3] += v3;
        }
    }
    for (int k = 0; k < 16; k++) {
        *(int32_t *)(void *)(rows + k * stride) = sum[k] * 2048;
    }
}

void i8k_conv_wino(const i8k_conv_t *p, const int8_t *in, int8_t *out, void *scratch)
{
    const int ic = p->input.c, oc = p->conv.c;
    uint8_t *rows = (uint8_t *)scratch;                                       /* 16 * (4 + 2 ic) bytes */
    int32_t *m = (int32_t *)(void *)(rows + 16 * (4 + 2 * ic));               /* [16][4] */
    const int16_t *u_all = p->wino, *start = p->wino + 16 * ic * oc;         /* U, then the start values */
    for (int ty = 0; ty < p->output.h; ty++) {
        for (int tx = 0; tx < p->output.w; tx++) {
            wino_rows_m0(p, in + (2 * ty * p->input.w + 2 * tx) * ic, rows);
            int8_t *o = out + (ty * p->output.w + tx) * oc;
            for (int c = 0; c < oc; c += 4) {
                const m0_wino_t args = {(const int32_t *)(const void *)(start + 32 * c), 2 * ic};
                dot_wino_m0(rows, u_all + 16 * ic * c, m, &args);
                for (int q = 0; q < 4; q++) {
                    o[c + q] = wino_output(p, m + q, 4, c + q);
                }
            }
        }
    }
}
