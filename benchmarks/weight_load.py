"""Warm load time of a large weight file by the C runtime (issue 21: <= 2 s for 4 GB).

Writes a weight container (:mod:`sail_compiler.weights_file`) holding the float32 tensors of an
example decoder preset (``--preset``, default ``1b``: the TinyLlama-1.1B shape, 4.4 GB; the
values are a cheap pattern, a CRC's speed does not depend on them), builds a loader around the
runtime's ``sail_rt_load`` with the spec table ``model.c`` would have (``-O2 -march=native``,
as an artifact's Makefile builds it), and times ``--rounds`` warm loads (the file is read once
first, so its pages are cached). Beside them, in the same rounds: the time to read the file's
bytes once through the mapping (a sum of 8-byte words: the floor of any load that touches every
page).

    python benchmarks/weight_load.py [--preset 1b] [--rounds 5] [--workdir DIR] [--runtime DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from sail_compiler.testing.decoders import PRESETS  # noqa: E402
from sail_compiler.weights_file import write_weight_file  # noqa: E402

RUNTIME = Path(__file__).resolve().parents[1] / "sail_compiler" / "targets" / "c" / "runtime"

LOADER = r"""#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include "sail_model_rt.h"
#include "specs.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
  int rounds = atoi(argv[2]);
  for (int r = 0; r < rounds; ++r) {
    char *err = NULL;
    double t0 = now();
    sail_model *m = sail_rt_load(argv[1], SPECS, NUM_SPECS, NULL, 0, &err);
    double t1 = now();
    if (!m) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    /* the floor: every byte of the mapping read once (8 bytes at a time) */
    const unsigned long long *p = (const unsigned long long *)m->file;
    unsigned long long sum = 0;
    for (size_t i = 0; i < m->file_nbytes / 8; ++i)
      sum += p[i];
    double t2 = now();
    printf("load %.4f read %.4f %llu\n", t1 - t0, t2 - t1, sum & 1);
    sail_rt_free(m);
  }
  return 0;
}
"""


def preset_tensors(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """The float32 weight shapes of an example decoder preset (embedding, per layer attention,
    MLP and norms, final norm, LM head)."""
    c = PRESETS[name]
    head_dim = c.hidden_size // c.num_heads
    kv = c.num_kv_heads * head_dim
    shapes = [("embed", (c.vocab_size, c.hidden_size))]
    for i in range(c.num_layers):
        shapes += [(f"l{i}.{n}", s) for n, s in [
            ("q", (c.hidden_size, c.hidden_size)), ("k", (c.hidden_size, kv)),
            ("v", (c.hidden_size, kv)), ("o", (c.hidden_size, c.hidden_size)),
            ("gate", (c.hidden_size, c.ffn_size)), ("up", (c.hidden_size, c.ffn_size)),
            ("down", (c.ffn_size, c.hidden_size)), ("norm1", (c.hidden_size,)),
            ("norm2", (c.hidden_size,))]]
    return shapes + [("norm", (c.hidden_size,)), ("lm_head", (c.hidden_size, c.vocab_size))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="1b", choices=sorted(PRESETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--runtime", type=Path, default=RUNTIME,
                        help="the runtime sources to build the loader from (default: this "
                        "checkout's), e.g. an older commit's to compare")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sail-weight-load-"))
    work.mkdir(parents=True, exist_ok=True)
    shapes = preset_tensors(args.preset)
    path = work / "weights.bin"
    if not path.exists():
        # views of one buffer: memory for the largest tensor, not for the whole file
        flat = np.linspace(-1, 1, max(int(np.prod(s)) for _, s in shapes), dtype=np.float32)
        write_weight_file(path, [(n, flat[:int(np.prod(s))].reshape(s)) for n, s in shapes])
    specs = ",\n".join(f'  {{"{n}", SAIL_FLOAT32, {len(s)}, {{{", ".join(map(str, s))}}}}}'
                       for n, s in shapes)
    (work / "specs.h").write_text(f"static const sail_weight_spec SPECS[] = {{\n{specs}\n}};\n"
                                  f"enum {{ NUM_SPECS = {len(shapes)} }};\n")
    (work / "loader.c").write_text(LOADER)
    cc = shutil.which("cc") or "cc"
    sources = [args.runtime / f"{n}.c" for n in ("sail_model_rt", "sail_lut", "sail_lut_avx2",
                                            "sail_threads", "sail_attention")]
    # model.c's output tables, which the runtime refers to, for a model without inputs/outputs
    (work / "tables.c").write_text(
        '#include "sail_model_rt.h"\nconst int sail_model_num_inputs = 0;\n'
        "const int sail_model_num_outputs = 0;\nconst sail_io_spec sail_model_inputs[1];\n"
        "const sail_io_spec sail_model_outputs[1];\n")
    subprocess.run([cc, "-std=c11", "-O2", "-march=native", "-ffp-contract=off",
                    f"-I{args.runtime}", f"-I{work}", str(work / "loader.c"),
                    str(work / "tables.c"),
                    *map(str, sources), "-pthread", "-lm", "-o", str(work / "loader")],
                   check=True)
    size = path.stat().st_size
    subprocess.run([str(work / "loader"), str(path), "1"], check=True, capture_output=True)
    out = subprocess.run([str(work / "loader"), str(path), str(args.rounds)], check=True,
                         capture_output=True, text=True).stdout.split("\n")
    loads = [float(line.split()[1]) for line in out if line]
    reads = [float(line.split()[3]) for line in out if line]
    load, read = statistics.median(loads), statistics.median(reads)
    print(f"file {path} ({size / 1e9:.2f} GB, {len(shapes)} tensors, preset {args.preset})")
    print("| step | median s | GB/s | all rounds (s) |\n|---|---|---|---|")
    print(f"| sail_rt_load (map + checks + CRC-32) | {load:.3f} | {size / load / 1e9:.2f} | "
          f"{', '.join(f'{x:.3f}' for x in loads)} |")
    print(f"| read every byte once (floor) | {read:.3f} | {size / read / 1e9:.2f} | "
          f"{', '.join(f'{x:.3f}' for x in reads)} |")
    print(f"load / floor = {load / read:.2f}x")


if __name__ == "__main__":
    main()
