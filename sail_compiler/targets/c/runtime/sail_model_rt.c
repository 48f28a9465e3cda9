/*
 * sail_model_rt.c: weight file loading, buffers, kernel calls and errors for model.c, and the
 * three functions TVM's generated kernels call (sail_tvm_shim.h).
 *
 * The weight file (written by sail_compiler/targets/c/weight_file.py), little-endian:
 *
 *   header, 64 bytes:  magic "SAILCWT\0" | u32 version (2) | u32 tensor count
 *                      | u64 table offset | u64 table bytes | u64 data offset | u64 file bytes
 *                      | u32 CRC-32 of the table | u32 CRC-32 of header bytes 0..51 | u64 0
 *   table:             one 104-byte entry per tensor: u32 name offset | u32 name bytes
 *                      | u32 dtype (sail_dtype) | u32 ndim | u64 shape[8] | u64 data offset
 *                      | u64 data bytes | u32 CRC-32 of the data | u32 0;
 *                      then the names (UTF-8, not terminated), offsets relative to their start
 *   data:              each tensor 64-byte aligned, C order
 *
 * Loading maps the file read-only (the weights are never copied: processes share the page
 * cache) and treats it as hostile: it checks the magic, the version, both checksums, the file
 * size, that the reserved fields are zero, that every tensor lies inside the data area without
 * overlapping the table or another tensor and matches what model.c expects, and each tensor's
 * CRC-32 (zlib's; by carry-less multiplication on x86-64, else 8 bytes at a time) before any
 * pointer into the file is used.
 */
#define _POSIX_C_SOURCE 200809L

#include "sail_model_rt.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
  WEIGHT_ALIGN = 64,
  HEADER_BYTES = 64,
  ENTRY_BYTES = 104,
  FORMAT_VERSION = 2, /* 2: 4-bit LUT weights are nibble-packed codes (sail_lut.h) */
};
static const char WEIGHT_MAGIC[8] = {'S', 'A', 'I', 'L', 'C', 'W', 'T', '\0'};

static int load_luts(sail_model *model, const sail_lut_spec *specs, int32_t count, char *reason,
                     size_t reason_len);
static double seconds_now(void);
static void record_time(sail_model *model, const char *name, double seconds);

/* ---------------------------------------------------------------------------------------- */
/* The shim of sail_tvm_shim.h                                                              */

static _Thread_local char tvm_error[1024];

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **message_parts,
                                       int32_t num_parts) {
  size_t used = 0;
  int written = snprintf(tvm_error, sizeof tvm_error, "%s: ", kind ? kind : "Error");
  used = written > 0 ? (size_t)written : 0;
  for (int32_t i = 0; i < num_parts && used + 1 < sizeof tvm_error; ++i) {
    written = snprintf(tvm_error + used, sizeof tvm_error - used, "%s",
                       message_parts[i] ? message_parts[i] : "");
    if (written < 0)
      break;
    used += (size_t)written;
  }
}

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint) {
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  void *ptr = NULL;
  if (nbytes > (uint64_t)SIZE_MAX - WEIGHT_ALIGN ||
      posix_memalign(&ptr, WEIGHT_ALIGN, nbytes ? (size_t)nbytes : 1) != 0) {
    snprintf(tvm_error, sizeof tvm_error,
             "MemoryError: out of memory allocating a %llu-byte kernel workspace",
             (unsigned long long)nbytes);
    return NULL;
  }
  return ptr;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  (void)device_type;
  (void)device_id;
  free(ptr);
  return 0;
}

const char *sail_tvm_last_error(void) { return tvm_error; }

/* ---------------------------------------------------------------------------------------- */
/* Data types                                                                               */

size_t sail_dtype_size(sail_dtype dtype) {
  switch (dtype) {
  case SAIL_BOOL:
  case SAIL_INT8:
  case SAIL_UINT8:
    return 1;
  case SAIL_INT16:
  case SAIL_UINT16:
  case SAIL_FLOAT16:
    return 2;
  case SAIL_INT32:
  case SAIL_UINT32:
  case SAIL_FLOAT32:
    return 4;
  case SAIL_INT64:
  case SAIL_UINT64:
  case SAIL_FLOAT64:
    return 8;
  }
  return 0;
}

const char *sail_dtype_name(sail_dtype dtype) {
  switch (dtype) {
  case SAIL_BOOL:
    return "bool";
  case SAIL_INT8:
    return "int8";
  case SAIL_INT16:
    return "int16";
  case SAIL_INT32:
    return "int32";
  case SAIL_INT64:
    return "int64";
  case SAIL_UINT8:
    return "uint8";
  case SAIL_UINT16:
    return "uint16";
  case SAIL_UINT32:
    return "uint32";
  case SAIL_UINT64:
    return "uint64";
  case SAIL_FLOAT16:
    return "float16";
  case SAIL_FLOAT32:
    return "float32";
  case SAIL_FLOAT64:
    return "float64";
  }
  return "?";
}

DLDataType sail_rt_dl_dtype(sail_dtype dtype) {
  DLDataType dl = {kDLFloat, 32, 1};
  switch (dtype) {
  case SAIL_BOOL:
    dl.code = kDLBool;
    break;
  case SAIL_INT8:
  case SAIL_INT16:
  case SAIL_INT32:
  case SAIL_INT64:
    dl.code = kDLInt;
    break;
  case SAIL_UINT8:
  case SAIL_UINT16:
  case SAIL_UINT32:
  case SAIL_UINT64:
    dl.code = kDLUInt;
    break;
  case SAIL_FLOAT16:
  case SAIL_FLOAT32:
  case SAIL_FLOAT64:
    dl.code = kDLFloat;
    break;
  }
  dl.bits = (uint8_t)(8 * sail_dtype_size(dtype));
  return dl;
}

int64_t sail_tensor_numel(const sail_tensor *tensor) {
  int64_t numel = 1;
  for (int32_t i = 0; i < tensor->ndim; ++i) {
    if (tensor->shape[i] < 0)
      return -1;
    if (tensor->shape[i] > 0 && numel > INT64_MAX / tensor->shape[i])
      return -1;
    numel *= tensor->shape[i];
  }
  return numel;
}

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */

int sail_rt_fail(sail_model *model, const char *format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(model->error, sizeof model->error, format, args);
  va_end(args);
  return -1;
}

const char *sail_model_error(const sail_model *model) { return model ? model->error : ""; }

/* ---------------------------------------------------------------------------------------- */
/* CRC-32 (the polynomial of zlib and PNG, reflected)                                        */

static const uint32_t CRC_TABLE[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu,
    0xe963a535u, 0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u,
    0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du, 0x76dc4190u, 0x01db7106u,
    0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du,
    0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u,
    0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau,
    0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u,
    0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu,
    0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u,
    0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u,
    0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u,
    0x616bffd3u, 0x166ccf45u, 0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u,
    0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

/* Slicing by 8: CRC_SLICES[k][b] is the CRC of byte b followed by k zero bytes, so 8 bytes
 * advance the CRC with 8 independent lookups (several times faster than a byte at a time). */
static uint32_t CRC_SLICES[8][256];

static void crc_slices_init(void) {
  for (int b = 0; b < 256; ++b) {
    uint32_t crc = CRC_TABLE[b];
    CRC_SLICES[0][b] = crc;
    for (int k = 1; k < 8; ++k) {
      crc = CRC_TABLE[crc & 0xffu] ^ (crc >> 8);
      CRC_SLICES[k][b] = crc;
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same CRC with carry-less multiplication (PCLMULQDQ), several times faster than slicing by
 * 8: four 128-bit lanes are folded forward 512 bits per step (multiplying by x^(512+-32) mod P),
 * folded into one, and reduced to 32 bits by a Barrett step, after Gopal et al., "Fast CRC
 * Computation for Generic Polynomials Using PCLMULQDQ Instruction" (Intel, 2009). The constants
 * are x^n mod P for zlib's reflected polynomial P (0x1db710641) and its Barrett quotient.
 * `crc` is the running register (before the final inversion); `nbytes` >= 64, a multiple of 16. */
#include <immintrin.h>
#define SAIL_CRC_CLMUL 1

__attribute__((target("pclmul,sse4.1"))) static inline __m128i crc_fold(__m128i x, __m128i k,
                                                                      __m128i next) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00),
                                     _mm_clmulepi64_si128(x, k, 0x11)),
                       next);
}

