/*
 * sail_npy.c: reading and writing NumPy .npy files.
 *
 * A .npy file is the magic "\x93NUMPY", a version (major, minor), the header length (u16 for
 * version 1, u32 for 2 and 3), an ASCII Python dict literal
 * {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with spaces and a newline,
 * then the raw data. Only little-endian (or byte-sized) C-order arrays are read.
 */
#define _POSIX_C_SOURCE 200809L

#include "sail_npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char NPY_MAGIC[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* NumPy descr (without the byte-order character) <-> sail_dtype. */
static const struct {
  const char *descr;
  sail_dtype dtype;
} DESCRS[] = {
    {"b1", SAIL_BOOL},    {"i1", SAIL_INT8},    {"i2", SAIL_INT16},   {"i4", SAIL_INT32},
    {"i8", SAIL_INT64},   {"u1", SAIL_UINT8},   {"u2", SAIL_UINT16},  {"u4", SAIL_UINT32},
    {"u8", SAIL_UINT64},  {"f2", SAIL_FLOAT16}, {"f4", SAIL_FLOAT32}, {"f8", SAIL_FLOAT64},
};

static int fail(char *err, size_t err_len, const char *path, const char *what) {
  snprintf(err, err_len, "%s: %s", path, what);
  return -1;
}

/* The value after 'key': in the header dict, or NULL. */
static const char *dict_value(const char *header, const char *key) {
  char quoted[32];
  snprintf(quoted, sizeof quoted, "'%s'", key);
  const char *at = strstr(header, quoted);
  if (!at)
    return NULL;
  at = strchr(at + strlen(quoted), ':');
  if (!at)
    return NULL;
  ++at;
  while (*at == ' ')
    ++at;
  return at;
}

static int parse_header(const char *header, sail_tensor *out, const char *path, char *err,
                        size_t err_len) {
  const char *descr = dict_value(header, "descr");
  if (!descr || *descr != '\'')
    return fail(err, err_len, path, "no 'descr' in the .npy header");
  ++descr;
  if (strnlen(descr, 4) < 4) /* a byte order, two code characters and the closing quote */
    return fail(err, err_len, path, "bad 'descr' in the .npy header");
  const char order = descr[0];
  const char *code = descr + 1;
  int found = 0;
  for (size_t i = 0; i < sizeof DESCRS / sizeof DESCRS[0]; ++i) {
    if (strncmp(code, DESCRS[i].descr, 2) == 0 && code[2] == '\'') {
      const int one_byte = sail_dtype_size(DESCRS[i].dtype) == 1;
      if (order == '>' && !one_byte)
        return fail(err, err_len, path, "big-endian arrays are not supported; save the array "
                    "with numpy on a little-endian machine");
      if (order != '<' && order != '|' && order != '=' && order != '>')
        break;
      out->dtype = DESCRS[i].dtype;
      found = 1;
      break;
    }
  }
  if (!found)
    return fail(err, err_len, path, "unsupported dtype in the .npy header (bool, int8-64, "
                "uint8-64 and float16-64 are supported)");
  const char *fortran = dict_value(header, "fortran_order");
  if (!fortran || strncmp(fortran, "False", 5) != 0)
    return fail(err, err_len, path, "Fortran-order arrays are not supported; save a C-order "
                "array (numpy.ascontiguousarray)");
  const char *shape = dict_value(header, "shape");
  if (!shape || *shape != '(')
    return fail(err, err_len, path, "no 'shape' in the .npy header");
  ++shape;
  out->ndim = 0;
  for (;;) {
    while (*shape == ' ' || *shape == ',')
      ++shape;
    if (*shape == ')')
      break;
    char *end = NULL;
    errno = 0;
    long long size = strtoll(shape, &end, 10);
    if (end == shape || errno != 0 || size < 0)
      return fail(err, err_len, path, "bad shape in the .npy header");
    if (out->ndim == SAIL_MAX_NDIM)
      return fail(err, err_len, path, "more than 8 dims");
    out->shape[out->ndim++] = size;
    shape = end;
  }
  return 0;
}

