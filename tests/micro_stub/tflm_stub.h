// Minimal stand-ins for the TFLM headers main.cc uses: a syntax check, not TFLM.
#pragma once
#include <cstddef>
#include <cstdint>
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
struct TfLiteIntArray { int size; int data[4]; };
union TfLitePtrUnion { int8_t* int8; uint8_t* uint8; int16_t* i16; float* f; };
struct TfLiteTensor { TfLitePtrUnion data; TfLiteIntArray* dims; };
#define TFLITE_SCHEMA_VERSION 3
inline void MicroPrintf(const char*, ...) {}
namespace tflite {
struct Model { int version() const { return 3; } };
inline const Model* GetModel(const void*) { return nullptr; }
template <unsigned int N> class MicroMutableOpResolver {
 public:
#define ADD(x) TfLiteStatus Add##x() { return kTfLiteOk; }
  ADD(Conv2D) ADD(MaxPool2D) ADD(Shape) ADD(StridedSlice) ADD(Pack) ADD(Reshape)
  ADD(FullyConnected) ADD(Softmax) ADD(Quantize) ADD(Dequantize) ADD(DepthwiseConv2D) ADD(Mean)
#undef ADD
};
class MicroInterpreter {
 public:
  template <typename R> MicroInterpreter(const Model*, R&, uint8_t*, size_t) {}
  TfLiteStatus AllocateTensors() { return kTfLiteOk; }
  TfLiteStatus Invoke() { return kTfLiteOk; }
  TfLiteTensor* input(int) { return nullptr; }
  TfLiteTensor* output(int) { return nullptr; }
  size_t arena_used_bytes() const { return 0; }
};
}  // namespace tflite