__attribute__((target("pclmul,sse4.1"))) static uint32_t crc32_clmul(uint32_t crc,
                                                                   const uint8_t *p,
                                                                   size_t nbytes) {
  const __m128i k512 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4); /* fold by 4 x 128 bits */
  const __m128i k128 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0); /* fold by 128 bits */
  const __m128i k64 = _mm_set_epi64x(0, 0x163cd6124);            /* 64 -> 32 bits */
  const __m128i barrett = _mm_set_epi64x(0x1f7011641, 0x1db710641);
  const __m128i low32 = _mm_set_epi32(0, 0, 0, -1);
  __m128i x0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)crc));
  __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
  __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
  __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
  for (p += 64, nbytes -= 64; nbytes >= 64; p += 64, nbytes -= 64) {
    x0 = crc_fold(x0, k512, _mm_loadu_si128((const __m128i *)p));
    x1 = crc_fold(x1, k512, _mm_loadu_si128((const __m128i *)(p + 16)));
    x2 = crc_fold(x2, k512, _mm_loadu_si128((const __m128i *)(p + 32)));
    x3 = crc_fold(x3, k512, _mm_loadu_si128((const __m128i *)(p + 48)));
  }
  x0 = crc_fold(crc_fold(crc_fold(x0, k128, x1), k128, x2), k128, x3);
  for (; nbytes >= 16; p += 16, nbytes -= 16)
    x0 = crc_fold(x0, k128, _mm_loadu_si128((const __m128i *)p));
  x0 = _mm_xor_si128(_mm_clmulepi64_si128(x0, k128, 0x10), _mm_srli_si128(x0, 8));
  x0 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x0, low32), k64, 0x00),
                     _mm_srli_si128(x0, 4));
  __m128i q = _mm_clmulepi64_si128(_mm_and_si128(x0, low32), barrett, 0x10);
  q = _mm_clmulepi64_si128(_mm_and_si128(q, low32), barrett, 0x00);
  return (uint32_t)_mm_extract_epi32(_mm_xor_si128(q, x0), 1);
}

static int have_clmul;
#endif

static void crc_init(void) {
  crc_slices_init();
#if SAIL_CRC_CLMUL
  __builtin_cpu_init();
  have_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
}

static uint32_t crc32_bytes(const uint8_t *data, size_t nbytes) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, crc_init);
  uint32_t crc = 0xffffffffu;
  size_t i = 0;
#if SAIL_CRC_CLMUL
  if (have_clmul && nbytes >= 64) {
    i = nbytes & ~(size_t)15;
    crc = crc32_clmul(crc, data, i);
  }
#endif
  for (; i + 8 <= nbytes; i += 8) {
    const uint32_t lo = crc ^ ((uint32_t)data[i] | (uint32_t)data[i + 1] << 8 |
                               (uint32_t)data[i + 2] << 16 | (uint32_t)data[i + 3] << 24);
    crc = CRC_SLICES[7][lo & 0xffu] ^ CRC_SLICES[6][(lo >> 8) & 0xffu] ^
          CRC_SLICES[5][(lo >> 16) & 0xffu] ^ CRC_SLICES[4][lo >> 24] ^
          CRC_SLICES[3][data[i + 4]] ^ CRC_SLICES[2][data[i + 5]] ^ CRC_SLICES[1][data[i + 6]] ^
          CRC_SLICES[0][data[i + 7]];
  }
  for (; i < nbytes; ++i)
    crc = CRC_TABLE[(crc ^ data[i]) & 0xffu] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

/* ---------------------------------------------------------------------------------------- */
/* Weight file                                                                              */

static uint32_t read_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t read_u64(const uint8_t *p) {
  return (uint64_t)read_u32(p) | (uint64_t)read_u32(p + 4) << 32;
}

/* A load failure: the message goes to *err (malloc'ed) and the partial model is freed. */
static sail_model *load_failed(sail_model *model, char **err, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static sail_model *load_failed(sail_model *model, char **err, const char *format, ...) {
  if (err) {
    char message[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    *err = malloc(strlen(message) + 1);
    if (*err)
      memcpy(*err, message, strlen(message) + 1);
  }
  sail_rt_free(model);
  return NULL;
}

/* Map the whole file read-only (page-aligned, so every 64-byte aligned offset stays aligned).
 * sail writes artifacts as new files (artifact.write_artifact), so a recompile while a model
 * is loaded replaces the file and leaves this mapping intact; truncating the file in place
 * under a running model is not supported (the kernel would signal SIGBUS). */
static int map_file(sail_model *model, const char *path, char *reason, size_t reason_len) {
  const int fd = open(path, O_RDONLY);
  if (fd < 0) {
    snprintf(reason, reason_len, "cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  int status = -1;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    snprintf(reason, reason_len, "cannot read %s: %s", path, strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    snprintf(reason, reason_len, "%s is not a regular file", path);
  } else if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX / 2) {
    snprintf(reason, reason_len, "%s is too large (%lld bytes)", path, (long long)st.st_size);
  } else if (st.st_size == 0) {
    model->file = NULL;
    model->file_nbytes = 0;
    status = 0;
  } else {
    void *data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      snprintf(reason, reason_len, "cannot map %s: %s", path, strerror(errno));
    } else {
      model->file = data;
      model->file_nbytes = (size_t)st.st_size;
      status = 0;
    }
  }
  close(fd);
  return status;
}

/* Parse a whole decimal integer (no trailing characters); -1 if it is not one. */
static long parse_count(const char *text) {
  char *end = NULL;
  errno = 0;
  const long value = strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0 || value < 0)
    return -1;
  return value;
}

/* Entries of the tensor table sorted by data offset, to find overlapping tensors. */
typedef struct extent {
  uint64_t offset, nbytes;
  int32_t index;
} extent;

static int by_offset(const void *a, const void *b) {
  const uint64_t x = ((const extent *)a)->offset, y = ((const extent *)b)->offset;
  return x < y ? -1 : x > y;
}

/* The index of the first tensor whose CRC does not match, or -1. Up to 8 threads (one per online
 * CPU, the calling thread one of them) take tensors in turn when there are 64 MiB or more to
 * check; a thread that cannot be started leaves its share to the others. */
typedef struct crc_work {
  const uint8_t *file;
  uint64_t table_offset;
  int32_t count;
  _Atomic int32_t next;
  _Atomic int32_t first_bad; /* the lowest index whose CRC does not match, or count */
} crc_work;

static void *crc_worker(void *arg) {
  crc_work *work = arg;
  for (int32_t i; (i = atomic_fetch_add(&work->next, 1)) < work->count;) {
    const uint8_t *entry = work->file + work->table_offset + (uint64_t)i * ENTRY_BYTES;
    if (crc32_bytes(work->file + read_u64(entry + 80), (size_t)read_u64(entry + 88)) !=
        read_u32(entry + 96)) {
      int32_t bad = atomic_load(&work->first_bad);
      while (i < bad && !atomic_compare_exchange_weak(&work->first_bad, &bad, i)) {
      }
    }
  }
  return NULL;
}

static int32_t first_bad_crc(const uint8_t *file, uint64_t table_offset, int32_t count) {
  enum { MAX_CRC_THREADS = 8 };
  crc_work work = {file, table_offset, count, 0, count};
  uint64_t total = 0;
  for (int32_t i = 0; i < count; ++i)
    total += read_u64(file + table_offset + (uint64_t)i * ENTRY_BYTES + 88);
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  int32_t helpers = total < ((uint64_t)64 << 20) || cpus < 2 ? 0
                    : cpus > MAX_CRC_THREADS      ? MAX_CRC_THREADS - 1
                                                  : (int32_t)cpus - 1;
  pthread_t threads[MAX_CRC_THREADS];
  int32_t started = 0;
  while (started < helpers && pthread_create(&threads[started], NULL, crc_worker, &work) == 0)
    ++started;
  crc_worker(&work);
  for (int32_t t = 0; t < started; ++t)
    pthread_join(threads[t], NULL);
  const int32_t bad = atomic_load(&work.first_bad);
  return bad < count ? bad : -1;
}

