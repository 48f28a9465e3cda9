"""The c target: a standalone C library and command-line runner, built with ``cc``.

Lowering is the shared CPU lowering (:func:`~sail_compiler.lowering.pipeline.lowering_passes`:
legalization, fusion, the default CPU schedules), with two differences that make the TIR
printable as C: ``sail.lut_gemv`` is legalized without ``llvm.arithmetic.fence`` (the library
compiles with ``-ffp-contract=off``, which keeps the fused dequantization's rounding exact), and
the weights stay constants (the emitter writes them to ``weights.bin``).
The schedules' ``vectorized`` loops are emitted as scalar loops for the C compiler to vectorize
and their ``parallel`` loops run serially: TVM's kernels use one thread.

Artifact files, beside ``manifest.json``:

* ``model.h`` / ``sail_model_api.h``: ``sail_model_load``, ``sail_model_run``,
  ``sail_model_free`` and the model's inputs and outputs;
* ``model.c`` (the graph as kernel calls, :mod:`.emit`), ``kernels.c`` (TVM's C code for the
  kernels, :mod:`.tir_codegen`), the runtime ``sail_model_rt.[ch]`` and ``sail_tvm_shim.h``;
* the runtime's attention kernel ``sail_attention.[ch]`` (``sail.attention``,
  :func:`legalize_c_attention`);
* the runtime's LUT-GEMV kernels ``sail_lut.[ch]``, ``sail_lut_avx2.c``, ``sail_lut_neon.c``
  and their thread pool ``sail_threads.[ch]``, which compute every quantized matmul with int8
  activations (:func:`legalize_c_lut_gemv`; ``SAIL_NUM_THREADS`` or ``sail_model_set_threads``
  sets the threads);
* ``weights.bin`` (:mod:`.weight_file`); ``main.c`` and ``sail_npy.[ch]``: the ``sail_main``
  runner; ``generate.c``: ``sail_generate``, the token loop and sampler of decoders with a KV
  cache (:func:`generate`, ``sail generate``, ``sail bench``); a ``Makefile`` (``make``,
  ``make portable``). ``libmodel.so`` also runs in Python through ctypes (:mod:`.library`).

``sail build OUT`` (or the first :meth:`Artifact.run`) runs ``make``; the runner then runs
``sail_main`` on ``.npy`` files. ``sail build OUT --cross aarch64`` builds for 64-bit ARM
(:mod:`.cross`); the runners then run the binaries under qemu-user.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import relax

from ...errors import ArtifactError, InputError, OptionError
from ...frontend.signature import ModelSignature
from ...lowering import host_target, lowering_passes
from ...ops.attention import OP_NAME as ATTENTION
from ...ops.attention import attention_attrs
from ...ops.sail_ops import (
    DEQUANTIZE,
    LUT_GEMV,
    legalize_dequantize,
    legalize_lut_gemv,
    op_attrs,
)
from ...passes.lower_to_lut_gemv import LowerToLUTGemv
from ...quant.reference import float16_exact
from ...version import __version__
from ..base import Runner, TargetBackend, register_target
from .cross import cross_target, run_prefix
from .emit import emit_model
from .kernels import (
    ATTENTION_SYMBOL,
    BROADCAST_SYMBOL,
    CONCAT_SYMBOL,
    COPY_SYMBOL,
    LUT_SYMBOL,
    MAX_ACT_BITS,
    MAX_THREADS,
    TRANSPOSE_SYMBOL,
)
from .tir_codegen import kernels_source
from .weight_file import WeightFileWriter

if TYPE_CHECKING:
    from ...options import CompileOptions
    from ...sampling import SamplingOptions

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
#: Runtime files copied into every artifact: package file -> artifact file.
RUNTIME_FILES = {
    "sail_model_api.h": "sail_model_api.h",
    "sail_model_rt.h": "sail_model_rt.h",
    "sail_model_rt.c": "sail_model_rt.c",
    "sail_tvm_shim.h": "sail_tvm_shim.h",
    "sail_lut.h": "sail_lut.h",
    "sail_lut.c": "sail_lut.c",
    "sail_lut_avx2.c": "sail_lut_avx2.c",
    "sail_lut_neon.c": "sail_lut_neon.c",
    "sail_threads.h": "sail_threads.h",
    "sail_threads.c": "sail_threads.c",
    "sail_attention.h": "sail_attention.h",
    "sail_attention.c": "sail_attention.c",
    "sail_npy.h": "sail_npy.h",
    "sail_npy.c": "sail_npy.c",
    "sail_main.c": "main.c",
    "sail_generate.c": "generate.c",
    "Makefile": "Makefile",
}
WEIGHTS = "weights.bin"
BINARY = "sail_main"
GENERATE = "sail_generate"
LIBRARIES = ("libmodel.a", "libmodel.so")
_BUILD_LOCK = ".sail-build.lock"
#: Lines of the C compiler's output shown when a build fails.
_SHOWN_LINES = 30


@register_target("c")
class CTarget(TargetBackend):
    description = "a standalone C library (TVM's C code for the kernels) built with cc"

    def lowering_passes(self, options: CompileOptions) -> list[tvm.transform.Pass]:
        if options.probe:
            raise OptionError("the c target cannot record group sums (the reference check "
                              "builds its probe for llvm)")
        # A CPU has no memory arrays: every dequantization fuses into its LUT-GEMV, which the
        # runtime's kernels (sail_lut.h) then compute (--no-sail keeps sail.quant_matmul and
        # TVM's kernels for it); one core for TVM's kernels, whose parallel loops the C code
        # runs serially. Gather indices are checked by the runtime (sail_rt_check_indices)
        # before each gather kernel, not by TVM's assertions (no TVM runtime in the library).
        fuse = [LowerToLUTGemv(options.nbw, fuse="all")] if options.sail else []
        return [*fuse,
                *lowering_passes(host_target(1), {
                    LUT_GEMV: functools.partial(legalize_c_lut_gemv,
                                                scale_dtype=options.scale_dtype),
                    "relax.concat": legalize_c_concat,
                    "relax.reshape": legalize_c_copy,
                    "relax.expand_dims": legalize_c_copy,
                    "relax.squeeze": legalize_c_copy,
                    "relax.permute_dims": legalize_c_transpose,
                    "relax.broadcast_to": legalize_c_broadcast,
                    "relax.tile": legalize_c_broadcast,
                    ATTENTION: legalize_c_attention,
                    DEQUANTIZE: functools.partial(legalize_dequantize, fence=False)},
                    check_indices=False)]

    def build(self, mod: tvm.IRModule, signature: ModelSignature, out_dir: Path,
              options: CompileOptions) -> dict[str, Any]:
        title = (f"compiled by sail {__version__} for the c target (apache-tvm "
                 f"{tvm.__version__}, weights {options.describe_quant()})")
        with WeightFileWriter(out_dir / WEIGHTS) as writer:
            emitted = emit_model(mod, signature, title, writer)
            weight_bytes = writer.close()
        (out_dir / "model.c").write_text(emitted.model_c)
        (out_dir / "model.h").write_text(emitted.model_h)
        kernels = kernels_source(emitted.kernels)
        (out_dir / "kernels.c").write_text(
            f"/* kernels.c: {len(emitted.kernels)} kernels {title}. Written by TVM's C code "
            "generator;\n * sail replaced TVM's includes by sail_tvm_shim.h. */\n" + kernels)
        for source, target in RUNTIME_FILES.items():
            shutil.copyfile(RUNTIME_DIR / source, out_dir / target)
        return {"weights": WEIGHTS, "binary": BINARY, "libraries": list(LIBRARIES),
                "num_weights": len(emitted.weights), "weight_bytes": weight_bytes,
                "kernels": len(emitted.kernels), "kernel_calls": emitted.calls,
                "lut_gemv_calls": emitted.lut_calls, "lut_layers": emitted.lut_layers,
                "threads": "LUT-GEMV: SAIL_NUM_THREADS or sail_model_set_threads (default 1); "
                           "TVM's kernels: 1",
                "memory": "one buffer per intermediate, given back after its last use; "
                           "the model keeps up to 64 freed blocks for reuse"}

    def load(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        return MainRunner(out_dir, manifest)


def runtime_lut_gemv(call: relax.Call) -> bool:
    """Whether the runtime's kernels (``sail_lut_gemv``) compute this ``sail.lut_gemv``: a fused
    float output, int8 activations and constant weights (re-laid out at compile time)."""
    attrs = op_attrs(call)
    return (attrs["output"] == "float" and attrs["act_bits"] <= MAX_ACT_BITS
            and all(isinstance(call.args[i], tvm.ir.GenericConst) for i in (1, 2, 4)))


def legalize_c_lut_gemv(bb: relax.BlockBuilder, call: relax.Call,
                        scale_dtype: str = "float32") -> relax.Expr:
    """``sail.lut_gemv`` for the c target.

    Calls the runtime kernels can take become ``R.call_dps_packed("sail_lut_gemv", (xq, sx,
    packed, zero, scale, bits, group_size, k, act_group))``, which :mod:`.emit` turns into a call
    of the
    runtime with the re-laid-out weight; the others (integer sums, activations wider than 8
    bits) get TVM's table kernel, without ``llvm.arithmetic.fence`` (the library compiles with
    ``-ffp-contract=off``). With ``scale_dtype="float16"`` (``--scale-dtype``) a constant scale
    whose values are all normal float16 values (:func:`~...quant.reference.float16_exact`) is
    passed as a float16 constant, which the emitter stores as such; others stay float32.
    """
    if not runtime_lut_gemv(call):
        return legalize_lut_gemv(bb, call, fence=False)
    attrs = op_attrs(call)
    xq, packed, zero, sx, scale = call.args
    if scale_dtype == "float16" and isinstance(scale, tvm.ir.GenericConst):
        values = scale.value.numpy()
        if float16_exact(values):
            half = relax.const(values.astype(np.float16), "float16")
            scale = tvm.ir.GenericConst(half.value, half.ty, scale.span)  # keeps its name
    scalars = [relax.prim_value(tvm.tirx.IntImm("int64", attrs[key]))
               for key in ("bits", "group_size", "k", "act_group")]
    return relax.call_dps_packed(relax.ExternFunc(LUT_SYMBOL),
                                 relax.Tuple([xq, sx, packed, zero, scale, *scalars]), call.ty)


def legalize_c_concat(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.concat`` for the c target: the runtime's copy of contiguous runs.

    A concatenation of a tuple of tensors along one axis becomes ``R.call_dps_packed(
    "sail_concat", (parts..., axis))``, which :mod:`.emit` turns into ``sail_rt_concat``: one
    ``memcpy`` per part and outer index. TVM's C kernel for it computes every element's source
    with integer divisions; in a decoder's KV cache (past + new keys and values, every layer,
    every step) it took 6% of a 64-token decode run and 15% of a 200-token one. Other forms keep
    TVM's kernel.
    """
    fields, axis, out = call.args[0], call.attrs.axis, call.ty
    if isinstance(fields, relax.Tuple) and axis is not None \
            and isinstance(out, relax.TensorType) and out.ndim >= 1 \
            and all(isinstance(f.ty, relax.TensorType) and f.ty.dtype == out.dtype
                    and f.ty.ndim == out.ndim for f in fields.fields):
        axis = tvm.tirx.IntImm("int64", int(axis) % out.ndim)
        return relax.call_dps_packed(relax.ExternFunc(CONCAT_SYMBOL),
                                     relax.Tuple([*fields.fields, relax.prim_value(axis)]), out)
    return _tvm_legalize(bb, call)


