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

#endif /* SAIL_TVM_SHIM_H */
