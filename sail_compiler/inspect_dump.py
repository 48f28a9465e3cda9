"""``sail inspect``: read a ``--dump-dir``: list passes, show one, diff two.

Works from the files alone (``passes.json`` adds stage and time when present), so a dump copied
elsewhere or trimmed by hand can still be read. Passes are named by number or pass name.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import OptionError
from .ir_dump import INDEX_FILE

_DUMP_FILE = re.compile(r"^(\d{3})_(.+)\.py$")


@dataclass(frozen=True)
class DumpEntry:
    index: int
    name: str
    path: Path
    stage: str
    changed: bool
    seconds: float | None


def read_dump(dump_dir: str | Path) -> list[DumpEntry]:
    """The dumped passes in execution order."""
    d = Path(dump_dir)
    if not d.is_dir():
        raise OptionError(f"{d} is not a directory; give a directory made by "
                          "sail compile --dump-dir")
    files = sorted((int(m.group(1)), m.group(2), p) for p in d.iterdir()
                   if (m := _DUMP_FILE.match(p.name)))
    if not files:
        raise OptionError(f"{d} holds no pass dumps (NNN_<PassName>.py); make one with "
                          "sail compile MODEL --dump-dir DIR")
    index = {}
    if (d / INDEX_FILE).is_file():
        index = {e["file"]: e for e in json.loads((d / INDEX_FILE).read_text())}
    stages = sorted(d.glob("stage_0_*.py"))
    previous = stages[0].read_text() if stages else None
    entries = []
    for number, name, path in files:
        text = path.read_text()
        meta = index.get(path.name, {})
        entries.append(DumpEntry(number, meta.get("pass", name), path,
                                 meta.get("stage", "?"), text != previous, meta.get("seconds")))
        previous = text
    return entries


def find(entries: list[DumpEntry], key: str) -> DumpEntry:
    """The entry numbered ``key`` or the last one whose pass is named ``key``."""
    if key.isdigit():
        for e in entries:
            if e.index == int(key):
                return e
    matches = [e for e in entries if e.name == key]
    if matches:
        return matches[-1]
    names = sorted({e.name for e in entries})
    raise OptionError(f"no pass '{key}' in the dump; give a number 0..{entries[-1].index} or "
                      f"one of: {', '.join(names)}")


def list_passes(entries: list[DumpEntry]) -> str:
    lines = [f"{'#':>4}  {'stage':<9} {'pass':<40} {'changed':<8} {'seconds':>8}"]
    for e in entries:
        secs = f"{e.seconds:.3f}" if e.seconds is not None else "-"
        lines.append(f"{e.index:>4}  {e.stage:<9} {e.name:<40} "
                     f"{'yes' if e.changed else 'no':<8} {secs:>8}")
    changed = sum(e.changed for e in entries)
    lines.append(f"{len(entries)} passes, {changed} changed the IR")
    return "\n".join(lines)


def diff(a: DumpEntry, b: DumpEntry) -> str:
    """Unified diff of the IR after ``a`` and after ``b``."""
    return "".join(difflib.unified_diff(
        a.path.read_text().splitlines(keepends=True), b.path.read_text().splitlines(keepends=True),
        fromfile=a.path.name, tofile=b.path.name))