sail_model *sail_rt_load(const char *path, const sail_weight_spec *specs, int32_t count,
                         const sail_lut_spec *luts, int32_t num_luts, char **err) {
  if (err)
    *err = NULL;
  sail_model *model = calloc(1, sizeof *model);
  if (!model)
    return load_failed(NULL, err, "out of memory loading %s", path);
  char reason[512];
  if (map_file(model, path, reason, sizeof reason) != 0)
    return load_failed(model, err, "%s", reason);

  const uint8_t *file = model->file;
  const uint64_t size = model->file_nbytes;
  if (size < HEADER_BYTES)
    return load_failed(model, err,
                       "%s is truncated (%llu bytes, shorter than the 64-byte header); "
                       "recompile the model",
                       path, (unsigned long long)size);
  if (memcmp(file, WEIGHT_MAGIC, sizeof WEIGHT_MAGIC) != 0)
    return load_failed(model, err, "%s is not a sail weight file for the c target (bad magic)",
                       path);
  if (read_u32(file + 8) != FORMAT_VERSION)
    return load_failed(model, err,
                       "%s has weight format %u, this model reads format %d; recompile the "
                       "model",
                       path, read_u32(file + 8), FORMAT_VERSION);
  if (crc32_bytes(file, 52) != read_u32(file + 52))
    return load_failed(model, err, "%s is corrupted: the header checksum does not match", path);
  if (read_u64(file + 56) != 0)
    return load_failed(model, err, "%s is corrupted: reserved header bytes 56..63 are not zero",
                       path);
  const uint32_t num_tensors = read_u32(file + 12);
  const uint64_t table_offset = read_u64(file + 16);
  const uint64_t table_nbytes = read_u64(file + 24);
  const uint64_t data_offset = read_u64(file + 32);
  const uint64_t file_nbytes = read_u64(file + 40);
  if (file_nbytes != size)
    return load_failed(model, err, "%s is %s: the header says %llu bytes, the file has %llu; "
                       "recompile the model", path, size < file_nbytes ? "truncated" : "damaged",
                       (unsigned long long)file_nbytes, (unsigned long long)size);
  if (table_offset < HEADER_BYTES || table_offset > size || table_nbytes > size - table_offset ||
      (uint64_t)num_tensors * ENTRY_BYTES > table_nbytes ||
      data_offset < table_offset + table_nbytes || data_offset > size)
    return load_failed(model, err, "%s is corrupted: the tensor table lies outside the file",
                       path);
  if (crc32_bytes(file + table_offset, (size_t)table_nbytes) != read_u32(file + 48))
    return load_failed(model, err, "%s is corrupted: the tensor table checksum does not match",
                       path);
  if (num_tensors != (uint32_t)count)
    return load_failed(model, err,
                       "%s holds %u tensors, this model needs %d: it belongs to another model; "
                       "use the weights.bin compiled with this model.c",
                       path, num_tensors, (int)count);

  model->weights = calloc(count > 0 ? (size_t)count : 1, sizeof *model->weights);
  if (!model->weights)
    return load_failed(model, err, "out of memory loading %s", path);
  model->num_weights = count;
  const uint8_t *names = file + table_offset + (uint64_t)num_tensors * ENTRY_BYTES;
  const uint64_t names_nbytes = table_nbytes - (uint64_t)num_tensors * ENTRY_BYTES;
  for (int32_t i = 0; i < count; ++i) {
    const uint8_t *entry = file + table_offset + (uint64_t)i * ENTRY_BYTES;
    const sail_weight_spec *spec = &specs[i];
    const uint32_t name_offset = read_u32(entry);
    const uint32_t name_nbytes = read_u32(entry + 4);
    if ((uint64_t)name_offset + name_nbytes > names_nbytes)
      return load_failed(model, err, "%s is corrupted: the name of tensor %d lies outside the "
                         "table", path, (int)i);
    const char *name = (const char *)names + name_offset;
    const uint32_t dtype = read_u32(entry + 8);
    const uint32_t ndim = read_u32(entry + 12);
    const uint64_t offset = read_u64(entry + 80);
    const uint64_t nbytes = read_u64(entry + 88);
    if (ndim > SAIL_MAX_NDIM || read_u32(entry + 100) != 0)
      return load_failed(model, err, "%s is corrupted: tensor %d has rank %u or a nonzero "
                         "reserved field", path, (int)i, ndim);
    for (uint32_t d = ndim; d < SAIL_MAX_NDIM; ++d)
      if (read_u64(entry + 16 + 8 * (uint64_t)d) != 0)
        return load_failed(model, err, "%s is corrupted: tensor %d has nonzero dims past its "
                           "rank", path, (int)i);
    int matches = strlen(spec->name) == name_nbytes &&
                  memcmp(spec->name, name, name_nbytes) == 0 && dtype == (uint32_t)spec->dtype &&
                  ndim == (uint32_t)spec->ndim;
    uint64_t numel = 1;
    for (int32_t d = 0; matches && d < spec->ndim; ++d) {
      matches = read_u64(entry + 16 + 8 * (uint64_t)d) == (uint64_t)spec->shape[d];
      numel *= (uint64_t)spec->shape[d];
    }
    if (!matches) {
      char shown[201]; /* the file's name, printable ASCII only (the file is untrusted) */
      const uint32_t n = name_nbytes < 200 ? name_nbytes : 200;
      for (uint32_t c = 0; c < n; ++c)
        shown[c] = name[c] >= 0x20 && name[c] < 0x7f ? name[c] : '?';
      shown[n] = '\0';
      return load_failed(model, err, "%s does not match this model: tensor %d is '%s', the "
                         "model expects '%s' (%s, rank %d); use the weights.bin compiled with "
                         "this model.c", path, (int)i, shown, spec->name,
                         sail_dtype_name(spec->dtype), (int)spec->ndim);
    }
    if (numel > UINT64_MAX / 16 || offset % WEIGHT_ALIGN != 0 || offset < data_offset ||
        offset > size ||
        nbytes > size - offset || nbytes != numel * sail_dtype_size(spec->dtype))
      return load_failed(model, err, "%s is corrupted: tensor '%s' lies outside the data area "
                         "or has the wrong size", path, spec->name);
    sail_buffer *w = &model->weights[i];
    w->t.data = (void *)(file + offset);
    w->t.device.device_type = kDLCPU;
    w->t.ndim = spec->ndim;
    w->t.dtype = sail_rt_dl_dtype(spec->dtype);
    for (int32_t d = 0; d < spec->ndim; ++d)
      w->shape[d] = spec->shape[d];
    w->t.shape = w->shape;
  }
  if (count > 1) { /* no two tensors share a byte */
    extent *extents = calloc((size_t)count, sizeof *extents);
    if (!extents)
      return load_failed(model, err, "out of memory loading %s", path);
    int32_t nonempty = 0; /* a tensor of 0 bytes shares none (the writer puts it at the next
                             tensor's offset) */
    for (int32_t i = 0; i < count; ++i) {
      const uint8_t *entry = file + table_offset + (uint64_t)i * ENTRY_BYTES;
      if (read_u64(entry + 88) > 0)
        extents[nonempty++] = (extent){read_u64(entry + 80), read_u64(entry + 88), i};
    }
    qsort(extents, (size_t)nonempty, sizeof *extents, by_offset);
    int32_t overlap = -1;
    for (int32_t i = 1; i < nonempty && overlap < 0; ++i)
      if (extents[i].offset < extents[i - 1].offset + extents[i - 1].nbytes)
        overlap = i;
    const sail_weight_spec *a = overlap >= 0 ? &specs[extents[overlap - 1].index] : NULL;
    const sail_weight_spec *b = overlap >= 0 ? &specs[extents[overlap].index] : NULL;
    free(extents);
    if (overlap >= 0)
      return load_failed(model, err, "%s is corrupted: tensors '%s' and '%s' overlap", path,
                         a->name, b->name);
  }
  /* Every tensor now lies inside the file: its checksum, before any pointer is handed out. */
  const int32_t bad_crc = first_bad_crc(file, table_offset, count);
  if (bad_crc >= 0)
    return load_failed(model, err, "%s is corrupted: the checksum of tensor '%s' does not "
                       "match; recompile the model", path, specs[bad_crc].name);
  if (load_luts(model, luts, num_luts, reason, sizeof reason) != 0)
    return load_failed(model, err, "%s does not match this model: %s; use the weights.bin "
                       "compiled with this model.c", path, reason);
  const char *threads = getenv("SAIL_NUM_THREADS");
  const long count_threads = threads && *threads ? parse_count(threads) : 1;
  if (count_threads < 0 || count_threads > SAIL_POOL_MAX_THREADS)
    return load_failed(model, err, "SAIL_NUM_THREADS=%s: give a whole number of threads, "
                       "1..%d", threads, SAIL_POOL_MAX_THREADS);
  if (sail_model_set_threads(model, (int)count_threads) != 0)
    return load_failed(model, err, "SAIL_NUM_THREADS=%s: %s", threads, model->error);
  model->error[0] = '\0';
  return model;
}

/* Elements of a buffer. */
static int64_t buffer_numel(const sail_buffer *buffer) {
  int64_t n = 1;
  for (int32_t d = 0; d < buffer->t.ndim; ++d)
    n *= buffer->shape[d];
  return n;
}

