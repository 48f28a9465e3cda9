"""Fuzzing the loaders of hostile files: thousands of mutations of a compiled model's
``weights.bin`` tensor table and of ``.npy`` headers, generated deterministically from a seed.

Every checksum of a mutated weight file is recomputed (the header's, the table's, and a moved
tensor's), so the loaders' bounds and layout checks, not the checksums, are what stands. Each
file goes through the C loader (``model.c``'s ``sail_model_load``, the whole runtime built with
``-fsanitize=address,undefined``; all files load in one process, which must finish clean) and
through the Python reader (:func:`read_weight_file`). The properties:

* both refuse with a message naming the file (C) or an :class:`ArtifactError` (Python), or load;
* what C loads, Python loads too, with the names, dtypes and shapes ``model.c`` expects and the
  same bytes (a hash of each tensor as C sees it through its pointer); tensors whose entries the
  mutation did not touch equal the original arrays;
* whatever Python loads is laid out as the format says (aligned, inside the data area, no two
  tensors sharing a byte), checked here from the raw bytes;
* a mutation that keeps the model intact (tensors moved with their data, bytes appended, the data
  area started earlier) is loaded by both.

``.npy`` headers are checked against numpy itself: what the C reader loads, ``numpy.load`` loads
with the same dtype, shape and bytes; a header only respaced or reordered is loaded by both.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from sail_compiler import CompileOptions, compile_model
from sail_compiler.errors import ArtifactError
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.weights_file import DTYPE_CODES, read_weight_file, write_weight_file

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the harness builds with cc")

RUNTIME = Path(__file__).resolve().parents[2] / "sail_compiler" / "targets" / "c" / "runtime"
HEADER = struct.Struct("<8sIIQQQQII")  # the 52 bytes the header CRC covers, then the CRC
ENTRY = struct.Struct("<IIII8QQQII")  # 104 bytes
#: entry field -> index in ENTRY: name offset, name bytes, dtype, ndim, shape[8], offset,
#: nbytes, crc, reserved
OFFSET, NBYTES, CRC, RESERVED = 12, 13, 14, 15
DTYPES = {code: np.dtype(name) for name, code in DTYPE_CODES.items()}
DEFAULT_COUNT = 1200
SLOW_COUNT = 10000

HARNESS = r"""/* Loads each file named on stdin ("w PATH": a weight file through model.c's
 * sail_model_load; "n PATH": a .npy file through sail_npy_read) in this one process and prints
 * one line each:
 * "REFUSED <message>", or "LOADED" and, per tensor, its offset in the file and an FNV-1a hash
 * of its bytes (weights) or its dtype, shape and hash (.npy). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "sail_model_rt.h"
#include "sail_npy.h"

static unsigned long long fnv1a(const unsigned char *p, size_t n) {
  unsigned long long h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

int main(void) {
  char line[4096];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\n")] = '\0';
    const char *path = line + 2;
    if (line[0] == 'w') {
      char *err = NULL;
      sail_model *m = sail_model_load(path, &err);
      if (!m) {
        printf("REFUSED %s\n", err ? err : "");
        free(err);
        continue;
      }
      printf("LOADED");
      for (int32_t i = 0; i < m->num_weights; ++i) {
        const sail_buffer *w = &m->weights[i];
        size_t n = w->t.dtype.bits / 8;
        for (int32_t d = 0; d < w->t.ndim; ++d)
          n *= (size_t)w->shape[d];
        const unsigned char *p = w->t.data;
        printf(" %lld:%llx", (long long)(p - (const unsigned char *)m->file), fnv1a(p, n));
      }
      printf("\n");
      sail_model_free(m);
    } else {
      sail_tensor t;
      char err[512];
      if (sail_npy_read(path, &t, err, sizeof err) != 0) {
        printf("REFUSED %s\n", err);
        continue;
      }
      printf("LOADED %s", sail_dtype_name(t.dtype));
      for (int32_t d = 0; d < t.ndim; ++d)
        printf(" %lld", (long long)t.shape[d]);
      printf(" :%llx\n", fnv1a(t.data, (size_t)sail_tensor_numel(&t) * sail_dtype_size(t.dtype)));
      sail_tensor_release(&t);
    }
    fflush(stdout);
  }
  return 0;
}
"""


def fnv1a(data: bytes) -> int:
    h = 1469598103934665603
    for byte in data:
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass
class Fixture:
    weights: bytes
    harness: Path


@pytest.fixture(scope="module")
def fuzz(micro_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """A 4-bit micro decoder compiled for c (LUT-GEMV weights included) and the harness, built
    with the address and undefined-behaviour sanitizers around the runtime and model.c."""
    out = tmp_path_factory.mktemp("fuzz")
    artifact = out / "micro"
    compile_model(micro_decoder, artifact, CompileOptions(target="c",
                                                          quant=QuantScheme.parse("w4g32")))
    (out / "fuzz_load.c").write_text(HARNESS)
    cc = shutil.which("cc") or "cc"
    # TVM's kernels are never called by a load: built plainly, they only satisfy the linker.
    subprocess.run([cc, "-std=c11", "-O0", "-c", str(artifact / "kernels.c"), f"-I{RUNTIME}",
                    f"-I{artifact}", "-o", str(out / "kernels.o")], check=True,
                   capture_output=True)
    sources = [out / "fuzz_load.c", artifact / "model.c",
               *(RUNTIME / f"{name}.c" for name in ("sail_model_rt", "sail_lut", "sail_lut_avx2",
                                                    "sail_threads", "sail_attention",
                                                    "sail_npy"))]
    subprocess.run([cc, "-std=c11", "-O1", "-g", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", f"-I{RUNTIME}",
                    f"-I{artifact}", *map(str, sources), str(out / "kernels.o"), "-pthread",
                    "-lm", "-o", str(out / "fuzz_load")], check=True, capture_output=True)
    return Fixture((artifact / "weights.bin").read_bytes(), out / "fuzz_load")


def run_harness(harness: Path, jobs: list[tuple[str, Path]]) -> list[str]:
    """One line of the harness per (kind, path); the process must end cleanly (no sanitizer
    report, no leak)."""
    proc = subprocess.run([str(harness)], input="".join(f"{k} {p}\n" for k, p in jobs),
                          capture_output=True, text=True, errors="replace", timeout=600)
    assert proc.returncode == 0 and "ERROR" not in proc.stderr \
        and "runtime error" not in proc.stderr, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(jobs)
    return lines


# ----------------------------------------------------------------------------------------------
# Weight files


@dataclass
class Layout:
    """A weights.bin taken apart: header fields, table entries, names and the whole file."""

    data: bytearray
    fields: list  # magic, version, count, table offset, table bytes, data offset, file bytes
    entries: list[list[int]]
    original_table: tuple[int, int]  # where the entries are written back: offset, bytes
    touched: set[int] = field(default_factory=set)  # entries a mutation changed
    benign: bool = False  # the mutation keeps every tensor's name, dtype, shape and bytes
    fix_crc: set[int] = field(default_factory=set)  # tensors whose CRC follows their new place
    cut: int | None = None  # the file is cut to this many bytes after everything is written

    @classmethod
    def parse(cls, data: bytes) -> Layout:
        fields = list(HEADER.unpack_from(data, 0)[:7])
        entries = [list(ENTRY.unpack_from(data, fields[3] + i * ENTRY.size))
                   for i in range(fields[2])]
        return cls(bytearray(data), fields, entries, (fields[3], fields[4]))

    def serialize(self) -> bytes:
        """The file with the entries written back at the table offset the original had, and
        every checksum recomputed (tensor CRCs of moved tensors over their new bytes)."""
        data = self.data
        table_offset = self.original_table[0]
        for i in self.fix_crc:
            offset, nbytes = self.entries[i][OFFSET], self.entries[i][NBYTES]
            if offset + nbytes <= len(data):
                self.entries[i][CRC] = zlib.crc32(data[offset:offset + nbytes])
        for i, entry in enumerate(self.entries):
            ENTRY.pack_into(data, table_offset + i * ENTRY.size, *entry)
        table_crc = zlib.crc32(data[self.fields[3]:self.fields[3] + self.fields[4]]) \
            if self.fields[3] + self.fields[4] <= len(data) else 0
        head = HEADER.pack(*self.fields, table_crc, 0)[:52]
        data[:56] = head + struct.pack("<I", zlib.crc32(head))
        return bytes(data[:self.cut])


U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


def interesting(rng: np.random.Generator, current: int, size: int, width: int) -> int:
    """A value for a field of `width` bits: edges of the integer, of the file, near the old."""
    mask = (1 << width) - 1
    choices = [0, 1, 2, 7, 8, 63, 64, 65, 104, size - 1, size, size + 1, size + 64, 1 << 31,
               U32, 1 << 32, 1 << 63, U64, current + 1, current - 1, current + 64, current - 64,
               current * 2, current // 2, int(rng.integers(0, max(size, 1) * 2))]
    return int(choices[int(rng.integers(len(choices)))]) & mask


def mutate_weights(original: bytes, rng: np.random.Generator) -> Layout:
    """One to three mutations of the header fields, the table entries or names, or the file's
    extent; a mutation that keeps the model intact marks the layout benign."""
    w = Layout.parse(original)
    size = len(original)
    kinds = int(rng.integers(1, 4))
    for _ in range(kinds):
        kind = int(rng.integers(10))
        i = int(rng.integers(len(w.entries)))
        if kind == 0:  # a header field: count, table offset/bytes, data offset, file bytes
            f = int(rng.integers(2, 7))
            w.fields[f] = interesting(rng, w.fields[f], size, 32 if f == 2 else 64)
        elif kind in (1, 2):  # one field of one entry
            f = int(rng.integers(16))
            if f == CRC:
                f = RESERVED
            width = 32 if f < 4 or f >= CRC else 64
            w.entries[i][f] = interesting(rng, w.entries[i][f], size, width)
            w.touched.add(i)
            w.fix_crc.add(i)
        elif kind == 3:  # point a tensor at another tensor's (or a nearby) offset
            j = int(rng.integers(len(w.entries)))
            w.entries[i][OFFSET] = w.entries[j][OFFSET] + 64 * int(rng.integers(-2, 3))
            w.touched.add(i)
            w.fix_crc.add(i)
        elif kind == 4:  # swap two entries
            j = int(rng.integers(len(w.entries)))
            w.entries[i], w.entries[j] = w.entries[j], w.entries[i]
            w.touched |= {i, j}
        elif kind == 5:  # random bytes anywhere in the table (entries or names)
            table_offset, table_bytes = w.original_table
            for _ in range(int(rng.integers(1, 5))):
                at = int(rng.integers(table_bytes))
                w.data[table_offset + at] = int(rng.integers(256))
            w.entries = [list(ENTRY.unpack_from(w.data, table_offset + k * ENTRY.size))
                         for k in range(len(w.entries))]
            w.touched |= set(range(len(w.entries)))
        elif kind == 6:  # the file cut short, the header following or not
            w.cut = int(rng.integers(0, len(w.data)))
            if rng.integers(2):
                w.fields[6] = w.cut
        elif kind == 7 and kinds == 1:  # move a tensor's data to the end of the file: intact
            offset, nbytes = w.entries[i][OFFSET], w.entries[i][NBYTES]
            new = -(-len(w.data) // 64) * 64
            w.data += bytes(new - len(w.data)) + w.data[offset:offset + nbytes]
            w.entries[i][OFFSET] = new
            w.fields[6] = len(w.data)
            w.benign = True
        elif kind == 8 and kinds == 1:  # bytes appended to the end: intact
            w.data += bytes(rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8))
            w.fields[6] = len(w.data)
            w.benign = True
        elif kind == 9 and kinds == 1:  # the data area starts anywhere from the table's end
            table_end = w.fields[3] + w.fields[4]
            w.fields[5] = int(rng.integers(table_end, min(e[OFFSET] for e in w.entries) + 1))
            w.benign = True
        else:  # the reserved header bytes (not under the header checksum)
            w.data[56 + int(rng.integers(8))] = int(rng.integers(1, 256))
    return w


def layout_holds(data: bytes) -> bool:
    """The format's layout rules, checked from the raw bytes: used on what Python loaded."""
    _, _, count, table_offset, table_bytes, data_offset, file_bytes, _, _ = \
        HEADER.unpack_from(data, 0)
    if file_bytes != len(data) or data[56:64] != bytes(8) or not (
            64 <= table_offset and table_offset + table_bytes <= data_offset <= len(data)):
        return False
    spans = []
    for k in range(count):
        entry = ENTRY.unpack_from(data, table_offset + k * ENTRY.size)
        ndim, shape = entry[3], entry[4:12]
        offset, nbytes = entry[OFFSET], entry[NBYTES]
        if (entry[RESERVED] or ndim > 8 or any(shape[ndim:]) or offset % 64
                or offset < data_offset or offset + nbytes > len(data)
                or nbytes != int(np.prod(shape[:ndim], dtype=object))
                * DTYPES[entry[2]].itemsize):
            return False
        if nbytes:
            spans.append((offset, offset + nbytes))
    spans.sort()
    return all(b[0] >= a[1] for a, b in zip(spans, spans[1:], strict=False))


def check_weights(fix: Fixture, tmp: Path, count: int, seed: int) -> dict[str, int]:
    original = read_weight_file(_write(tmp / "original.bin", fix.weights))
    expected = [(name, a.dtype, a.shape, a.tobytes()) for name, a in original]
    rng = np.random.default_rng(seed)
    layouts, jobs = [], []
    for k in range(count):
        w = mutate_weights(fix.weights, rng)
        jobs.append(("w", _write(tmp / f"w{k}.bin", w.serialize())))
        layouts.append(w)
    verdicts = {"c_loaded": 0, "c_refused": 0, "py_loaded": 0, "benign": 0}
    for (_, path), w, line in zip(jobs, layouts, run_harness(fix.harness, jobs), strict=True):
        data = path.read_bytes()
        try:
            tensors = read_weight_file(path)
        except ArtifactError as err:
            assert str(path) in str(err), err
            tensors = None
        if tensors is not None:
            verdicts["py_loaded"] += 1
            assert layout_holds(data), path
        same_model = tensors is not None and len(tensors) == len(expected) and all(
            (n, a.dtype, a.shape) == e[:3] for (n, a), e in zip(tensors, expected, strict=True))
        if line.startswith("REFUSED"):
            verdicts["c_refused"] += 1
            assert str(path) in line, line
            assert not w.benign, (path, line)
            continue
        verdicts["c_loaded"] += 1
        assert same_model, (path, "C loaded what Python refuses or a different model")
        views = line.split()[1:]
        for k, ((_, array), view, e) in enumerate(zip(tensors, views, expected, strict=True)):
            offset, digest = view.split(":")
            raw = array.tobytes()
            assert data[int(offset):int(offset) + len(raw)] == raw
            assert int(digest, 16) == fnv1a(raw)
            if k not in w.touched:
                assert raw == e[3], (path, k)
        verdicts["benign"] += w.benign
    return verdicts


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_weight_file_mutations(fuzz: Fixture, tmp_path: Path) -> None:
    verdicts = check_weights(fuzz, tmp_path, DEFAULT_COUNT, seed=21)
    # both outcomes are exercised: most mutations are refused, the intact ones load
    assert verdicts["c_refused"] > DEFAULT_COUNT // 2 and verdicts["benign"] > 20, verdicts


@pytest.mark.slow
def test_weight_file_mutations_many(fuzz: Fixture, tmp_path: Path) -> None:
    verdicts = check_weights(fuzz, tmp_path, SLOW_COUNT, seed=2021)
    assert verdicts["c_refused"] > SLOW_COUNT // 2, verdicts


# ----------------------------------------------------------------------------------------------
# .npy headers

NPY_ARRAYS = [np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(-3, 2, dtype=np.int8),
              np.array(True), np.linspace(0, 1, 6, dtype=np.float16).reshape(2, 1, 3),
              np.zeros((0, 4), np.uint64), np.arange(3, dtype=np.int64)]
NPY_TOKENS = [b"'", b'"', b"{", b"}", b"(", b")", b",", b":", b" ", b"\n", b"\x00", b"-", b"+",
              b"0", b"1", b"9", b"L", b"True", b"False", b"'descr'", b"'shape'", b"'<f4'",
              b"'|b1'", b"'>i8'", b"'<c8'", b"'f4'", b"99999999999999999999", b"4294967296",
              b"9223372036854775807", b"1e3", b"0x10", b"\\", b"\xff", b"#"]


def npy_keys(array: np.ndarray) -> list[bytes]:
    """The entries of numpy's header dict for `array`."""
    descr = np.lib.format.dtype_to_descr(array.dtype)
    return [f"'descr': '{descr}'".encode(), b"'fortran_order': False",
            f"'shape': {array.shape}".encode()]


def npy_file(header: bytes, data: bytes, version: int = 1, length: int | None = None) -> bytes:
    pad = b" " * (-(len(header) + 11) % 64) + b"\n"
    header = header + pad
    size = struct.pack("<H" if version == 1 else "<I", len(header) if length is None else length)
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + data


def mutate_npy(rng: np.random.Generator) -> tuple[bytes, bool]:
    """A mutated .npy file and whether the mutation keeps it the same array (respaced keys,
    reordered keys, a version-2 prefix)."""
    array = NPY_ARRAYS[int(rng.integers(len(NPY_ARRAYS)))]
    keys, data = npy_keys(array), array.tobytes()
    header = b"{" + b", ".join(keys) + b", }"
    kind = int(rng.integers(8))
    if kind == 0:  # a token replaces a span of the header
        at = int(rng.integers(len(header)))
        token = NPY_TOKENS[int(rng.integers(len(NPY_TOKENS)))]
        return npy_file(header[:at] + token + header[at + int(rng.integers(0, 4)):], data), False
    if kind == 1:  # a random byte
        at = int(rng.integers(len(header)))
        header = header[:at] + bytes([int(rng.integers(256))]) + header[at + 1:]
        return npy_file(header, data), False
    if kind == 2:  # a shape of other dims, the data left as it is
        dims = [int(d) for d in rng.choice([0, 1, 3, 7, 1 << 31, 1 << 40, (1 << 63) - 1,
                                            1 << 63, 1 << 64], int(rng.integers(0, 10)))]
        header = header.replace(str(array.shape).encode(),
                                ("(" + "".join(f"{d}, " for d in dims) + ")").encode())
        return npy_file(header, data), False
    if kind == 3:  # the header length field
        length = interesting(rng, len(header), len(header) + len(data), 16)
        return npy_file(header, data, length=length), False
    if kind == 4:  # the file cut anywhere
        whole = npy_file(header, data)
        return whole[:int(rng.integers(len(whole)))], False
    if kind == 5:  # version byte
        whole = bytearray(npy_file(header, data))
        whole[6] = int(rng.integers(0, 5))
        return bytes(whole), False
    if kind == 6:  # a key dropped, doubled or added
        k = int(rng.integers(len(keys)))
        choice = int(rng.integers(3))
        keys = (keys[:k] + keys[k + 1:] if choice == 0 else keys + [keys[k]] if choice == 1
                else keys + [b"'extra': 1"])
        return npy_file(b"{" + b", ".join(keys) + b"}", data), False
    # intact: keys reordered, spaces and newlines between tokens, a version-2 prefix
    order = rng.permutation(len(keys))
    space = [b"", b" ", b"  ", b"\t", b"\n"][int(rng.integers(5))]
    body = (b"," + space).join(keys[i].replace(b": ", b":" + space) for i in order)
    return npy_file(b"{" + space + body + space + b"}", data, version=int(rng.integers(1, 3))), True


def numpy_reads(path: Path) -> np.ndarray | None:
    """What numpy loads from `path`, or None if it refuses (checked for size first, so that a
    header asking for terabytes is not handed to numpy). numpy's warnings about the headers it
    then refuses, or reads as Python 2 wrote them, are silenced."""
    try:
        with warnings.catch_warnings(), path.open("rb") as f:
            warnings.simplefilter("ignore")
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)  # 3.0 differs in encoding only
            shape, fortran, dtype = read(f)
            held = path.stat().st_size - f.tell()
            if int(np.prod(shape, dtype=object)) * dtype.itemsize > held or fortran:
                return None
            return np.load(path, allow_pickle=False)
    except Exception:  # noqa: BLE001 - numpy refuses in many ways (ValueError, TokenError...)
        return None


def check_npy(fix: Fixture, tmp: Path, count: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    jobs, intact = [], []
    for k in range(count):
        data, same = mutate_npy(rng)
        jobs.append(("n", _write(tmp / f"n{k}.npy", data)))
        intact.append(same)
    verdicts = {"loaded": 0, "refused": 0}
    for (_, path), same, line in zip(jobs, intact, run_harness(fix.harness, jobs), strict=True):
        reference = numpy_reads(path)
        if line.startswith("REFUSED"):
            verdicts["refused"] += 1
            assert str(path) in line and not same, (path, line)
            continue
        verdicts["loaded"] += 1
        assert reference is not None, (path, line, "numpy refuses what C loaded")
        words = line.split()
        assert words[1] == reference.dtype.name and \
            tuple(int(d) for d in words[2:-1]) == reference.shape, (path, line)
        assert int(words[-1][1:], 16) == fnv1a(reference.tobytes()), path
    return verdicts


def test_npy_header_mutations(fuzz: Fixture, tmp_path: Path) -> None:
    verdicts = check_npy(fuzz, tmp_path, DEFAULT_COUNT, seed=21)
    assert verdicts["refused"] > DEFAULT_COUNT // 2 and verdicts["loaded"] > 100, verdicts


@pytest.mark.slow
def test_npy_header_mutations_many(fuzz: Fixture, tmp_path: Path) -> None:
    verdicts = check_npy(fuzz, tmp_path, SLOW_COUNT, seed=2021)
    assert verdicts["refused"] > SLOW_COUNT // 2, verdicts


def build_loader(tmp: Path, tensors: list[tuple[str, np.ndarray]]) -> Path:
    """A program loading each weight file named in argv with `tensors`' specs (the runtime under
    ASan/UBSan); it prints LOADED or the loader's message per file."""
    specs = ",\n".join(f'  {{"{name}", SAIL_UINT8, 1, {{{a.size}}}}}' for name, a in tensors)
    (tmp / "load.c").write_text(
        '#include <stdio.h>\n#include <stdlib.h>\n#include "sail_model_rt.h"\n'
        "const int sail_model_num_inputs = 0;\nconst int sail_model_num_outputs = 0;\n"
        "const sail_io_spec sail_model_inputs[1];\nconst sail_io_spec sail_model_outputs[1];\n"
        f"static const sail_weight_spec SPECS[] = {{\n{specs}\n}};\n"
        "int main(int argc, char **argv) {\n"
        "  for (int i = 1; i < argc; ++i) {\n    char *err = NULL;\n"
        f"    sail_model *m = sail_rt_load(argv[i], SPECS, {len(tensors)}, NULL, 0, &err);\n"
        '    printf("%s\\n", m ? "LOADED" : err);\n    free(err);\n    sail_rt_free(m);\n'
        "  }\n  return 0;\n}\n")
    sources = [RUNTIME / f"{n}.c" for n in ("sail_model_rt", "sail_lut", "sail_lut_avx2",
                                            "sail_threads", "sail_attention")]
    subprocess.run([shutil.which("cc") or "cc", "-std=c11", "-O1", "-g",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", f"-I{RUNTIME}",
                    str(tmp / "load.c"), *map(str, sources), "-pthread", "-lm", "-o",
                    str(tmp / "load")], check=True, capture_output=True)
    return tmp / "load"


def load_each(loader: Path, files: list[Path]) -> list[str]:
    proc = subprocess.run([str(loader), *map(str, files)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.splitlines()


def flip_bits(path: Path, tmp: Path, which: list[list[int]], rng: np.random.Generator,
              ) -> list[Path]:
    """Copies of `path`, each with one bit flipped in every tensor of one list of `which`
    (checksums left as written)."""
    original = path.read_bytes()
    entries = Layout.parse(original).entries
    files = []
    for k, indices in enumerate(which):
        data = bytearray(original)
        for i in indices:
            data[entries[i][OFFSET] + int(rng.integers(entries[i][NBYTES]))] ^= \
                1 << int(rng.integers(8))
        files.append(_write(tmp / f"flip{k}.bin", bytes(data)))
    return files


def test_checksums_of_every_length(tmp_path: Path) -> None:
    """The loader's CRC-32 (carry-less multiplication where the CPU has it, a table otherwise)
    equals zlib's for tensors of every length 0..300 (all residues of 16, below and above the
    64 bytes the fast path needs): a file of such tensors loads, and one flipped bit in any of
    them is refused."""
    rng = np.random.default_rng(7)
    tensors = [(f"t{n}", rng.integers(0, 256, n, dtype=np.uint8)) for n in range(301)]
    path = tmp_path / "weights.bin"
    write_weight_file(path, tensors)
    lines = load_each(build_loader(tmp_path, tensors),
                      [path, *flip_bits(path, tmp_path, [[n] for n in range(1, 301)], rng)])
    assert lines[0] == "LOADED", lines[0]
    for n, line in zip(range(1, 301), lines[1:], strict=True):
        assert f"checksum of tensor 't{n}' does not match" in line, (n, line)


def test_checksums_checked_by_several_threads(tmp_path: Path) -> None:
    """Past 64 MiB the tensors' CRCs are checked by several threads: a clean file loads, and the
    first damaged tensor is the one named whichever thread finds which."""
    rng = np.random.default_rng(8)
    tensors = [(f"t{i}", rng.integers(0, 256, (2 << 20) + 8 * i, dtype=np.uint8))
               for i in range(36)]
    path = tmp_path / "weights.bin"
    assert write_weight_file(path, tensors) > 64 << 20
    which = [[5, 30], [35], [0, 1, 2, 3], [17, 12]]
    lines = load_each(build_loader(tmp_path, tensors),
                      [path, *flip_bits(path, tmp_path, which, rng)])
    assert lines[0] == "LOADED", lines[0]
    for indices, line in zip(which, lines[1:], strict=True):
        assert f"checksum of tensor 't{min(indices)}' does not match" in line, (indices, line)
