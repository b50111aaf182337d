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

/* The band of output row y of stage k into *band, a copy of the stage's convolution whose rows
 * start at the band's first (its pool rows and input rows renumbered, the padding before them
 * kept only where the band still reads it); returns where the band's first input row is: in the
 * caller's input (k == 0) or line buffer k - 1, which holds the rows from held[k - 1].base on.
 * Out of line, so that its registers are not saved while the kernel runs. */
static __attribute__((noinline)) const int8_t *stream_band(const i8k_stream_t *s, int k, int y, i8k_conv_t *band)
{
    const i8k_conv_t *p = s->stages[k].conv;
    *band = *p;
    const int c0 = y * p->pool.stride_h - p->pool.pad_top, conv_shift = c0 > 0 ? c0 : 0;
    const int i0 = conv_shift * p->kernel.stride_h - p->kernel.pad_top, in_shift = i0 > 0 ? i0 : 0;
    const int row0 = k ? s->held[k - 1].base : 0;
    band->pool.pad_top = (uint8_t)(conv_shift - c0);
    band->conv.h = (uint16_t)(p->conv.h - conv_shift);
    band->kernel.pad_top = (uint8_t)(in_shift - i0);
    band->input.h = (uint16_t)(p->input.h - in_shift);
    band->output.h = 1;
    return (k ? s->stages[k - 1].rows : s->input) + (in_shift - row0) * p->input.w * p->input.c;
}

/* Output row y of stage k into dst: the stage's kernel on its band. Out of line: the band is on
 * the stack only while the kernel runs, not in every frame of the pull's recursion (the streamed
 * build's stack is most of its RAM after the line buffers). */
static __attribute__((noinline)) void stream_conv_rows(const i8k_stream_t *s, int k, int y, int8_t *dst)
{
    i8k_conv_t band;
    const int8_t *in = stream_band(s, k, y, &band);
#if I8K_WINO
    if (band.wino) {
        i8k_conv_wino(&band, in, dst, s->scratch);
        return;
    }
#endif
    i8k_conv(&band, in, dst, s->scratch);
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

/* Line buffer k - 1 with the rows before those row y of stage k reads dropped (the rest moved to
 * the front); returns the row after the last it reads. Out of line: its registers are not saved
 * while the pull computes rows. */
static __attribute__((noinline)) int stream_drop(const i8k_stream_t *s, int k, int y)
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
    return hi;
}

/* Line buffer k - 1 made to hold the rows row y of stage k reads: the rows before them dropped,
 * the missing ones computed. */
static __attribute__((noinline)) void stream_pull(const i8k_stream_t *s, int k, int y)
{
    const int hi = stream_drop(s, k, y);
    const i8k_conv_t *q = s->stages[k - 1].conv;
    int8_t *rows = s->stages[k - 1].rows;
    const int row_bytes = q->output.w * q->output.c;
    i8k_held_t *h = &s->held[k - 1];
    for (; h->base + h->count < hi; h->count++) {
        stream_row(s, k - 1, h->base + h->count, rows + h->count * row_bytes);
    }
}

/* Row y of stage k into dst, from the caller's input (k == 0) or line buffer k - 1. */
static void stream_row(const i8k_stream_t *s, int k, int y, int8_t *dst)
{
    if (k) {
        stream_pull(s, k, y);
    }
    stream_conv_rows(s, k, y, dst);
}

/* A row's n values times the fully connected weights from column at, added to the sums. Out of
 * line: the loop's registers are not saved across the pulls. */
static __attribute__((noinline)) void stream_fc_add(const i8k_fc_t *fc, const int8_t *row, int at, int n, int32_t *acc)
{
    for (int o = 0; o < fc->out_n; o++) {
        const int8_t *w = fc->filter.weights + o * fc->filter.k_pad + at;
        int32_t a = acc[o];
        for (int i = 0; i < n; i++) {
            a += (int32_t)row[i] * w[i];
        }
        acc[o] = a;
    }
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
        stream_fc_add(fc, row, y * n, n, acc);
    }
    for (int o = 0; o < fc->out_n; o++) {
        const int q = fc->per_channel ? o : 0;
        const int32_t v = i8k_requantize(acc[o], fc->quant.mult[q], fc->quant.shift[q]) + fc->out_zp;
        out[o] = (int8_t)(v < fc->act.min ? fc->act.min : v > fc->act.max ? fc->act.max : v);
    }
}

#endif
