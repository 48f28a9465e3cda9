"""IR dumps: TVMScript after every pass and every stage, and ``--print-after``.

A dump directory holds::

    command.txt              the command line that made it
    000_<PassName>.py ...    TVMScript after each pass, numbered in execution order
    stage_0_frontend.py      TVMScript straight from the ONNX importer
    stage_<k>_<stage>.py     TVMScript after each pipeline stage (k = 1..4)
    passes.json              the index: pass, stage, file, whether it changed the IR, seconds

Passes are those listed in a stage (and the pipelines inside ``relax.build``), not the passes they
run internally. "Changed" compares the printed TVMScript with that of the previous dump, so it
means what a reader of the dumps sees. Constants print as ``metadata[...]`` references (no
weights in the dumps).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import tvm

from .errors import OptionError

MARKER = ".sail-dump"
STAGE_PASS_PREFIX = "sail.stage."
INDEX_FILE = "passes.json"
# Passes are dumped at this nesting depth: the members of a stage's Sequential (and of the
# pipelines relax.build runs). Deeper passes are what a pass runs inside (FoldConstant builds and
# runs TIR; the llvm target wraps each pass to set the target), shallower ones are wrappers.
_PASS_DEPTH = 2
_ANONYMOUS_WRAPPERS = ("sequential", "_pipeline")


def prepare_dump_dir(path: Path, force: bool, command: list[str]) -> Path:
    """Create ``path`` for dumps (or reuse one made by us); never clobber someone else's files.

    A non-empty directory is accepted only if an earlier dump made it (it holds our marker
    file) or ``force`` is set; its old dumps are removed, nothing else is touched.
    """
    if path.exists() and not path.is_dir():
        raise OptionError(f"--dump-dir {path} is a file; give a directory path")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MARKER).exists() and not force:
            raise OptionError(f"--dump-dir {path} is not empty and was not created by sail; "
                              "choose an empty or new directory, or pass --force")
        for old in [*path.glob("[0-9][0-9][0-9]_*.py"), *path.glob("stage_*.py")]:
            old.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("created by sail compile --dump-dir\n")
    (path / "command.txt").write_text(" ".join(command) + "\n")
    return path


def file_safe(name: str) -> str:
    """``name`` with every run of characters unsafe in file names replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@tvm.ir.instrument.pass_instrument
class IRDumper:
    """Writes the TVMScript after each pass (``dump_dir``) and prints chosen passes.

    Parameters
    ----------
    dump_dir
        Where to write dumps, or None to write none.
    print_after
        Pass names whose output is printed to ``stream``.
    """

    def __init__(self, dump_dir: Path | None, print_after: list[str] | None = None,
                 stream: TextIO | None = None) -> None:
        self.dump_dir = dump_dir
        self.print_after = set(print_after or [])
        self.stream = stream or sys.stdout
        self.stage = "import"
        self.entries: list[dict[str, Any]] = []
        self.seen_passes: list[str] = []
        self._previous_text: str | None = None
        self._started: float = 0.0
        self._stack: list[tuple[str, float]] = []
        self._last_printed: tuple[str, int] | None = None

    def run_before_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        self._stack.append((str(info.name), time.perf_counter()))

    def run_after_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        name = str(info.name)
        # Pop to this pass's own entry: an inner pass that raised never reported back.
        while self._stack and self._stack[-1][0] != name:
            self._stack.pop()
        depth = len(self._stack)
        self._started = self._stack.pop()[1] if self._stack else time.perf_counter()
        if self.stage == "build":
            # relax.build nests its pipelines one level deeper, in anonymous wrappers.
            listed = depth in (_PASS_DEPTH, _PASS_DEPTH + 1) and name not in _ANONYMOUS_WRAPPERS
        else:
            # Shallower: wrappers; deeper: work a pass does inside (e.g. FoldConstant builds).
            listed = depth == _PASS_DEPTH
        listed = listed and self.dump_dir is not None
        self.seen_passes.append(name)
        # --print-after reaches passes at any depth, but a wrapper that finishes right after
        # its same-named inner pass (the llvm target wraps each pass) is not printed twice.
        wants_print = name in self.print_after and self._last_printed != (name, depth + 1)
        self._last_printed = (name, depth) if wants_print else None
        if not listed and not wants_print:
            return
        text = mod.script()
        if wants_print:
            print(f"# IR after {name} (stage {self.stage})\n{text}", file=self.stream)
        if not listed:
            return
        assert self.dump_dir is not None
        index = len(self.entries)
        file = f"{index:03d}_{file_safe(name)}.py"
        (self.dump_dir / file).write_text(text)
        self.entries.append({
            "index": index, "pass": name, "stage": self.stage, "file": file,
            "changed": text != self._previous_text,
            "seconds": round(time.perf_counter() - self._started, 6),
        })
        self._previous_text = text
        self._write_index()

    def record_stage(self, position: int, stage: str, mod: tvm.IRModule) -> None:
        """Write the IR after stage number ``position`` named ``stage`` (0: the frontend)."""
        if self.dump_dir is None:
            return
        text = mod.script()
        (self.dump_dir / f"stage_{position}_{stage}.py").write_text(text)
        if self._previous_text is None:
            self._previous_text = text

    def _write_index(self) -> None:
        assert self.dump_dir is not None
        (self.dump_dir / INDEX_FILE).write_text(json.dumps(self.entries, indent=1) + "\n")
