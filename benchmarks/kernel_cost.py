"""Instructions the LUT-GEMV kernels execute per 512 weights (one tile block: 32 rows x 16
columns) and token, counted from the compiled code as it runs: NEON (aarch64, plain and
dotprod) beside AVX2.

Each build compiles the runtime's LUT-GEMV sources (``sail_lut.c``, ``sail_lut_neon.c`` /
``sail_lut_avx2.c``, ``sail_threads.c``) at -O3 with ``-ffp-contract=off``, as an artifact's
Makefile does, with a small driver that runs one ``sail_lut_gemv`` of K x N on ``rows`` tokens
(codes at random; one activation scale per token; groups of ``--group-size``; symmetric). The
driver runs under qemu-user (``qemu-aarch64 -cpu max`` / ``qemu-x86_64 -cpu max``) with
``-d in_asm,exec,nochain``: qemu logs every translated block with its instructions and every
execution of a block, so the sum over the executions of the blocks of the tile kernels
(``sail_lut_tiles_*`` and the functions inlined into them) is the exact count of instructions
they executed; likewise the table builders (``sail_lut_tables_*``). qemu's timings mean nothing
here; instruction counts do not depend on the emulator.

    python benchmarks/kernel_cost.py [--k 1024] [--n 256] [--bits 1,2,3,4,5,6,7,8] [--rows 1,8]

Prints a Markdown table (docs/kernels_cost.md holds one).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "sail_compiler" / "targets" / "c" / "runtime"
# build -> compiler, flags, kernel source, qemu
BUILDS = {
    "avx2": ("gcc", ["-march=x86-64-v3"], "sail_lut_avx2.c", "qemu-x86_64"),
    "neon": ("aarch64-linux-gnu-gcc", ["-march=armv8-a"], "sail_lut_neon.c", "qemu-aarch64"),
    "neon-dotprod": ("aarch64-linux-gnu-gcc", ["-march=armv8.2-a+dotprod"], "sail_lut_neon.c",
                     "qemu-aarch64"),
}
DRIVER = textwrap.dedent(r"""
    #include <stdio.h>
    #include <stdlib.h>
    #include "sail_lut.h"
    static unsigned state = 12345u;
    static unsigned next(void) { state = state * 1103515245u + 12345u; return state >> 8; }
    int main(int argc, char **argv) {
        if (argc != 6) return 2;
        sail_lut_weight w = {0};
        w.bits = atoi(argv[1]); w.k = atoi(argv[2]); w.n = atoi(argv[3]);
        w.group_size = atoi(argv[4]); w.act_group = w.k;
        const int rows = atoi(argv[5]);
        if (sail_lut_derive(&w) != SAIL_OK) return 3;
        const size_t nplanes = (size_t)w.n_tiles * w.n_groups * w.blocks_per_group * w.bits * 64;
        const size_t nscales = (size_t)w.n_tiles * w.n_groups * SAIL_LUT_TILE_N;
        uint8_t *planes = malloc(nplanes);
        float *scales = malloc(nscales * sizeof(float));
        for (size_t i = 0; i < nplanes; ++i) planes[i] = (uint8_t)next();
        for (size_t i = 0; i < nscales; ++i) scales[i] = 0.01f * (float)(next() % 100);
        w.planes = planes; w.scales = scales; w.zeros = NULL;
        int8_t *xq = malloc((size_t)rows * w.k);
        float *sx = malloc((size_t)rows * sizeof(float)), *y = malloc((size_t)rows * w.n * 4);
        for (size_t i = 0; i < (size_t)rows * w.k; ++i) xq[i] = (int8_t)(next() % 255 - 127);
        for (int t = 0; t < rows; ++t) sx[t] = 0.5f;
        if (sail_lut_gemv(&w, xq, sx, rows, y, NULL, NULL, NULL) != SAIL_OK) return 4;
        printf("%s %g\n", sail_lut_isa(), (double)y[0]);
        return 0;
    }
