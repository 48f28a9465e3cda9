"""SAIL programs: the lowering of a compiled module's ``sail.*`` calls, and ``program.txt/json``.

A module pass and the build of the pim-sim target (:mod:`.target`) make a :class:`Program`:

* :class:`LowerToSAILProgram` runs first in the ``lower`` stage. It replaces every
  ``sail.quantize``, ``sail.lut_gemv`` and ``sail.dequantize`` of ``main`` by
  ``R.call_pure_packed("sail.pim.exec", <slot>, <the call's operands>...)`` with the call's own
  result type, and records each call's descriptor and the machine in ``main``'s
  ``"sail.pim.commands"`` attribute (:data:`COMMANDS_ATTR`, a :class:`Program` in JSON); a LUT-GEMV
  is mapped onto the machine with :func:`.cost.plan_tiling`, with the lane width
  :func:`.cost.best_lane_bits` chooses for one token without pattern reuse. Other ops are left alone
  for the host lowering. A layer that does not fit the machine raises
  :class:`~sail_compiler.errors.OptionError` naming the layer and the field.
* :func:`list_program`, called by the build on the module after the host lowering (and after the
  weights are lifted to parameters), walks ``main`` in execution order, numbers every offload call
  and every host kernel call (``R.call_tir``), records each offload call's slot (``attrs["slot"]``),
  names the operands and links every DEQUANT to the LUT-GEMV whose sums it reads.

``program.json`` holds ``format``, ``format_version``, the machine's name, its
:func:`config_fingerprint` and its full configuration, and the instructions
(:meth:`.isa.Instruction.to_json`); ``program.txt`` the same as a readable listing
(:meth:`Program.listing`). :func:`load_program` checks all of it, and :func:`check_config` that
the machine a program is simulated on is the one it was mapped for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from ...errors import ArtifactError, OptionError, SailError
from ...ops.quant_matmul import act_blocks
from ...ops.sail_ops import DEQUANTIZE, LUT_GEMV, QUANTIZE, is_sail_op, op_attrs
from .config import ConfigError, MachineConfig
from .cost import best_lane_bits, plan_tiling
from .isa import DEQUANT, HOST, LUTGEMV, QUANT, Instruction, Mapping

__all__ = [
    "COMMANDS_ATTR",
    "EXEC_FUNC",
    "FORMAT",
    "FORMAT_VERSION",
    "PROGRAM_JSON",
    "PROGRAM_TXT",
    "LowerToSAILProgram",
    "Program",
    "check_config",
    "config_fingerprint",
    "list_program",
    "load_program",
]

#: The global function the compiled host code calls for every offload command.
EXEC_FUNC = "sail.pim.exec"
#: The attribute of ``main`` holding the commands :class:`LowerToSAILProgram` mapped.
COMMANDS_ATTR = "sail.pim.commands"
FORMAT = "sail-pim-program"
FORMAT_VERSION = 1
PROGRAM_JSON = "program.json"
PROGRAM_TXT = "program.txt"
#: Differing fields a configuration mismatch names before "and N more".
_SHOWN_FIELDS = 6


#: Parts of a configuration a program's mapping does not depend on: the name (the same hardware
#: under another name has the same fingerprint) and the N1 baseline's software model.
_NOT_FINGERPRINTED = ("name", "baseline")


def config_fingerprint(config: MachineConfig) -> str:
    """A short hash of every field of ``config`` but its name and its ``baseline`` section."""
    values = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _static(dim: Any) -> int:
    return int(dim) if isinstance(dim, int | tvm.tirx.IntImm) else -1


@dataclasses.dataclass
class Program:
    """A SAIL program for one machine.

    Attributes
    ----------
    config
        The machine the offload commands were mapped for.
    instructions
        In execution order; ``instructions[i].id == i``.
    """

    config: MachineConfig
    instructions: list[Instruction]

    @property
    def fingerprint(self) -> str:
        return config_fingerprint(self.config)

    def offload(self) -> list[Instruction]:
        """The QUANT, LUTGEMV and DEQUANT commands."""
        return [i for i in self.instructions if i.opcode != HOST]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "config_name": self.config.name, "config_fingerprint": self.fingerprint,
                "config": self.config.to_dict(),
                "instructions": [i.to_json() for i in self.instructions]}

    def listing(self) -> str:
        """``program.txt``: a header, then one instruction per line, each LUTGEMV followed by its
        mapping (indented)."""
        counts = {op: sum(i.opcode == op for i in self.instructions)
                  for op in (LUTGEMV, QUANT, DEQUANT, HOST)}
        cs = self.config.csram
        lines = [f"# SAIL program, format {FORMAT_VERSION}, for machine '{self.config.name}' "
                 f"(fingerprint {self.fingerprint}): {self.config.llc.slices} slices x "
                 f"{cs.arrays_per_slice} arrays of {cs.rows} x {cs.columns}, NBW <= {cs.nbw}",
                 "# " + ", ".join(f"{n} {op}" for op, n in counts.items()),
                 "#   id  opcode   name  descriptor  (inputs) -> (outputs)"]
        for instr in self.instructions:
            lines.append(instr.line())
            if instr.mapping is not None:
                lines += [f"        {text}" for text in instr.mapping.describe()]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> None:
        """Write ``program.json`` and ``program.txt`` into ``out_dir``."""
        (out_dir / PROGRAM_JSON).write_text(json.dumps(self.to_json(), indent=1) + "\n")
        (out_dir / PROGRAM_TXT).write_text(self.listing())

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = PROGRAM_JSON) -> Program:
        """Raises :class:`ArtifactError` on anything but a program of this format version."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{source} is not a SAIL program; recompile the model with "
                                "--target pim-sim")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{source} has program format {data.get('format_version')}, "
                                f"this sail reads format {FORMAT_VERSION}; recompile the model "
                                "with --target pim-sim")
        from .config import load_config

        try:
            config_data = dict(data["config"])
            base = config_data.pop("name")
            config = load_config(overrides={**config_data, "name": base})
            instructions = [Instruction.from_json(d) for d in data["instructions"]]
        except (KeyError, TypeError, ValueError, OptionError) as err:
            raise ArtifactError(f"{source} is damaged ({err}); recompile the model with "
                                "--target pim-sim") from err
        if [i.id for i in instructions] != list(range(len(instructions))):
            raise ArtifactError(f"{source} is damaged (instruction ids out of order); recompile "
                                "the model with --target pim-sim")
        if config_fingerprint(config) != data.get("config_fingerprint"):
            raise ArtifactError(f"{source} is damaged (its configuration does not match its "
                                "fingerprint); recompile the model with --target pim-sim")
        return cls(config, instructions)


