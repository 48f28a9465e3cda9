"""Progress bars of the long quantization loops (calibration runs, AWQ's search, GPTQ)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any


def progress(items: list[Any], desc: str) -> Iterator[Any]:
    """``items`` with a progress bar on stderr (tqdm, with its ETA) when there are several."""
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, file=sys.stderr, disable=len(items) < 2, leave=False)