/* Views of the LUT weights into the loaded weight file, checked against their specs. */
static int load_luts(sail_model *model, const sail_lut_spec *specs, int32_t count, char *reason,
                     size_t reason_len) {
  if (count <= 0)
    return 0;
  model->luts = calloc((size_t)count, sizeof *model->luts);
  if (!model->luts) {
    snprintf(reason, reason_len, "out of memory");
    return -1;
  }
  model->lut_specs = specs;
  model->num_luts = count;
  for (int32_t i = 0; i < count; ++i) {
    const sail_lut_spec *spec = &specs[i];
    sail_lut_weight *w = &model->luts[i];
    const int32_t tensors[3] = {spec->planes, spec->scales, spec->zeros};
    /* scales: float32, or binary16 (--scale-dtype float16); the file's table says which */
    const int half = spec->scales >= 0 && spec->scales < model->num_weights &&
                     model->weights[spec->scales].t.dtype.code ==
                         sail_rt_dl_dtype(SAIL_FLOAT16).code &&
                     model->weights[spec->scales].t.dtype.bits ==
                         sail_rt_dl_dtype(SAIL_FLOAT16).bits;
    const sail_dtype dtypes[3] = {SAIL_UINT8, half ? SAIL_FLOAT16 : SAIL_FLOAT32, SAIL_UINT8};
    w->bits = spec->bits;
    w->k = spec->k;
    w->n = spec->n;
    w->group_size = spec->group_size;
    w->act_group = spec->act_group;
    if (spec->bits < 1 || spec->bits > 8 || sail_lut_derive(w) != SAIL_OK) {
      snprintf(reason, reason_len, "LUT weight %s has bits %d, K %d, N %d, group %d, activation "
               "group %d", spec->layer, (int)spec->bits, (int)spec->k, (int)spec->n,
               (int)spec->group_size, (int)spec->act_group);
      return -1;
    }
    const int64_t per_tile = (int64_t)w->n_tiles * w->n_groups;
    const int64_t expected[3] = {per_tile * w->blocks_per_group * w->bits * 64, per_tile * 16,
                                 per_tile * 16};
    const void *data[3] = {NULL, NULL, NULL};
    for (int j = 0; j < 3; ++j) {
      if (tensors[j] == -1 && j == 2)
        continue;
      if (tensors[j] < 0 || tensors[j] >= model->num_weights ||
          model->weights[tensors[j]].t.dtype.code != sail_rt_dl_dtype(dtypes[j]).code ||
          model->weights[tensors[j]].t.dtype.bits != sail_rt_dl_dtype(dtypes[j]).bits ||
          buffer_numel(&model->weights[tensors[j]]) != expected[j]) {
        snprintf(reason, reason_len, "the LUT weight of layer %s does not fit its tensors "
                 "(%s: want %s %lld elements)", spec->layer,
                 j == 0 ? "bit planes" : j == 1 ? "scales" : "zero points",
                 j == 1 ? "float32 or float16" : "uint8", (long long)expected[j]);
        return -1;
      }
      data[j] = model->weights[tensors[j]].t.data;
    }
    w->planes = data[0];
    w->scales = half ? NULL : data[1];
    w->scales_f16 = half ? data[1] : NULL;
    w->zeros = data[2];
    if (sail_lut_check(w) != SAIL_OK) {
      snprintf(reason, reason_len, "the LUT weight of layer %s is inconsistent", spec->layer);
      return -1;
    }
  }
  return 0;
}

int sail_model_set_threads(sail_model *model, int threads) {
  if (!model)
    return -1;
  if (threads < 1 || threads > SAIL_POOL_MAX_THREADS)
    return sail_rt_fail(model, "the number of threads must be 1..%d, not %d",
                        SAIL_POOL_MAX_THREADS, threads);
  if (threads == model->threads)
    return 0;
  sail_pool *pool = NULL;
  if (threads > 1 && !(pool = sail_pool_create(threads)))
    return sail_rt_fail(model, "could not start %d threads", threads);
  sail_pool_destroy(model->pool);
  model->pool = pool;
  model->threads = threads;
  return 0;
}

int sail_model_threads(const sail_model *model) { return model ? model->threads : 0; }

int sail_rt_lut_gemv(sail_model *model, int32_t lut, const sail_buffer *xq, const sail_buffer *sx,
                     sail_buffer *y) {
  const sail_lut_weight *w = &model->luts[lut];
  const char *layer = model->lut_specs[lut].layer;
  const int64_t rows = buffer_numel(y) / w->n;
  if (xq->t.dtype.code != kDLInt || xq->t.dtype.bits != 8 || xq->t.ndim < 1 ||
      xq->shape[xq->t.ndim - 1] != w->k || buffer_numel(xq) != rows * w->k ||
      buffer_numel(sx) != rows * w->n_act_blocks || buffer_numel(y) != rows * w->n)
    return sail_rt_fail(model, "LUT-GEMV of layer %s: the activations do not fit the weight "
                        "(K %d, N %d)", layer, w->k, w->n);
  if (rows == 0)
    return 0;
  if (rows > INT32_MAX)
    return sail_rt_fail(model, "LUT-GEMV of layer %s: %lld rows is too many", layer,
                        (long long)rows);
  const size_t need = (sail_lut_workspace_size(w, (int)rows) + 63) / 64 * 64; /* aligned_alloc */
  if (need > model->workspace_nbytes) {
    free(model->workspace);
    model->workspace_nbytes = 0;
    model->workspace = aligned_alloc(64, need);
    if (!model->workspace)
      return sail_rt_fail(model, "out of memory for the LUT-GEMV workspace (%zu bytes)", need);
    model->workspace_nbytes = need;
  }
  const double start = model->profile ? seconds_now() : 0.0;
  const int status = sail_lut_gemv(w, xq->t.data, sx->t.data, (int)rows, y->t.data, NULL,
                                   model->workspace, model->pool);
  if (model->profile)
    record_time(model, "sail_lut_gemv", seconds_now() - start);
  if (status != SAIL_OK)
    return sail_rt_fail(model, "LUT-GEMV of layer %s failed (%s)", layer,
                        status == SAIL_ENOMEM ? "out of memory" : "invalid arguments");
  if (model->lut_hook && model->lut_hook(model->lut_hook_ctx, model, lut, xq, sx, y) != 0)
    return -1;
  return 0;
}

static int same_dtype(const sail_buffer *a, const sail_buffer *b) {
  return a->t.dtype.code == b->t.dtype.code && a->t.dtype.bits == b->t.dtype.bits &&
         a->t.dtype.lanes == b->t.dtype.lanes;
}

static size_t element_bytes(const sail_buffer *buffer) {
  return ((size_t)buffer->t.dtype.bits * buffer->t.dtype.lanes + 7) / 8;
}

int sail_rt_concat(sail_model *model, const sail_buffer *const *parts, int32_t count, int32_t axis,
                   sail_buffer *y) {
  const int32_t ndim = y->t.ndim;
  const size_t elem = element_bytes(y);
  if (axis < 0 || axis >= ndim || count < 1)
    return sail_rt_fail(model, "concatenation along axis %d of %d parts into a %d-d tensor",
                        (int)axis, (int)count, (int)ndim);
  int64_t along = 0;
  for (int32_t p = 0; p < count; ++p) {
    const sail_buffer *part = parts[p];
    int fits = part->t.ndim == ndim && same_dtype(part, y);
    for (int32_t d = 0; fits && d < ndim; ++d)
      fits = d == axis || part->shape[d] == y->shape[d];
    if (!fits)
      return sail_rt_fail(model, "concatenation along axis %d: part %d does not fit the result",
                          (int)axis, (int)p);
    along += part->shape[axis];
  }
  if (along != y->shape[axis])
    return sail_rt_fail(model, "concatenation along axis %d: the parts add up to %lld, the "
                        "result has %lld", (int)axis, (long long)along, (long long)y->shape[axis]);
  const double start = model->profile ? seconds_now() : 0.0;
  int64_t outer = 1, inner = 1; /* dims before axis; elements after it */
  for (int32_t d = 0; d < axis; ++d)
    outer *= y->shape[d];
  for (int32_t d = axis + 1; d < ndim; ++d)
    inner *= y->shape[d];
  char *out = y->t.data;
  for (int64_t o = 0; o < outer; ++o) {
    for (int32_t p = 0; p < count; ++p) {
      const size_t run = (size_t)parts[p]->shape[axis] * (size_t)inner * elem;
      if (run)
        memcpy(out, (const char *)parts[p]->t.data + (size_t)o * run, run);
      out += run;
    }
  }
  if (model->profile)
    record_time(model, "sail_concat", seconds_now() - start);
  return 0;
}

int sail_rt_copy(sail_model *model, const sail_buffer *x, sail_buffer *y) {
  const int64_t n = buffer_numel(y);
  if (!same_dtype(x, y) || buffer_numel(x) != n)
    return sail_rt_fail(model, "reshape of %lld elements into %lld elements (or another dtype)",
                        (long long)buffer_numel(x), (long long)n);
  const double start = model->profile ? seconds_now() : 0.0;
  if (n)
    memcpy(y->t.data, x->t.data, (size_t)n * element_bytes(y));
  if (model->profile)
    record_time(model, "sail_copy", seconds_now() - start);
  return 0;
}

