"""Compile options, validated when they are built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .errors import OptionError, valid_choices
from .quant.lut import check_nbw
from .quant.packing import check_bits
from .quant.plan import check_method
from .quant.reference import check_act_bits, check_act_group_size, check_scale_dtype
from .quant.scheme import QuantScheme

#: Consecutive k per activation scale when none is given: each layer's weight group size. On
#: Gemma 3 270M (w8g128, README "Quantization") it cut the perplexity cost of int8 activations
#: from 2.4% (one scale per row) to 0.3-0.4%; blocks of 32 had half its layer error but no better
#: perplexity and cost the C kernels an epilogue per 32 rows.
DEFAULT_ACT_GROUP_SIZE: int | str = "group"

#: What ``--logits`` accepts: every position's logits, or the last position's only.
LOGITS_CHOICES: tuple[str, ...] = ("all", "last")

#: The compile stages in order (:data:`~.pipeline.STAGES` holds their passes); ``--emit`` stops
#: after one.
STAGE_NAMES: tuple[str, ...] = ("import", "quantize", "sail", "lower")

#: Where a step runs on SAIL: inside the C-SRAM arrays or on the core.
PLACEMENTS = ("pim", "host")

#: Largest activation width converted in memory under ``placement="auto"``.
PIM_MAX_ACT_BITS = 8


def resolve_placement(placement: str, act_bits: int) -> str:
    """``pim``/``host`` for ``placement`` (``auto``, ``pim`` or ``host``) at ``act_bits``."""
    if placement == "auto":
        return "pim" if act_bits <= PIM_MAX_ACT_BITS else "host"
    if placement not in PLACEMENTS:
        raise OptionError(f"unknown type-conversion placement {placement!r}; "
                          f"{valid_choices(('auto', *PLACEMENTS))}")
    return placement


@dataclasses.dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration inputs come from (see :mod:`.quant.calibrate`).

    Parameters
    ----------
    files
        ``.npz`` files, one model run each.
    text, tokenizer
        A text file and the ``tokenizer.json`` to cut it into token windows with.
    samples
        Windows (text) or generated runs.
    seq_len
        Tokens per window / generated sequence length.
    """

    files: tuple[Path, ...] = ()
    text: Path | None = None
    tokenizer: Path | None = None
    samples: int = 8
    seq_len: int = 128

    def __post_init__(self) -> None:
        if (self.text is None) != (self.tokenizer is None):
            raise OptionError("--calib-text and --tokenizer go together: the text is tokenized "
                              "with the tokenizer.json")
        if self.files and self.text is not None:
            raise OptionError("give calibration inputs as --calib FILE.npz or as --calib-text, "
                              "not both")
        if self.samples < 1 or self.seq_len < 1:
            raise OptionError(f"calibration samples and seq_len must be >= 1, got "
                              f"{self.samples} and {self.seq_len}")

    def describe(self) -> str:
        if self.files:
            return f"{len(self.files)} input file(s)"
        if self.text is not None:
            return f"{self.samples} windows of {self.seq_len} tokens from {self.text}"
        return f"{self.samples} generated inputs of {self.seq_len} tokens"


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """What ``sail compile`` does.

    Parameters
    ----------
    target
        Registered target name (``llvm``).
    emit
        Stop after this stage and write its TVMScript instead of an artifact.
    dump_dir
        Write the TVMScript after every pass and stage here.
    force
        Allow writing into a non-empty directory that sail did not create.
    print_after
        Pass names whose output is printed.
    shapes
        Input dims to fix, ``{input name: dims}``; other dims stay symbolic.
    num_threads
        Threads the compiled code may use (None: all cores).
    quant
        Weight quantization scheme for the ``quantize`` stage (None: keep float weights).
    skip
        ``fnmatch`` patterns of layer names to keep in float.
    act_bits
        Width b_a (2..16) quantized matmuls quantize their activations to at run time.
    act_group_size
        Consecutive k sharing one activation scale (DESIGN.md section 3): a positive integer
        that nests with every quantized layer's weight group size (a divisor or a multiple of
        it; :class:`~.quant.reference.ActBlocks`), ``"group"`` (each layer's weight group size)
        or ``"row"`` (``0``: one scale per token row). Default :data:`DEFAULT_ACT_GROUP_SIZE`.
    method
        How weights are quantized: ``rtn``, ``search`` or ``gptq`` (:mod:`.quant.methods`).
    awq
        Activation-aware per-input-channel scales folded into the preceding norm weight or
        matmul before quantizing (:mod:`.quant.awq`); needs calibration (generated without it).
    gptq_sequential
        Quantize the layers in graph order, each with the Hessian of its input taken with the
        earlier layers already quantized (one transformer block at a time; GPTQ's "true
        sequential" order), instead of every Hessian from the float model
        (:func:`~.quant.calibrate.collect_hessians_sequential`). Needs calibration.
    gptq_act_order
        GPTQ quantizes each layer's rows in order of decreasing Hessian diagonal (the paper's
        "act-order"); the groups and the weight layout stay as they are. Applies to the layers
        quantized by ``gptq`` (``method``, or a bits plan's rules).
    scale_dtype
        ``float32`` or ``float16``: with ``float16`` every weight scale in float16's normal range
        is rounded to float16 when it is chosen, and the codes are computed against it
        (:func:`~.quant.reference.round_scales`); the c target then stores the scales of each
        LUT weight whose scales are all float16 values as float16 (2 bytes a scale instead of 4).
    bits_plan
        A JSON plan mapping layer-name patterns to schemes (:mod:`.quant.plan`).
    avg_bits
        Choose per-layer widths by measured sensitivity under this average code width; ``quant``
        then gives the group size and symmetry (its bits are replaced per layer).
    calib
        Where calibration inputs come from (None: generated when a method needs them).
    embedding_bits
        Quantize the token embedding tables to this width (group size and symmetry from
        ``quant``, else 128 with zero points); None keeps them float.
    sail
        Run the ``sail`` stage on quantized compiles (``ConvertPIMTypes``, ``LowerToLUTGemv``);
        False (``--no-sail``) keeps the plain ``sail.quant_matmul``.
    nbw
        Weights per lookup table of ``sail.lut_gemv`` (1..8).
    pim_types
        Where the activation quantization and output dequantization run: ``auto``, ``pim`` or
        ``host`` (:class:`~.passes.ConvertPIMTypes`).
    probe
        Build with :class:`~.passes.ExposeGroupSums` (``sail verify``'s reference check; the
        artifact then runs only inside the process that built it).
    pim_config
        The machine the ``pim-sim`` target maps its SAIL program for: a preset name
        (``sail-n1``, ``tiny``) or a TOML file (:func:`~.targets.pim.target.resolve_config`);
        None is ``sail-n1``. Other targets ignore it.
    tokenizer
        A Hugging Face ``tokenizer.json`` to store in the artifact (with the chat template and
        end-of-sequence ids of the files beside it, :func:`~.tokenizer.prepare_tokenizer`), so
        that ``sail generate --prompt TEXT`` and ``Model.generate`` take and return text.
    logits
        Which positions a ``[batch, seq, vocab]`` logits output holds: ``all``, or ``last``
        (:class:`~.passes.KeepLastLogits`: ``[batch, 1, vocab]``, the LM head computed for the
        last position only; what generation reads).
    """

    target: str = "llvm"
    emit: str | None = None
    dump_dir: Path | None = None
    force: bool = False
    print_after: tuple[str, ...] = ()
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    num_threads: int | None = None
    quant: QuantScheme | None = None
    skip: tuple[str, ...] = ()
    act_bits: int = 8
    act_group_size: int | str = DEFAULT_ACT_GROUP_SIZE
    method: str = "rtn"
    awq: bool = False
    gptq_sequential: bool = False
    gptq_act_order: bool = False
    scale_dtype: str = "float32"
    bits_plan: Path | None = None
    avg_bits: float | None = None
    calib: CalibrationSpec | None = None
    embedding_bits: int | None = None
    sail: bool = True
    nbw: int = 4
    pim_types: str = "auto"
    probe: bool = False
    pim_config: str | None = None
    tokenizer: Path | None = None
    logits: str = "all"

    @property
    def scheme_name(self) -> str | None:
        """The one scheme every quantized layer uses (``w4g128``), or None when there is none
        (float, or widths chosen per layer by ``avg_bits``)."""
        return self.quant.name if self.quant is not None and self.avg_bits is None else None

    def describe_quant(self) -> str:
        """A short description of the weight quantization, e.g. ``w4g128 gptq`` or ``float``."""
        parts = []
        if self.avg_bits is not None:
            parts.append(f"avg {self.avg_bits:g} bits, {self.quant.name[2:] if self.quant else ''}"
                         .rstrip(", "))
        elif self.quant is not None:
            parts.append(self.quant.name)
        if self.bits_plan is not None:
            parts.append(f"plan {self.bits_plan}")
        if self.embedding_bits is not None:
            parts.append(f"embeddings {self.embedding_bits}-bit")
        if not parts:
            return "float"
        return " ".join([", ".join(parts), ("awq+" if self.awq else "") + self.method
                         + (" sequential" if self.gptq_sequential else "")
                         + (" act-order" if self.gptq_act_order else "")
                         + (" f16-scales" if self.scale_dtype == "float16" else "")])

    def __post_init__(self) -> None:
        # the target name is checked against the registry by compile_model (get_target), which
        # loads TVM; the command line offers the registered names only
        if self.emit is not None and self.emit not in STAGE_NAMES:
            raise OptionError(f"unknown stage '{self.emit}' for --emit; "
                              f"valid stages in order: {', '.join(STAGE_NAMES)}")
        if self.embedding_bits is not None:
            check_bits(self.embedding_bits, "--embedding-bits")
        quantized = self.quant is not None or self.bits_plan is not None \
            or self.embedding_bits is not None
        if self.skip and not quantized:
            raise OptionError("--skip only applies to quantized compiles; add --bits")
        check_method(self.method)
        if self.method != "rtn" and not quantized:
            raise OptionError(f"--method {self.method} applies to quantized compiles; add --bits "
                              "(or --avg-bits, --bits-plan)")
        if self.gptq_sequential and not quantized:
            raise OptionError("--gptq-sequential applies to quantized compiles; add --bits")
        if self.gptq_act_order and self.method != "gptq" and self.bits_plan is None:
            raise OptionError(f"--gptq-act-order orders GPTQ's rows, and --method {self.method} "
                              "is not GPTQ; add --method gptq (or a --bits-plan whose rules "
                              "use \"method\": \"gptq\")")
        try:
            check_scale_dtype(self.scale_dtype)
        except OptionError as e:
            raise OptionError(f"--scale-dtype: {e}") from None
        if self.scale_dtype != "float32" and not quantized:
            raise OptionError(f"--scale-dtype {self.scale_dtype} applies to quantized compiles; "
                              "add --bits")
        if self.awq and not quantized:
            raise OptionError("--awq applies to quantized compiles; add --bits")
        if self.avg_bits is not None:
            if self.quant is None:
                raise OptionError("--avg-bits needs a scheme for group size and symmetry")
            low = 2 if self.quant.symmetric else 1
            if not low <= self.avg_bits <= 8:
                raise OptionError(f"--avg-bits must lie in [{low}, 8], got {self.avg_bits}")
        if self.calib is not None and not quantized:
            raise OptionError("calibration inputs apply to quantized compiles; add --bits")
        check_act_bits(self.act_bits)
        object.__setattr__(self, "act_group_size", check_act_group_size(self.act_group_size))
        check_nbw(self.nbw)
        resolve_placement(self.pim_types, self.act_bits)
        if self.logits not in LOGITS_CHOICES:
            raise OptionError(f"unknown --logits '{self.logits}'; "
                              f"{valid_choices(LOGITS_CHOICES)}")
        if self.num_threads is not None and self.num_threads < 1:
            raise OptionError(f"--threads must be >= 1, got {self.num_threads}")
