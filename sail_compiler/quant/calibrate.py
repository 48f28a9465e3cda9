"""Calibration: model inputs, per-layer activation statistics, sensitivity and ``--avg-bits``.

Calibration inputs come from, in this order of preference:

* ``--calib FILE.npz`` (repeatable): one run of the model per file; keys are the model's input
  names, arrays match its signature (checked like ``sail run``'s inputs);
* ``--calib-text FILE --tokenizer tokenizer.json``: the text is tokenized and cut into
  ``samples`` windows of ``seq_len`` tokens, evenly spaced over the text; other inputs (attention
  mask, position ids, empty past) are generated to match;
* otherwise generated inputs (:func:`~sail_compiler.inputs.generate_inputs`, seeds 0, 1, ...).

The float model runs on onnxruntime with each layer's activation input (``A`` of the
``MatMul``/``Gemm``) added as an output. Per distinct activation the Gram matrix
``H = sum over rows of x^T x`` (float64 ``[K, K]``) is accumulated; GPTQ and the weighted search
use it, and :func:`~.methods.reconstruction_error` turns it into a layer's output error.

A large model (its weights memory-mapped, :mod:`sail_compiler.external_data`) is calibrated
without loading it: onnxruntime is given the model's external references and the folder of its
files and maps them itself (:func:`_session`; no float weights are copied into this process),
and the statistics spill to a temporary folder beside the artifact
(:class:`HessianStore`): each input's activation rows or its running ``H``, whichever is smaller,
so that one ``H`` is in memory at a time while the layers are quantized. From the same
activations the spilled ``H`` equal the ones held in memory bit for bit; the activations of a
mapped model equal those of the model in memory within float32 rounding (onnxruntime does not
prepack mapped weights, see :func:`_session`).

``--avg-bits X`` (:func:`measure_sensitivity`, :func:`assign_bits`): a layer's *sensitivity* at
width b estimates the squared relative error of the model's first output when that layer alone is
quantized to b. It is measured end to end at one width only, the *probe width* (the candidate
nearest X), as the error with the layer's weights swapped in (one onnxruntime session whose
weights are inputs, on the first :data:`SENSITIVITY_TOKENS` tokens of the calibration text:
:func:`sensitivity_feeds`), and carried to the other widths in proportion to the layer's own
output error on all calibration rows, ``trace(E_b^T H E_b)`` (:func:`layer_output_error`;
``E_b`` = the weights' RTN quantization error at b, on a sample of :data:`CURVE_COLUMNS` output
columns for wider layers):

    e[layer][b] = e2e[layer] * trace(E_b^T H E_b) / trace(E_probe^T H E_probe).

The curve's shape comes from RTN whatever the compile's method, since GPTQ at every width of a
large layer costs minutes; the level from the model itself. (Until this was written, every
width of every layer ran end to end on every window: 127 layers x 7 widths x 8 windows on Gemma 3
270M, which did not finish in 90 minutes.) The errors are assumed additive across layers and the
widths minimising their sum under ``sum(bits * params) <= X * sum(params)`` are found greedily on
each layer's convex hull.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import InputError, OptionError, SailError
from ..frontend.signature import ModelSignature
from ..inputs import InputPlan, generate_inputs, ids_input, load_inputs, load_tokens
from ..options import CalibrationSpec
from .plan import Layer
from .progress import progress
from .scheme import QuantScheme

#: ORT loads models from bytes below this size; larger ones go through a file with external data.
_INLINE_LIMIT = 1 << 30


def calibration_feeds(spec: CalibrationSpec, signature: ModelSignature) -> list[dict[str, Any]]:
    """The model input dicts ``spec`` describes, each checked against ``signature``.

    Raises
    ------
    InputError
        A file is unreadable, lacks an input, or does not match the signature; the text yields
        no tokens or ids outside the model's vocabulary.
    """
    feeds: list[dict[str, Any]] = []
    if spec.files:
        for path in spec.files:
            feed = load_inputs(path, signature)
            extra = sorted(set(feed) - {s.name for s in signature.inputs})
            if extra:
                raise InputError(f"calibration file {path} has key(s) {extra} the model does "
                                 f"not take; the model takes: {signature.describe_inputs()}")
            try:
                signature.check_inputs(feed)
            except InputError as err:
                raise InputError(f"calibration file {path}: {err}") from None
            feeds.append(feed)
        return feeds
    ids = None
    if spec.text is not None:
        ids = load_tokens(spec.text, spec.tokenizer)
        if len(ids) < spec.seq_len:
            raise InputError(f"{spec.text} has {len(ids)} tokens, fewer than the {spec.seq_len} "
                             "of one calibration window; give more text or a smaller "
                             "--calib-seq-len")
    for i in range(spec.samples):
        if ids is None:
            feed = generate_inputs(signature, InputPlan(batch=1, seq_len=spec.seq_len,
                                                        past_len=0, seed=i))
        else:
            start = (len(ids) - spec.seq_len) * i // max(spec.samples - 1, 1)
            feed = feed_for_ids(signature, ids[start:start + spec.seq_len])
        signature.check_inputs(feed)
        feeds.append(feed)
    return feeds


def feed_for_ids(signature: ModelSignature, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs for one sequence of token ids (batch 1, no past): the ids (the input
    :func:`~sail_compiler.inputs.ids_input` finds), and the other inputs generated to match
    (attention mask of ones, positions, empty past tensors)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    feed = generate_inputs(signature, InputPlan(batch=1, seq_len=len(ids), past_len=0))
    name = ids_input(signature).name
    feed[name] = ids.reshape(feed[name].shape).astype(feed[name].dtype)
    return feed


@contextmanager
def _session(model: onnx.ModelProto, base_dir: Path | None = None) -> Iterator[Any]:
    """An onnxruntime session of ``model``.

    With ``base_dir``, the model's initializers are external-data references relative to it
    (a large model loaded without its weights): onnxruntime maps the files itself, so the
    weights are never copied into this process (only the pages a run touches are read, as
    page cache), and MLAS prepacking is off (it copies every matmul's weights into packed
    buffers: 4.0 GB for the 1.1B example decoder). Prepacked and unpacked matmuls round
    differently: on Gemma 3 270M the Hessians of 72 of 73 inputs differed, by at most 9.6e-7
    of their largest entry; a model in memory keeps prepacking, so its results stay as they were.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="sail-calib-") as tmp:
        try:
            source: bytes | str
            if base_dir is not None:
                options.add_session_config_entry("session.disable_prepacking", "1")
                options.add_session_config_entry(
                    "session.model_external_initializers_file_folder_path", str(base_dir))
                source = model.SerializeToString()
            elif model.ByteSize() < _INLINE_LIMIT:
                source = model.SerializeToString()
            else:
                source = str(Path(tmp) / "model.onnx")
                onnx.save(model, source, save_as_external_data=True, location="weights.bin")
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise SailError(f"onnxruntime could not load the model for calibration: "
                            f"{str(err).strip().splitlines()[0]}") from err
        yield session


