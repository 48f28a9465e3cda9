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

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

/* A cursor over the header dict: [at, end). The header is not NUL-terminated for the parser:
 * a NUL byte inside it is just a character no rule accepts. */
typedef struct cursor {
  const char *at, *end;
} cursor;

static void skip_space(cursor *c) {
  while (c->at < c->end && (*c->at == ' ' || *c->at == '\t' || *c->at == '\n' || *c->at == '\r'))
    ++c->at;
}

/* Consume `ch` after optional spaces; 1 if it was there. */
static int take(cursor *c, char ch) {
  skip_space(c);
  if (c->at < c->end && *c->at == ch) {
    ++c->at;
    return 1;
  }
  return 0;
}

/* A quoted string without escapes (' or "): its text in [*text, *text + *len). */
static int take_string(cursor *c, const char **text, size_t *len) {
  skip_space(c);
  if (c->at >= c->end || (*c->at != '\'' && *c->at != '"'))
    return 0;
  const char quote = *c->at++;
  const char *start = c->at;
  while (c->at < c->end && *c->at != quote) {
    if (*c->at == '\\' || *c->at == '\n' || *c->at == '\0')
      return 0;
    ++c->at;
  }
  if (c->at >= c->end)
    return 0;
  *text = start;
  *len = (size_t)(c->at - start);
  ++c->at;
  return 1;
}

/* A Python identifier-like word (True, False). */
static int take_word(cursor *c, const char *word) {
  skip_space(c);
  const size_t n = strlen(word);
  if ((size_t)(c->end - c->at) < n || memcmp(c->at, word, n) != 0)
    return 0;
  const char *after = c->at + n;
  if (after < c->end && (isalnum((unsigned char)*after) || *after == '_'))
    return 0;
  c->at = after;
  return 1;
}

/* A non-negative decimal integer as Python writes it (no sign, no leading zeros, no '_'). */
static int take_dim(cursor *c, int64_t *value) {
  skip_space(c);
  if (c->at >= c->end || !isdigit((unsigned char)*c->at))
    return 0;
  if (*c->at == '0' && c->at + 1 < c->end && isdigit((unsigned char)c->at[1]))
    return 0;
  int64_t v = 0;
  while (c->at < c->end && isdigit((unsigned char)*c->at)) {
    const int digit = *c->at++ - '0';
    if (v > (INT64_MAX - digit) / 10)
      return 0;
    v = v * 10 + digit;
  }
  if (c->at < c->end && (isalnum((unsigned char)*c->at) || *c->at == '_' || *c->at == '.'))
    return 0;
  *value = v;
  return 1;
}

/* The descr string (a byte order and two code characters) -> out->dtype. */
static int parse_descr(const char *text, size_t len, sail_tensor *out, const char *path,
                       char *err, size_t err_len) {
  for (size_t i = 0; len == 3 && i < sizeof DESCRS / sizeof DESCRS[0]; ++i) {
    if (memcmp(text + 1, DESCRS[i].descr, 2) != 0)
      continue;
    const char order = text[0];
    const int one_byte = sail_dtype_size(DESCRS[i].dtype) == 1;
    if (order == '>' && !one_byte)
      return fail(err, err_len, path, "big-endian arrays are not supported; save the array "
                  "with numpy on a little-endian machine");
    if (order != '<' && order != '|' && order != '=' && order != '>')
      break;
    out->dtype = DESCRS[i].dtype;
    return 0;
  }
  return fail(err, err_len, path, "unsupported dtype in the .npy header (bool, int8-64, "
              "uint8-64 and float16-64 are supported)");
}

/* The shape tuple after 'shape': -> out->shape, out->ndim. */
static int parse_shape(cursor *c, sail_tensor *out, const char *path, char *err,
                       size_t err_len) {
  if (!take(c, '('))
    return fail(err, err_len, path, "bad 'shape' in the .npy header (not a tuple)");
  out->ndim = 0;
  if (take(c, ')'))
    return 0;
  for (;;) {
    int64_t dim = 0;
    if (!take_dim(c, &dim))
      return fail(err, err_len, path, "bad 'shape' in the .npy header (dims are whole "
                  "numbers below 2^63)");
    if (out->ndim == SAIL_MAX_NDIM)
      return fail(err, err_len, path, "more than 8 dims");
    out->shape[out->ndim++] = dim;
    if (take(c, ')')) {
      if (out->ndim == 1) /* (3) is a number in Python, not a tuple */
        return fail(err, err_len, path, "bad 'shape' in the .npy header (not a tuple)");
      return 0;
    }
    if (!take(c, ','))
      return fail(err, err_len, path, "bad 'shape' in the .npy header");
    if (take(c, ')'))
      return 0;
  }
}

