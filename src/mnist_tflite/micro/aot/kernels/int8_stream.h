/* The row-streaming driver of `mnist-tflite compile --ram-optimized` (micro/aot/stream.py plans it).
 *
 * A chain of convolutions (each perhaps with its max pool) feeding a fully connected layer runs
 * one output row at a time, pulled from the end: a row of the last convolution asks its input's
 * line buffer for the rows it reads; rows below them are dropped (the rest move to the front),
 * missing ones are computed by the convolution before, which pulls from its own input the same
 * way. Each row of each layer is computed once, and only rows some later row reads. The fully
 * connected layer adds each finished row's products to int32 sums, so no feature map is ever held
 * whole. The kernels are those of int8_kernels.c, called on a band of rows (stream_conv_rows):
 * the same integer arithmetic in the same order per output, so the same bits.
 *
 * Included by the generated <name>.c of a --ram-optimized build only.
 */
#ifndef INT8_STREAM_H
#define INT8_STREAM_H

#include <stdint.h>

#include "int8_kernels.h"

/* One convolution of the chain, and the line buffer its output rows go to (capacity rows from
 * held.base on; the last convolution's rows go to the driver's row instead). */
typedef struct {
    const i8k_conv_t *conv;
    int8_t *rows;
} i8k_stage_t;

/* The rows a line buffer holds during one invoke: [base, base + count). */
typedef struct {
    int16_t base, count;
} i8k_held_t;

/* One invoke's streaming context. */
typedef struct {
    const i8k_stage_t *stages;
    i8k_held_t *held;   /* one per line buffer (stages but the last), zeroed */
    const int8_t *input; /* the caller's input: the first convolution reads it whole */
    void *scratch;      /* the convolutions' scratch, one at a time */
} i8k_stream_t;

/* The input rows [*lo, *hi) output row y of p reads (its pool window's convolution rows' patches). */
static void stream_rows_read(const i8k_conv_t *p, int y, int *lo, int *hi)
{
    const int c0 = y * p->pool.stride_h - p->pool.pad_top, c1 = c0 + p->pool.h;
    const int first = c0 > 0 ? c0 : 0, last = (c1 < p->conv.h ? c1 : p->conv.h) - 1;
    const int i0 = first * p->kernel.stride_h - p->kernel.pad_top;
    const int i1 = last * p->kernel.stride_h - p->kernel.pad_top + p->kernel.h;
    *lo = i0 > 0 ? i0 : 0;
    *hi = i1 < p->input.h ? i1 : p->input.h;
}

/* Output rows [oy0, oy1) of p into out, from in, which holds p's input rows from row0 on: the
 * kernel runs on a copy of p whose rows start at the band's first (its pool rows and input rows
 * renumbered, the padding before them kept only where the band still reads it). Out of line: the
 * copy is on the stack only while the kernel runs, not in every frame of stream_row's recursion. */
static __attribute__((noinline)) void stream_conv_rows(const i8k_conv_t *p, const int8_t *in, int row0, int8_t *out, int oy0, int oy1,
                             void *scratch)
{
    i8k_conv_t band = *p;
    const int c0 = oy0 * p->pool.stride_h - p->pool.pad_top, conv_shift = c0 > 0 ? c0 : 0;
    const int i0 = conv_shift * p->kernel.stride_h - p->kernel.pad_top, in_shift = i0 > 0 ? i0 : 0;
    band.pool.pad_top = (uint8_t)(conv_shift - c0);
    band.conv.h = (uint16_t)(p->conv.h - conv_shift);
    band.kernel.pad_top = (uint8_t)(in_shift - i0);
    band.input.h = (uint16_t)(p->input.h - in_shift);
    band.output.h = (uint16_t)(oy1 - oy0);
    in += (in_shift - row0) * p->input.w * p->input.c;
#if I8K_WINO
    if (p->wino) {
        i8k_conv_wino(&band, in, out, scratch);
        return;
    }
#endif
    i8k_conv(&band, in, out, scratch);
}

/* n bytes from src down to dst (dst < src; they may overlap), a word at a time where aligned. */
static void stream_move_down(int8_t *dst, const int8_t *src, int n)
{
    if ((((uintptr_t)dst | (uintptr_t)src | (uintptr_t)n) & 3u) == 0) {
        uint32_t *d = (uint32_t *)(void *)dst;
        const uint32_t *s = (const uint32_t *)(const void *)src;
        for (int i = 0; i < n >> 2; i++) {
            d[i] = s[i];
        }
        return;
    }
    i8k_copy(src, dst, (uint32_t)n);
}

static void stream_row(const i8k_stream_t *s, int k, int y, int8_t *dst);

/* Line buffer k - 1 made to hold the rows row y of stage k reads: the rows before them dropped
 * (the rest moved to the front), the missing ones computed. Returns the first row it holds. */
static __attribute__((noinline)) int stream_pull(const i8k_stream_t *s, int k, int y)
{
    const i8k_conv_t *q = s->stages[k - 1].conv;
    int8_t *rows = s->stages[k - 1].rows;
    const int row_bytes = q->output.w * q->output.c;
    i8k_held_t *h = &s->held[k - 1];
    int lo, hi;
    stream_rows_read(s->stages[k].conv, y, &lo, &hi);
    if (lo > h->base) { /* rows before lo are read no more */
        const int keep = h->base + h->count - lo;
        if (keep > 0) {
            stream_move_down(rows, rows + (lo - h->base) * row_bytes, keep * row_bytes);
        }
        h->count = (int16_t)(keep > 0 ? keep : 0);
        h->base = (int16_t)lo;
    }
    for (; h->base + h->count < hi; h->count++) {
        stream_row(s, k - 1, h->base + h->count, rows + h->count * row_bytes);
    }
    return h->base;
}

/* Row y of stage k into dst, from the caller's input (k == 0) or line buffer k - 1. */
static void stream_row(const i8k_stream_t *s, int k, int y, int8_t *dst)
{
    const int row0 = k ? stream_pull(s, k, y) : 0;
    stream_conv_rows(s->stages[k].conv, k ? s->stages[k - 1].rows : s->input, row0, dst, y, y + 1, s->scratch);
}

/* The chain's last stage (index last) row by row into row, each row's products added to the
 * fully connected layer's sums (acc: out_n int32), then the layer's output requantized into out. */
static void stream_fc(const i8k_stream_t *s, int last, int8_t *row, const i8k_fc_t *fc, int32_t *acc, int8_t *out)
{
    const i8k_conv_t *p = s->stages[last].conv;
    const int n = p->output.w * p->output.c;
    for (int o = 0; o < fc->out_n; o++) {
        acc[o] = fc->filter.bias[o];
    }
    for (int y = 0; y < p->output.h; y++) {
        stream_row(s, last, y, row);
        for (int o = 0; o < fc->out_n; o++) {
            const int8_t *w = fc->filter.weights + o * fc->filter.k_pad + y * n;
            int32_t a = acc[o];
            for (int i = 0; i < n; i++) {
                a += (int32_t)row[i] * w[i];
            }
            acc[o] = a;
        }
    }
    for (int o = 0; o < fc->out_n; o++) {
        const int q = fc->per_channel ? o : 0;
        const int32_t v = i8k_requantize(acc[o], fc->quant.mult[q], fc->quant.shift[q]) + fc->out_zp;
        out[o] = (int8_t)(v < fc->act.min ? fc->act.min : v > fc->act.max ? fc->act.max : v);
    }
}

#endif
