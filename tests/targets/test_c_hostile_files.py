"""The C runtime treats its files and environment as hostile: weight files whose checksums are
valid but whose table lies (overlapping tensors, a data area inside the table, nonzero reserved
fields or dims past the rank), a thread count with trailing characters and a ``.npy`` header cut
inside its ``descr`` are refused with a message, never used. The weight files here are rewritten
from the documented layout (``targets/c/weight_file.py``) with every checksum recomputed, so the
loader's bounds checks, not its checksums, must catch them."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.targets.c.target import build_library
from sail_compiler.verify import InputPlan, generate_inputs

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="the c target builds with make and cc")

RUNTIME = Path(__file__).resolve().parents[2] / "sail_compiler" / "targets" / "c" / "runtime"
HEADER = struct.Struct("<8sIIQQQQII")  # the 52 bytes the header CRC covers, then the CRC
ENTRY = struct.Struct("<IIII8QQQII")  # 104 bytes


@pytest.fixture(scope="module")
def artifact(micro_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "micro"
    compile_model(micro_decoder, out, CompileOptions(target="c"))
    build_library(out)
    return out


class WeightFile:
    """A parsed weights.bin whose header, entries and data can be changed and written back
    with valid checksums."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        (_, _, self.count, self.table_offset, self.table_bytes, self.data_offset, _, _,
         _) = HEADER.unpack_from(self.data, 0)
        self.entries = [list(ENTRY.unpack_from(self.data, self.table_offset + i * ENTRY.size))
                        for i in range(self.count)]

    def write(self, path: Path) -> Path:
        for i, entry in enumerate(self.entries):
            ENTRY.pack_into(self.data, self.table_offset + i * ENTRY.size, *entry)
        table = bytes(self.data[self.table_offset:self.table_offset + self.table_bytes])
        head = bytearray(self.data[:64])
        struct.pack_into("<Q", head, 32, self.data_offset)
        struct.pack_into("<I", head, 48, zlib.crc32(table))
        struct.pack_into("<I", head, 52, zlib.crc32(bytes(head[:52])))
        self.data[:64] = head
        path.write_bytes(bytes(self.data))
        return path


def _run(artifact: Path, weights: Path, tmp: Path,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    inputs = generate_inputs(Artifact(artifact).signature, InputPlan(seq_len=2))
    args = []
    for name, value in inputs.items():
        np.save(tmp / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp / name}.npy"]
    return subprocess.run([str(artifact / "sail_main"), str(weights), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_untouched_rewrite_loads(artifact: Path, tmp_path: Path) -> None:
    """The rewriting itself keeps a good file good (so the failures below are the edits')."""
    weights = WeightFile((artifact / "weights.bin").read_bytes()).write(tmp_path / "same.bin")
    assert weights.read_bytes() == (artifact / "weights.bin").read_bytes()
    proc = _run(artifact, weights, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_lies_behind_valid_checksums_are_refused(artifact: Path, tmp_path: Path) -> None:
    original = (artifact / "weights.bin").read_bytes()
    cases: dict[str, tuple[WeightFile, str]] = {}

    overlap = WeightFile(original)  # tensor j points into tensor i's bytes
    sizes = [(e[13], i) for i, e in enumerate(overlap.entries) if e[13]]  # (bytes, index)
    (small, j), (large, i) = min(sizes), max(sizes)
    assert small <= large and i != j
    overlap.entries[j][12] = overlap.entries[i][12]
    overlap.entries[j][14] = zlib.crc32(original[overlap.entries[i][12]:][:small])
    cases["overlap"] = (overlap, "overlap")

    inside = WeightFile(original)  # the data area starts inside the tensor table
    inside.data_offset = inside.table_offset + 64
    cases["data_in_table"] = (inside, "tensor table lies outside the file")

    reserved = WeightFile(original)
    reserved.entries[0][15] = 7
    cases["entry_reserved"] = (reserved, "nonzero reserved field")

    past_rank = WeightFile(original)
    entry = next(e for e in past_rank.entries if e[3] < 8)
    entry[4 + entry[3]] = 5
    cases["dims_past_rank"] = (past_rank, "nonzero dims past its rank")

    for name, (weights, expected) in cases.items():
        proc = _run(artifact, weights.write(tmp_path / f"{name}.bin"), tmp_path)
        assert proc.returncode == 1 and expected in proc.stderr, (name, proc.stderr)

    header = bytearray(original)
    header[60] = 1  # reserved header bytes (not covered by the header CRC)
    path = tmp_path / "header_reserved.bin"
    path.write_bytes(bytes(header))
    proc = _run(artifact, path, tmp_path)
    assert proc.returncode == 1 and "reserved header bytes" in proc.stderr, proc.stderr


@pytest.mark.parametrize("value", ["2x", "-1", "", "0", "99999999999999999999"])
def test_thread_count_is_parsed_whole(artifact: Path, tmp_path: Path, value: str) -> None:
    proc = _run(artifact, artifact / "weights.bin", tmp_path, {"SAIL_NUM_THREADS": value})
    if value == "":  # unset in effect: one thread
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 1 and f"SAIL_NUM_THREADS={value}" in proc.stderr, proc.stderr


def test_npy_header_cut_inside_descr(tmp_path: Path) -> None:
    """The .npy reader, built alone under the address sanitizer, refuses a header that ends in
    ``'descr': '`` without reading past it."""
    driver = tmp_path / "read_npy.c"
    # model.c's tables, which the runtime refers to, for a model without inputs or outputs
    tables = ("const int sail_model_num_inputs = 0;\nconst int sail_model_num_outputs = 0;\n"
              "const sail_io_spec sail_model_inputs[1];\n"
              "const sail_io_spec sail_model_outputs[1];\n")
    driver.write_text('#include <stdio.h>\n#include "sail_npy.h"\n' + tables +
                      "int main(int argc, char **argv) {\n  sail_tensor t;\n  char err[512];\n"
                      "  if (argc != 2 || sail_npy_read(argv[1], &t, err, sizeof err) != 0) {\n"
                      '    fprintf(stderr, "%s\\n", argc == 2 ? err : "usage");\n    return 3;\n'
                      "  }\n  sail_tensor_release(&t);\n  return 0;\n}\n")
    binary = tmp_path / "read_npy"
    # the runtime without its two programs (and model.c, which an artifact generates)
    sources = sorted(p for p in RUNTIME.glob("*.c")
                     if p.name not in ("sail_main.c", "sail_generate.c"))
    subprocess.run([shutil.which("cc") or "cc", "-std=c11", "-O0", "-g",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", f"-I{RUNTIME}",
                    str(driver), *map(str, sources), "-pthread", "-lm", "-o", str(binary)],
                   check=True, capture_output=True)
    good = tmp_path / "good.npy"
    np.save(good, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert subprocess.run([str(binary), str(good)], capture_output=True).returncode == 0
    for cut in ("{'descr': '", "{'descr': '<", "{'descr': '<f"):
        header = cut.encode()
        path = tmp_path / "cut.npy"
        path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
        proc = subprocess.run([str(binary), str(path)], capture_output=True, text=True)
        assert proc.returncode == 3 and "descr" in proc.stderr, (cut, proc.stderr)