/* Axis d and those after it of y = broadcast(x); x's dims (xs) are right-aligned to y's and
 * padded with 1s. Axes from `split` on are the same in x and y (one contiguous run). */
static void broadcast_axis(char *y, const char *x, int32_t d, int32_t split, const int64_t *ys,
                           const int64_t *xs, const size_t *ystride, const size_t *xstride,
                           size_t run) {
  if (d == split) {
    memcpy(y, x, run);
    return;
  }
  for (int64_t i = 0; i < xs[d]; ++i)
    broadcast_axis(y + (size_t)i * ystride[d], x + (size_t)i * xstride[d], d + 1, split, ys, xs,
                   ystride, xstride, run);
  const size_t total = (size_t)ys[d] * ystride[d];
  for (size_t filled = (size_t)xs[d] * ystride[d]; filled < total;) {
    const size_t n = filled < total - filled ? filled : total - filled;
    memcpy(y + filled, y, n);
    filled += n;
  }
}

int sail_rt_broadcast(sail_model *model, const sail_buffer *x, sail_buffer *y) {
  const int32_t ndim = y->t.ndim, lead = y->t.ndim - x->t.ndim;
  int64_t xs[SAIL_MAX_NDIM];
  int fits = lead >= 0 && same_dtype(x, y);
  for (int32_t d = 0; fits && d < ndim; ++d) {
    xs[d] = d < lead ? 1 : x->shape[d - lead];
    fits = xs[d] > 0 ? y->shape[d] % xs[d] == 0 : y->shape[d] == 0;
  }
  if (!fits)
    return sail_rt_fail(model, "broadcast of a %d-d tensor into a %d-d tensor of another shape "
                        "or dtype", (int)x->t.ndim, (int)ndim);
  if (buffer_numel(y) == 0)
    return 0;
  const double start = model->profile ? seconds_now() : 0.0;
  const size_t elem = element_bytes(y);
  size_t ystride[SAIL_MAX_NDIM], xstride[SAIL_MAX_NDIM], run = elem;
  int32_t split = ndim;
  for (int32_t d = ndim - 1; d >= 0; --d) {
    ystride[d] = d == ndim - 1 ? elem : ystride[d + 1] * (size_t)y->shape[d + 1];
    xstride[d] = d == ndim - 1 ? elem : xstride[d + 1] * (size_t)xs[d + 1];
    if (split == d + 1 && xs[d] == y->shape[d]) {
      split = d;
      run *= (size_t)xs[d];
    }
  }
  broadcast_axis(y->t.data, x->t.data, 0, split, y->shape, xs, ystride, xstride, run);
  if (model->profile)
    record_time(model, "sail_broadcast", seconds_now() - start);
  return 0;
}

sail_kv_cache *sail_rt_cache_create(sail_model *model, const sail_cache_spec *specs,
                                    int32_t count, const char *unsupported, int64_t batch,
                                    int64_t capacity, sail_dtype storage) {
  if (!model)
    return NULL;
  model->error[0] = '\0';
  if (count < 1) {
    sail_rt_fail(model, "this model cannot keep its KV cache in place: %s", unsupported);
    return NULL;
  }
  if (batch < 1 || capacity < 1) {
    sail_rt_fail(model, "a KV cache needs a batch and a capacity of at least 1, not %lld and "
                 "%lld", (long long)batch, (long long)capacity);
    return NULL;
  }
  if (storage != 0 && storage != SAIL_FLOAT32 && storage != SAIL_FLOAT16) {
    sail_rt_fail(model, "a KV cache is stored as float32 (SAIL_FLOAT32) or float16 "
                 "(SAIL_FLOAT16), not sail_dtype %d", (int)storage);
    return NULL;
  }
  for (int32_t i = 0; i < count && storage; ++i)
    if (sail_model_outputs[specs[i].output].dtype != SAIL_FLOAT32) {
      sail_rt_fail(model, "a KV cache stored as %s needs float32 presents, and %s is not "
                   "float32; use sail_model_cache_create (each present's own dtype)",
                   storage == SAIL_FLOAT16 ? "float16" : "float32", specs[i].name);
      return NULL;
    }
  sail_kv_cache *cache = calloc(1, sizeof *cache);
  if (cache)
    cache->slots = calloc((size_t)count, sizeof *cache->slots);
  if (!cache || !cache->slots) {
    free(cache);
    sail_rt_fail(model, "out of memory");
    return NULL;
  }
  cache->capacity = capacity;
  for (int32_t i = 0; i < count; ++i) {
    const sail_io_spec *spec = &sail_model_outputs[specs[i].output];
    sail_cache_slot *slot = &cache->slots[i];
    const sail_dtype stored = storage ? storage : spec->dtype;
    size_t nbytes = sail_dtype_size(stored);
    slot->name = specs[i].name;
    slot->dtype = sail_rt_dl_dtype(stored);
    slot->source = sail_rt_dl_dtype(spec->dtype);
    slot->ndim = spec->ndim;
    slot->axis = specs[i].axis;
    for (int32_t d = 0; d < spec->ndim; ++d) {
      slot->shape[d] = d == specs[i].axis ? capacity : spec->shape[d] < 0 ? batch : spec->shape[d];
      if (nbytes > SIZE_MAX / (size_t)slot->shape[d]) {
        sail_kv_cache_free(cache);
        sail_rt_fail(model, "a KV cache of %lld positions is too large", (long long)capacity);
        return NULL;
      }
      nbytes *= (size_t)slot->shape[d];
    }
    if (posix_memalign(&slot->data, WEIGHT_ALIGN, nbytes ? nbytes : 1) != 0) {
      slot->data = NULL;
      sail_kv_cache_free(cache);
      sail_rt_fail(model, "out of memory for a KV cache of %lld positions (%zu bytes for %s)",
                   (long long)capacity, nbytes, specs[i].name);
      return NULL;
    }
    cache->count = i + 1;
  }
  return cache;
}

void sail_kv_cache_free(sail_kv_cache *cache) {
  if (!cache)
    return;
  for (int32_t i = 0; i < cache->count; ++i)
    free(cache->slots[i].data);
  free(cache->slots);
  free(cache);
}

int64_t sail_kv_cache_length(const sail_kv_cache *cache) {
  return cache && cache->count ? cache->slots[0].length : -1;
}

int sail_rt_cache_append(sail_model *model, sail_kv_cache *cache, int32_t slot_index,
                         const sail_buffer *past, const sail_buffer *x, sail_buffer *present) {
  if (!cache || slot_index < 0 || slot_index >= cache->count)
    return sail_rt_fail(model, "no KV cache for this model's present %d", (int)slot_index);
  sail_cache_slot *slot = &cache->slots[slot_index];
  const int32_t ndim = slot->ndim, axis = slot->axis;
  int fits = x->t.ndim == ndim && past->t.ndim == ndim && x->t.dtype.code == slot->source.code &&
             x->t.dtype.bits == slot->source.bits && x->t.dtype.lanes == slot->source.lanes &&
             !x->t.strides;
  for (int32_t d = 0; fits && d < ndim; ++d)
    fits = d == axis || (x->shape[d] == slot->shape[d] && past->shape[d] == slot->shape[d]);
  if (!fits)
    return sail_rt_fail(model, "%s: the new keys or values do not fit the KV cache (batch, "
                        "heads, dims or dtype)", slot->name);
  if (past->shape[axis] != slot->length)
    return sail_rt_fail(model, "%s: a past of %lld positions, but the KV cache holds %lld",
                        slot->name, (long long)past->shape[axis], (long long)slot->length);
  const int64_t seq = x->shape[axis], total = slot->length + seq;
  if (total > slot->shape[axis])
    return sail_rt_fail(model, "%s: a context of %lld positions exceeds the KV cache's capacity "
                        "of %lld", slot->name, (long long)total, (long long)slot->shape[axis]);
  const double start = model->profile ? seconds_now() : 0.0;
  const int half = slot->dtype.bits != slot->source.bits; /* float32 keys stored as halves */
  const size_t elem = (size_t)slot->dtype.bits / 8;
  int64_t outer = 1, inner = 1;
  for (int32_t d = 0; d < axis; ++d)
    outer *= slot->shape[d];
  for (int32_t d = axis + 1; d < ndim; ++d)
    inner *= slot->shape[d];
  const size_t run = (size_t)(seq * inner) * elem, row = (size_t)inner * elem;
  for (int64_t o = 0; o < outer && run; ++o) {
    char *dst = (char *)slot->data + ((size_t)(o * slot->shape[axis] + slot->length)) * row;
    if (half)
      sail_f16_from_f32((uint16_t *)dst, (const float *)x->t.data + o * seq * inner, seq * inner);
    else
      memcpy(dst, (const char *)x->t.data + (size_t)o * run, run);
  }
  slot->length = total;
  memset(present, 0, sizeof *present);
  present->t.data = slot->data;
  present->t.device.device_type = kDLCPU;
  present->t.ndim = ndim;
  present->t.dtype = slot->dtype;
  present->t.shape = present->shape;
  present->t.strides = present->strides;
  int64_t stride = 1;
  for (int32_t d = ndim - 1; d >= 0; --d) {
    present->shape[d] = d == axis ? total : slot->shape[d];
    present->strides[d] = stride;
    stride *= slot->shape[d];
  }
  if (model->profile)
    record_time(model, "sail_cache_append", seconds_now() - start);
  return 0;
}

