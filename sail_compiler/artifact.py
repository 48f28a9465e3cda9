"""Compiled artifacts: a directory with ``manifest.json`` plus the target's files.

The manifest records the format version, the versions of sail and TVM that built it, the target,
the source model and the ONNX signature; loading checks all of it. Inputs given to
:meth:`Artifact.run` are checked against the signature (names, dtypes, ranks, fixed dims, and that
each symbolic dim has one value across inputs) before anything reaches the runtime.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, InputError, tvm_message
from .frontend.signature import ModelSignature
from .targets import Runner, get_target
from .version import __version__

FORMAT = "sail-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def check_output_path(out: Path, model_path: Path, force: bool) -> None:
    """Refuse to replace anything sail did not make, or the model itself.

    An earlier artifact or an empty directory is replaced; a file only with ``force``; a
    non-empty directory without a manifest never.
    """
    if out.resolve() == model_path.resolve() or model_path.resolve().is_relative_to(out.resolve()):
        raise ArtifactError(f"output {out} would overwrite the model {model_path}; "
                            "choose another -o path")
    if not out.exists():
        return
    if out.is_dir() and (out / MANIFEST).is_file():
        return  # an earlier artifact: replaced as a whole
    if out.is_dir() and not any(out.iterdir()):
        return
    if out.is_dir():
        raise ArtifactError(f"output {out} is a non-empty directory sail did not make; choose a "
                            "new path (sail never deletes such a directory)")
    if not force:
        raise ArtifactError(f"output {out} exists and is not a sail artifact; choose a new path "
                            "or pass --force to replace the file")


def write_artifact(out: Path, build: Callable[[Path], dict[str, Any]],
                   manifest: dict[str, Any]) -> None:
    """Build into a temporary sibling directory, then move it to ``out`` in one step.

    A failed build leaves any earlier ``out`` untouched and no partial directory behind; a disk
    that fills up is an :class:`ArtifactError` saying how much was needed (the weight writers
    check the whole file's size before writing, :func:`~.weights_file.require_space`) or, for
    any other file, how much was free when writing started (a lower bound on what is needed).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            extra = build(staging)
            full = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "sail_version": __version__, **manifest, **extra}
            (staging / MANIFEST).write_text(json.dumps(full, indent=1) + "\n")
        except Exception as err:
            # Python's writes raise OSError; the linker TVM runs for a shared library reports a
            # full disk only in the text of the RuntimeError it becomes.
            if not (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
                    or os.strerror(errno.ENOSPC) in str(err)):
                raise
            kept = " and the earlier artifact is kept" if out.exists() else ""
            raise ArtifactError(
                f"the disk filled while writing the artifact {out}: it needs more than the "
                f"{free} bytes ({free / 2**30:.2f} GiB) that were free on the file system of "
                f"{out.parent}; nothing was left behind{kept}. Free space or compile to another "
                "-o path") from err
        staging.chmod(0o755)  # mkdtemp made it private
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


class Artifact:
    """A loaded artifact."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{self.path} is not a sail artifact (no {MANIFEST}); "
                                "make one with: sail compile MODEL -o DIR")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{manifest_path} is corrupt ({err}); recompile the model") from err
        if self.manifest.get("format") != FORMAT:
            raise ArtifactError(f"{manifest_path} is not a sail manifest; recompile the model")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{self.path} has artifact format {self.manifest.get('format_version')}, this "
                f"sail reads format {FORMAT_VERSION}; recompile the model")
        self.signature = ModelSignature.from_json(self.manifest["signature"])
        self.target = get_target(self.manifest["target"])
        self._runner: Runner | None = None

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = self.target.load(self.path, self.manifest)
        return self._runner

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, int]:
        """Validate ``inputs``; return the value of every symbolic dim.

        Beside the signature's checks, a decoder whose positions come from ``Range(past, past +
        seq)`` into a table (``position_table_rows`` of the manifest) must not be given more
        positions than the table has: :class:`InputError` naming the inputs and the limit (the
        compiled model checks the indices too; this says which inputs to shorten)."""
        dims = self.signature.check_inputs(inputs)
        rows = self.manifest.get("position_table_rows")
        context = self.signature.context_of(inputs) if rows is not None else None
        if context is not None and context[0] > rows:
            total, where = context
            raise InputError(f"past + seq is {total} positions ({where}), but the model's "
                             f"position table has {rows} rows: it was exported for at most "
                             f"{rows} positions (past and new tokens together); shorten the "
                             "context")
        return dims

    def describe_inputs(self) -> str:
        return self.signature.describe_inputs()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs; return named outputs (ONNX order)."""
        dims = self.check_inputs(inputs)
        runner = self.runner  # loading errors are the artifact's, not the inputs'
        try:
            outputs = runner.run([inputs[s.name] for s in self.signature.inputs])
        except Exception as err:  # the runtime's own checks (e.g. dims that must be equal)
            first = tvm_message(err)
            shown = ", ".join(f"{k}={v}" for k, v in dims.items()) or "static"
            raise InputError(f"the compiled model rejected the inputs ({shown}): {first}. "
                             f"The model takes: {self.describe_inputs()}") from err
        names = [s.name for s in self.signature.outputs]
        assert len(outputs) == len(names), (len(outputs), names)
        return dict(zip(names, outputs, strict=True))