int sail_npy_read(const char *path, sail_tensor *out, char *err, size_t err_len) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  int status = -1;
  char *header = NULL;
  unsigned char prefix[12];
  if (fread(prefix, 1, 8, f) != 8 || memcmp(prefix, NPY_MAGIC, sizeof NPY_MAGIC) != 0) {
    fail(err, err_len, path, "not a .npy file (bad magic); write it with numpy.save");
    goto done;
  }
  size_t header_len = 0;
  if (prefix[6] == 1) {
    if (fread(prefix + 8, 1, 2, f) != 2)
      goto truncated;
    header_len = (size_t)prefix[8] | (size_t)prefix[9] << 8;
  } else if (prefix[6] == 2 || prefix[6] == 3) {
    if (fread(prefix + 8, 1, 4, f) != 4)
      goto truncated;
    header_len = (size_t)prefix[8] | (size_t)prefix[9] << 8 | (size_t)prefix[10] << 16 |
                 (size_t)prefix[11] << 24;
  } else {
    fail(err, err_len, path, "unsupported .npy format version");
    goto done;
  }
  if (header_len > (1u << 20)) {
    fail(err, err_len, path, "the .npy header is implausibly long");
    goto done;
  }
  header = malloc(header_len + 1);
  if (!header) {
    fail(err, err_len, path, "out of memory");
    goto done;
  }
  if (fread(header, 1, header_len, f) != header_len)
    goto truncated;
  header[header_len] = '\0';
  if (parse_header(header, out, path, err, err_len) != 0)
    goto done;
  size_t nbytes = sail_dtype_size(out->dtype);
  for (int32_t d = 0; d < out->ndim; ++d) {
    if (out->shape[d] > 0 && nbytes > SIZE_MAX / (size_t)out->shape[d]) {
      fail(err, err_len, path, "array too large");
      goto done;
    }
    nbytes *= (size_t)out->shape[d];
  }
  out->data = malloc(nbytes ? nbytes : 1);
  if (!out->data) {
    fail(err, err_len, path, "out of memory");
    goto done;
  }
  if (fread(out->data, 1, nbytes, f) != nbytes)
    goto truncated;
  status = 0;
  goto done;
truncated:
  fail(err, err_len, path, "truncated .npy file");
done:
  free(header);
  fclose(f);
  if (status != 0)
    sail_tensor_release(out);
  return status;
}

int sail_npy_write(const char *path, const sail_tensor *tensor, char *err, size_t err_len) {
  const char *descr = NULL;
  for (size_t i = 0; i < sizeof DESCRS / sizeof DESCRS[0]; ++i)
    if (DESCRS[i].dtype == tensor->dtype)
      descr = DESCRS[i].descr;
  if (!descr)
    return fail(err, err_len, path, "unknown dtype");
  char dict[256];
  int used = snprintf(dict, sizeof dict, "{'descr': '%c%s', 'fortran_order': False, 'shape': (",
                      sail_dtype_size(tensor->dtype) == 1 ? '|' : '<', descr);
  for (int32_t d = 0; d < tensor->ndim; ++d)
    used += snprintf(dict + used, sizeof dict - (size_t)used, "%lld,%s",
                     (long long)tensor->shape[d], d + 1 < tensor->ndim ? " " : "");
  used += snprintf(dict + used, sizeof dict - (size_t)used, "), }");
  /* magic + version + u16 length + dict + padding + '\n' is a multiple of 64 bytes. */
  const size_t total = ((10 + (size_t)used + 1 + 63) / 64) * 64;
  const size_t header_len = total - 10;
  unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                              (unsigned char)(header_len & 0xff),
                              (unsigned char)(header_len >> 8)};
  FILE *f = fopen(path, "wb");
  if (!f) {
    snprintf(err, err_len, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  int ok = fwrite(prefix, 1, sizeof prefix, f) == sizeof prefix &&
           fwrite(dict, 1, (size_t)used, f) == (size_t)used;
  for (size_t i = (size_t)used; ok && i + 1 < header_len; ++i)
    ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  const size_t nbytes = (size_t)sail_tensor_numel(tensor) * sail_dtype_size(tensor->dtype);
  ok = ok && (nbytes == 0 || fwrite(tensor->data, 1, nbytes, f) == nbytes);
  if (fclose(f) != 0)
    ok = 0;
  if (!ok) {
    snprintf(err, err_len, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}
