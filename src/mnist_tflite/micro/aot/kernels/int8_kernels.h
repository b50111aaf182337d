/* int8 inference kernels for code written by `mnist-tflite compile`.
 *
 * Written for this project from the TFLite int8 quantization specification: int8
 * activations with a zero point, symmetric int8 weights (per output channel for
 * convolutions), int32 bias, int32 accumulation, and requantization by a fixed-point
 * multiplier and a power-of-two shift, rounded as the reference kernels round
 * (a saturating rounding doubling high multiply, then a rounding right shift).
 *
 * Plain C by default; where the compiler targets a core with the DSP extension
 * (__ARM_FEATURE_DSP: Cortex-M4, M7, M33 with DSP) the dot products use SMLAD/SXTB16.
 * Built for WebAssembly with SIMD128 (__wasm_simd128__), the convolutions' dot products
 * use i32x4.dot_i16x8 on weights widened from int8. All give the same bits: all arithmetic
 * is integer and exact.
 *
 * No allocation, no globals: every buffer is passed in, every parameter is const data.
 */
#ifndef INT8_KERNELS_H
#define INT8_KERNELS_H

#include <stdint.h>

/* The kernels' instruction set, chosen by the compiler flags: Helium (MVE: Cortex-M55),
 * else DSP (SMLAD: M4, M33), else ARMv6-M (M0: a Thumb-1 convolution), else plain C (M3, the host). All give the same bits.
 * I8K_PLAIN_C forces plain C. The generated file lays out convolution weights for it. */
#if defined(__ARM_FEATURE_MVE) && !defined(I8K_PLAIN_C)
#define I8K_MVE 1
#else
#define I8K_MVE 0
#endif
#if defined(__ARM_FEATURE_DSP) && !defined(I8K_PLAIN_C) && !I8K_MVE /* (the M55 has both: MVE wins) */
#define I8K_DSP 1
#else
#define I8K_DSP 0
#endif
#if defined(__ARM_ARCH_6M__) && !defined(I8K_PLAIN_C) /* Thumb-1 (M0, M0+): int8_conv_m0.h */
#define I8K_M0 1
#else
#define I8K_M0 0
#endif
#define I8K_WINO (I8K_DSP || I8K_M0) /* the kernels with a Winograd convolution (i8k_conv_wino) */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parameters, grouped by meaning (the generator fills them by member name) ---------- */

/* An activation tensor's height, width and channels (batch 1, NHWC order). */
typedef struct {
    uint16_t h, w, c;
} i8k_dims_t;

/* A window sliding over rows and columns: its size, its stride, and how many positions
 * lie before the first row and column (a convolution reads them as zero padding, i.e. the
 * input zero point; a max pool skips them). */
typedef struct {
    uint8_t h, w;
    uint8_t stride_h, stride_w;
    uint8_t pad_top, pad_left;
} i8k_window_t;

/* Constant weights and bias. Rows are k_pad bytes: the row's inputs padded with zeros to a
 * multiple of 4. The bias is the model's int32 bias minus the input zero point times the
 * sum of the row's weights, so inputs are multiplied as stored. */
typedef struct {
    const int8_t *weights;
    const int32_t *bias;
    uint16_t k_pad;
} i8k_filter_t;

/* Requantization of the int32 sums: out = sum * mult * 2^shift / 2^31, rounded. */
typedef struct {
    const int32_t *mult; /* fixed-point multipliers in [2^30, 2^31), or 0 */
    const int8_t *shift; /* > 0 shifts left */
} i8k_channel_quant_t;

/* The int8 clamp of the fused activation (and of the int8 range). */
typedef struct {
    int8_t min, max;
} i8k_clamp_t;

/* ---- kernels ----------------------------------------------------------------------------- */

/* A convolution (stride, zero padding), optionally followed by a max pool that is
 * computed on the fly: the full-resolution convolution output never exists.
 *
 * Weights: output channels in pairs; within a pair, for each group of 4 inputs of the
 * patch (order ky, kx, c; padded with zeros to k_pad), 4 bytes of the first channel then
 * 4 bytes of the second. A last odd channel has its k_pad bytes alone. Padding positions
 * of the patch hold in_zp, which the folded bias cancels. mult/shift: one per output
 * channel. */
