"""The ``sail`` command: compile | run | build | generate | bench | verify | simulate | inspect |
export-onnx | eval-ppl | analyze-patterns.

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

from .artifact import check_output_path
from .errors import InputError, OptionError, SailError
from .ir_dump import file_safe
from .options import DEFAULT_ACT_GROUP_SIZE, STAGE_NAMES
from .quant.plan import PLAN_METHODS
from .sampling import DEFAULT_MIN_P, DEFAULT_REPEAT_LAST_N, DEFAULT_TOP_K, DEFAULT_TOP_P
from .targets.pim import simulate_cli
from .version import __version__


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
    p.add_argument("--pim-config", metavar="PRESET|FILE.toml",
                   help="pim-sim target: the SAIL machine the program is mapped for (a preset: "
                        "sail-n1, tiny; or a TOML file of overrides; default sail-n1)")
    p.add_argument("--logits", default="all", choices=("all", "last"),
                   help="all: logits for every position; last: for the last position only "
                        "([batch, 1, vocab]; what generation reads, and a prefill that skips "
                        "the LM head for the rest)")
    q = p.add_argument_group("weight quantization (the quantize stage)")
    q.add_argument("--bits", type=int, help="quantize matmul weights to 1..8 bits")
    q.add_argument("--group-size", default="128",
                   help="consecutive k per scale: a positive integer or 'channel' (default 128)")
    kind = q.add_mutually_exclusive_group()
    kind.add_argument("--sym", dest="symmetric", action="store_true",
                      help="symmetric codes, no zero points")
    kind.add_argument("--asym", dest="symmetric", action="store_false",
                      help="zero point per group (default)")
    q.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="keep layers whose ONNX node or weight name matches in float "
                        "(fnmatch; repeatable)")
    q.add_argument("--method", default="rtn", choices=PLAN_METHODS,
                   help="rtn: round to nearest; search: per-group scale/clipping search; gptq: "
                        "GPTQ with calibration activations (default rtn)")
    q.add_argument("--awq", action="store_true",
                   help="activation-aware per-input-channel weight scales, folded into the "
                        "preceding norm weight or matmul (uses calibration)")
    q.add_argument("--gptq-sequential", action="store_true",
                   help="quantize one transformer block at a time, each with calibration "
                        "statistics from the model whose earlier layers are already quantized "
                        "(GPTQ's true-sequential order; slower calibration)")
    q.add_argument("--gptq-act-order", action="store_true",
                   help="GPTQ quantizes each layer's rows in order of decreasing activation "
                        "energy (the Hessian's diagonal; GPTQ's act-order); the weight layout "
                        "is unchanged (needs --method gptq)")
    q.add_argument("--scale-dtype", default="float32", metavar="float32|float16",
                   help="float16: weight scales rounded to float16 and the codes computed "
                        "against them; the c target stores them in 2 bytes (4.5 bits a weight "
                        "at w4g32sym instead of 5; default float32)")
    q.add_argument("--embedding-bits", type=int, metavar="B",
                   help="also quantize the token embedding tables to B bits (default: float)")
    q.add_argument("--act-bits", type=int, default=8,
                   help="activation width 2..16 quantized matmuls use at run time (default 8)")
    q.add_argument("--act-group-size", default=None, metavar="N|group|row",
                   help="consecutive k per activation scale: a divisor or multiple of the "
                        "weight group size, 'group' (the weight group size) or 'row' (0: one "
                        f"scale per token row; default {DEFAULT_ACT_GROUP_SIZE})")
    q.add_argument("--bits-plan", type=Path, metavar="PLAN.json",
                   help="per-layer schemes by name pattern (a compile writes its plan next to "
                        "the artifact as quant_plan.json)")
    q.add_argument("--avg-bits", type=float, metavar="X",
                   help="choose per-layer widths by measured sensitivity under this average")
    s = p.add_argument_group("SAIL passes (the sail stage, quantized compiles)")
    s.add_argument("--no-sail", dest="sail", action="store_false",
                   help="keep the plain quantized matmul (no LUT-GEMV lowering)")
    s.add_argument("--nbw", type=int, default=4,
                   help="weights per lookup table of sail.lut_gemv, 1..8 (default 4)")
    s.add_argument("--pim-types", default="auto", choices=("auto", "pim", "host"),
                   help="where activation quantization and output dequantization run "
                        "(default auto: in memory up to 8-bit activations)")
    c = p.add_argument_group("calibration (gptq, --avg-bits; the search uses it when given)")
    c.add_argument("--calib", action="append", default=[], type=Path, metavar="FILE.npz",
                   help="model inputs, one run per file (repeatable)")
    c.add_argument("--calib-text", type=Path, metavar="FILE", help="text to calibrate on")
    c.add_argument("--tokenizer", type=Path, metavar="tokenizer.json",
                   help="tokenizer for --calib-text (and eval-ppl --text); sail compile also "
                        "stores it in the artifact (with the chat template and end-of-sequence "
                        "ids of tokenizer_config.json / generation_config.json beside it) for "
                        "sail generate --prompt TEXT")
    c.add_argument("--calib-samples", type=int, default=8,
                   help="windows of text or generated inputs (default 8)")
    c.add_argument("--calib-seq-len", type=int, default=128,
                   help="tokens per calibration window (default 128)")


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

    p = sub.add_parser("build", help="build a c artifact with make and cc (libmodel.a, "
                       "libmodel.so, sail_main)")
    p.add_argument("artifact", type=Path)
    p.add_argument("--portable", action="store_true",
                   help="no -march=native: the build runs on any CPU of this architecture")
    p.add_argument("--cross", choices=["aarch64", "aarch64-dotprod"],
                   help="build for 64-bit ARM with aarch64-linux-gnu-gcc (NEON kernels; "
                        "aarch64-dotprod: armv8.2-a+dotprod, sdot); the runners then run under "
                        "qemu-aarch64")

    p = sub.add_parser("generate", help="generate with a decoder with a KV cache (any target): "
                       "text streamed as it comes, greedy or sampled; speed on stderr")
    p.add_argument("artifact", type=Path)
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="a text prompt (the artifact needs a "
                        "tokenizer: sail compile --tokenizer tokenizer.json)")
    prompt.add_argument("--prompt-ids", type=_int_list, metavar="1,2,3", help="token ids")
    p.add_argument("-n", "--tokens", type=int, default=128,
                   help="new tokens at most (default 128)")
    p.add_argument("--chat", action="store_true",
                   help="format --prompt as a user turn with the tokenizer's chat template")
    p.add_argument("--stop", action="append", default=[], metavar="STRING",
                   help="stop when the text contains STRING (repeatable); the text ends before it")
    p.add_argument("--ignore-eos", action="store_true",
                   help="do not stop at the tokenizer's end-of-sequence tokens")
    p.add_argument("--ctx", type=int, metavar="N", help="positions of the KV cache (default: "
                   "what the prompt and -n need); a prompt and -n that need more are refused")
    p.add_argument("--kv-f16", action="store_true", help="c artifacts: store the KV cache as "
                   "float16 (half the memory; keys and values rounded to the nearest half)")
    p.add_argument("--threads", type=int, help="c artifacts: threads of the LUT-GEMV kernels "
                   "(default: SAIL_NUM_THREADS, else 1)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object at the end instead of streaming")
    s = p.add_argument_group("sampling (greedy unless --temperature > 0; llama.cpp's order: "
                             "repeat penalty, top-k, top-p, min-p, temperature)")
    s.add_argument("--temperature", type=float, default=0.0,
                   help="0 is greedy (default); above 0 samples")
    s.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                   help=f"keep the k most likely tokens, 0: all (default {DEFAULT_TOP_K})")
    s.add_argument("--top-p", type=float, default=DEFAULT_TOP_P,
                   help=f"keep tokens up to this cumulative probability, (0, 1] "
                        f"(default {DEFAULT_TOP_P})")
    s.add_argument("--min-p", type=float, default=DEFAULT_MIN_P,
                   help=f"keep tokens at least this fraction as likely as the top one, [0, 1) "
                        f"(default {DEFAULT_MIN_P})")
    s.add_argument("--repeat-penalty", type=float, default=1.0,
                   help="penalize recent tokens' logits, > 0 (default 1: off)")
    s.add_argument("--repeat-last-n", type=int, default=DEFAULT_REPEAT_LAST_N,
                   help=f"tokens the penalty looks back over (default {DEFAULT_REPEAT_LAST_N})")
    s.add_argument("--seed", type=int, help="seed of the sampler (default: a fresh one, "
                   "printed so that the text can be reproduced)")

    p = sub.add_parser("bench", help="prompt-processing and generation tokens/s of a decoder "
                       "artifact per thread count, as llama-bench")
    p.add_argument("artifact", type=Path)
    p.add_argument("-p", "--n-prompt", type=_int_list, default=[32, 512], metavar="32,512",
                   help="prompt lengths of the pp tests (default 32,512; 0 skips)")
    p.add_argument("-n", "--n-gen", type=_int_list, default=[64], metavar="64",
                   help="generated tokens of the tg tests (default 64; 0 skips)")
    p.add_argument("--threads", type=_int_list, metavar="1,2",
                   help="c artifacts: thread counts (default 1)")
    p.add_argument("-r", "--repetitions", type=int, default=3,
                   help="measured runs per test, after one warm-up (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

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
    p.add_argument("--per-layer", action="store_true",
                   help="quantized compiles: each layer's bits, size and errors")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cross", choices=["aarch64", "aarch64-dotprod"],
                   help="--target c: build the artifact for 64-bit ARM and run it under "
                        "qemu-aarch64 (sail build --cross)")

    p = sub.add_parser("export-onnx", help="write the quantized model as onnxruntime "
                       "MatMulNBits (2, 4 or 8 bits)")
    _add_compile_options(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")

    p = sub.add_parser("eval-ppl", help="perplexity of a decoder LM on a text, float baseline "
                       "beside the compiled (quantized) model")
    _add_compile_options(p)
    p.add_argument("--text", type=Path, required=True, help="the text to score")
    p.add_argument("--window", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--stride", type=int,
                   help="tokens a window advances; each token is scored once (default: half "
                        "the window)")
    p.add_argument("--max-tokens", type=int, help="score only the first N tokens")
    p.add_argument("--chars", type=int, metavar="N",
                   help="tokenize only the first N characters of --text; the project's protocol "
                        "is --chars 6000 --window 1024 --max-tokens 1024: one window, <bos> "
                        "first when the tokenizer adds it, exp(mean NLL of tokens 1..1023)")
    p.add_argument("--chunk", type=int, metavar="N",
                   help="run each window through the KV cache in pieces of N tokens (a model "
                        "with past_key_values.* / present.*): the same scores, the peak memory "
                        "of N tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("analyze-patterns", help="lookups SAIL's pattern reuse saves per layer "
                       "on calibration inputs (default: generated text-like token sequences)")
    _add_compile_options(p)
    p.add_argument("--batches", type=_int_list, default=[1, 4, 16],
                   help="batch sizes to analyse (default 1,4,16)")
    p.add_argument("--table-size", type=int, default=32,
                   help="entries of each data-feeding stream's reuse table (default 32)")
    p.add_argument("--ways", type=int, default=None,
                   help="set-associative reuse table with this many ways (default: fully "
                        "associative LRU)")
    p.add_argument("--hash", default="mod", choices=("mod", "xor"),
                   help="set index hash for --ways (default mod)")
    p.add_argument("--chunks-per-stream", type=int, default=8,
                   help="tables (chunks of NBW weights) one stream feeds (default 8)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE.py",
                   help="write the annotated IR (TVMScript) here")
    p.add_argument("--schedule-out", type=Path, metavar="FILE.npz",
                   help="write the deduplicated lookup schedules of the first call per layer "
                        "and batch size (arrays <layer>/b<B>/read_chunk, read_pattern, source)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    simulate_cli.add_parser(sub)

    p = sub.add_parser("inspect", help="list, show or diff the passes of a --dump-dir")
    p.add_argument("dump_dir", type=Path)
    p.add_argument("--show", metavar="PASS", help="print the IR after PASS (number or name)")
    p.add_argument("--diff", nargs=2, metavar=("A", "B"), help="diff the IR after A and B")
    return parser


def _compile_options(args: argparse.Namespace, **extra: object):  # type: ignore[no-untyped-def]
    from .frontend import parse_shape_binding
    from .options import CompileOptions
    from .quant.calibrate import CalibrationSpec

    shapes = dict(parse_shape_binding(s) for s in args.shape)
    calib = None
    if args.calib or args.calib_text is not None or args.calib_samples != 8 \
            or args.calib_seq_len != 128:
        tokenizer = args.tokenizer if args.calib_text is not None else None
        calib = CalibrationSpec(tuple(args.calib), args.calib_text, tokenizer,
                                args.calib_samples, args.calib_seq_len)
    return CompileOptions(target=args.target, shapes=shapes, num_threads=args.threads,
                          quant=_scheme(args), skip=tuple(args.skip), act_bits=args.act_bits,
                          act_group_size=(DEFAULT_ACT_GROUP_SIZE if args.act_group_size is None
                                          else args.act_group_size),
                          method=args.method, awq=args.awq,
                          gptq_sequential=args.gptq_sequential,
                          gptq_act_order=args.gptq_act_order, scale_dtype=args.scale_dtype,
                          bits_plan=args.bits_plan,
                          avg_bits=args.avg_bits,
                          calib=calib, embedding_bits=args.embedding_bits, sail=args.sail,
                          nbw=args.nbw, pim_types=args.pim_types, pim_config=args.pim_config,
                          logits=args.logits, **extra)


def _scheme(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .quant.scheme import QuantScheme

    if args.bits is not None and args.avg_bits is not None:
        raise OptionError("give --bits (one width) or --avg-bits (a budget), not both")
    if args.bits is None and args.avg_bits is None:
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
    # With --avg-bits the scheme carries group size and symmetry; widths are chosen per layer.
    bits = args.bits if args.bits is not None else 8
    return QuantScheme(bits=bits, group_size=group, symmetric=args.symmetric)


def _cmd_compile(args: argparse.Namespace) -> int:
    from .driver import compile_model

    if args.output is None and args.emit is None:
        raise OptionError("give -o DIR for the artifact (or --emit STAGE to print TVMScript)")
    options = _compile_options(args, emit=args.emit, dump_dir=args.dump_dir, force=args.force,
                               print_after=tuple(args.print_after), tokenizer=args.tokenizer)
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
    from .inputs import load_inputs

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


def _c_artifact(path: Path, verb: str):  # type: ignore[no-untyped-def]
    """The artifact at ``path``; :class:`OptionError` unless it is a c artifact (``verb``: what
    the command does with one, e.g. "build builds")."""
    from .artifact import Artifact

    artifact = Artifact(path)
    if artifact.manifest["target"] != "c":
        raise OptionError(f"{path} is a {artifact.manifest['target']} artifact; sail {verb} c "
                          "artifacts (sail compile --target c)")
    return artifact


def _cmd_build(args: argparse.Namespace) -> int:
    from .targets.c.target import LIBRARIES, build_library

    artifact = _c_artifact(args.artifact, "build builds")
    binary = build_library(artifact.path, portable=args.portable, cross=args.cross)
    flavor = f"cross {args.cross}" if args.cross else \
        "portable" if args.portable else "native (-march=native)"
    print(f"built {', '.join(str(artifact.path / lib) for lib in LIBRARIES)} and {binary} "
          f"({flavor})")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .model import load
    from .sampling import SamplingOptions

    sampling = SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                               repeat_last_n=args.repeat_last_n, seed=args.seed)
    model = load(args.artifact, threads=args.threads)
    text = model.manifest.get("tokenizer") is not None
    on_text = on_token = None
    if not args.json and text:
        def on_text(piece: str) -> None:
            print(piece, end="", flush=True)
        if args.prompt is not None and not args.chat:
            print(args.prompt, end="", flush=True)  # the text continues the prompt
    elif not args.json:
        first = [True]

        def on_token(token: int) -> None:
            print(("" if first[0] else " ") + str(token), end="", flush=True)
            first[0] = False
    prompt = args.prompt if args.prompt is not None else args.prompt_ids
    result = model.generate(prompt, args.tokens, chat=args.chat, stop=args.stop,
                            sampling=sampling, ignore_eos=args.ignore_eos, ctx=args.ctx,
                            kv_f16=args.kv_f16,
                            on_text=on_text, on_token=on_token)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(flush=True)
    threads = result.threads
    on = f" ({threads} thread{'s' if threads != 1 else ''})" if threads is not None else ""
    sampled = "greedy" if sampling.greedy else f"seed {result.seed}"
    print(f"prefill: {result.prefill_tokens} tokens in {1e3 * result.prefill_seconds:.2f} ms; "
          f"decode: {result.decode_steps} steps in {1e3 * result.decode_seconds:.2f} ms, "
          f"{result.decode_tokens_per_second:.1f} tokens/s{on}; {result.target}, {sampled}, "
          f"stopped by {result.stop_reason}", file=sys.stderr)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench
    from .model import load

    model = load(args.artifact)
    threads = args.threads or ([1] if model.target == "c" else [None])
    report = run_bench(model, args.n_prompt, args.n_gen, threads, args.repetitions)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _print_layers(layers: list[dict]) -> None:
    print(f"  {'layer':<40} {'KxN':>12} {'bits':>4} {'group':>7} {'method':>7} "
          f"{'size KiB':>9} {'w_err':>9} {'out_err':>9} {'exact':>5}")
    for e in layers:
        bits = "f32" if e["bits"] is None else str(e["bits"])
        group = "" if e["group_size"] is None else str(e["group_size"])
        werr = "" if e["weight_error"] is None else f"{e['weight_error']:.2e}"
        oerr = f"{e['output_rel_err']:.2e}" if "output_rel_err" in e else ""
        exact = ("yes" if e["sums_exact"] and e["y_rel_err"] <= 1e-5 else "NO") \
            if "sums_exact" in e else ""
        print(f"  {e['layer'][:40]:<40} {str(e['k']) + 'x' + str(e['n']):>12} {bits:>4} "
              f"{group:>7} {e['method'] or e['source']:>7} {e['size_bytes'] / 1024:>9.1f} "
              f"{werr:>9} {oerr:>9} {exact:>5}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import TARGET_AGREEMENT, InputPlan, report_line, verify_model

    plans = [InputPlan(batch=b, seq_len=s, past_len=p, seed=args.seed)
             for b, s, p in itertools.product(args.batch, args.seq_len, args.past_len)]
    report = verify_model(args.model, _compile_options(args), plans, args.inputs, args.tolerance,
                          args.output, per_layer=args.per_layer, cross=args.cross)
    tolerance = report["tolerance"]
    if args.json:
        print(json.dumps(report))
        return 0 if report["ok"] else 1
    for note in report["notes"]:
        print(f"note: {note}")
    judged = f"tolerance rel_l2_err {tolerance:g}" if tolerance is not None else \
        "quantization error, not judged"
    print(f"verify {args.model} on target {report['target']} against onnxruntime on the float "
          f"model (compile {report['compile_seconds']:.1f}s, {judged})")
    for dims, group in itertools.groupby(report["outputs"], key=lambda e: e["dims"]):
        print("dims " + (", ".join(f"{k}={v}" for k, v in dims.items()) or "(static)"))
        for entry in group:
            print(report_line(entry["name"], entry, tolerance))
    if "ref_exact" in report:
        ref, quant = report["reference"], report["quant"]
        avg = quant["average_bits"]
        print(f"quantized {quant['quantized_params']}/{quant['total_params']} weights"
              + (f", {avg:.2f} bits on average" if avg is not None else "")
              + f"; {quant['size_bytes'] / 2**20:.2f} MiB vs "
              f"{quant['float_size_bytes'] / 2**20:.2f} MiB float")
        print(f"NumPy reference: group sums {ref['sums_checked'] - ref['sums_mismatched']}/"
              f"{ref['sums_checked']} exact, largest layer result error "
              f"{ref['ref_max_rel_err'] or 0:.2e} -> ref_exact {report['ref_exact']}")
        if "c_lut" in ref:
            c_lut = ref["c_lut"]
            print(f"c library's LUT-GEMVs on their own activations: {c_lut['calls']} calls, "
                  f"{c_lut['elements'] - c_lut['mismatched']}/{c_lut['elements']} results equal "
                  f"to the reference -> {'exact' if c_lut['exact'] else 'NOT exact'}")
            print(f"c artifact vs the llvm build: rel_l2_err {ref['probe_vs_artifact_rel_l2']:.2e}"
                  " (reported, not judged: the other kernels come from two compilers)")
        elif report["target"] != "llvm":
            print(f"{report['target']} artifact vs the llvm build checked: rel_l2_err "
                  f"{ref['probe_vs_artifact_rel_l2']:.2e}")
        if args.per_layer:
            _print_layers(quant["layers"])
    if report["ok"]:
        print("OK")
    elif report.get("ref_exact") is False:
        print("FAILED: the compiled model disagrees with the NumPy reference")
    elif report.get("reference", {}).get("c_lut", {}).get("exact") is False:
        print("FAILED: the c library's LUT-GEMVs disagree with the NumPy reference")
    elif report.get("reference", {}).get("probe_vs_artifact_rel_l2", 0.0) > TARGET_AGREEMENT:
        print(f"FAILED: the {report['target']} artifact disagrees with the llvm build")
    else:
        print("FAILED: error beyond tolerance")
    return 0 if report["ok"] else 1


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from .export_onnx import export_onnx_model

    written = export_onnx_model(args.model, args.output, _compile_options(args))
    for note in written["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.output}: {written['layers']} MatMul node(s) as MatMulNBits "
          f"({', '.join(written['schemes'])})")
    return 0


def _cmd_eval_ppl(args: argparse.Namespace) -> int:
    import warnings

    from .eval_ppl import evaluate

    if args.tokenizer is None:
        raise OptionError("eval-ppl needs --tokenizer tokenizer.json to read --text")
    options = _compile_options(args)
    stride = args.stride if args.stride is not None else max(1, args.window // 2)
    with warnings.catch_warnings():
        # printed when issued (before a long evaluation), on one line
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = lambda message, *_: print(f"sail: warning: {message}",
                                                         file=sys.stderr, flush=True)
        report = evaluate(args.model, args.text, args.tokenizer, options, window=args.window,
                          stride=stride, max_tokens=args.max_tokens, chars=args.chars,
                          chunk=args.chunk)
    if args.json:
        print(json.dumps(report))
        return 0
    chars = f" (first {args.chars} characters)" if args.chars is not None else ""
    print(f"perplexity of {args.model} on {args.text}{chars}: {report['tokens']} tokens "
          f"(first ids {report['first_ids']}), window {report['window']}, stride "
          f"{report['stride']}, {report['float']['windows']} window(s), "
          f"{report['float']['tokens']} tokens scored")
    print(f"  float (onnxruntime)  {report['float']['ppl']:.4f}")
    print(f"  compiled ({report['compiled']['description']})  {report['compiled']['ppl']:.4f}"
          f"  ({report['compiled']['ppl'] / report['float']['ppl']:.3f}x float)")
    return 0


def _cmd_analyze_patterns(args: argparse.Namespace) -> int:
    from .lut_patterns import analyze_patterns, format_table
    from .quant.patterns import ReuseConfig

    if args.bits is None and args.avg_bits is None and args.bits_plan is None:
        args.bits = 4  # the figures depend on act bits, group size and NBW, not on weight bits
    config = ReuseConfig(size=args.table_size, ways=args.ways, hash=args.hash,
                         chunks_per_stream=args.chunks_per_stream)
    options = _compile_options(args)
    for path in (args.output, args.schedule_out):
        if path is not None:
            check_output_path(path, args.model, force=False)
    report = analyze_patterns(args.model, options, options.calib, tuple(args.batches), config)
    if args.output is not None:
        args.output.write_text(report["module"].script())
    if args.schedule_out is not None:
        arrays = {f"{layer}/b{b}/{field}": getattr(schedule, field)
                  for layer, per_batch in report["schedules"].items()
                  for b, schedule in per_batch.items()
                  for field in ("read_chunk", "read_pattern", "source")}
        with args.schedule_out.open("wb") as f:
            np.savez(f, **arrays)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k not in ("module", "schedules")}))
    else:
        print(format_table(report))
    return 0


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


_COMMANDS = {"compile": _cmd_compile, "run": _cmd_run, "build": _cmd_build,
             "verify": _cmd_verify, "generate": _cmd_generate, "bench": _cmd_bench,
             "inspect": _cmd_inspect, "export-onnx": _cmd_export_onnx,
             "eval-ppl": _cmd_eval_ppl, "analyze-patterns": _cmd_analyze_patterns,
             "simulate": simulate_cli.run}


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