int sail_rt_attention(sail_model *model, const sail_buffer *q, const sail_buffer *k,
                      const sail_buffer *v, const sail_buffer *mask, double scale,
                      double softcap, sail_buffer *y) {
  const sail_buffer *all[] = {q, k, v, y, mask}; /* the mask's rank is checked below */
  int fits = 1;
  for (int i = 0; i < 5 && fits; ++i) /* k and v: float32, or float16 from a cache of halves */
    fits = !all[i] || (all[i]->t.dtype.code == kDLFloat &&
                       (all[i]->t.dtype.bits == 32 || ((i == 1 || i == 2) &&
                                                       all[i]->t.dtype.bits == 16)) &&
                       all[i]->t.dtype.lanes == 1 && (i == 4 || all[i]->t.ndim == 4));
  const int k16 = k->t.dtype.bits == 16, v16 = v->t.dtype.bits == 16;
  const int64_t *qs = q->shape, *ks = k->shape, *vs = v->shape, *out = y->shape;
  fits = fits && ks[0] == qs[0] && ks[1] >= 1 && qs[1] % ks[1] == 0 && ks[3] == qs[3] &&
         vs[0] == qs[0] && vs[1] == ks[1] && vs[2] == ks[2] && out[0] == qs[0] &&
         out[1] == qs[1] && out[2] == qs[2] && out[3] == vs[3] && !q->t.strides &&
         !y->t.strides && (!k->t.strides || k->t.strides[3] == 1) &&
         (!v->t.strides || v->t.strides[3] == 1);
  sail_attention_args args = {
      .q = q->t.data, .k = k16 ? NULL : k->t.data, .v = v16 ? NULL : v->t.data,
      .k16 = k16 ? k->t.data : NULL, .v16 = v16 ? v->t.data : NULL, .y = y->t.data, .batch = qs[0],
      .q_heads = qs[1], .kv_heads = ks[1], .q_len = qs[2], .kv_len = ks[2], .head_dim = qs[3],
      .value_dim = vs[3], .k_strides = {ks[1] * ks[2] * ks[3], ks[2] * ks[3], ks[3]},
      .v_strides = {vs[1] * vs[2] * vs[3], vs[2] * vs[3], vs[3]}, .scale = (float)scale,
      .softcap = (float)softcap};
  for (int d = 0; d < 3; ++d) { /* views into a KV cache: rows read in place */
    if (k->t.strides)
      args.k_strides[d] = k->t.strides[d];
    if (v->t.strides)
      args.v_strides[d] = v->t.strides[d];
  }
  if (mask && fits) {
    const int32_t rank = mask->t.ndim, lead = 4 - mask->t.ndim;
    const int64_t full[4] = {qs[0], qs[1], qs[2], ks[2]};
    int64_t stride = 1;
    fits = rank >= 1 && rank <= 4;
    for (int32_t d = 3; d >= 0 && fits; --d) {
      const int64_t dim = d < lead ? 1 : mask->shape[d - lead];
      fits = dim == 1 || dim == full[d];
      args.mask_strides[d] = dim == 1 ? 0 : stride;
      stride *= dim;
    }
    args.mask = mask->t.data;
  }
  if (!fits)
    return sail_rt_fail(model, "attention: the query, keys, values, mask and result do not fit "
                        "together (float32 [B, Hq, S, D], [B, Hkv, T, D], [B, Hkv, T, Dv] (or "
                        "float16 keys and values), a mask broadcast to [B, Hq, S, T], "
                        "[B, Hq, S, Dv])");
  const double start = model->profile ? seconds_now() : 0.0;
  const int status = sail_attention(&args, model->pool);
  if (model->profile)
    record_time(model, "sail_attention", seconds_now() - start);
  if (status != SAIL_ATTENTION_OK)
    return sail_rt_fail(model, "attention failed (%s)", status == SAIL_ATTENTION_ENOMEM
                        ? "out of memory" : "invalid arguments");
  return 0;
}

int sail_rt_check_indices(sail_model *model, const char *table, const sail_buffer *indices,
                          int64_t low, int64_t high) {
  const int64_t n = buffer_numel(indices);
  if (indices->t.dtype.code != kDLInt || indices->t.strides ||
      (indices->t.dtype.bits != 64 && indices->t.dtype.bits != 32))
    return 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t value = indices->t.dtype.bits == 64 ? ((const int64_t *)indices->t.data)[i]
                                                      : ((const int32_t *)indices->t.data)[i];
    if (value < low || value >= high)
      return sail_rt_fail(model, "index %lld (element %lld) is outside %s, which takes %lld .. "
                          "%lld: a position or id beyond what the model was exported for (a "
                          "context longer than its position table, or an id past its "
                          "vocabulary); shorten the context", (long long)value, (long long)i,
                          table, (long long)low, (long long)(high - 1));
  }
  return 0;
}

/* dst[i] = src[i * stride] for i < n, elements of `elem` bytes. */
static void gather(char *dst, const char *src, int64_t n, int64_t stride, size_t elem) {
  if (stride == 1) {
    memcpy(dst, src, (size_t)n * elem);
    return;
  }
  switch (elem) {
  case 4:
    for (int64_t i = 0; i < n; ++i)
      memcpy(dst + 4 * i, src + 4 * i * stride, 4);
    break;
  case 8:
    for (int64_t i = 0; i < n; ++i)
      memcpy(dst + 8 * i, src + 8 * i * stride, 8);
    break;
  default:
    for (int64_t i = 0; i < n; ++i)
      memcpy(dst + elem * (size_t)i, src + elem * (size_t)(i * stride), elem);
  }
}

int sail_rt_transpose(sail_model *model, const sail_buffer *x, const int32_t *perm,
                      sail_buffer *y) {
  const int32_t ndim = y->t.ndim;
  int fits = x->t.ndim == ndim && ndim >= 1 && same_dtype(x, y);
  int used[SAIL_MAX_NDIM] = {0};
  for (int32_t d = 0; fits && d < ndim; ++d) {
    fits = perm[d] >= 0 && perm[d] < ndim && !used[perm[d]] && y->shape[d] == x->shape[perm[d]];
    if (fits)
      used[perm[d]] = 1;
  }
  if (!fits)
    return sail_rt_fail(model, "transpose: the result does not fit the input and permutation");
  const int64_t n = buffer_numel(y);
  if (n == 0)
    return 0;
  const double start = model->profile ? seconds_now() : 0.0;
  const size_t elem = element_bytes(y);
  int64_t xstride[SAIL_MAX_NDIM], stride[SAIL_MAX_NDIM], index[SAIL_MAX_NDIM] = {0};
  xstride[ndim - 1] = 1;
  for (int32_t d = ndim - 1; d > 0; --d)
    xstride[d - 1] = xstride[d] * x->shape[d];
  for (int32_t d = 0; d < ndim; ++d)
    stride[d] = xstride[perm[d]]; /* elements of x per step along axis d of y */
  const int64_t inner = y->shape[ndim - 1];
  char *out = y->t.data;
  const char *in = x->t.data;
  for (int64_t done = 0; done < n; done += inner) {
    int64_t offset = 0;
    for (int32_t d = 0; d < ndim - 1; ++d)
      offset += index[d] * stride[d];
    gather(out + (size_t)done * elem, in + (size_t)offset * elem, inner, stride[ndim - 1], elem);
    for (int32_t d = ndim - 2; d >= 0; --d) { /* next index of the outer axes */
      if (++index[d] < y->shape[d])
        break;
      index[d] = 0;
    }
  }
  if (model->profile)
    record_time(model, "sail_transpose", seconds_now() - start);
  return 0;
}

void sail_rt_set_lut_hook(sail_model *model, sail_lut_hook hook, void *ctx) {
  model->lut_hook = hook;
  model->lut_hook_ctx = ctx;
}

void sail_rt_free(sail_model *model) {
  if (!model)
    return;
  sail_pool_destroy(model->pool);
  for (int32_t i = 0; i < model->num_blocks; ++i)
    free(model->blocks[i].data);
  free(model->workspace);
  free(model->luts);
  free(model->profile);
  free(model->weights);
  if (model->file)
    munmap(model->file, model->file_nbytes);
  free(model);
}

