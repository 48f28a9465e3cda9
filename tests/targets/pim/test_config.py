"""Machine configuration: presets, TOML overrides, validation (targets/pim/config.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sail_compiler.errors import OptionError
from sail_compiler.targets.pim.config import (
    PRESETS,
    ConfigError,
    CsramConfig,
    MachineConfig,
    describe,
    load_config,
    preset,
    register_preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_serialise(name: str) -> None:
    config = preset(name)
    assert config.name == name
    data = json.loads(json.dumps(config.to_dict()))
    assert data["csram"]["reuse_table_entries"] == config.csram.reuse_table_entries
    assert MachineConfig(name=data.pop("name"), **{
        section: type(getattr(config, section))(**values) for section, values in data.items()
    }) == config


def test_sail_n1_is_the_papers_baseline_server() -> None:
    config = preset("sail-n1")
    assert config.host.cores == 64
    assert config.llc.slices == 64 and config.llc.slice_kib == 1024
    assert config.dram.peak_gbps == pytest.approx(8 * 3200 * 8 / 1000)  # DDR4-3200 x 8
    assert config.csram.reuse_table_entries == 32
    assert config.arrays * config.csram.rows * config.csram.columns // 8 == 64 * 2**20


def test_every_field_has_a_unit_and_a_source() -> None:
    config = preset("sail-n1")
    for section in dataclasses.fields(config):
        if section.name == "name":
            continue
        for field in dataclasses.fields(getattr(config, section.name)):
            assert field.metadata["source"], f"{section.name}.{field.name} has no source"
            assert "unit" in field.metadata
    table = describe(config)
    assert "| csram.reuse_table_entries | 32 |" in table
    assert "assumption" in table


def test_toml_overrides_a_preset(tmp_path) -> None:
    path = tmp_path / "machine.toml"
    path.write_text('preset = "tiny"\nname = "tiny-wide"\n[csram]\ncolumns = 64\n'
                    '[llc]\nslice_kib = 4\n[dram]\nchannels = 2\nefficiency = 0.5\n')
    config = load_config("sail-n1", path)
    assert config.name == "tiny-wide"
    assert config.csram.columns == 64 and config.csram.rows == preset("tiny").csram.rows
    assert config.dram.peak_gbps == pytest.approx(16.0)
    assert config.dram.effective_gbps == pytest.approx(8.0)
    assert load_config("tiny", overrides={"host": {"cores": 4.0}}).host.cores == 4


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"csram": {"arrays_per_slice": 0}}, "csram.arrays_per_slice (arrays) must be an integer "
                                         "in [1, 65536], got 0"),
    ({"dram": {"efficiency": 1.5}}, "dram.efficiency (fraction of peak) must be a number in "
                                    "(0, 1], got 1.5"),
    ({"csram": {"rows": 64}}, "csram.rows (rows (word lines)) must be an integer in [96, 65536]"),
    ({"csram": {"nbw": 9}}, "csram.nbw (weights per table) must be an integer in [1, 8]"),
    ({"gpu": {"weights": "int4"}}, "valid choices are: fp16, quantized"),
    ({"host": {"clock_ghz": 0}}, "host.clock_ghz (GHz) must be a number in (0, 10]"),
    ({"csram": {"arrays_per_slice": 256}}, "csram.arrays_per_slice must be in 1..128"),
    ({"csram": {"feeders_per_slice": 200}}, "csram.feeders_per_slice must be in "
                                            "1..arrays_per_slice (128)"),
])
def test_impossible_values_name_the_field_and_range(overrides, fragment: str) -> None:
    with pytest.raises(OptionError, match="invalid machine configuration") as info:
        load_config("sail-n1", overrides=overrides)
    assert fragment in str(info.value)


def test_nbw_beyond_the_rows_names_both() -> None:
    with pytest.raises(ConfigError, match=r"csram.nbw = 8 needs tables of 256 rows but "
                                          r"csram.rows = 128; valid nbw: 1..7"):
        CsramConfig(rows=128, nbw=8)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("sail-n1", overrides={"csram": {"arrays_per_slice": 0, "columns": 1},
                                          "llc": {"slices": -1}, "price": {"gpu_usd_per_hour": 0}})
    assert len(info.value.problems) == 4


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"cache": {"rows": 1}}, "unknown section(s) ['cache']"),
    ({"csram": {"row": 1}}, "unknown field(s) ['csram.row']"),
    ({"preset": "huge"}, "unknown machine preset 'huge'; valid choices are: sail-n1, tiny"),
])
def test_unknown_names_list_the_valid_ones(overrides, fragment: str) -> None:
    with pytest.raises(OptionError) as info:
        load_config("sail-n1", overrides=overrides)
    assert fragment in str(info.value)


def test_bad_toml_is_an_option_error(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[csram\n")
    with pytest.raises(OptionError, match="is not valid TOML"):
        load_config("sail-n1", path)
    with pytest.raises(OptionError, match="cannot read machine configuration"):
        load_config("sail-n1", tmp_path / "missing.toml")


def test_presets_register_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_preset("tiny")(lambda: preset("tiny"))