def load_program(out_dir: str | Path) -> Program:
    """The program of a pim-sim artifact.

    Raises
    ------
    ArtifactError
        ``program.json`` is missing, not JSON, or not a program of this format.
    """
    path = Path(out_dir) / PROGRAM_JSON
    if not path.is_file():
        raise ArtifactError(f"{Path(out_dir)} has no {PROGRAM_JSON}; it is not a pim-sim artifact "
                            "(compile with: sail compile MODEL --target pim-sim -o DIR)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} is corrupt ({err}); recompile the model with "
                            "--target pim-sim") from err
    return Program.from_json(data, str(path))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_config(program: Program, config: MachineConfig) -> None:
    """Require ``config`` to be the machine ``program`` was mapped for.

    Raises
    ------
    ConfigError
        The fingerprints differ; names every differing field with both values and the fix.
    """
    if config_fingerprint(config) == program.fingerprint:
        return
    ours, theirs = _flatten(program.config.to_dict()), _flatten(config.to_dict())
    fields = [f"{k} (program: {ours[k]!r}, given: {theirs.get(k)!r})" for k in ours
              if k != "name" and ours[k] != theirs.get(k)]
    if len(fields) > _SHOWN_FIELDS:
        fields = [*fields[:_SHOWN_FIELDS], f"and {len(fields) - _SHOWN_FIELDS} more"]
    raise ConfigError([
        f"the program was mapped for machine '{program.config.name}' (fingerprint "
        f"{program.fingerprint}) but the simulation uses '{config.name}' (fingerprint "
        f"{config_fingerprint(config)}); differing fields: {', '.join(fields)}; recompile with "
        f"--pim-config for '{config.name}' or simulate with the program's own machine (pass "
        f"no --config/--preset, or --preset {program.config.name} if it is a preset)"])


# ---------------------------------------------------------------------------------------------
# Lowering passes


def _exec_call(slot: int, call: relax.Call) -> relax.Call:
    return relax.call_pure_packed(EXEC_FUNC, relax.prim_value(slot),
                                  *call.args, ty_args=call.ty)


