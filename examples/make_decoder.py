"""Write the example Llama-style decoder LM (``sail_compiler.testing.decoders``) as ONNX.

Usage::

    python examples/make_decoder.py --preset tiny -o tiny.onnx [--kv-cache]

The graph, its inputs and outputs are described in :mod:`sail_compiler.testing.decoders`, which
scripts import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sail_compiler.testing.decoders import (
    IN_MEMORY_LIMIT_BYTES,
    PRESETS,
    make_decoder,
    save_model,
    write_decoder,
)

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate a Llama-style decoder LM as ONNX, "
                                                 "with onnx.helper only.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--kv-cache", action="store_true", help="past/present KV inputs/outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--external-data", action="store_true",
                        help="write weights to a side file (forced above 2 GB)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    if 4 * cfg.num_params() > IN_MEMORY_LIMIT_BYTES:
        write_decoder(cfg, args.output, kv_cache=args.kv_cache, seed=args.seed)
    else:
        model = make_decoder(cfg, kv_cache=args.kv_cache, seed=args.seed)
        save_model(model, args.output, external_data=args.external_data or None)
    print(f"wrote {args.output} ({cfg.num_params() / 1e6:.1f}M parameters, "
          f"{'with' if args.kv_cache else 'without'} KV cache)")


if __name__ == "__main__":
    main()
