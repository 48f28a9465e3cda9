"""SAIL programs without compiling: instructions, mappings, program.json/txt round trip, config
mismatches and damaged files (targets/pim/isa.py, program.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sail_compiler.errors import ArtifactError
from sail_compiler.targets.pim import load_config, preset
from sail_compiler.targets.pim.config import ConfigError
from sail_compiler.targets.pim.cost import plan_tiling
from sail_compiler.targets.pim.isa import DEQUANT, HOST, LUTGEMV, QUANT, Instruction, Mapping
from sail_compiler.targets.pim.program import (
    PROGRAM_JSON,
    PROGRAM_TXT,
    Program,
    check_config,
    config_fingerprint,
    load_program,
)

TINY = preset("tiny")


def _lut(config, k: int, n: int, i: int = 1) -> Instruction:
    tiling = plan_tiling(k, n, bits=4, group_size=32, nbw=2, config=config)
    attrs = {"k": k, "n": n, "bits": 4, "act_bits": 8, "group_size": 32, "nbw": 2,
             "output": "sums", "placement": "pim", "dequant_placement": "pim",
             "schedule": "table", "slot": 1}
    return Instruction(i, LUTGEMV, "layers.0.q_proj", attrs, ["xq", "w0", "z0"], ["s"],
                       Mapping.of(tiling, config, n))


def _program(config=TINY) -> Program:
    return Program(config, [
        Instruction(0, QUANT, "layers.0.q_proj", {"k": 64, "act_bits": 8, "placement": "pim",
                                                  "slot": 0}, ["x"], ["xq", "sx"]),
        _lut(config, 64, 40),
        Instruction(2, DEQUANT, "layers.0.q_proj", {"n": 40, "groups": 2, "placement": "pim",
                                                    "fused_into": 1, "slot": 2},
                    ["s", "sx", "sc0"], ["y"]),
        Instruction(3, HOST, "fused_add", {}, ["y", "x"], ["out"]),
    ])


@pytest.mark.parametrize("config", [TINY, preset("sail-n1")], ids=["tiny", "sail-n1"])
@pytest.mark.parametrize("shape", [(64, 40), (200, 7), (96, 300)])
def test_units_cover_every_block_once(config, shape):
    k, n = shape
    mapping = _lut(config, k, n).mapping
    t = mapping.tiling
    units = list(mapping.units())
    assert len(units) == t.units
    covered = {(u["tile"], c) for u in units for c in range(u["chunk_lo"], u["chunk_hi"])}
    assert len(covered) == t.blocks == sum(u["chunk_hi"] - u["chunk_lo"] for u in units)
    assert sorted({c for u in units for c in range(u["col_lo"], u["col_hi"])}) == list(range(n))
    assert len({u["slice"] for u in units}) == t.slices_used
    places = {(u["wave"], u["slice"], u["array"]) for u in units}
    assert len(places) == t.units  # no two units on one array in one wave
    assert all(0 <= u["slice"] < config.llc.slices
               and 0 <= u["array"] < config.csram.arrays_per_slice for u in units)


def test_json_round_trip_and_listing(tmp_path: Path):
    program = _program()
    program.write(tmp_path)
    loaded = load_program(tmp_path)
    assert loaded.to_json() == program.to_json()
    assert loaded.fingerprint == config_fingerprint(TINY)
    data = json.loads((tmp_path / PROGRAM_JSON).read_text())
    assert data["config_name"] == "tiny" and data["format_version"] == 1
    listing = (tmp_path / PROGRAM_TXT).read_text()
    assert TINY.name in listing and program.fingerprint in listing
    for instr in program.instructions:
        assert instr.line() in listing
    assert "tiling: lane" in listing and "reduce: slice bus tree" in listing
    assert "unit 0: cols 0.." in listing


def test_fingerprint_ignores_the_name_only():
    renamed = load_config("tiny", overrides={"name": "other"})
    assert config_fingerprint(renamed) == config_fingerprint(TINY)
    changed = load_config("tiny", overrides={"csram": {"rows": 256}, "llc": {"slice_kib": 4}})
    assert config_fingerprint(changed) != config_fingerprint(TINY)


def test_mismatched_config_names_the_fields_and_the_fix():
    program = _program()
    check_config(program, load_config("tiny", overrides={"name": "same-hardware"}))
    other = load_config("tiny", overrides={"csram": {"rows": 256}, "llc": {"slice_kib": 4}})
    with pytest.raises(ConfigError) as err:
        check_config(program, other)
    text = str(err.value)
    assert "csram.rows (program: 128, given: 256)" in text
    assert "--pim-config" in text and "--preset tiny" in text


def test_zero_arrays_is_rejected():
    with pytest.raises(ConfigError, match="csram.arrays_per_slice"):
        load_config("tiny", overrides={"csram": {"arrays_per_slice": 0}})


def test_damaged_programs_are_artifact_errors(tmp_path: Path):
    with pytest.raises(ArtifactError, match="no program.json"):
        load_program(tmp_path)
    _program().write(tmp_path)
    path = tmp_path / PROGRAM_JSON
    good = json.loads(path.read_text())
    path.write_text(path.read_text()[:200])
    with pytest.raises(ArtifactError, match="corrupt"):
        load_program(tmp_path)
    for change, message in ((("format_version", 99), "format 99"),
                            (("config_fingerprint", "0" * 16), "fingerprint"),
                            (("format", "x"), "not a SAIL program")):
        path.write_text(json.dumps({**good, change[0]: change[1]}))
        with pytest.raises(ArtifactError, match=message):
            load_program(tmp_path)
    bad = {**good, "instructions": [{**good["instructions"][0], "opcode": "JUMP"}]}
    path.write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="unknown opcode"):
        load_program(tmp_path)
