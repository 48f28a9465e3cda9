"""The artifact weight file: exact round trip; truncation and corruption are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sail_compiler.errors import ArtifactError
from sail_compiler.weights_file import read_weights, write_weights


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
