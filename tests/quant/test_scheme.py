"""QuantScheme: validation, presets, the CLI grammar and the group arithmetic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sail_compiler.errors import OptionError
from sail_compiler.quant.scheme import QuantScheme, preset_names, register_preset


def test_presets_from_the_brief_exist() -> None:
    for name in ["w4g128", "w2g64", "w8g128", "w3g128", "w4channel", "w1g64", "w4g128sym"]:
        assert name in preset_names()
    assert QuantScheme.from_name("w4g128") == QuantScheme(4, 128, False)
    assert QuantScheme.from_name("w2g64") == QuantScheme(2, 64, False)
    assert QuantScheme.from_name("w4channel") == QuantScheme(4, None, False)
    assert QuantScheme.from_name("w8channelsym") == QuantScheme(8, None, True)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_round_trips_through_its_name(name: str) -> None:
    scheme = QuantScheme.from_name(name)
    assert scheme.name == name == str(scheme)
    assert QuantScheme.parse(name) == scheme


@pytest.mark.parametrize(("text", "expected"), [
    ("w5g96", QuantScheme(5, 96, False)),
    ("w6channel", QuantScheme(6, None, False)),
    ("w7g32sym", QuantScheme(7, 32, True)),
    ("w4g128asym", QuantScheme(4, 128, False)),
    ("  W4G128SYM ", QuantScheme(4, 128, True)),
    ("w1g1", QuantScheme(1, 1, False)),
])
def test_parse_grammar(text: str, expected: QuantScheme) -> None:
    assert QuantScheme.parse(text) == expected
    assert QuantScheme.parse(expected.name) == expected


@pytest.mark.parametrize("text", ["", "w4", "4g128", "w4g", "w4g128x", "w4 g128", "int4", "w-4g8"])
def test_parse_rejects_garbage_and_names_the_grammar(text: str) -> None:
    with pytest.raises(OptionError, match=r"w<bits>g<group size>\[sym\].*presets: .*w4g128"):
        QuantScheme.parse(text)


@pytest.mark.parametrize("text", ["w0g128", "w9g128", "w16channel"])
def test_parse_rejects_bits_out_of_range(text: str) -> None:
    with pytest.raises(OptionError, match=r"1\.\.8"):
        QuantScheme.parse(text)


def test_parse_rejects_zero_group_and_symmetric_one_bit() -> None:
    with pytest.raises(OptionError, match="group size must be a positive integer"):
        QuantScheme.parse("w4g0")
    with pytest.raises(OptionError, match="symmetric 1-bit"):
        QuantScheme.parse("w1g64sym")


def test_from_name_unknown_lists_presets() -> None:
    with pytest.raises(OptionError, match=r"unknown quantization preset 'w5g96'.*w4g128") as err:
        QuantScheme.from_name("w5g96")
    for name in preset_names():
        assert name in str(err.value)


@pytest.mark.parametrize("bits", [0, 9, -3, 4.0, True, None])
def test_bad_bits(bits: object) -> None:
    with pytest.raises(OptionError, match=r"weight bits must be an integer in 1\.\.8"):
        QuantScheme(bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("group_size", [0, -128, 1.5, True, "128"])
def test_bad_group_size(group_size: object) -> None:
    with pytest.raises(OptionError, match=r"positive integer or None"):
        QuantScheme(4, group_size)  # type: ignore[arg-type]


def test_bad_symmetric_and_symmetric_one_bit() -> None:
    with pytest.raises(OptionError, match="True or False"):
        QuantScheme(4, 128, "yes")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"symmetric 1-bit.*symmetric=False"):
        QuantScheme(1, 64, True)
    assert QuantScheme(1, 64, False).bits == 1


def test_numpy_integers_are_normalised_and_scheme_is_frozen_and_hashable() -> None:
    scheme = QuantScheme(np.int64(4), np.int32(64), np.bool_(True))  # type: ignore[arg-type]
    assert scheme == QuantScheme(4, 64, True)
    assert type(scheme.bits) is int and type(scheme.group_size) is int
    assert type(scheme.symmetric) is bool
    assert len({scheme, QuantScheme(4, 64, True)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        scheme.bits = 8  # type: ignore[misc]


def test_group_arithmetic() -> None:
    g128 = QuantScheme(4, 128)
    assert (g128.n_groups(4096), g128.padded_k(4096)) == (32, 4096)
    assert (g128.n_groups(300), g128.padded_k(300)) == (3, 384)
    assert (g128.n_groups(1), g128.padded_k(1)) == (1, 128)
    channel = QuantScheme(4, None)
    assert channel.group_size_for(300) == 300
    assert (channel.n_groups(300), channel.padded_k(300)) == (1, 300)


def test_register_preset_rejects_duplicates() -> None:
    with pytest.raises(OptionError, match="already registered"):
        register_preset(QuantScheme(4, 128, False))
