"""The c target's in-place KV cache: ``sail_model_run_cached`` appends each step's keys and
values to one buffer per present and the attention reads them there. The cached runs give the
same logits, bit for bit, as feeding the presents back; ``sail_generate`` keeps its cache in
place (the same ids as with ``--copy-kv``) and falls back to copies for a model whose presents
are read by more than the attention; a context beyond the capacity, a past that does not match
the cache, a ``--ctx`` too small and positions past the rotary table are clear errors. A cache
stored as float16 (``sail_model_cache_create_typed``, ``sail_generate --kv-f16``) gives the
logits of onnxruntime on the model with its presents rounded to float16, and refuses what it
cannot do."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sail_compiler import CompileOptions, compile_model, load
from sail_compiler.errors import OptionError
from sail_compiler.frontend.signature import ModelSignature
from sail_compiler.passes import WrapGatherIndices
from sail_compiler.pipeline import STAGES, Stage
from sail_compiler.targets.c.library import DTYPES, SailTensor
from sail_compiler.targets.c.target import build_library

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="the c target builds with make and cc")

PROMPT = [3, 17, 256, 9, 1000]
WERROR = "WARNINGS=-Wall -Wextra -Werror"


@pytest.fixture(scope="module")
def artifact(tiny_decoder_kv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kv") / "tiny_kv"
    compile_model(tiny_decoder_kv, out, CompileOptions(target="c"))
    build_library(out, make_args=(WERROR,))
    return out


class _Library:
    """libmodel.so through ctypes, with the KV cache functions."""

    def __init__(self, out: Path, tmp: Path) -> None:
        copy = tmp / "libmodel.so"  # a private copy, RTLD_DEEPBIND: TVM exports the shim's names
        shutil.copyfile(out / "libmodel.so", copy)
        lib = ctypes.CDLL(str(copy), mode=os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0))
        lib.sail_model_load.restype = ctypes.c_void_p
        lib.sail_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
        tensors = ctypes.POINTER(SailTensor)
        lib.sail_model_run.argtypes = [ctypes.c_void_p, tensors, tensors]
        lib.sail_model_run_cached.argtypes = [ctypes.c_void_p, tensors, tensors, ctypes.c_void_p]
        lib.sail_model_cache_create.restype = ctypes.c_void_p
        lib.sail_model_cache_create.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        lib.sail_model_cache_create_typed.restype = ctypes.c_void_p
        lib.sail_model_cache_create_typed.argtypes = [ctypes.c_void_p, ctypes.c_int64,
                                                      ctypes.c_int64, ctypes.c_int]
        lib.sail_kv_cache_length.restype = ctypes.c_int64
        lib.sail_kv_cache_length.argtypes = [ctypes.c_void_p]
        lib.sail_kv_cache_free.argtypes = [ctypes.c_void_p]
        lib.sail_model_error.restype = ctypes.c_char_p
        lib.sail_model_error.argtypes = [ctypes.c_void_p]
        lib.sail_tensor_release.argtypes = [ctypes.POINTER(SailTensor)]
        lib.sail_model_free.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.model = lib.sail_model_load(str(out / "weights.bin").encode(), None)
        assert self.model
        manifest = json.loads((out / "manifest.json").read_text())
        self.signature = ModelSignature.from_json(manifest["signature"])

    def error(self) -> str:
        return self.lib.sail_model_error(self.model).decode()

    def run(self, feeds: dict[str, np.ndarray], cache: int | None = None
            ) -> tuple[int, dict[str, np.ndarray | None]]:
        """Run once (cached when ``cache`` is given); the outputs as arrays (None: empty)."""
        arrays = [np.ascontiguousarray(feeds[s.name]) for s in self.signature.inputs]
        inputs = (SailTensor * len(arrays))()
        for tensor, array in zip(inputs, arrays, strict=True):
            tensor.data = array.ctypes.data if array.size else ctypes.addressof(tensor)
            tensor.dtype = DTYPES[array.dtype.name]
            tensor.ndim = array.ndim
            tensor.shape[:array.ndim] = array.shape
        outputs = (SailTensor * len(self.signature.outputs))()
        status = self.lib.sail_model_run_cached(self.model, inputs, outputs, cache) \
            if cache is not None else self.lib.sail_model_run(self.model, inputs, outputs)
        result: dict[str, np.ndarray | None] = {}
        for spec, tensor in zip(self.signature.outputs, outputs, strict=True):
            if status == 0 and tensor.data:
                shape = tuple(tensor.shape[:tensor.ndim])
                pointer = ctypes.cast(tensor.data, ctypes.POINTER(ctypes.c_float))
                result[spec.name] = np.ctypeslib.as_array(pointer, shape).copy() \
                    if np.prod(shape) else np.zeros(shape, np.float32)
            else:
                result[spec.name] = None
            self.lib.sail_tensor_release(ctypes.byref(tensor))
        return status, result

    def close(self) -> None:
        self.lib.sail_model_free(self.model)


def _pasts_of(outputs: dict) -> dict:
    """A run's presents as the next step's past_key_values.* inputs."""
    return {"past_key_values." + k.removeprefix("present."): v
            for k, v in outputs.items() if k.startswith("present.")}


def _feeds(signature: ModelSignature, ids: list[int], past: int,
           pasts: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    feeds = {"input_ids": np.array([ids], np.int64),
             "attention_mask": np.ones((1, past + len(ids)), np.int64)}
    for spec in signature.inputs:
        if spec.name.startswith("past_key_values."):
            shape = (1, spec.dims[1], past, spec.dims[3])
            feeds[spec.name] = pasts[spec.name] if pasts else np.zeros(shape, np.float32)
    return feeds


def test_cached_runs_equal_copying_runs(artifact: Path, tmp_path: Path) -> None:
    """A prefill and four decode steps: logits bit for bit equal, presents left empty."""
    lib = _Library(artifact, tmp_path)
    try:
        assert lib.lib.sail_model_has_kv_cache() == 1
        cache = lib.lib.sail_model_cache_create(lib.model, 1, 16)
        assert cache, lib.error()
        pasts: dict[str, np.ndarray] | None = None
        ids, past = list(PROMPT), 0
        for _ in range(5):
            status, copied = lib.run(_feeds(lib.signature, ids, past, pasts))
            assert status == 0, lib.error()
            status, cached = lib.run(_feeds(lib.signature, ids, past, None), cache)
            assert status == 0, lib.error()
            np.testing.assert_array_equal(cached["logits"], copied["logits"])
            assert all(v is None for k, v in cached.items() if k.startswith("present."))
            pasts = _pasts_of(copied)
            past += len(ids)
            assert lib.lib.sail_kv_cache_length(cache) == past
            ids = [int(np.argmax(copied["logits"][0, -1]))]
        lib.lib.sail_kv_cache_free(cache)
    finally:
        lib.close()


def test_cache_refuses_what_does_not_fit(artifact: Path, tmp_path: Path) -> None:
    lib = _Library(artifact, tmp_path)
    try:
        small = lib.lib.sail_model_cache_create(lib.model, 1, 4)
        status, _ = lib.run(_feeds(lib.signature, PROMPT, 0, None), small)
        assert status != 0
        assert "a context of 5 positions exceeds the KV cache's capacity of 4" in lib.error()
        cache = lib.lib.sail_model_cache_create(lib.model, 1, 16)
        status, _ = lib.run(_feeds(lib.signature, PROMPT, 2, None), cache)
        assert status != 0 and "a past of 2 positions, but the KV cache holds 0" in lib.error()
        assert "past_key_values.0.key" in lib.error()
        assert lib.lib.sail_model_cache_create(lib.model, 1, 0) is None
        assert "a capacity of at least 1" in lib.error()
        for cache_ in (small, cache):
            lib.lib.sail_kv_cache_free(cache_)
    finally:
        lib.close()


def _rounded_presents(model_path: Path) -> bytes:
    """The ONNX model with every present.* rounded to float16 (Cast there and back) before
    anything reads it: what a float16 KV cache computes (each step's keys and values are
    rounded as they are appended and the attention reads the rounded cache)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    presents = {o.name for o in model.graph.output if o.name.startswith("present.")}
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        for i, name in enumerate(node.output):
            if name in presents:
                node.output[i] = name + ".f32"
                nodes += [helper.make_node("Cast", [name + ".f32"], [name + ".f16"],
                                           to=TensorProto.FLOAT16),
                          helper.make_node("Cast", [name + ".f16"], [name],
                                           to=TensorProto.FLOAT)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()


def test_f16_cache_matches_onnxruntime_on_rounded_presents(artifact: Path, tiny_decoder_kv: Path,
                                                           tmp_path: Path) -> None:
    """A prefill and six decode steps on a float16 cache: each step's logits against
    onnxruntime on the model whose presents are rounded to float16 (fed back as the pasts), and
    different from the float32 cache's (the rounding happens)."""
    import onnxruntime as ort

    session = ort.InferenceSession(_rounded_presents(tiny_decoder_kv))
    lib = _Library(artifact, tmp_path)
    try:
        half = lib.lib.sail_model_cache_create_typed(lib.model, 1, 16, DTYPES["float16"])
        full = lib.lib.sail_model_cache_create(lib.model, 1, 16)
        assert half and full, lib.error()
        pasts: dict[str, np.ndarray] | None = None
        ids, past, differs = list(PROMPT), 0, 0.0
        names = [o.name for o in session.get_outputs()]
        for _ in range(7):
            feeds = _feeds(lib.signature, ids, past, pasts)
            want = dict(zip(names, session.run(names, feeds), strict=True))
            status, got = lib.run(_feeds(lib.signature, ids, past, None), half)
            assert status == 0, lib.error()
            np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
            status, f32 = lib.run(_feeds(lib.signature, ids, past, None), full)
            assert status == 0, lib.error()
            differs = max(differs, float(np.abs(f32["logits"] - got["logits"]).max()))
            pasts = _pasts_of(want)
            past += len(ids)
            assert lib.lib.sail_kv_cache_length(half) == past
            ids = [int(np.argmax(want["logits"][0, -1]))]
        assert differs > 0.0
        for cache in (half, full):
            lib.lib.sail_kv_cache_free(cache)
    finally:
        lib.close()


def test_f16_cache_refuses_other_storage(artifact: Path, tmp_path: Path) -> None:
    lib = _Library(artifact, tmp_path)
    try:
        assert lib.lib.sail_model_cache_create_typed(lib.model, 1, 16, DTYPES["int8"]) is None
        assert "stored as float32 (SAIL_FLOAT32) or float16 (SAIL_FLOAT16)" in lib.error()
        cache = lib.lib.sail_model_cache_create_typed(lib.model, 1, 16, DTYPES["float32"])
        assert cache, lib.error()
        lib.lib.sail_kv_cache_free(cache)
    finally:
        lib.close()


def test_positions_past_the_rotary_table_are_an_error(artifact: Path, tiny_decoder_kv: Path,
                                                      tmp_path: Path) -> None:
    """The tiny decoder gathers its rotary tables with Range(past, past + seq): the last
    position runs (logits equal to onnxruntime's), the next is an error naming the table's rows,
    not a wrap-around to row 0 (what WrapGatherIndices' take would compute)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(tiny_decoder_kv))
    rows = next(int(t.dims[0]) for t in model.graph.initializer if t.name == "rope_cos")
    lib = _Library(artifact, tmp_path)
    try:
        rng = np.random.default_rng(3)
        pasts = {s.name: rng.standard_normal((1, s.dims[1], rows - 1, s.dims[3]))
                 .astype(np.float32) for s in lib.signature.inputs
                 if s.name.startswith("past_key_values.")}
        feeds = _feeds(lib.signature, [7], rows - 1, pasts)
        status, last = lib.run(feeds)
        assert status == 0, lib.error()
        want = ort.InferenceSession(str(tiny_decoder_kv)).run(["logits"], feeds)[0]
        np.testing.assert_allclose(last["logits"], want, rtol=1e-3, atol=1e-3)
        pasts = {k: np.concatenate([v, v[:, :, :1]], axis=2) for k, v in pasts.items()}
        status, _ = lib.run(_feeds(lib.signature, [7], rows, pasts))
        assert status != 0
        assert f"index {rows} (element 0) is outside the {rows} rows of" in lib.error()
        assert "shorten the context" in lib.error()
    finally:
        lib.close()


def _generate(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(out / "sail_generate"), str(out / "weights.bin"), "--prompt-ids",
                           ",".join(map(str, PROMPT)), *args], capture_output=True, text=True)


def test_generate_keeps_the_cache_in_place(artifact: Path) -> None:
    in_place = _generate(artifact, "-n", "10", "--json", "--profile", "--threads", "2")
    assert in_place.returncode == 0, in_place.stderr
    report = json.loads(in_place.stdout)
    assert report["kv_cache"] == "in place" and report["ctx"] == len(PROMPT) + 9
    prefill, _, decode = in_place.stderr.partition("kernels of the 9 decode steps:")
    assert f"kernels of the prefill ({len(PROMPT)} tokens):" in prefill
    assert "sail_cache_append" in prefill
    assert "sail_cache_append" in decode  # the decode steps append in place

    def calls(table: str, kernel: str) -> int:
        return sum(int(line.split()[2]) for line in table.splitlines()
                   if line.split()[-1:] == [kernel])

    # each table counts its own calls: 9 steps append 9 times what the prefill appended
    assert calls(decode, "sail_cache_append") == 9 * calls(prefill, "sail_cache_append") > 0
    copied = json.loads(_generate(artifact, "-n", "10", "--json", "--copy-kv").stdout)
    assert copied["kv_cache"] == "copied" and copied["ids"] == report["ids"]
    roomy = json.loads(_generate(artifact, "-n", "10", "--json", "--ctx", "64").stdout)
    assert roomy["ids"] == report["ids"] and roomy["ctx"] == 64
    small = _generate(artifact, "-n", "10", "--ctx", "13")
    assert small.returncode == 2
    assert "need a KV cache of 14 positions, more than --ctx 13" in small.stderr
    assert report["kv_dtype"] == "float32"


def test_generate_kv_f16(artifact: Path) -> None:
    """--kv-f16: a float16 cache in place (on this model the same greedy ids as float32's);
    with --copy-kv an error, not a float32 cache."""
    half = _generate(artifact, "-n", "10", "--json", "--kv-f16", "--threads", "2")
    assert half.returncode == 0, half.stderr
    report = json.loads(half.stdout)
    assert report["kv_cache"] == "in place" and report["kv_dtype"] == "float16"
    assert report["ids"] == json.loads(_generate(artifact, "-n", "10", "--json").stdout)["ids"]
    text = _generate(artifact, "-n", "3", "--kv-f16")
    assert "KV cache in place, float16" in text.stdout
    both = _generate(artifact, "-n", "10", "--kv-f16", "--copy-kv")
    assert both.returncode == 2 and not both.stdout
    assert "--kv-f16 stores the KV cache kept in place as float16, and --copy-kv" in both.stderr


def test_unfused_attention_copies_the_cache(tiny_decoder_kv: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            artifact: Path) -> None:
    """Without FuseAttention the presents feed head repeats: no in-place cache, model.c says
    why, and sail_generate copies (with the same ids)."""
    import sail_compiler.driver as driver

    stages = (Stage("import", STAGES[0].description, lambda o, t, q: [WrapGatherIndices()]),
              *STAGES[1:])
    monkeypatch.setattr(driver, "STAGES", stages)
    out = tmp_path / "unfused"
    compile_model(tiny_decoder_kv, out, CompileOptions(target="c"))
    model_c = (out / "model.c").read_text()
    assert "enum { NUM_CACHE = 0 };" in model_c
    assert "present.0.key is read by" in model_c
    build_library(out)
    report = json.loads(_generate(out, "-n", "10", "--json").stdout)
    assert report["kv_cache"] == "copied"
    assert report["ids"] == json.loads(_generate(artifact, "-n", "10", "--json").stdout)["ids"]
    with pytest.raises(OptionError, match="--kv-f16 needs the KV cache kept in place"):
        load(out).generate(PROMPT, 4, kv_f16=True)
    half = _generate(out, "-n", "10", "--kv-f16")
    assert half.returncode == 2 and not half.stdout
    assert "--kv-f16 needs the KV cache kept in place, and this model cannot keep its KV " \
        "cache in place: present.0.key is read by" in half.stderr