/* ---------------------------------------------------------------------------------------- */
/* Buffers, kernel calls, inputs and outputs                                                */

/* Element k of an integer tensor (index inputs: token ids). */
static int64_t integer_at(const sail_tensor *x, int64_t k) {
  switch (x->dtype) {
  case SAIL_INT8:
    return ((const int8_t *)x->data)[k];
  case SAIL_INT16:
    return ((const int16_t *)x->data)[k];
  case SAIL_INT32:
    return ((const int32_t *)x->data)[k];
  case SAIL_INT64:
    return ((const int64_t *)x->data)[k];
  case SAIL_UINT8:
    return ((const uint8_t *)x->data)[k];
  case SAIL_UINT16:
    return ((const uint16_t *)x->data)[k];
  case SAIL_UINT32:
    return ((const uint32_t *)x->data)[k];
  case SAIL_UINT64:
    return (int64_t)((const uint64_t *)x->data)[k];
  default:
    return 0;
  }
}

/* The attention mask [batch, past + seq] of a decoder with a KV cache must cover the past and
 * the new tokens. Its dim often has a name of its own (past_plus_seq, total_sequence_length)
 * that no other input shares, so the check by name cannot relate it to the others; this one
 * does, by the inputs' roles (as ModelSignature.check_inputs does in Python). Models without
 * one token-ids input [batch, seq], one mask [batch, n] and pasts sharing one past axis are
 * left to the checks by name. */
static int check_mask_length(sail_model *model, const sail_tensor *inputs,
                             const sail_io_spec *specs, const int32_t (*dim_ids)[SAIL_MAX_NDIM],
                             int32_t count) {
  int32_t ids = -1, mask = -1, past = -1, past_axis = -1, past_id = -1;
  for (int32_t i = 0; i < count; ++i) {
    const sail_io_spec *spec = &specs[i];
    if ((spec->role == SAIL_ROLE_IDS || spec->role == SAIL_ROLE_MASK) && spec->ndim == 2) {
      int32_t *slot = spec->role == SAIL_ROLE_IDS ? &ids : &mask;
      if (*slot >= 0)
        return 0; /* several: not a decoder this check knows */
      *slot = i;
    } else if (spec->role == SAIL_ROLE_PAST) {
      int32_t axis = -1;
      for (int32_t d = 1; d < spec->ndim; ++d) {
        if (spec->shape[d] < 0) {
          if (axis >= 0)
            return 0;
          axis = d;
        }
      }
      if (axis < 0 || dim_ids[i][axis] < 0 || (past >= 0 && dim_ids[i][axis] != past_id))
        return 0; /* no past axis, or pasts of different lengths (an encoder's cache) */
      if (past < 0) {
        past = i;
        past_axis = axis;
        past_id = dim_ids[i][axis];
      }
    }
  }
  if (ids < 0 || mask < 0 || past < 0 || specs[mask].shape[1] >= 0 || dim_ids[mask][1] < 0)
    return 0;
  for (int32_t i = 0; i < count; ++i) /* a dim another input shares is checked by name */
    for (int32_t d = 0; d < specs[i].ndim; ++d)
      if ((i != mask || d != 1) && dim_ids[i][d] == dim_ids[mask][1])
        return 0;
  const int64_t p = inputs[past].shape[past_axis], seq = inputs[ids].shape[1];
  if (inputs[mask].shape[1] == p + seq)
    return 0;
  return sail_rt_fail(model, "input %s: dim 1 is %lld, but it must be past + seq = %lld (%s has "
                      "past = %lld, %s seq = %lld)", specs[mask].name,
                      (long long)inputs[mask].shape[1], (long long)(p + seq), specs[past].name,
                      (long long)p, specs[ids].name, (long long)seq);
}

int sail_rt_check_inputs(sail_model *model, const sail_tensor *inputs, const sail_io_spec *specs,
                         const int32_t (*dim_ids)[SAIL_MAX_NDIM], int32_t count,
                         sail_buffer *views, int64_t *dims, int32_t num_dims) {
  if (!inputs && count > 0)
    return sail_rt_fail(model, "no inputs given; the model takes %d", (int)count);
  for (int32_t d = 0; d < num_dims; ++d)
    dims[d] = -1;
  for (int32_t i = 0; i < count; ++i) {
    const sail_tensor *x = &inputs[i];
    const sail_io_spec *spec = &specs[i];
    if (x->dtype != spec->dtype)
      return sail_rt_fail(model, "input %s: dtype %s, expected %s", spec->name,
                          sail_dtype_name(x->dtype), sail_dtype_name(spec->dtype));
    if (x->ndim != spec->ndim)
      return sail_rt_fail(model, "input %s: rank %d, expected %d", spec->name, (int)x->ndim,
                          (int)spec->ndim);
    for (int32_t axis = 0; axis < x->ndim; ++axis) {
      const int64_t size = x->shape[axis];
      const int32_t id = dim_ids[i][axis];
      if (size < 0)
        return sail_rt_fail(model, "input %s: dim %d is negative (%lld)", spec->name, (int)axis,
                            (long long)size);
      /* shape -1 with no dim id: a dim named by an expression of other dims (`past + seq`),
       * checked by its value (sail_rt_check_dim) once every input has set the dims */
      if (id < 0 && spec->shape[axis] >= 0 && size != spec->shape[axis])
        return sail_rt_fail(model, "input %s: dim %d is %lld, expected %lld", spec->name,
                            (int)axis, (long long)size, (long long)spec->shape[axis]);
      if (id >= 0 && dims[id] >= 0 && dims[id] != size)
        return sail_rt_fail(model, "input %s: dim %d ('%s') is %lld, but another input gave "
                            "it %lld", spec->name, (int)axis, spec->dim_names[axis],
                            (long long)size, (long long)dims[id]);
      if (id >= 0)
        dims[id] = size;
    }
    const int64_t numel = sail_tensor_numel(x);
    if (numel < 0 || (uint64_t)numel > (uint64_t)SIZE_MAX / 16)
      return sail_rt_fail(model, "input %s: its dims multiply to more elements than memory "
                          "holds", spec->name);
    if (numel > 0 && !x->data)
      return sail_rt_fail(model, "input %s has no data", spec->name);
    if (spec->index_bound > 0) {
      for (int64_t k = 0; k < numel; ++k) {
        const int64_t value = integer_at(x, k);
        if (value < 0 || value >= spec->index_bound)
          return sail_rt_fail(model, "input %s: values must lie in [0, %lld), got %lld",
                              spec->name, (long long)spec->index_bound, (long long)value);
      }
    }
    sail_buffer *view = &views[i];
    memset(view, 0, sizeof *view);
    view->t.data = x->data;
    view->t.device.device_type = kDLCPU;
    view->t.ndim = x->ndim;
    view->t.dtype = sail_rt_dl_dtype(x->dtype);
    for (int32_t axis = 0; axis < x->ndim; ++axis)
      view->shape[axis] = x->shape[axis];
    view->t.shape = view->shape;
  }
  return check_mask_length(model, inputs, specs, dim_ids, count);
}

int sail_rt_check_dim(sail_model *model, const char *what, int32_t axis, int64_t actual,
                      int64_t expected) {
  if (actual == expected)
    return 0;
  return sail_rt_fail(model, "%s: dim %d is %lld, the model requires %lld here (inconsistent "
                      "input dims)", what, (int)axis, (long long)actual, (long long)expected);
}

int sail_rt_alloc(sail_model *model, sail_buffer *buffer, const char *name, sail_dtype dtype,
                  int32_t ndim, const int64_t *shape) {
  sail_rt_release(model, buffer);
  memset(buffer, 0, sizeof *buffer);
  size_t nbytes = sail_dtype_size(dtype);
  for (int32_t d = 0; d < ndim; ++d) {
    if (shape[d] < 0)
      return sail_rt_fail(model, "%s: dim %d would be negative (%lld); check the input dims",
                          name, (int)d, (long long)shape[d]);
    if (shape[d] > 0 && nbytes > SIZE_MAX / (size_t)shape[d])
      return sail_rt_fail(model, "%s: too large to allocate", name);
    nbytes *= (size_t)shape[d];
    buffer->shape[d] = shape[d];
  }
  const size_t need = nbytes ? nbytes : 1;
  void *data = NULL;
  size_t capacity = need;
  /* the smallest kept block that holds `need` bytes without wasting more than 3/4 of it */
  int32_t best = -1;
  for (int32_t i = 0; i < model->num_blocks; ++i) {
    const size_t have = model->blocks[i].capacity;
    if (have >= need && have / 4 <= need &&
        (best < 0 || have < model->blocks[best].capacity))
      best = i;
  }
  if (best >= 0) {
    data = model->blocks[best].data;
    capacity = model->blocks[best].capacity;
    model->blocks[best] = model->blocks[--model->num_blocks];
  } else if (posix_memalign(&data, WEIGHT_ALIGN, need) != 0) {
    return sail_rt_fail(model, "out of memory allocating %s (%zu bytes)", name, nbytes);
  }
  buffer->t.data = data;
  buffer->t.device.device_type = kDLCPU;
  buffer->t.ndim = ndim;
  buffer->t.dtype = sail_rt_dl_dtype(dtype);
  buffer->t.shape = buffer->shape;
  buffer->owned = 1;
  buffer->capacity = capacity;
  return 0;
}