""")
CONTINUED = re.compile(r"^0x[0-9a-f]+:\s+(?:[0-9a-f]{2}\s*)+$")
TRACE = re.compile(r"^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
# one instruction a line: address, encoding (aarch64: one word; x86: its bytes), mnemonic
INSN = re.compile(r"^0x([0-9a-f]+):\s+(?:[0-9a-f]{8}\s+|(?:[0-9a-f]{2} )+\s*)(\S+)")


def build(name: str, out: Path) -> Path:
    cc, flags, kernel, _ = BUILDS[name]
    out.mkdir(parents=True, exist_ok=True)
    (out / "driver.c").write_text(DRIVER)
    binary = out / "driver"
    sources = [RUNTIME / s for s in ("sail_lut.c", kernel, "sail_threads.c")]
    subprocess.run([cc, "-std=c11", "-O3", "-ffp-contract=off", *flags, "-pthread",
                    f"-I{RUNTIME}", "-o", str(binary), str(out / "driver.c"),
                    *map(str, sources), "-lm"], check=True)
    return binary


def kind_of(symbol: str) -> str | None:
    """tiles / tables for the kernels' functions (qemu names each block's function)."""
    if re.fullmatch(r"sail_tiles_b\d|sail_lut_tiles_(neon|avx2)", symbol):
        return "tiles"
    if re.fullmatch(r"sail_lut_tables_(neon|avx2)|block_rows", symbol):
        return "tables"
    return None


def count(binary: Path, name: str, args: list[str], tmp: Path) -> dict[str, object]:
    """Instructions executed in the tile kernels and the table builder, and the mnemonics of
    the tile kernels' instructions."""
    qemu = BUILDS[name][3]
    log = tmp / "qemu.log"
    prefix = [qemu, "-cpu", "max"] + (["-L", "/usr/aarch64-linux-gnu"] if "aarch64" in qemu
                                       else [])
    done = subprocess.run([*prefix, "-d", "in_asm,exec,nochain", "-D", str(log), str(binary),
                           *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {args}: exited {done.returncode}: {done.stderr}")
    isa = done.stdout.split()[0]
    blocks: dict[int, tuple[str | None, int, list[str]]] = {}
    symbol: str | None = None
    current: list[str] | None = None
    executed: Counter[int] = Counter()
    with log.open() as f:
        for line in f:
            if line.startswith("IN:"):
                symbol, current, start = kind_of(line[3:].strip()), [], None
                continue
            if current is not None:
                if CONTINUED.match(line):  # the rest of a long x86 instruction's bytes
                    continue
                m = INSN.match(line)
                if m:
                    start = int(m.group(1), 16) if start is None else start
                    current.append(m.group(2))
                    continue
                if current:
                    blocks[start] = (symbol, len(current), current)
                current = None
            m = TRACE.match(line)
            if m:
                executed[int(m.group(1), 16)] += 1
    totals: Counter[str] = Counter()
    mnemonics: Counter[str] = Counter()
    for pc, times in executed.items():
        kind, size, insns = blocks.get(pc, (None, 0, []))
        if kind is None:
            continue
        totals[kind] += times * size
        if kind == "tiles":
            for op in insns:
                mnemonics[op] += times
    return {"isa": isa, "tiles": totals["tiles"], "tables": totals["tables"],
            "mnemonics": mnemonics}


def classify(mnemonics: Counter[str]) -> dict[str, int]:
    # qemu's aarch64 disassembler does not know sdot and prints it as .byte (the dotprod
    # build's only such instruction); x86 folds most loads into the instructions' operands
    groups = {"lookup": r"tbl|tbx|vpshufb",
              "multiply-add": r"sdot|\.byte|vpmaddubsw|vpmaddwd|smlal2?|smull2?|sadalp|mla|mls",
              "load": r"ld1r?|ldr|ldp|ldur|vmovdq[au]|vpbroadcast[bwdq]|prfm|prefetch\w*"}
    out: Counter[str] = Counter()
    for op, n in mnemonics.items():
        for group, pattern in groups.items():
            if re.fullmatch(pattern, op):
                out[group] += n
                break
        else:
            out["other"] += n
    return dict(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--bits", default="1,2,3,4,5,6,7,8")
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--builds", default="avx2,neon,neon-dotprod")
    args = parser.parse_args()
    for tool in ("gcc", "aarch64-linux-gnu-gcc", "qemu-aarch64", "qemu-x86_64"):
        if shutil.which(tool) is None:
            print(f"needs {tool}: apt-get install crossbuild-essential-arm64 qemu-user",
                  file=sys.stderr)
            return 2
    units = (args.k // 32) * (args.n // 16)  # blocks of 512 weights per token
    rows_list = [int(r) for r in args.rows.split(",")]
    builds = args.builds.split(",")
    results: dict[tuple[str, int, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="sail-cost-") as tmp:
        binaries = {b: build(b, Path(tmp) / b) for b in builds}
        for bits in map(int, args.bits.split(",")):
            for rows in rows_list:
                for b in builds:
                    r = count(binaries[b], b, [str(bits), str(args.k), str(args.n),
                                               str(args.group_size), str(rows)], Path(tmp))
                    results[(b, bits, rows)] = r
                    print(f"{b} b={bits} rows={rows}: isa {r['isa']}, tiles "
                          f"{r['tiles'] / units / rows:.1f} / 512 weights / token",
                          file=sys.stderr, flush=True)
    print(f"K = {args.k}, N = {args.n}, group {args.group_size}, one activation scale per "
          f"token; instructions per 512 weights per token in the tile kernels (tables: per "
          f"token per 32 rows of K)\n")
    head = " | ".join(f"{b} rows={r}" for r in rows_list for b in builds)
    print(f"| bits | {head} |")
    print("|---:|" + "---:|" * (len(builds) * len(rows_list)))
    for bits in map(int, args.bits.split(",")):
        cells = [f"{results[(b, bits, r)]['tiles'] / units / r:.1f}" for r in rows_list
                 for b in builds]
        print(f"| {bits} | " + " | ".join(cells) + " |")
    print("\nTable building per token and 32 rows of K (batch 1):\n")
    print("| bits | " + " | ".join(builds) + " |")
    print("|---:|" + "---:|" * len(builds))
    for bits in map(int, args.bits.split(",")):
        r0 = rows_list[0]
        cells = [f"{results[(b, bits, r0)]['tables'] / (args.k // 32) / r0:.1f}" for b in builds]
        print(f"| {bits} | " + " | ".join(cells) + " |")
    print("\nBatch-1 tile kernel instructions by class, per 512 weights:\n")
    print("| bits | build | lookup | multiply-add | load | other |")
    print("|---:|---|---:|---:|---:|---:|")
    for bits in map(int, args.bits.split(",")):
        for b in builds:
            c = classify(results[(b, bits, rows_list[0])]["mnemonics"])
            scale = units * rows_list[0]
            print(f"| {bits} | {b} | " + " | ".join(f"{c.get(g, 0) / scale:.1f}" for g in
                                                   ("lookup", "multiply-add", "load", "other"))
                  + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