/* The header dict, exactly as numpy.lib.format reads it: the keys 'descr', 'fortran_order' and
 * 'shape', each once, and nothing else but spaces after it. */
static int parse_header(const char *header, size_t header_len, sail_tensor *out,
                        const char *path, char *err, size_t err_len) {
  cursor c = {header, header + header_len};
  int have_descr = 0, have_fortran = 0, have_shape = 0;
  if (!take(&c, '{'))
    return fail(err, err_len, path, "the .npy header is not a dict");
  while (!take(&c, '}')) {
    const char *key = NULL;
    size_t key_len = 0;
    if (!take_string(&c, &key, &key_len) || !take(&c, ':'))
      return fail(err, err_len, path, "malformed .npy header dict");
    if (key_len == 5 && memcmp(key, "descr", 5) == 0 && !have_descr) {
      const char *descr = NULL;
      size_t descr_len = 0;
      if (!take_string(&c, &descr, &descr_len))
        return fail(err, err_len, path, "bad 'descr' in the .npy header");
      if (parse_descr(descr, descr_len, out, path, err, err_len) != 0)
        return -1;
      have_descr = 1;
    } else if (key_len == 13 && memcmp(key, "fortran_order", 13) == 0 && !have_fortran) {
      if (take_word(&c, "True"))
        return fail(err, err_len, path, "Fortran-order arrays are not supported; save a C-order "
                    "array (numpy.ascontiguousarray)");
      if (!take_word(&c, "False"))
        return fail(err, err_len, path, "bad 'fortran_order' in the .npy header");
      have_fortran = 1;
    } else if (key_len == 5 && memcmp(key, "shape", 5) == 0 && !have_shape) {
      if (parse_shape(&c, out, path, err, err_len) != 0)
        return -1;
      have_shape = 1;
    } else {
      return fail(err, err_len, path, "the .npy header has a repeated or unknown key (it holds "
                  "'descr', 'fortran_order' and 'shape')");
    }
    if (!take(&c, ',')) {
      if (!take(&c, '}'))
        return fail(err, err_len, path, "malformed .npy header dict");
      break;
    }
  }
  skip_space(&c);
  if (c.at != c.end)
    return fail(err, err_len, path, "characters after the .npy header dict");
  if (!have_descr)
    return fail(err, err_len, path, "no 'descr' in the .npy header");
  if (!have_fortran || !have_shape)
    return fail(err, err_len, path, "the .npy header lacks 'fortran_order' or 'shape'");
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
  header = malloc(header_len ? header_len : 1);
  if (!header) {
    fail(err, err_len, path, "out of memory");
    goto done;
  }
  if (fread(header, 1, header_len, f) != header_len)
    goto truncated;
  if (parse_header(header, header_len, out, path, err, err_len) != 0)
    goto done;
  /* As numpy: the nonzero dims times the item size must fit in an int64 even when a zero dim
   * makes the array empty, so no later product of dims can overflow. */
  uint64_t nonzero = sail_dtype_size(out->dtype);
  int empty = 0;
  for (int32_t d = 0; d < out->ndim; ++d) {
    empty |= out->shape[d] == 0;
    if (out->shape[d] > 0 && nonzero > (uint64_t)INT64_MAX / (uint64_t)out->shape[d]) {
      fail(err, err_len, path, "array too large (its dims multiply past 2^63)");
      goto done;
    }
    nonzero *= out->shape[d] > 0 ? (uint64_t)out->shape[d] : 1;
  }
  if (nonzero > SIZE_MAX) {
    fail(err, err_len, path, "array too large for this machine");
    goto done;
  }
  const size_t nbytes = empty ? 0 : (size_t)nonzero;
  /* The data must be in the file before memory is taken for it. */
  struct stat st = {0};
  const long data_start = ftell(f);
  const uint64_t held = fstat(fileno(f), &st) == 0 && data_start >= 0 &&
                                st.st_size > data_start
                            ? (uint64_t)st.st_size - (uint64_t)data_start
                            : 0;
  if (held < (uint64_t)nbytes) {
    snprintf(err, err_len, "%s: truncated .npy file: its header says %zu bytes of data, the file "
             "holds %llu", path, nbytes, (unsigned long long)held);
    goto done;
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