def _run(session: Any, names: list[str], feed: dict[str, Any]) -> list[np.ndarray]:
    try:
        return session.run(names, feed)
    except Exception as err:
        raise SailError(f"onnxruntime failed on a calibration input: "
                        f"{str(err).strip().splitlines()[0]}") from err


def _probe_model(model: onnx.ModelProto, extra_outputs: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``extra_outputs`` (float tensors) added as graph outputs.

    The copy shares nothing with ``model``; a model whose initializers are external references
    copies only the references."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in extra_outputs:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            probe.graph.output[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return probe


def collect_hessians(model: onnx.ModelProto, layers: list[Layer], feeds: list[dict[str, Any]],
                     base_dir: Path | None = None,
                     work_dir: Path | None = None) -> HessianStore:
    """``{layer name: H}``, ``H = sum of x^T x`` (float64 ``[K, K]``) over all calibration rows.

    Layers reading the same activation share one (read-only) ``H``.

    Parameters
    ----------
    model
        The float model; with ``base_dir``, its initializers are external references relative
        to that folder, which onnxruntime maps (:func:`_session`) instead of this process
        loading them.
    layers, feeds
        The layers whose inputs are gathered; the model inputs to run.
    work_dir
        Spill the statistics to files in this folder (:class:`HessianStore`), so that only
        one layer's ``H`` is in memory at a time; None keeps every ``H`` in memory.
    """
    wanted = sorted({layer.input_name for layer in layers})
    graph_inputs = {i.name for i in model.graph.input}
    fetch = [n for n in wanted if n not in graph_inputs]
    probe = _probe_model(model, fetch)
    store = HessianStore({layer.name: layer.input_name for layer in layers}, len(feeds),
                         work_dir)
    try:
        with _session(probe, base_dir) as session:
            del probe
            for feed in progress(feeds, "calibration"):
                values = dict(zip(fetch, _run(session, fetch, feed), strict=True))
                values.update({n: feed[n] for n in wanted if n in graph_inputs})
                store.add_feed(values)
    except BaseException:
        store.close()
        raise
    return store


def _write(path: Path, array: np.ndarray, mode: str) -> None:
    """Write (``"wb"``) or append (``"ab"``) ``array``'s bytes to ``path``."""
    with path.open(mode) as f:
        array.tofile(f)


class HessianStore(Mapping[str, np.ndarray]):
    """The calibration Hessians ``{layer name: H}`` (float64 ``[K, K]``), gathered one model run
    (feed) at a time by :meth:`add_feed`.

    In memory (``work_dir`` None) every distinct input's running sum is held. Spilled
    (``work_dir`` given) each input's statistics go to a file in a private folder under
    ``work_dir``, whichever is smaller: its activation rows (float32 as onnxruntime returns
    them, ``rows x K x 4`` bytes) or its running sum ``H`` (``K x K x 8`` bytes, read, added to
    and written back per feed). A lookup computes ``H`` from the file; the last one is kept, so
    layers sharing an input (consecutive in a model) compute it once. Both ways sum the
    per-feed ``x^T x`` (float64) in feed order, so they give the same ``H`` bit for bit.

    :meth:`close` (or the end of a ``with`` block) deletes the files.

    Raises
    ------
    SailError
        The file system of ``work_dir`` lacks the room the statistics need (checked after the
        first feed, from its row counts and the number of feeds; a write that still finds the
        disk full says the same).
    """

    def __init__(self, inputs: dict[str, str], feeds: int, work_dir: Path | None = None) -> None:
        #: ``{layer name: input name}``
        self._inputs = inputs
        self._feeds = feeds
        self._sums: dict[str, np.ndarray] = {}
        self._rows: dict[str, list[int]] = {}  # spilled as rows: rows per feed
        self._files: dict[str, Path] = {}
        self._dims: dict[str, int] = {}
        self._dir: Path | None = None
        self._work_dir = work_dir
        self._cached: tuple[str, np.ndarray] | None = None
        self._needed = 0
        if work_dir is not None:
            self._dir = Path(tempfile.mkdtemp(prefix=".sail-hessians-", dir=work_dir))

    # -- gathering ---------------------------------------------------------------------------
    def add_feed(self, values: dict[str, np.ndarray]) -> None:
        """Add one model run's activations ``{input name: x[..., K]}``."""
        if self._dir is None:
            for name in sorted(set(self._inputs.values())):
                x = np.asarray(values[name], dtype=np.float64)
                x = x.reshape(-1, x.shape[-1])
                gram = x.T @ x
                self._sums[name] = self._sums[name] + gram if name in self._sums else gram
            return
        first = not self._files
        if first:
            self._plan(values)
        for name in sorted(set(self._inputs.values())):
            x = np.asarray(values[name])
            x = x.reshape(-1, x.shape[-1])
            try:
                if name in self._rows:
                    _write(self._files[name], np.ascontiguousarray(x, dtype=np.float32), "ab")
                    self._rows[name].append(x.shape[0])
                else:
                    x = x.astype(np.float64)
                    gram = x.T @ x
                    path = self._files[name]
                    if path.exists():
                        gram = np.fromfile(path, np.float64).reshape(gram.shape) + gram
                    _write(path, gram, "wb")
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._no_room(self.disk_bytes()) from None
                raise

    def _plan(self, values: dict[str, np.ndarray]) -> None:
        """Choose each input's file (rows or sum) from the first feed and check the room."""
        assert self._dir is not None
        needed = 0
        for i, name in enumerate(sorted(set(self._inputs.values()))):
            x = np.asarray(values[name])
            if x.dtype != np.float32:
                raise SailError(f"calibration: the activation {name!r} is {x.dtype}; layers "
                                "with float32 inputs only can be calibrated")
            k = x.shape[-1]
            rows = x.size // k if k else 0
            self._dims[name] = k
            as_rows = rows * self._feeds * 4 <= k * 8  # per K: rows x 4 bytes vs K x 8 bytes
            if as_rows:
                self._rows[name] = []
                self._files[name] = self._dir / f"{i}.rows.f32"
                needed += rows * self._feeds * k * 4
            else:
                self._files[name] = self._dir / f"{i}.sum.f64"
                needed += k * k * 8
        self._needed = needed
        free = shutil.disk_usage(self._dir).free
        if free < needed:
            raise self._no_room(0)

    def _no_room(self, written: int) -> SailError:
        free = shutil.disk_usage(self._dir).free if self._dir is not None else 0
        return SailError(
            f"calibration needs about {self._needed} bytes ({self._needed / 2**30:.2f} GiB) "
            f"of temporary space for the layers' statistics in {self._work_dir}; "
            f"{written} bytes were written, {free} bytes ({free / 2**30:.2f} GiB) are free. "
            "Free space there, compile to an -o path on a larger disk, or calibrate on fewer "
            "rows (--calib-samples, --calib-seq-len)")

    def disk_bytes(self) -> int:
        """Bytes of the spilled files now."""
        return sum(p.stat().st_size for p in self._files.values() if p.exists())

    # -- lookups -----------------------------------------------------------------------------
    def __getitem__(self, layer: str) -> np.ndarray:
        name = self._inputs[layer]
        if self._dir is None:
            return self._sums[name]
        if self._cached is not None and self._cached[0] == name:
            return self._cached[1]
        self._cached = None  # drop the last one before computing the next
        k = self._dims[name]
        path = self._files[name]
        if name in self._rows:
            total = None
            with path.open("rb") as f:
                for rows in self._rows[name]:
                    x = np.fromfile(f, np.float32, count=rows * k).reshape(rows, k)
                    x = x.astype(np.float64)
                    gram = x.T @ x
                    total = gram if total is None else total + gram
            h = total if total is not None else np.zeros((k, k))
        else:
            h = np.fromfile(path, np.float64).reshape(k, k)
        h.setflags(write=False)
        self._cached = (name, h)
        return h

    def __contains__(self, layer: object) -> bool:
        return layer in self._inputs

    def __iter__(self) -> Iterator[str]:
        return iter(self._inputs)

    def __len__(self) -> int:
        return len(self._inputs)

    def close(self) -> None:
        """Delete the spilled files (the store cannot be read after)."""
        self._cached = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> HessianStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: ``quantize_layer(layer, H)``: quantize ``layer`` given its Hessian ``H`` (of its input in the
#: partly quantized model) and return the float32 ``[K, N]`` weights it then computes with, in
#: the model's basis.
QuantizeLayer = Callable[[Layer, np.ndarray], np.ndarray]


def _graph_inputs_of(node: onnx.NodeProto) -> set[str]:
    """The names ``node`` reads, including outer-scope names its subgraphs read."""
    names = set(node.input)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else []
        for graph in graphs + list(attr.graphs):
            inner = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} \
                | {t.name for t in graph.initializer}
            for n in graph.node:
                names |= _graph_inputs_of(n) - inner
    return names


def _pruned(model: onnx.ModelProto, outputs: list[str], swapped: set[str]) -> onnx.ModelProto:
    """The part of ``model`` that computes ``outputs`` (float tensors), with the initializers
    named in ``swapped`` turned into graph inputs; unused inputs and initializers dropped."""
    graph = model.graph
    need = set(outputs)
    kept = []
    for node in reversed(graph.node):  # ONNX nodes are in topological order
        if any(o in need for o in node.output):
            kept.append(node)
            need |= _graph_inputs_of(node)
    pruned = onnx.ModelProto()
    pruned.ir_version = model.ir_version
    pruned.opset_import.extend(model.opset_import)
    pruned.functions.extend(model.functions)
    out = pruned.graph
    out.name = graph.name
    out.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in need]
    out.initializer.extend(t for t in inits if t.name not in swapped)
    out.input.extend(i for i in graph.input if i.name in need)
    for t in inits:
        if t.name in swapped:
            out.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type,
                                                                list(t.dims)))
    for name in outputs:
        out.output.append(onnx.helper.make_empty_tensor_value_info(name))
        out.output[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return pruned


def collect_hessians_sequential(model: onnx.ModelProto, layers: list[Layer],
                                feeds: list[dict[str, Any]], quantize_layer: QuantizeLayer,
                                inputs_per_stage: int = 4,
                                base_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Quantize ``layers`` in model order, each with the Hessian of its input taken with the
    layers before it already quantized (GPTQ's "true sequential" order); ``{layer: H}``.

    The distinct activation inputs of ``layers``, in graph order, are cut into stages of
    ``inputs_per_stage`` (4: one transformer block of a Llama-style decoder, q/k/v, o,
    gate/up, down). Per stage the part of the model that computes the stage's inputs runs on
    ``feeds`` (onnxruntime), with every weight ``quantize_layer`` returned for an earlier stage
    fed in place of the float one; then ``quantize_layer`` is called for each layer of the stage
    with its Hessian. A weight initializer read by more than one node stays float in the runs
    (swapping it would change the other readers too).

    Returns
    -------
    dict[str, numpy.ndarray]
        ``{layer name: H}`` (float64 ``[K, K]``, shared by layers reading the same input), as
        :func:`collect_hessians` but from the partly quantized model. They are all held in
        memory (not spilled as :class:`HessianStore` does): with a large model's weights in
        their files (``base_dir``) only the weights stay out of memory.
    """
    if inputs_per_stage < 1:
        raise OptionError(f"inputs per stage must be >= 1, got {inputs_per_stage}")
    uses = Counter(i for n in model.graph.node for i in _graph_inputs_of(n))
    first_use: dict[str, int] = {}
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        first_use[layer.input_name] = min(first_use.get(layer.input_name, layer.node_index),
                                          layer.node_index)
        readers.setdefault(layer.input_name, []).append(layer)
    order = sorted(first_use, key=first_use.__getitem__)
    stages = [order[i:i + inputs_per_stage] for i in range(0, len(order), inputs_per_stage)]
    graph_inputs = {i.name for i in model.graph.input}
    swapped: dict[str, np.ndarray] = {}  # initializer name -> its quantized value, as stored
    hessians: dict[str, np.ndarray] = {}
    for stage in progress(stages, "sequential calibration"):
        fetch = [n for n in stage if n not in graph_inputs]
        sums: dict[str, np.ndarray] = {}
        pruned = _pruned(model, fetch, set(swapped)) if fetch else None
        needed = {i.name for i in pruned.graph.input} if pruned is not None else set()
        weights = {k: v for k, v in swapped.items() if k in needed}
        with (_session(pruned, base_dir) if pruned is not None else nullcontext()) as session:
            for feed in feeds:
                values = dict(zip(fetch, _run(session, fetch, {
                    **{k: v for k, v in feed.items() if k in needed}, **weights}), strict=True)) \
                    if fetch else {}
                values.update({n: feed[n] for n in stage if n in graph_inputs})
                for name in stage:
                    x = np.asarray(values[name], dtype=np.float64)
                    x = x.reshape(-1, x.shape[-1])
                    gram = x.T @ x
                    sums[name] = sums[name] + gram if name in sums else gram
        for name in stage:
            for layer in readers[name]:
                hessians[layer.name] = sums[name]
                w_hat = np.asarray(quantize_layer(layer, sums[name]), np.float32)
                if uses[layer.weight_name] == 1:
                    swapped[layer.weight_name] = np.ascontiguousarray(
                        w_hat.T if layer.transposed else w_hat)
    return hessians


class WeightSwapper:
    """One onnxruntime session of ``model`` whose layer weights can be overridden per run, so
    any subset of layers can run with substituted (e.g. dequantized) weights.

    The weights stay initializers (in memory, or external references relative to ``base_dir``
    that onnxruntime maps) and are also declared as graph inputs, which makes them overridable:
    a run feeds only the substituted ones. No float copy of the model's weights is made here.

    Use as a context manager; :meth:`run` takes a model feed and ``{layer name: W[K, N]}``.
    """

    def __init__(self, model: onnx.ModelProto, layers: list[Layer],
                 base_dir: Path | None = None) -> None:
        self.layers = {layer.name: layer for layer in layers}
        inits = {t.name: t for t in model.graph.initializer}
        swap = onnx.ModelProto()
        swap.CopyFrom(model)
        declared = {i.name for i in swap.graph.input}
        for name in sorted({layer.weight_name for layer in layers} - declared):
            swap.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, list(inits[name].dims)))
        if swap.ir_version < 4:  # initializers are overridable inputs from IR version 4
            swap.ir_version = 4
        self.model = swap
        self.base_dir = base_dir
        self.output = model.graph.output[0].name
        self._context: Any = None
        self.session: Any = None

    def __enter__(self) -> WeightSwapper:
        self._context = _session(self.model, self.base_dir)
        self.session = self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)

    def run(self, feed: dict[str, Any], weights: dict[str, np.ndarray] | None = None) \
            -> np.ndarray:
        """The first output with the given layers' ``W[K, N]`` swapped in."""
        values = {}
        for name, w in (weights or {}).items():
            layer = self.layers[name]
            values[layer.weight_name] = np.ascontiguousarray(w.T if layer.transposed else w,
                                                             dtype=np.float32)
        return _run(self.session, [self.output], {**feed, **values})[0]


def _squared_rel(actual: np.ndarray, expected: np.ndarray) -> float:
    """``||actual - expected||^2 / ||expected||^2`` (float32 products and BLAS sums: logits of
    a large vocabulary are 10^7-10^8 numbers, compared once per layer)."""
    diff = (actual - expected).ravel()
    ref = expected.ravel()
    denom = float(np.dot(ref, ref))
    num = float(np.dot(diff, diff))
    return num / denom if denom else num


#: Tokens of the one calibration window each layer's end-to-end probe runs on (the first window
#: of the text, cut to this length): a model run per layer is most of the cost of ``--avg-bits``.
SENSITIVITY_TOKENS = 128

#: A layer's output-error curve is computed on at most about this many of its output columns
#: (every ``ceil(N / CURVE_COLUMNS)``-th): quantization and the error are column by column, and
#: only ratios between widths are used, so a sample of an LM head's 262144 columns serves.
CURVE_COLUMNS = 16384

#: Columns of ``E`` multiplied by ``H`` at once in :func:`layer_output_error`.
_ERROR_TILE_COLUMNS = 16384

#: ``quantized(layer, scheme)``: the float32 ``[K, N]`` weights ``layer`` computes with when
#: quantized with ``scheme``, in the model's basis.
Quantized = Callable[[Layer, QuantScheme], np.ndarray]
#: ``output_error(layer, scheme)``: the layer's output error ``trace(E^T H E)`` on the
#: calibration rows when quantized with ``scheme`` (on :func:`curve_columns` of it).
OutputError = Callable[[Layer, QuantScheme], float]


def sensitivity_feeds(spec: CalibrationSpec, signature: ModelSignature) -> list[dict[str, Any]]:
    """The model inputs of the end-to-end probes: the first calibration file, or the first
    window of the text (or the first generated input) cut to :data:`SENSITIVITY_TOKENS`."""
    if spec.files:
        return calibration_feeds(dataclasses.replace(spec, files=spec.files[:1]), signature)
    return calibration_feeds(dataclasses.replace(
        spec, samples=1, seq_len=min(spec.seq_len, SENSITIVITY_TOKENS)), signature)


def curve_columns(n: int) -> slice:
    """The output columns a layer's error curve is computed on (:data:`CURVE_COLUMNS`)."""
    return slice(None, None, -(-n // CURVE_COLUMNS))


def layer_output_error(err: np.ndarray, hessian: np.ndarray) -> float:
    """``trace(E^T H E) = ||X E||_F^2``: the squared output error of a layer whose weights are
    off by ``E[K, N]``, over the calibration rows ``X`` whose Gram matrix is ``H[K, K]``.

    The products run in float32 over tiles of columns (an LM head's ``H @ E`` is 10^11
    multiply-adds), the sums in float64; a negative total (rounding; ``H`` is semidefinite)
    is 0.
    """
    h = np.asarray(hessian, np.float32)
    total = 0.0
    for start in range(0, err.shape[1], _ERROR_TILE_COLUMNS):
        tile = np.asarray(err[:, start:start + _ERROR_TILE_COLUMNS], np.float32)
        total += float(np.sum(tile * (h @ tile), dtype=np.float64))
    return max(total, 0.0)


def probe_width(widths: list[int], avg_bits: float) -> int:
    """The candidate width nearest ``avg_bits`` (the narrower one on a tie): where the
    sensitivity is measured end to end."""
    return min(widths, key=lambda b: (abs(b - avg_bits), b))


def measure_sensitivity(model: onnx.ModelProto, layers: list[Layer], widths: list[int],
                        probe_bits: int, scheme: QuantScheme, feeds: list[dict[str, Any]],
                        quantized: Quantized, output_error: OutputError,
                        base_dir: Path | None = None) -> dict[str, dict[int, float]]:
    """``{layer: {bits: e}}``: the estimated squared relative error of the first output with
    that layer alone quantized to ``bits`` (``scheme``'s group size and symmetry), summed over
    ``feeds`` (module docstring).

    ``e[layer][probe_bits]`` is measured: the first output with the layer's ``quantized``
    weights at ``probe_bits`` swapped in, on ``feeds`` (:func:`sensitivity_feeds`), against
    the float model. The other widths scale it by the ratio of ``output_error``s; a
    layer whose output error at ``probe_bits`` is 0 gets that width's measurement at every width.
    ``base_dir``: the model's initializers are external references relative to it
    (:class:`WeightSwapper`).
    """
    assert probe_bits in widths
    errors: dict[str, dict[int, float]] = {}
    with WeightSwapper(model, layers, base_dir) as swapper:
        baseline = [swapper.run(feed) for feed in feeds]
        for layer in progress(layers, "sensitivity"):
            curve = {bits: output_error(layer, dataclasses.replace(scheme, bits=bits))
                     for bits in widths}
            w_hat = quantized(layer, dataclasses.replace(scheme, bits=probe_bits))
            measured = sum(_squared_rel(swapper.run(feed, {layer.name: w_hat}), ref)
                           for feed, ref in zip(feeds, baseline, strict=True))
            del w_hat
            ref_error = curve[probe_bits]
            errors[layer.name] = {b: measured * (e / ref_error if ref_error > 0 else 1.0)
                                  for b, e in curve.items()}
    return errors


def candidate_widths(scheme: QuantScheme) -> list[int]:
    """Widths ``--avg-bits`` chooses from: 1..8, or 2..8 for symmetric schemes."""
    return list(range(2 if scheme.symmetric else 1, 9))


def assign_bits(errors: dict[str, dict[int, float]], params: dict[str, int],
                avg_bits: float) -> dict[str, int]:
    """Per-layer widths minimising ``sum errors[layer][bits]`` with
    ``sum(bits * params) <= avg_bits * sum(params)``.

    Greedy over each layer's lower convex hull of (bits, error): start every layer at its
    narrowest width and repeatedly take the upgrade with the largest error reduction per added
    bit that still fits the budget. Exact when the hulls are the true curves and the budget is
    met with equality; a standard near-optimal answer to this multiple-choice knapsack otherwise.

    Raises
    ------
    OptionError
        ``avg_bits`` is below the narrowest candidate width or above the widest.
    """
    widths = sorted({b for e in errors.values() for b in e})
    if not errors:
        return {}
    lo, hi = widths[0], widths[-1]
    if not lo <= avg_bits <= hi:
        raise OptionError(f"--avg-bits must lie in [{lo}, {hi}] for this scheme, got {avg_bits}")
    hulls: dict[str, list[int]] = {}
    for name, curve in errors.items():
        points = sorted(curve.items())
        hull: list[tuple[int, float]] = []
        for b, e in points:
            if hull and e >= hull[-1][1]:
                continue  # never pay bits for no reduction
            while len(hull) >= 2:
                (b1, e1), (b2, e2) = hull[-2], hull[-1]
                if (e2 - e1) * (b - b1) >= (e - e1) * (b2 - b1):  # b2 above the chord: drop it
                    hull.pop()
                else:
                    break
            hull.append((b, e))
        hulls[name] = [b for b, _ in hull]
    choice = {name: hull[0] for name, hull in hulls.items()}
    step = {name: 0 for name in hulls}
    budget = avg_bits * sum(params.values()) - sum(choice[n] * params[n] for n in choice)
    while True:
        best, best_gain = None, 0.0
        for name, hull in hulls.items():
            i = step[name]
            if i + 1 >= len(hull):
                continue
            cost = (hull[i + 1] - hull[i]) * params[name]
            if cost > budget + 1e-9:
                continue
            gain = (errors[name][hull[i]] - errors[name][hull[i + 1]]) / cost
            if gain > best_gain:
                best, best_gain = name, gain
        if best is None:
            return choice
        i = step[best]
        budget -= (hulls[best][i + 1] - hulls[best][i]) * params[best]
        step[best] = i + 1
        choice[best] = hulls[best][i + 1]
