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

/* Two libm functions TVM's kernels call per element, replaced by faster ones of about the same
 * accuracy (the kernels include <math.h> after this header, which then adds nothing). glibc's
 * tanhf took ~40 ns an element on the Gemma 3 benchmark machine, 28% of a 32-token prefill in
 * the tanh-GELU of the MLP; powf(x, 3.0f) of the same GELU ~10 ns.
 *
 * sail_tanhf: |x| < 0.625: x + x * x^2 P(x^2), P of degree 4 fitted (least squares on
 * Chebyshev nodes) to (tanh(x) / x - 1) / x^2; |x| < 10: 1 - 2 / (expf(2 |x|) + 1) (no
 * cancellation: 2 / (e + 1) <= 0.45 there); else +-1 (tanh(10) rounds to 1); NaN stays NaN, the
 * sign of -0 is kept. At most 1.31 ulp from tanh in float64 over every 7th float up to 20
 * (glibc's tanhf: < 1 ulp), no fused multiply-adds (-ffp-contract=off).
 * sail_powf: exponents 2 and 3 by multiplication (x * x exact-rounded; x^3 in double, then
 * rounded once more: within 1 ulp), every other exponent by powf. */
#include <math.h>

static inline float sail_tanhf(float x) {
  const float a = fabsf(x);
  float r;
  if (a < 0.625f) {
    const float a2 = a * a;
    r = a + a * (a2 * (-0.3333328f + a2 * (0.13331431f + a2 * (-0.05373916f +
                                                                 a2 * (0.02063786f +
                                                                       a2 * -0.00570404f)))));
  } else if (a < 10.0f) {
    r = 1.0f - 2.0f / (expf(2.0f * a) + 1.0f);
  } else {
    r = a == a ? 1.0f : a;
  }
  return copysignf(r, x);
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
#define tanhf sail_tanhf
#define powf sail_powf

#endif /* SAIL_TVM_SHIM_H */
