"""The weight container: exact round trip; truncation, corruption and layout lies behind valid
checksums are clear errors; a full disk leaves no partial artifact and says what is needed."""

from __future__ import annotations

import errno
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sail_compiler.errors import ArtifactError
from sail_compiler.weights_file import (
    WeightFileWriter,
    read_weights,
    write_weight_file,
    write_weights,
)


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((33, 7)).astype(np.float32),
            rng.integers(0, 255, (5, 3, 2), dtype=np.uint8),
            np.arange(10, dtype=np.int64), np.array([True, False])]


def test_round_trip_is_exact_and_aligned(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    arrays = _arrays()
    write_weights(path, arrays)
    back = read_weights(path)
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        assert b.ctypes.data % 64 == 0
    write_weights(path, [])
    assert read_weights(path) == []


def test_streamed_file_equals_the_one_written_at_once(tmp_path: Path) -> None:
    """WeightFileWriter (one tensor at a time, through a spool) writes the same bytes as
    write_weight_file; an error inside its block leaves neither file."""
    tensors = [(f"t{i}", a) for i, a in enumerate(_arrays())] + [("s", np.array(3.5))]
    whole = tmp_path / "whole.bin"
    write_weight_file(whole, tensors)
    with WeightFileWriter(tmp_path / "streamed.bin") as writer:
        assert [writer.add(name, a) for name, a in tensors] == list(range(len(tensors)))
        size = writer.close()
    assert (tmp_path / "streamed.bin").read_bytes() == whole.read_bytes()
    assert size == whole.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.bin", "whole.bin"]
    with pytest.raises(RuntimeError), WeightFileWriter(tmp_path / "failed.bin") as writer:
        writer.add("t", tensors[0][1])
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.bin", "whole.bin"]
    with WeightFileWriter(tmp_path / "empty.bin") as writer:
        writer.close()
    assert read_weights(tmp_path / "empty.bin") == []


def test_truncated_corrupted_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    write_weights(path, _arrays())
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ArtifactError, match="truncated"):
        read_weights(path)
    path.write_bytes(data[:10])
    with pytest.raises(ArtifactError, match="truncated"):
        read_weights(path)
    flipped = bytearray(data)
    flipped[-1] ^= 0x40  # the file ends with the last tensor's bytes
    path.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="checksum"):
        read_weights(path)
    path.write_bytes(b"GGUF" + data[4:])
    with pytest.raises(ArtifactError, match="bad magic"):
        read_weights(path)
    path.write_bytes(data[:8] + b"\x07" + data[9:])
    with pytest.raises(ArtifactError, match="weight format 7"):
        read_weights(path)


def test_artifact_with_corrupt_weights_is_rejected(tiny_decoder: Path, tmp_path: Path) -> None:
    from sail_compiler import Artifact, CompileOptions, compile_model

    compile_model(tiny_decoder, tmp_path / "a", CompileOptions())
    weights = tmp_path / "a" / "weights.bin"
    assert weights.stat().st_size > 4_000_000  # the ~1M float32 weights live here, not in .so
    assert (tmp_path / "a" / "model.so").stat().st_size < weights.stat().st_size
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    artifact = Artifact(tmp_path / "a")
    ids = np.array([[1, 2, 3]], np.int64)
    with pytest.raises(ArtifactError, match="checksum"):
        artifact.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})


def _rewrite(data: bytes, edit: Callable[[list[list[int]]], None]) -> bytes:
    """`data` with its table entries edited and every checksum recomputed (the layout
    checks, not the checksums, must then catch a lie)."""
    head = struct.Struct("<8sIIQQQQII")
    entry = struct.Struct("<IIII8QQQII")
    out = bytearray(data)
    _, _, count, table, table_bytes, *_ = head.unpack_from(out, 0)
    entries = [list(entry.unpack_from(out, table + i * entry.size)) for i in range(count)]
    edit(entries)
    for i, e in enumerate(entries):
        e[14] = zlib.crc32(out[e[12]:e[12] + e[13]])
        entry.pack_into(out, table + i * entry.size, *e)
    struct.pack_into("<I", out, 48, zlib.crc32(out[table:table + table_bytes]))
    struct.pack_into("<I", out, 52, zlib.crc32(out[:52]))
    return bytes(out)


def _set(i: int, field: int, value: Callable[[list[list[int]]], int]) -> Callable:
    def edit(entries: list[list[int]]) -> None:
        entries[i][field] = value(entries)
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_set(1, 12, lambda e: e[0][12]), "overlap"),  # tensor 1 inside tensor 0
    (_set(0, 12, lambda e: e[0][12] + 4), "lies outside the data area"),  # unaligned
    (_set(0, 13, lambda e: e[0][13] - 4), "wrong size"),  # bytes short of the shape
    (_set(0, 15, lambda e: 1), "reserved"),
    (_set(0, 2, lambda e: 99), "unknown dtype"),
    (_set(0, 11, lambda e: 3), "dims past its rank"),
    (_set(0, 12, lambda e: 0), "lies outside the data area"),  # on top of the header
])
def test_layout_lies_behind_valid_checksums(tmp_path: Path, edit: Callable,
                                            message: str) -> None:
    path = tmp_path / "w.bin"
    write_weights(path, _arrays())
    path.write_bytes(_rewrite(path.read_bytes(), edit))
    with pytest.raises(ArtifactError, match=message) as info:
        read_weights(path)
    assert str(path) in str(info.value)


def test_old_json_weight_file_says_recompile(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"SAILWGT\0" + struct.pack("<IIQ", 1, 0, 2) + b"{}")
    with pytest.raises(ArtifactError, match="older sail.*recompile"):
        read_weights(path)


def _staging_left(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(".")]


def test_disk_too_small_is_refused_before_writing(micro_decoder: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The weight file's whole size is checked against the free space first; the error names
    the size, which is what a compile with room writes."""
    from sail_compiler import CompileOptions, compile_model, weights_file

    compile_model(micro_decoder, tmp_path / "roomy", CompileOptions(target="c"))
    need = (tmp_path / "roomy" / "weights.bin").stat().st_size
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(weights_file.shutil, "disk_usage",
                        lambda _: usage._replace(free=need - 1))
    with pytest.raises(ArtifactError, match=f"needs {need} bytes.*{need - 1} bytes are free"):
        compile_model(micro_decoder, tmp_path / "full", CompileOptions(target="c"))
    assert not (tmp_path / "full").exists() and not _staging_left(tmp_path)


def test_disk_filling_mid_write_leaves_earlier_artifact(micro_decoder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC in the middle of the weights: the earlier artifact stays whole, no partial
    directory is left, and the error says how much had been written."""
    from sail_compiler import CompileOptions, compile_model, weights_file

    out = tmp_path / "model"
    compile_model(micro_decoder, out, CompileOptions(target="c"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fill_up(self: weights_file.WeightFileWriter, name: str, array: np.ndarray) -> int:
        self.path.write_bytes(bytes(3000))
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(weights_file.WeightFileWriter, "add", fill_up)
    with pytest.raises(ArtifactError,
                       match=r"disk filled .*more than the \d+ bytes .* that were free") as info:
        compile_model(micro_decoder, out, CompileOptions(target="c", force=True))
    assert "earlier artifact is kept" in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not _staging_left(tmp_path)