def _lut_gemv_entry(call: relax.Call, config: MachineConfig) -> Instruction:
    attrs = op_attrs(call)
    layer = attrs.get("layer") or "?"
    zero_ty = call.args[2].ty
    n = _static(zero_ty.shape[1]) if zero_ty.shape is not None else -1
    if n < 1:
        raise OptionError(f"sail.lut_gemv of layer {layer} has no static N; the pim-sim target "
                          "maps weights of fixed shape only")
    blocks = act_blocks(call)
    kw = {"bits": attrs["bits"], "nbw": attrs["nbw"], "config": config}
    try:
        lane = best_lane_bits(attrs["k"], n, act_bits=attrs["act_bits"], batch=1, reuse=0.0,
                              group_size=attrs["group_size"], act_group=blocks.act_group, **kw)
        # chunks never straddle a sum block: the tables are laid out per sum block
        tiling = plan_tiling(attrs["k"], n, lane_bits=lane, group_size=blocks.sum_size, **kw)
    except OptionError as err:
        # OptionError, not ConfigError: raised inside a pass, it crosses TVM's FFI by name.
        raise OptionError(f"layer {layer} (K={attrs['k']}, N={n}) does not fit machine "
                          f"'{config.name}': {err}") from err
    descriptor = {"k": attrs["k"], "n": n, "bits": attrs["bits"], "act_bits": attrs["act_bits"],
                  "group_size": attrs["group_size"], "act_group": blocks.act_group,
                  "nbw": attrs["nbw"],
                  "output": attrs["output"], "placement": attrs["placement"],
                  "dequant_placement": "pim" if attrs["output"] == "float" else "host",
                  "schedule": "dedup" if attrs.get("lookup_schedule") == "dedup" else "table"}
    return Instruction(-1, LUTGEMV, layer, descriptor, mapping=Mapping.of(tiling, config, n))


def _entry(call: relax.Call, config: MachineConfig) -> Instruction:
    name = call.op.name
    attrs = op_attrs(call)
    if name == LUT_GEMV:
        return _lut_gemv_entry(call, config)
    if name == QUANTIZE:
        x_ty = call.args[0].ty
        k = _static(x_ty.shape[-1]) if x_ty.shape is not None else -1
        return Instruction(-1, QUANT, "", {"k": k, "act_bits": attrs["act_bits"],
                                           "act_group": attrs["act_group"],
                                           "placement": attrs["placement"]})
    s_ty = call.args[0].ty
    shape = list(s_ty.shape) if s_ty.shape is not None else [-1, -1]
    return Instruction(-1, DEQUANT, attrs.get("layer") or "?",
                       {"n": _static(shape[-1]), "groups": _static(shape[-2]), "k": attrs["k"],
                        "group_size": attrs["group_size"], "act_group": attrs["act_group"],
                        "placement": attrs["placement"], "fused_into": -1})


@relax.expr_functor.mutator
class _Offloader(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, config: MachineConfig) -> None:
        super().__init__(mod)
        self.config = config
        self.entries: list[Instruction] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not is_sail_op(call, QUANTIZE, LUT_GEMV, DEQUANTIZE):
            return call
        self.entries.append(_entry(call, self.config))
        return _exec_call(len(self.entries) - 1, call)


@tvm.transform.module_pass(opt_level=0, name="LowerToSAILProgram")
class LowerToSAILProgram:
    """Replace the ``sail.*`` calls of ``main`` by calls of the simulator (module docstring).

    Runs after the ``sail`` stage and before the host lowering. The descriptors of the calls, by
    slot (the order of the calls in ``main``), and the machine stay in the module: ``main``'s
    :data:`COMMANDS_ATTR` attribute holds them as a :class:`Program` in JSON (instruction ids
    are the slots), which :func:`list_program` completes.
    """

    def __init__(self, config: MachineConfig) -> None:
        self.config = config

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: D102
        mutator = _Offloader(mod, self.config)
        gv = mod.get_global_var("main")
        mutator.builder_.update_func(gv, mutator.visit_expr(mod[gv]))
        out = mutator.builder_.get()
        commands = [dataclasses.replace(entry, id=slot)
                    for slot, entry in enumerate(mutator.entries)]
        text = json.dumps(Program(self.config, commands).to_json())
        out[gv] = out[gv].with_attr(COMMANDS_ATTR, text)
        return out


