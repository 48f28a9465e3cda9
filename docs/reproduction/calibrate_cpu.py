"""Measure what the N1 baseline's software model is calibrated by: llama.cpp batched decoding of
Gemma 3 270M (Q4_0) at batch 1, 8 and 32 on this machine, and this machine's streaming read
bandwidth, interleaved and repeated (medians).

Batched decoding: ``B`` sequences, each first given ``PREFIX`` tokens, then ``STEPS`` decode
steps of one new token per sequence (one ``llama_decode`` of B tokens, logits for all of them, as
a server decoding B requests does). The step time's growth with B says how the CPU kernels
spend the batch: a kernel that unpacks every weight block again for every token (llama.cpp's
``vec_dot`` path) grows about linearly once it is compute bound; one that unpacks once per step
(a GEMM over an unpacked tile) grows by the dot products only.

Writes ``cpu_calibration.json`` beside this file (the input of ``examples/reproduce_paper.py``'s
calibration table). Run::

    python docs/reproduction/calibrate_cpu.py [--gguf q4_0.gguf] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np

GGUF = Path.home() / ".cache/sail-bench/gemma3/gguf/q4_0.gguf"
BATCHES = (1, 8, 32)
PREFIX = 8
STEPS = 8


def stream_gbps(threads: int = 2, mib: int = 512) -> float:
    """Read bandwidth of ``threads`` threads summing disjoint halves of a large array (GB/s)."""
    data = np.ones(mib * 2**20 // 8, np.float64)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(3):
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start) / 1e9)
    return best


class BatchedDecoder:
    """llama.cpp (llama-cpp-python's C API) with ``max(BATCHES)`` sequences."""

    def __init__(self, gguf: Path, threads: int) -> None:
        import llama_cpp as lc

        self.lc = lc
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), mparams)
        cparams = lc.llama_context_default_params()
        n_seq = max(BATCHES)
        cparams.n_ctx = n_seq * (PREFIX + STEPS + 4)
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_seq_max = n_seq
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        self.batch = lc.llama_batch_init(512, 0, n_seq)

    def _decode(self, entries: list[tuple[int, int, int]], last_only: bool = False) -> None:
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = token, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = 0 if last_only and i < len(entries) - 1 else 1
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def step_ms(self, batch: int) -> float:
        """Median time of one decode step of ``batch`` sequences (after a prefix each)."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        for seq in range(batch):
            self._decode([(2 + t + seq, t, seq) for t in range(PREFIX)], last_only=True)
        times = []
        for step in range(STEPS):
            entries = [(1000 + 37 * seq + step, PREFIX + step, seq) for seq in range(batch)]
            start = time.perf_counter()
            self._decode(entries)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=GGUF)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name(
        "cpu_calibration.json"))
    args = parser.parse_args()
    import llama_cpp

    decoder = BatchedDecoder(args.gguf, args.threads)
    runs: dict[int, list[float]] = {b: [] for b in BATCHES}
    bandwidth = []
    for _ in range(args.repeats):  # interleaved arms
        bandwidth.append(stream_gbps(args.threads))
        for b in BATCHES:
            runs[b].append(decoder.step_ms(b))
    step = {b: statistics.median(v) for b, v in runs.items()}
    result = {
        "what": "llama.cpp batched decode of Gemma 3 270M, one token per sequence per step",
        "gguf": str(args.gguf), "gguf_bytes": args.gguf.stat().st_size,
        "llama_cpp_python": llama_cpp.__version__, "threads": args.threads,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "stream_read_gbps": statistics.median(bandwidth), "stream_runs": bandwidth,
        "step_ms": step, "step_runs_ms": runs,
        "tokens_per_s": {b: b / (ms * 1e-3) for b, ms in step.items()},
        "step_ratio_vs_batch1": {b: ms / step[1] for b, ms in step.items()},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