def _tvm_legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return call.op.get_attr("FLegalize")(bb, call)


def _tensor(expr: relax.Expr, dtype: str | None = None) -> bool:
    ty = expr.ty
    return isinstance(ty, relax.TensorType) and ty.shape is not None \
        and (dtype is None or ty.dtype == dtype)


def legalize_c_copy(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.reshape``, ``expand_dims`` and ``squeeze`` for the c target: ``sail_rt_copy``
    (a ``memcpy``; TVM's C kernels recompute every element's index with divisions, and a
    decoder copies its whole value cache through one each step)."""
    x, out = call.args[0], call.ty
    if _tensor(x) and isinstance(out, relax.TensorType) and _tensor(call, x.ty.dtype):
        return relax.call_dps_packed(relax.ExternFunc(COPY_SYMBOL), relax.Tuple([x]), out)
    return _tvm_legalize(bb, call)


def legalize_c_transpose(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.permute_dims`` for the c target: ``sail_rt_transpose`` (strided gathers along the
    result's last axis, ``memcpy`` where that axis stays innermost)."""
    x, out = call.args[0], call.ty
    if not (_tensor(x) and isinstance(out, relax.TensorType) and _tensor(call, x.ty.dtype)
            and x.ty.ndim >= 1):
        return _tvm_legalize(bb, call)
    ndim = x.ty.ndim
    axes = call.attrs.axes
    perm = [int(a) % ndim for a in axes] if axes is not None else list(range(ndim))[::-1]
    return relax.call_dps_packed(
        relax.ExternFunc(TRANSPOSE_SYMBOL),
        relax.Tuple([x, *(relax.prim_value(tvm.tirx.IntImm("int64", p)) for p in perm)]), out)


def legalize_c_broadcast(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.broadcast_to`` and ``relax.tile`` for the c target: ``sail_rt_broadcast`` (one
    ``memcpy`` per contiguous run, then doubling copies; TVM's C kernels compute each element's
    source with divisions)."""
    x, out = call.args[0], call.ty
    if _tensor(x) and isinstance(out, relax.TensorType) and _tensor(call, x.ty.dtype) \
            and x.ty.ndim <= out.ndim:
        return relax.call_dps_packed(relax.ExternFunc(BROADCAST_SYMBOL), relax.Tuple([x]), out)
    return _tvm_legalize(bb, call)


def legalize_c_attention(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``sail.attention`` for the c target: the runtime's kernel (``sail_attention.h``), which
    reads the keys and values of a KV head once for all its query heads, becomes
    ``R.call_dps_packed("sail_attention", (q, k, v[, mask], scale, softcap))``. Operands of
    unknown shape keep the TE legalization (TVM's C kernels)."""
    if not all(_tensor(arg, "float32") for arg in call.args) or not _tensor(call, "float32"):
        return _tvm_legalize(bb, call)
    scale, softcap = attention_attrs(call)
    scalars = [relax.prim_value(tvm.tirx.FloatImm("float64", value)) for value in (scale, softcap)]
    return relax.call_dps_packed(relax.ExternFunc(ATTENTION_SYMBOL),
                                 relax.Tuple([*call.args, *scalars]), call.ty)


def build_library(out_dir: Path, portable: bool = False,
                  make_args: tuple[str, ...] = (), cross: str | None = None) -> Path:
    """Run ``make`` in a c artifact; return the path of ``sail_main``.

    Parameters
    ----------
    out_dir
        The artifact directory.
    portable
        ``make portable`` (no ``-march=native``) instead of ``make``.
    make_args
        Extra ``make`` arguments, e.g. ``("CFLAGS=-O1 -g",)``.
    cross
        A cross build (:data:`.cross.CROSS_TARGETS`: ``aarch64``, ``aarch64-dotprod``) with its
        toolchain's compiler and ``-march`` instead of ``-march=native``.

    Raises
    ------
    OptionError
        An unknown cross target, or ``portable`` with ``cross``.
    SailError
        The cross compiler is missing (the message names the Debian packages).
    ArtifactError
        ``make`` or the C compiler is missing, or the build failed (with the compiler's
        messages).
    """
    if cross is not None:
        if portable:
            raise OptionError("--portable and --cross do not go together: a cross build is for "
                              "the --cross target's CPUs")
        target = cross_target(cross)
        target.check_compiler()
        make_args = (*target.make_args, *make_args)
    make = shutil.which("make")
    if make is None:
        raise ArtifactError("building a c artifact needs make and a C compiler (cc); install "
                            "them (e.g. apt-get install build-essential) and run: sail build "
                            f"{out_dir}")
    command = [make, "-C", str(out_dir), f"-j{os.cpu_count() or 1}",
               *(["portable"] if portable else []), *make_args]
    with (out_dir / _BUILD_LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runners of one artifact build it once
        proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        messages = (proc.stderr or proc.stdout).strip().splitlines()
        shown = "\n".join(messages[-_SHOWN_LINES:])
        raise ArtifactError(f"building {out_dir} failed (make exited with {proc.returncode}); "
                            f"the compiler said:\n{shown}")
    return out_dir / BINARY


class MainRunner(Runner):
    """Runs ``sail_main`` on ``.npy`` files.

    Loading builds the artifact if it is not built and checks the weight file with
    ``sail_main --check``, so that a damaged file is an :class:`ArtifactError` here and not an
    error of the inputs later.
    """

    def __init__(self, out_dir: Path, manifest: dict[str, Any]) -> None:
        self.signature = ModelSignature.from_json(manifest["signature"])
        self.weights = out_dir / manifest["weights"]
        binary = out_dir / manifest["binary"]
        self.binary = binary if binary.is_file() else build_library(out_dir)
        self.prefix = run_prefix(self.binary)  # qemu for a cross build
        proc = subprocess.run([*self.prefix, str(self.binary), str(self.weights), "--check"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ArtifactError(_message(proc))

    def run(self, inputs: list[np.ndarray], extra_args: tuple[str, ...] = ()
            ) -> list[np.ndarray]:
        """Run ``sail_main`` once; ``extra_args`` are more of its arguments (``--dump-lut``)."""
        with tempfile.TemporaryDirectory(prefix="sail-c-run-") as tmp:
            command = [*self.prefix, str(self.binary), str(self.weights), *extra_args]
            for i, (spec, value) in enumerate(zip(self.signature.inputs, inputs, strict=True)):
                path = Path(tmp) / f"input_{i}.npy"
                np.save(path, np.asarray(value, order="C"))  # 0-d stays 0-d
                command += ["--input", f"{spec.name}={path}"]
            paths = [Path(tmp) / f"output_{j}.npy" for j in range(len(self.signature.outputs))]
            for spec, path in zip(self.signature.outputs, paths, strict=True):
                command += ["--output", f"{spec.name}={path}"]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                # 2: bad input files, 3: the model rejected the inputs (the message says why)
                raise InputError(_message(proc))
            return [np.load(path) for path in paths]


def check_decoder(signature: ModelSignature) -> None:
    """Raise :class:`OptionError` unless the model is a decoder ``sail_generate`` can run.

    By the inputs' roles (the signature's): it needs one token-ids input (``input_ids``), one
    attention mask (one position-ids input optional) and the output ``logits``, and a KV cache:
    every other input is a past (``past_key_values.<name>``) whose present (``present.<name>``)
    is an output. ``sail_generate.c`` checks the same on ``model.c``'s io specs.
    """
    ids, masks, positions, pasts = (signature.inputs_of(role)
                                    for role in ("ids", "mask", "positions", "past"))
    problems = []
    if len(ids) != 1 or len(masks) != 1 or "logits" not in {s.name for s in signature.outputs}:
        problems.append("it needs the inputs input_ids and attention_mask and the output logits")
    if not pasts:
        problems.append("it has no KV cache (inputs past_key_values.* with outputs present.*); "
                        "compile the decoder exported with its cache")
    others = sorted(s.name for s in (*signature.inputs_of("other"), *ids[1:], *masks[1:],
                                     *positions[1:]))
    if others:
        problems.append(f"it has other inputs: {', '.join(others)}")
    missing = sorted(s.name for s in pasts if s.present is None)
    if missing:
        problems.append(f"no present.* output for {', '.join(missing)}")
    if problems:
        raise OptionError("sail generate runs decoders with a KV cache; this model is not one: "
                          + "; ".join(problems))


#: sail_generate's bound of --top-k (MAX_TOKENS); any larger k keeps every token as well.
_MAX_TOP_K = 1 << 24


def generate(out_dir: Path, manifest: dict[str, Any], prompt_ids: list[int], tokens: int,
             threads: int | None = None, sampling: SamplingOptions | None = None,
             eos_ids: Sequence[int] = (), on_id: Callable[[int], bool] | None = None,
             repeat: int = 1, ctx: int | None = None, kv_f16: bool = False) -> dict[str, Any]:
    """Generation with a c artifact's ``sail_generate`` (built on first use), streamed.

    Parameters
    ----------
    out_dir, manifest
        The artifact (target c) and its manifest.
    prompt_ids
        Token ids of the prompt (one sequence).
    tokens
        New tokens to generate (>= 1).
    threads
        Threads of the LUT-GEMV kernels; None: ``SAIL_NUM_THREADS`` or 1.
    sampling
        How tokens are chosen (:class:`~sail_compiler.sampling.SamplingOptions`, run by the C
        sampler); None: greedy.
    eos_ids
        Ids that end the generation (the id is reported).
    on_id
        Called with each id as ``sail_generate`` prints it; returning True asks it to stop after
        the token it is on (a line on its standard input).
    repeat
        Run the generation this many times (``runs`` of the report; ``sail bench``).
    ctx
        Positions of the KV cache (``--ctx``); None: what the prompt and ``tokens`` need.
    kv_f16
        Store the KV cache as float16 (``--kv-f16``): half its memory and the attention's reads;
        the keys and values are rounded to the nearest half as they are appended.

    Returns
    -------
    dict
        ``sail_generate --json``'s report: ``prompt_ids``, ``ids`` (the generated ids),
        ``stop_reason``, ``seed``, ``sampling``, ``threads``, ``prefill_tokens``,
        ``prefill_seconds``, ``decode_steps``, ``decode_seconds``, ``decode_tokens_per_second``
        (of the first run) and ``runs``.

    Raises
    ------
    OptionError
        Not a decoder with a KV cache, no prompt, ``tokens`` < 1, a bad thread count, or
        ``kv_f16`` for a model whose cache cannot stay in place (``sail_generate`` says why).
    ArtifactError
        The build failed or the weight file is damaged.
    InputError
        A prompt id is outside the vocabulary.
    """
    import json

    from ...sampling import SamplingOptions

    signature = ModelSignature.from_json(manifest["signature"])
    check_decoder(signature)
    if not prompt_ids:
        raise OptionError("--prompt-ids: give at least one token id, e.g. --prompt-ids 1,2,3")
    bound = signature.inputs_of("ids")[0].index_bound
    for option, ids in (("--prompt-ids", prompt_ids), ("end-of-sequence id", eos_ids)):
        bad = [i for i in ids if i < 0 or (bound and i >= bound)]
        if bad:
            raise InputError(f"{option}: {bad[0]} is not a token id of this model (ids lie in "
                             f"[0, {bound}))")
    if tokens < 1:
        raise OptionError(f"-n must be at least 1, not {tokens}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise OptionError(f"--threads must be 1..{MAX_THREADS}, not {threads}")
    sampling = sampling or SamplingOptions()
    binary = out_dir / GENERATE
    if not binary.is_file():
        build_library(out_dir)
    command = [*run_prefix(binary), str(binary), str(out_dir / manifest["weights"]),
               "--prompt-ids",
               ",".join(map(str, prompt_ids)), "-n", str(tokens), "--json", "--stream",
               "--temperature", repr(float(sampling.temperature)),
               "--top-k", str(min(sampling.top_k, _MAX_TOP_K)),
               "--top-p", repr(float(sampling.top_p)), "--min-p", repr(float(sampling.min_p)),
               "--repeat-penalty", repr(float(sampling.repeat_penalty)),
               "--repeat-last-n", str(sampling.repeat_last_n), "--repeat", str(repeat),
               *(["--seed", str(sampling.seed)] if sampling.seed is not None else []),
               *(["--eos-ids", ",".join(map(str, eos_ids))] if eos_ids else []),
               *(["--threads", str(threads)] if threads else []),
               *(["--ctx", str(ctx)] if ctx is not None else []),
               *(["--kv-f16"] if kv_f16 else [])]
    report = None
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errors, text=True, bufsize=1)
        try:
            asked = False
            for line in proc.stdout:
                if line.startswith("{"):
                    report = json.loads(line)
                elif line.strip() and on_id is not None and on_id(int(line)) and not asked:
                    asked = True
                    try:
                        proc.stdin.write("stop\n")
                        proc.stdin.flush()
                    except OSError:  # it has finished already
                        pass
            proc.stdin.close()
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # the caller's callback raised (e.g. KeyboardInterrupt)
                proc.kill()
                proc.wait()
        errors.seek(0)
        finished = subprocess.CompletedProcess(command, returncode, "", errors.read())
    if returncode == 1:
        raise ArtifactError(_message(finished, GENERATE))
    if returncode == 2 and kv_f16:  # the ids were checked above: the cache cannot be float16
        raise OptionError(_message(finished, GENERATE))
    if returncode != 0 or report is None:  # a step failed: the message names it and the reason
        raise InputError(_message(finished, GENERATE))
    return report


def _message(proc: subprocess.CompletedProcess, binary: str = BINARY) -> str:
    """The last line ``sail_main`` wrote to stderr, without its prefix."""
    lines = proc.stderr.strip().splitlines()
    text = lines[-1] if lines else f"{binary} exited with {proc.returncode}"
    return text.removeprefix(f"{binary}: ")
