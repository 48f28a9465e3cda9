"""Peak memory and wall time of compiling a large example decoder (issue 21: the 7B preset at 4
bits in <= 12 GB peak RSS and <= 15 minutes on a 24 GB machine).

Writes the example decoder preset (``--preset``, default ``1b``: TinyLlama-1.1B's shape, 4.4 GB
of float32; ``7b``: Llama-2 7B's, 27 GB, written one tensor at a time) with a KV cache and
external data into ``--workdir`` unless it is there, then runs ``sail compile MODEL --target c
--bits B -o OUT`` as a child process and prints its peak RSS (the kernel's high-water mark of
the child's resident pages, mapped file pages included: what ``/usr/bin/time -v`` reports), its
wall time and the stage times the compiler prints, beside the model's float32 bytes. A compile
that loads the model holds at least 1x its float bytes (before the streaming compile, the 1.1B
preset peaked at 12.6 GB, 2.9x).

    python benchmarks/compile_memory.py [--preset 1b] [--bits 4] [--workdir DIR]
                                        [--model MODEL.onnx] [--keep]

The generated model stays in ``--workdir`` for the next run (the 7B preset takes 27 GB of disk;
delete it when done); the artifact is removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sail_compiler.testing.decoders import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "sail-scale")
    parser.add_argument("--model", type=Path,
                        help="an already written model of the preset (default: write one)")
    parser.add_argument("--keep", action="store_true", help="keep the compiled artifact")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or args.workdir / f"decoder_{args.preset}_kv.onnx"
    if not model.exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "make_decoder.py"), "--preset",
                        args.preset, "--kv-cache", "--external-data", "-o", str(model)],
                       check=True)
    out = args.workdir / f"{model.stem}_c_w{args.bits}"
    command = [sys.executable, "-m", "sail_compiler", "compile", str(model), "--target", "c",
               "--bits", str(args.bits), "-o", str(out), "--force"]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall_s = time.perf_counter() - started
    stdout = child.stdout.read() if child.stdout is not None else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sail compile failed ({os.waitstatus_to_exitcode(status)})")
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    float_gb = 4 * PRESETS[args.preset].num_params() / 1e9
    stages = re.search(r"\(target c; (.*)\)", stdout)
    print(f"sail compile {model.name} --target c --bits {args.bits}")
    print(f"  peak RSS {peak_gb:.2f} GB ({peak_gb / float_gb:.2f}x the {float_gb:.1f} GB of float32"
          f" weights), wall {wall_s:.1f} s")
    print(f"  stages: {stages.group(1) if stages else '?'}")
    print(f"  weights.bin {(out / 'weights.bin').stat().st_size / 1e9:.2f} GB")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
