"""The ``sail`` command: compile | run | verify | inspect.

Errors the user can fix print one message and exit 2 (``--traceback`` shows the stack); a
verification beyond tolerance exits 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError, OptionError, SailError
from .ir_dump import file_safe
from .pipeline import STAGE_NAMES


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got '{text}'") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return values


def _add_compile_options(p: argparse.ArgumentParser) -> None:
    from .targets import target_names

    p.add_argument("model", type=Path, help="the .onnx file (external data beside it)")
    p.add_argument("--target", default="llvm", choices=target_names())
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                   help="fix an input's dims, e.g. input_ids=1x16 (repeatable); other dims stay "
                        "symbolic")
    p.add_argument("--threads", type=int, default=None, help="threads for the compiled code")
    q = p.add_argument_group("weight quantization (the quantize stage)")
    q.add_argument("--bits", type=int, help="quantize matmul weights to 1..8 bits (RTN)")
    q.add_argument("--group-size", default="128",
                   help="consecutive k per scale: a positive integer or 'channel' (default 128)")
    kind = q.add_mutually_exclusive_group()
    kind.add_argument("--sym", dest="symmetric", action="store_true",
                      help="symmetric codes, no zero points")
    kind.add_argument("--asym", dest="symmetric", action="store_false",
                      help="zero point per group (default)")
    q.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="keep matching matmuls (labels matmul.<i>) in float (repeatable)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sail", description="SAIL compiler: ONNX -> low-bit LUT-GEMV code for CPUs and "
                                 "SAIL PIM.")
    parser.add_argument("--version", action="version", version=f"sail {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the stack on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile an ONNX model")
    _add_compile_options(p)
    p.add_argument("-o", "--output", type=Path, help="artifact directory (with --emit: the "
                   "TVMScript file; default: print it)")
    p.add_argument("--emit", choices=STAGE_NAMES, help="stop after this stage, write TVMScript")
    p.add_argument("--dump-dir", type=Path, help="write TVMScript after every pass and stage")
    p.add_argument("--print-after", action="append", default=[], metavar="PASS",
                   help="print the IR after this pass (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty directory sail did not create")

    p = sub.add_parser("run", help="run a compiled artifact on .npy inputs")
    p.add_argument("artifact", type=Path)
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--inputs", type=Path, metavar="FILE.npz", help="all inputs in one .npz")
    p.add_argument("--output-dir", type=Path, required=True)

    p = sub.add_parser("verify", help="compile, run, and compare with onnxruntime")
    _add_compile_options(p)
    p.add_argument("--inputs", type=Path, metavar="FILE.npz", help="inputs to use (default: "
                   "generated, seeded)")
    p.add_argument("--batch", type=_int_list, default=[1], help="batch size(s), e.g. 1,2")
    p.add_argument("--seq-len", type=_int_list, default=[8],
                   help="sequence length(s) of generated inputs; several run one artifact")
    p.add_argument("--past-len", type=_int_list, default=[8],
                   help="past (KV cache) length(s) of generated inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=None,
                   help="max rel_l2_err per output (default 1e-4)")
    p.add_argument("-o", "--output", type=Path, help="keep the artifact here")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("inspect", help="list, show or diff the passes of a --dump-dir")
    p.add_argument("dump_dir", type=Path)
    p.add_argument("--show", metavar="PASS", help="print the IR after PASS (number or name)")
    p.add_argument("--diff", nargs=2, metavar=("A", "B"), help="diff the IR after A and B")
    return parser


def _compile_options(args: argparse.Namespace, **extra: object):  # type: ignore[no-untyped-def]
    from .frontend import parse_shape_binding
    from .options import CompileOptions

    shapes = dict(parse_shape_binding(s) for s in args.shape)
    return CompileOptions(target=args.target, shapes=shapes, num_threads=args.threads,
                          quant=_scheme(args), skip=tuple(args.skip), **extra)


def _scheme(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .quant.scheme import QuantScheme

    if args.bits is None:
        if args.group_size != "128" or args.symmetric:
            raise OptionError("--group-size and --sym apply to quantized compiles; add --bits")
        return None
    if args.group_size == "channel":
        group = None
    else:
        try:
            group = int(args.group_size)
        except ValueError:
            raise OptionError(f"--group-size must be a positive integer or 'channel', got "
                              f"'{args.group_size}'") from None
    return QuantScheme(bits=args.bits, group_size=group, symmetric=args.symmetric)


def _cmd_compile(args: argparse.Namespace) -> int:
    from .driver import compile_model

    if args.output is None and args.emit is None:
        raise OptionError("give -o DIR for the artifact (or --emit STAGE to print TVMScript)")
    options = _compile_options(args, emit=args.emit, dump_dir=args.dump_dir, force=args.force,
                               print_after=tuple(args.print_after))
    result = compile_model(args.model, args.output, options, command=["sail", *args.argv])
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    missing = [p for p in args.print_after if p not in result.passes_run]
    if missing:
        print(f"warning: --print-after {', '.join(missing)}: no such pass ran; passes run: "
              f"{', '.join(dict.fromkeys(result.passes_run))}", file=sys.stderr)
    if args.emit is not None and args.output is None:
        print(result.module.script())
    elif args.emit is not None:
        print(f"wrote the IR after stage '{args.emit}' to {args.output}", file=sys.stderr)
    else:
        secs = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
        print(f"compiled {args.model} -> {args.output} (target {args.target}; {secs})")
    if args.dump_dir is not None:
        print(f"IR dumps in {args.dump_dir} (read them with: sail inspect {args.dump_dir})",
              file=sys.stderr)
    return 0


def _load_npy(text: str) -> tuple[str, np.ndarray]:
    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise OptionError(f"bad --input '{text}': expected NAME=FILE.npy")
    try:
        return name, np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read --input {name}={file}: {err}; give a .npy file "
                         "written by numpy.save") from err


def _cmd_run(args: argparse.Namespace) -> int:
    from .artifact import Artifact
    from .verify import load_inputs

    artifact = Artifact(args.artifact)
    inputs = load_inputs(args.inputs, artifact.signature) if args.inputs else {}
    inputs.update(_load_npy(t) for t in args.input)
    outputs = artifact.run(inputs)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, value in outputs.items():
        path = args.output_dir / (file_safe(name) + ".npy")
        np.save(path, value)
        print(f"{name}: {value.dtype}{list(value.shape)} -> {path}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import DEFAULT_TOLERANCE, InputPlan, report_line, verify_model

    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE
    plans = [InputPlan(batch=b, seq_len=s, past_len=p, seed=args.seed)
             for b, s, p in itertools.product(args.batch, args.seq_len, args.past_len)]
    report = verify_model(args.model, _compile_options(args), plans, args.inputs, tolerance,
                          args.output)
    if args.json:
        print(json.dumps(report))
    else:
        for note in report["notes"]:
            print(f"note: {note}")
        print(f"verify {args.model} on target {report['target']} against onnxruntime "
              f"(compile {report['compile_seconds']:.1f}s, tolerance rel_l2_err {tolerance:g})")
        for dims, group in itertools.groupby(report["outputs"], key=lambda e: e["dims"]):
            print("dims " + (", ".join(f"{k}={v}" for k, v in dims.items()) or "(static)"))
            for entry in group:
                print(report_line(entry["name"], entry, tolerance))
        print("OK" if report["ok"] else "FAILED: error beyond tolerance")
    return 0 if report["ok"] else 1


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_dump import diff, find, list_passes, read_dump

    entries = read_dump(args.dump_dir)
    if args.show:
        print(find(entries, args.show).path.read_text(), end="")
    elif args.diff:
        print(diff(find(entries, args.diff[0]), find(entries, args.diff[1])), end="")
    else:
        print(list_passes(entries))
    return 0


_COMMANDS = {"compile": _cmd_compile, "run": _cmd_run, "verify": _cmd_verify,
             "inspect": _cmd_inspect}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sail`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return _COMMANDS[args.command](args)
    except SailError as err:
        if args.traceback:
            raise
        print(f"sail: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("sail: interrupted", file=sys.stderr)
        return 130
