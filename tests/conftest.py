"""Shared fixtures: generated example models written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from make_decoder import PRESETS, make_decoder, save_model


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ~1M-parameter example decoder without KV cache."""
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    save_model(make_decoder(PRESETS["tiny"]), path)
    return path


@pytest.fixture(scope="session")
def tiny_decoder_kv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ~1M-parameter example decoder with past/present KV tensors."""
    path = tmp_path_factory.mktemp("models") / "tiny_kv.onnx"
    save_model(make_decoder(PRESETS["tiny"], kv_cache=True), path)
    return path


@pytest.fixture(scope="session")
def micro_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer decoder: the fastest model that has every op of the example."""
    path = tmp_path_factory.mktemp("models") / "micro.onnx"
    save_model(make_decoder(PRESETS["micro"]), path)
    return path
