/*
 * sail_tvm_shim.h: what the C code TVM generates for our kernels (kernels.c) needs, written for
 * SAIL so that the library builds without TVM's headers or libraries.
 *
 * TVM's C code generator (apache-tvm 0.27) emits one function per kernel,
 *
 *     int32_t __tvm_ffi_<kernel>(void *self, void *args, int32_t num_args, void *result);
 *
 * whose `args` is an array of TVMFFIAny: tensors as DLTensor pointers (type index 7), integer
 * scalars as int64 (type index 1). It checks every argument (type, rank, dtype, shape, device)
 * and reports a mismatch through TVMFFIErrorSetRaisedFromCStrParts; temporary buffers come from
 * TVMBackendAllocWorkspace / TVMBackendFreeWorkspace. The runtime (sail_model_rt.c) defines
 * these three functions.
 *
 * The structs follow public ABIs: DLPack's DLTensor, DLDataType and DLDevice, and TVM FFI's
 * TVMFFIAny (16 bytes: a type index, 4 bytes of padding, an 8-byte value).
 */
#ifndef SAIL_TVM_SHIM_H
#define SAIL_TVM_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* TVM marks exported functions with TVM_DLL; every kernel is an ordinary extern function here. */
#define TVM_DLL

/* DLPack: DLDataTypeCode values and the CPU device type. */
enum {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLBfloat = 4,
  kDLBool = 6,
};
enum { kDLCPU = 1 };

typedef struct {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

typedef struct {
  int32_t device_type;
  int32_t device_id;
} DLDevice;

typedef struct {
  void *data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t *shape;
  int64_t *strides; /* NULL: compact, row-major */
  uint64_t byte_offset;
} DLTensor;

/* TVM FFI type indices of the values the kernels take. */
enum {
  kTVMFFIInt = 1,
  kTVMFFIFloat = 3,
  kTVMFFIDLTensorPtr = 7,
};

typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    double v_float64;
    void *v_ptr;
  };
} TVMFFIAny;

/* A kernel's failed check: `kind` (e.g. "ValueError") and the message in parts. */
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **message_parts,
                                       int32_t num_parts);

/* Temporary buffers of a kernel: 64-byte aligned; NULL (with the error set) when out of memory. */
void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr);

/* The message of the last kernel failure on this thread ("" if none). */
const char *sail_tvm_last_error(void);

/* The share [sail_par_begin(n), sail_par_end(n)) of a kernel's parallel loop of n iterations
 * that this call runs (tir_codegen: splittable kernels): all of it unless sail_rt_call runs the
 * kernel on the thread pool, where part p of P runs [n p / P, n (p + 1) / P). */
int64_t sail_par_begin(int64_t n);
int64_t sail_par_end(int64_t n);

/* Three libm functions TVM's kernels call per element, replaced by versions of about the same
 * accuracy that are branch-free and call-free, so that gcc vectorizes the kernels' elementwise
 * loops (the Makefile compiles kernels.c with -fvect-cost-model=dynamic for that). glibc's
 * tanhf took ~40 ns an element on the Gemma 3 benchmark machine and the first replacement (with
 * branches and an expf call) ~7 ns; this one, vectorized, ~1 ns (the whole tanh-GELU of a
 * 1024 x 2048 activation: 14.5 ms -> 2.3 ms in one thread).
 *
 * sail_expf: e^x = 2^k e^r with k = x / ln 2 rounded to the nearest integer (the 1.5 * 2^23
 * trick: no float-to-int conversion, which gcc 12 would not vectorize with floorf), r reduced in
 * two steps (Cody-Waite: ln 2 = 0.693359375 - 2.12194440e-4), e^r by Cephes' degree-7
 * polynomial, 2^k as two power-of-two factors so that the result over- and underflows (and goes
 * subnormal) as expf does. Within 0.98 ulp of exp over every 5th float whose exp is a normal
 * float, within 1.1e-45 (one subnormal step) below; +inf -> inf, -inf -> 0, NaN stays NaN.
 * sail_tanhf: |x| < 0.625: x + x * x^2 P(x^2), P of degree 4 fitted (least squares on
 * Chebyshev nodes) to (tanh(x) / x - 1) / x^2; else 1 - 2 / (e^(2 min(|x|, 10)) + 1) (no
 * cancellation: 2 / (e + 1) <= 0.45 there; tanh(10) rounds to 1); both are computed and one is
 * selected. NaN stays NaN, the sign of -0 is kept. At most 1.33 ulp from tanh in float64 over
 * every 3rd float up to 20 (glibc's tanhf: < 1 ulp), no fused multiply-adds (-ffp-contract=off).
 * sail_powf: exponents 2 and 3 by multiplication (x * x exact-rounded; x^3 in double, then
 * rounded once more: within 1 ulp), every other exponent by powf. */
#include <math.h>

static inline float sail_expf(float x) {
  float a = x < -110.0f ? -110.0f : x; /* e^-110 and e^90 are 0 and inf in float */
  a = a > 90.0f ? 90.0f : a;
  union {
    float f;
    int32_t i;
  } t = {a * 1.44269504088896341f + 12582912.0f};
  const float kf = t.f - 12582912.0f;
  const int32_t k = t.i - 0x4B400000;
  const float r = a - kf * 0.693359375f - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t k1 = k / 2;
  union {
    int32_t i;
    float f;
  } s1 = {(k1 + 127) * (1 << 23)}, s2 = {(k - k1 + 127) * (1 << 23)};
  return p * s1.f * s2.f;
}

static inline float sail_tanhf(float x) {
  float a = fabsf(x);
  a = a > 10.0f ? 10.0f : a;
  const float a2 = a * a;
  const float small = a + a * (a2 * (-0.3333328f + a2 * (0.13331431f + a2 * (-0.05373916f +
                                                       a2 * (0.02063786f + a2 * -0.00570404f)))));
  const float big = 1.0f - 2.0f / (sail_expf(2.0f * a) + 1.0f);
  const float r = a < 0.625f ? small : big;
  return x != x ? x : copysignf(r, x);
}

static inline float sail_powf(float x, float y) {
  if (y == 2.0f)
    return x * x;
  if (y == 3.0f)
    return (float)((double)x * (double)x * (double)x);
  return powf(x, y);
}

/* Object-like: TVM's C also declares the functions it calls (`float powf(float, float);`),
 * which then redeclares the static ones above. */
#define expf sail_expf
#define tanhf sail_tanhf
#define powf sail_powf

#endif /* SAIL_TVM_SHIM_H */