def _const_name(expr: relax.Expr) -> str:
    """An operand that is not a variable: ``const[dims]`` or its type."""
    if isinstance(expr, tvm.tirx.IntImm):
        return str(expr.value)
    ty = getattr(expr, "ty", None)
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        dims = (str(_static(d)) if _static(d) >= 0 else str(d) for d in ty.shape)
        return f"const[{'x'.join(dims)}]"
    return type(expr).__name__


def _is_exec(call: relax.Expr) -> bool:
    return isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) \
        and call.op.name == "relax.call_pure_packed" \
        and isinstance(call.args[0], relax.ExternFunc) \
        and str(call.args[0].global_symbol) == EXEC_FUNC


@relax.expr_functor.visitor
class _Lister(relax.PyExprVisitor):
    def __init__(self, entries: list[Instruction]) -> None:
        super().__init__()
        self.entries = entries
        self.program: list[Instruction] = []
        self._tuples: dict[str, int] = {}   # tuple var -> instruction id (QUANT)
        self._names: dict[Any, str] = {}    # var -> its unique name in the listing
        self._taken: set[str] = set()

    def _name(self, expr: relax.Expr) -> str:
        """A variable's name, made unique (``lv2#1``) when another variable had it first."""
        if not isinstance(expr, relax.Var):
            return _const_name(expr)
        if expr not in self._names:
            name, i = expr.name, 0
            while name in self._taken:
                i += 1
                name = f"{expr.name}#{i}"
            self._taken.add(name)
            self._names[expr] = name
        return self._names[expr]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value, var = binding.value, binding.var
        if _is_exec(value):
            slot = int(value.args[1].value)
            instr = dataclasses.replace(self.entries[slot], id=len(self.program),
                                        attrs={**self.entries[slot].attrs, "slot": slot},
                                        inputs=[self._name(a) for a in value.args[2:]],
                                        outputs=[self._name(var)])
            if instr.opcode == QUANT:
                self._tuples[self._name(var)] = instr.id
                instr.outputs = []
            self.program.append(instr)
        elif isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, relax.Var) \
                and self._name(value.tuple_value) in self._tuples:
            self.program[self._tuples[self._name(value.tuple_value)]].outputs.append(
                self._name(var))
        elif isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
                and value.op.name == "relax.call_tir":
            args = value.args[1].fields if isinstance(value.args[1], relax.Tuple) else []
            self.program.append(Instruction(len(self.program), HOST, value.args[0].name_hint,
                                            {}, [self._name(a) for a in args],
                                            [self._name(var)]))


def list_program(mod: tvm.IRModule) -> Program:
    """The :class:`Program` of a module lowered for the pim-sim target: number the offload and
    host calls of ``main`` (module docstring), with the descriptors and the machine
    :class:`LowerToSAILProgram` left in ``main``'s :data:`COMMANDS_ATTR` attribute. Run it on the
    module after the host lowering and the weights' lifting.

    Raises
    ------
    SailError
        ``main`` has no SAIL commands (the module was not lowered for pim-sim) or they are
        damaged.
    """
    attrs = mod["main"].attrs
    if attrs is None or COMMANDS_ATTR not in attrs:
        raise SailError("the module has no SAIL commands: LowerToSAILProgram did not run on it "
                        "(compile with --target pim-sim)")
    try:
        lowered = Program.from_json(json.loads(str(attrs[COMMANDS_ATTR])),
                                    source=f"main's {COMMANDS_ATTR} attribute")
    except (ArtifactError, ValueError) as err:
        raise SailError(f"the module's SAIL commands are damaged: {err}") from err
    lister = _Lister(lowered.instructions)
    lister.visit_expr(mod["main"])
    instructions = lister.program
    producers = {i.outputs[0]: i for i in instructions if i.opcode == LUTGEMV}
    for instr in instructions:
        if instr.opcode == DEQUANT and instr.inputs and instr.inputs[0] in producers:
            lut = producers[instr.inputs[0]]
            instr.attrs["fused_into"] = lut.id
            lut.attrs["dequant_placement"] = instr.attrs["placement"]
    for instr in instructions:
        if instr.opcode == QUANT:
            readers = [i.name for i in instructions if i.opcode == LUTGEMV
                       and i.inputs and i.inputs[0] in instr.outputs]
            instr.name = ",".join(readers) or "(no LUT-GEMV reader)"
    return Program(lowered.config, instructions)