void sail_rt_release(sail_model *model, sail_buffer *buffer) {
  if (buffer->owned) {
    if (model && model->num_blocks < SAIL_BLOCK_CACHE) {
      model->blocks[model->num_blocks].data = buffer->t.data;
      model->blocks[model->num_blocks].capacity = buffer->capacity;
      ++model->num_blocks;
    } else {
      free(buffer->t.data);
    }
  }
  buffer->t.data = NULL;
  buffer->owned = 0;
}

void sail_rt_release_all(sail_model *model, sail_buffer *buffers, size_t count) {
  for (size_t i = 0; i < count; ++i)
    sail_rt_release(model, &buffers[i]);
}

static double seconds_now(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static void record_time(sail_model *model, const char *name, double seconds) {
  int32_t i = 0;
  while (i < model->profile_count && strcmp(model->profile[i].name, name) != 0)
    ++i;
  if (i == model->profile_count) {
    if (model->profile_count == model->profile_capacity)
      return; /* more kernels than sail_rt_profile made room for: not timed */
    model->profile[i].name = name;
    ++model->profile_count;
  }
  model->profile[i].seconds += seconds;
  model->profile[i].calls += 1;
}

/* This thread's part of the kernel call sail_rt_call is running on the pool (0 of 1: all). */
static _Thread_local int64_t par_part = 0, par_parts = 1;

/* n p / P without overflow; shares of consecutive parts meet, part 0 starts at 0, the last
 * ends at n. */
static int64_t share_start(int64_t n, int64_t p) {
  return n / par_parts * p + n % par_parts * p / par_parts;
}
int64_t sail_par_begin(int64_t n) { return share_start(n, par_part); }
int64_t sail_par_end(int64_t n) { return share_start(n, par_part + 1); }

typedef struct {
  sail_kernel_fn kernel;
  TVMFFIAny *args;
  int32_t num_args;
  atomic_int failed; /* the first failing part copies its message below */
  char error[sizeof tvm_error];
} par_call;

static void run_share(void *ctx, int part, int n_parts) {
  par_call *call = ctx;
  par_part = part;
  par_parts = n_parts;
  const int32_t status = call->kernel(NULL, call->args, call->num_args, NULL);
  par_part = 0;
  par_parts = 1;
  if (status != 0 && atomic_exchange(&call->failed, 1) == 0)
    snprintf(call->error, sizeof call->error, "%s", tvm_error);
}

/* Elements of the largest tensor argument that is not a weight (0 if none): a kernel's
 * work grows with its activations, inputs or outputs. The last output alone undercounts
 * reductions and the activation quantizers, whose last output (a scale per token and block)
 * is a 128th of what they read; a weight (the embedding table a decode step gathers one row
 * of) says nothing of the work. */
static int64_t largest_activation_elements(const sail_model *model, const TVMFFIAny *args,
                                           int32_t num_args) {
  const uintptr_t weights = (uintptr_t)model->weights,
                  weights_end = weights + (size_t)model->num_weights * sizeof(sail_buffer);
  int64_t largest = 0;
  for (int32_t i = 0; i < num_args; ++i) {
    if (args[i].type_index != kTVMFFIDLTensorPtr)
      continue;
    const DLTensor *t = args[i].v_ptr;
    if ((uintptr_t)t >= weights && (uintptr_t)t < weights_end)
      continue; /* a weight: SAIL_W passes &model->weights[i].t */
    int64_t n = 1;
    for (int32_t d = 0; d < t->ndim; ++d)
      n *= t->shape[d];
    largest = n > largest ? n : largest;
  }
  return largest;
}

int sail_rt_call(sail_model *model, const char *name, sail_kernel_fn kernel, int parallel,
                 TVMFFIAny *args, int32_t num_args) {
  const double start = model->profile ? seconds_now() : 0.0;
  par_call call; /* set up only on the pool path: its message outlives the branch */
  int32_t status;
  const char *message;
  if (parallel && model->pool &&
      largest_activation_elements(model, args, num_args) >= SAIL_PAR_MIN_ELEMENTS) {
    call.kernel = kernel;
    call.args = args;
    call.num_args = num_args;
    call.error[0] = '\0';
    atomic_init(&call.failed, 0);
    sail_pool_run_parts(model->pool, run_share, &call,
                        sail_pool_threads(model->pool) * SAIL_POOL_PARTS_PER_THREAD);
    status = atomic_load(&call.failed) ? -1 : 0;
    message = call.error;
  } else {
    status = kernel(NULL, args, num_args, NULL);
    message = sail_tvm_last_error();
  }
  if (model->profile)
    record_time(model, name, seconds_now() - start);
  if (status == 0)
    return 0;
  return sail_rt_fail(model, "kernel %s failed: %s", name, message);
}

int sail_rt_profile(sail_model *model) {
  enum { MAX_KERNELS = 4096 };
  if (model->profile)
    return 0;
  model->profile = calloc(MAX_KERNELS, sizeof *model->profile);
  if (!model->profile)
    return sail_rt_fail(model, "out of memory");
  model->profile_capacity = MAX_KERNELS;
  return 0;
}

void sail_rt_reset_profile(sail_model *model) {
  if (model->profile) /* record_time adds to an entry's totals when it reuses the slot */
    memset(model->profile, 0, (size_t)model->profile_capacity * sizeof *model->profile);
  model->profile_count = 0;
}

static int slower_first(const void *a, const void *b) {
  const double x = ((const sail_kernel_time *)a)->seconds;
  const double y = ((const sail_kernel_time *)b)->seconds;
  return (x < y) - (x > y);
}

void sail_rt_print_profile(const sail_model *model, void *file) {
  FILE *out = file;
  if (!model->profile || model->profile_count == 0)
    return;
  sail_kernel_time *sorted = malloc((size_t)model->profile_count * sizeof *sorted);
  if (!sorted)
    return;
  memcpy(sorted, model->profile, (size_t)model->profile_count * sizeof *sorted);
  qsort(sorted, (size_t)model->profile_count, sizeof *sorted, slower_first);
  double total = 0.0;
  for (int32_t i = 0; i < model->profile_count; ++i)
    total += sorted[i].seconds;
  fprintf(out, "%12s %7s %8s  kernel\n", "total ms", "share", "calls");
  for (int32_t i = 0; i < model->profile_count; ++i)
    fprintf(out, "%12.3f %6.1f%% %8lld  %s\n", 1e3 * sorted[i].seconds,
            total > 0 ? 100.0 * sorted[i].seconds / total : 0.0, (long long)sorted[i].calls,
            sorted[i].name);
  free(sorted);
}

int sail_rt_set_output(sail_model *model, sail_tensor *out, sail_buffer *buffer,
                       sail_dtype dtype) {
  out->dtype = dtype;
  out->ndim = buffer->t.ndim;
  size_t nbytes = sail_dtype_size(dtype);
  for (int32_t d = 0; d < buffer->t.ndim; ++d) {
    out->shape[d] = buffer->shape[d];
    nbytes *= (size_t)buffer->shape[d];
  }
  if (buffer->owned) {
    out->data = buffer->t.data;
    buffer->t.data = NULL;
    buffer->owned = 0;
    return 0;
  }
  out->data = NULL;
  if (posix_memalign(&out->data, WEIGHT_ALIGN, nbytes ? nbytes : 1) != 0) {
    out->data = NULL;
    return sail_rt_fail(model, "out of memory allocating an output (%zu bytes)", nbytes);
  }
  if (nbytes)
    memcpy(out->data, buffer->t.data, nbytes);
  return 0;
}

void sail_rt_clear_outputs(sail_tensor *outputs, int32_t count) {
  for (int32_t i = 0; i < count; ++i) {
    outputs[i].data = NULL;
    outputs[i].ndim = 0;
  }
}

void sail_rt_release_outputs(sail_tensor *outputs, int32_t count) {
  for (int32_t i = 0; i < count; ++i)
    sail_tensor_release(&outputs[i]);
}

void sail_tensor_release(sail_tensor *tensor) {
  if (!tensor)
    return;
  free(tensor->data);
  tensor->data = NULL;
}
