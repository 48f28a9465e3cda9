/*
 * sail_npy.h: NumPy .npy files (format 1.0-3.0, little-endian, C order) for sail_main.
 */
#ifndef SAIL_NPY_H
#define SAIL_NPY_H

#include <stddef.h>

#include "sail_model_api.h"

/* Read `path` into `out` (data allocated with malloc: release with sail_tensor_release).
 * Returns 0, or -1 with a message in `err`. */
int sail_npy_read(const char *path, sail_tensor *out, char *err, size_t err_len);

/* Write `tensor` to `path` as a version 1.0 .npy file. Returns 0, or -1 with a message. */
int sail_npy_write(const char *path, const sail_tensor *tensor, char *err, size_t err_len);

#endif /* SAIL_NPY_H */
