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

#ifdef __cplusplus
extern "C" {
#endif

/* A convolution (stride, zero padding), optionally followed by a max pool that is
 * computed on the fly: the full-resolution convolution output never exists.
 *
 * Weights: output channels in pairs; within a pair, for each group of 4 inputs of the
 * patch (order ky, kx, c; padded with zeros to k_pad, a multiple of 4), 4 bytes of the
 * first channel then 4 bytes of the second. A last odd channel has its k_pad bytes alone.
 * Bias: the model's int32 bias minus in_zp times the sum of the channel's weights, so
 * the patch is multiplied as stored (padding positions hold in_zp, which then adds 0).
 * Scratch: 4 * k_pad bytes for two expanded patches plus 4 * out_c for the pool maxima,
 * 4-byte aligned. */
typedef struct {
    const int8_t *weights;
    const int32_t *bias;
    const int32_t *mult; /* per output channel */
    const int8_t *shift; /* per output channel; > 0 shifts left */
    uint16_t in_h, in_w, in_c, out_c;
    uint16_t k_pad;            /* kh * kw * in_c rounded up to a multiple of 4 */
    uint8_t kh, kw, sh, sw;    /* kernel and stride */
    uint8_t pad_t, pad_l;      /* zero padding before the first row and column */
    uint16_t conv_h, conv_w;   /* convolution output size */
    uint8_t ph, pw, psh, psw;  /* pool window and stride; 1, 1, 1, 1 when there is no pool */
    uint8_t ppad_t, ppad_l;    /* pool padding (positions outside are skipped) */
    uint16_t out_h, out_w;     /* the layer's output size (after the pool) */
    int8_t in_zp, out_zp, act_min, act_max;
} i8k_conv_t;

/* Fully connected: weights [out_n][k_pad] (rows padded with zeros to a multiple of 4),
 * bias folded as for convolutions; mult/shift per output, or one for all (per_channel 0). */
typedef struct {
    const int8_t *weights;
    const int32_t *bias;
    const int32_t *mult;
    const int8_t *shift;
    uint16_t in_n, out_n, k_pad;
    uint8_t per_channel;
    int8_t out_zp, act_min, act_max;
} i8k_fc_t;

/* Max pool on its own (when it does not follow a convolution). */
typedef struct {
    uint16_t in_h, in_w, c, out_h, out_w;
    uint8_t ph, pw, psh, psw, ppad_t, ppad_l;
    int8_t act_min, act_max;
} i8k_pool_t;

/* Softmax over the last axis, int8 in, int8 out (scale 1/256, zero point -128). */
typedef struct {
    uint16_t rows, depth;
    int32_t in_mult; /* beta * input scale, as a fixed-point multiplier */
    int32_t in_left_shift;
    int32_t diff_min; /* differences from the row maximum below this give 0 */
} i8k_softmax_t;

void i8k_conv(const i8k_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
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