typedef struct {
    i8k_dims_t input;
    i8k_dims_t conv;    /* the convolution's output: rows, columns, output channels */
    i8k_dims_t output;  /* the layer's output, after the pool (c == conv.c) */
    i8k_window_t kernel;
    i8k_window_t pool;  /* 1x1, stride 1, no padding when there is no pool */
    i8k_filter_t filter;
    i8k_channel_quant_t quant;
    int8_t in_zp, out_zp;
    i8k_clamp_t act;
    /* With the DSP kernels, a 3x3 convolution (stride 1, no padding) whose 2x2 max pool
     * (stride 2) follows may run as integer-exact Winograd F(2x2, 3x3) (micro/aot/winograd.py):
     * the transformed weights U = (2G) g (2G)^T, int16, ordered [output quad][tile position
     * 0..15][input word][channel of the quad][half], where input word 2j holds channels 4j and
     * 4j+2, word 2j+1 channels 4j+1 and 4j+3 (input.c % 8 == 0, conv.c % 4 == 0); read by
     * i8k_conv_wino only. Scratch: 32 * input.c + 256 bytes (I8K_WINO_SCRATCH_BYTES).
     * The ARMv6-M kernels (M0) run it too, on their own layout (int8_conv_m0.h): U + 2048 ordered
     * [output quad][tile position][input channel][channel of the quad], then the int32 start
     * values of the sums [output quad][tile position][channel of the quad]; 64 more bytes of
     * scratch. */
    const int16_t *wino;
} i8k_conv_t;

/* Scratch bytes i8k_conv needs (4-byte aligned): two expanded patches (2 * k_pad int16),
 * then int32 sums: of two neighbouring positions (8 * out_c) without a pool, one running
 * maximum per channel (4 * out_c) with one (pooled: pool.h * pool.w > 1). With MVE: four
 * int8 patches of k_pad rounded up to 16, then one running maximum per channel. The
 * compiler plans the larger of the two; the generated code checks it with _Static_assert. */
#if I8K_MVE
#define I8K_CONV_SCRATCH_BYTES(k_pad, out_c, pooled) \
    (4u * (((uint32_t)(k_pad) + 15u) & ~15u) + 4u * (uint32_t)(out_c))
#else
#define I8K_CONV_SCRATCH_BYTES(k_pad, out_c, pooled) \
    (4u * (uint32_t)(k_pad) + ((pooled) ? 4u : 8u) * (uint32_t)(out_c))
#endif

#if I8K_M0
#define I8K_WINO_SCRATCH_BYTES(in_c) (32u * (uint32_t)(in_c) + 320u)
#else
#define I8K_WINO_SCRATCH_BYTES(in_c) (32u * (uint32_t)(in_c) + 256u)
#endif

/* Fully connected: weights [out_n][k_pad]; mult/shift per output, or one for all
 * (per_channel 0). No scratch. */
typedef struct {
    uint16_t in_n, out_n;
    i8k_filter_t filter;
    i8k_channel_quant_t quant;
    uint8_t per_channel;
    int8_t out_zp;
    i8k_clamp_t act;
} i8k_fc_t;

/* Max pool on its own (when it does not follow a convolution). No scratch. */
typedef struct {
    i8k_dims_t input, output;
    i8k_window_t pool;
    i8k_clamp_t act;
} i8k_pool_t;

/* Softmax over the last axis, int8 in, int8 out (scale 1/256, zero point -128). No scratch;
 * the output may be the input. */
typedef struct {
    uint16_t rows, depth;
    int32_t in_mult; /* beta * input scale, as a fixed-point multiplier */
    int32_t in_left_shift;
    int32_t diff_min; /* differences from the row maximum below this give 0 */
} i8k_softmax_t;

void i8k_conv(const i8k_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
#if I8K_WINO
/* The Winograd kernel of a convolution whose p->wino is set (the generated code calls it under
 * #if I8K_WINO, so a model without one links none of it). */
void i8k_conv_wino(const i8k_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
#endif
void i8k_fc(const i8k_fc_t *p, const int8_t *in, int8_t *out);
void i8k_maxpool(const i8k_pool_t *p, const int8_t *in, int8_t *out);
void i8k_softmax(const i8k_softmax_t *p, const int8_t *in, int8_t *out);
void i8k_copy(const int8_t *in, int8_t *out, uint32_t n);

/* The requantization step, exposed for tests: acc * mult * 2^shift / 2^31, rounded. */
int32_t i8k_requantize(int32_t acc, int32_t mult, int32_t shift);

#ifdef __cplusplus
}
#endif

#endif
