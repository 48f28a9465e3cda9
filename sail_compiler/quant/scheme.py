"""Weight quantization schemes: bit width, group size along K, symmetric or with zero points.

A scheme is written ``w<bits>g<group size>`` or ``w<bits>channel`` (one group per output column,
i.e. the whole of K), with the suffix ``sym`` for symmetric quantization (no zero points); without
the suffix, or with ``asym``, groups carry zero points. ``w4g128`` is 4-bit weights in groups of
128 consecutive k with zero points, ``w8channelsym`` is symmetric 8-bit with one scale per column.

:func:`QuantScheme.from_name` accepts the registered presets (:func:`preset_names`);
:func:`QuantScheme.parse` accepts any name in the grammar above (what the CLI takes).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from ..errors import OptionError, valid_choices
from .packing import check_bits

_NAME = re.compile(r"w(?P<bits>\d+)(?:g(?P<group>\d+)|(?P<channel>channel))(?P<kind>sym|asym)?")
_GRAMMAR = "w<bits>g<group size>[sym] or w<bits>channel[sym], e.g. w4g128, w8channelsym"


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    """How the weights ``W[K, N]`` of a matmul are quantized (DESIGN.md section 3).

    Parameters
    ----------
    bits
        Code width b, 1..8.
    group_size
        Number g of consecutive k sharing one scale (and zero point) per column n; ``None`` for
        one group per column covering all of K ("channel").
    symmetric
        ``True``: signed codes in ``[-2**(b-1), 2**(b-1) - 1]``, no zero points (stored as
        unsigned codes with the implicit zero point ``2**(b-1)``); the scale is
        ``-w* / 2**(b-1)`` for the group's largest-magnitude weight ``w*`` (full range, as
        onnxruntime and llama.cpp), so it may be negative. ``False``: codes in ``[0, 2**b - 1]``
        with a zero point per group. Symmetric 1-bit is rejected: its levels ``{-1, 0} * s``
        (``s`` of either sign) are exactly those of 1-bit codes with a zero point (``{0, s}``
        with z = 0, ``{-s, 0}`` with z = 1), so it would only be a second spelling of the same
        quantizer; 1-bit weights use zero points (``w1g64``).

    Raises
    ------
    OptionError
        Any field is out of range; the message names the valid values.
    """

    bits: int
    group_size: int | None = 128
    symmetric: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bits(self.bits, "weight bits"))
        g = self.group_size
        if g is not None:
            if isinstance(g, bool | np.bool_) or not isinstance(g, int | np.integer) or g < 1:
                raise OptionError(f"group size must be a positive integer or None (one group per "
                                  f"column), got {g!r}")
            object.__setattr__(self, "group_size", int(g))
        if not isinstance(self.symmetric, bool | np.bool_):
            raise OptionError(f"symmetric must be True or False, got {self.symmetric!r}")
        object.__setattr__(self, "symmetric", bool(self.symmetric))
        if self.symmetric and self.bits == 1:
            raise OptionError("symmetric 1-bit weights are not supported: their levels {-1, 0} "
                              "x scale are the levels of 1-bit codes with a zero point; use "
                              "1-bit with zero points (symmetric=False, e.g. w1g64)")

    @property
    def name(self) -> str:
        """The canonical name, e.g. ``w4g128`` or ``w8channelsym``; ``parse(name)`` is ``self``."""
        group = "channel" if self.group_size is None else f"g{self.group_size}"
        return f"w{self.bits}{group}{'sym' if self.symmetric else ''}"

    def group_size_for(self, k: int) -> int:
        """The group size used for a reduction length ``k``: ``group_size``, or ``k`` if None."""
        return k if self.group_size is None else self.group_size

    def n_groups(self, k: int) -> int:
        """Groups along a reduction axis of length ``k``: ``ceil(k / g)``."""
        return -(-k // self.group_size_for(k))

    def padded_k(self, k: int) -> int:
        """``k`` rounded up to a whole number of groups: ``n_groups(k) * g``."""
        return self.n_groups(k) * self.group_size_for(k)

    @classmethod
    def from_name(cls, name: str) -> QuantScheme:
        """The registered preset called ``name``.

        Raises
        ------
        OptionError
            ``name`` is not a preset; the message lists the presets.
        """
        try:
            return _PRESETS[name]
        except KeyError:
            raise OptionError(f"unknown quantization preset '{name}'; "
                              f"{valid_choices(preset_names())}") from None

    @classmethod
    def parse(cls, text: str) -> QuantScheme:
        """A scheme from a CLI string: a preset or any ``w<bits>g<g>[sym]``/``w<bits>channel[sym]``.

        Case and surrounding whitespace are ignored.

        Raises
        ------
        OptionError
            ``text`` does not follow the grammar or its values are out of range.
        """
        match = _NAME.fullmatch(text.strip().lower())
        if match is None:
            raise OptionError(f"cannot parse quantization scheme '{text}'; write {_GRAMMAR} "
                              f"(presets: {', '.join(preset_names())})")
        group = None if match["channel"] else int(match["group"])
        return cls(int(match["bits"]), group, match["kind"] == "sym")

    def __str__(self) -> str:
        return self.name


_PRESETS: dict[str, QuantScheme] = {}


def register_preset(scheme: QuantScheme) -> QuantScheme:
    """Register ``scheme`` under its canonical name.

    Raises
    ------
    OptionError
        A preset of that name is already registered.
    """
    if scheme.name in _PRESETS:
        raise OptionError(f"quantization preset '{scheme.name}' is already registered")
    _PRESETS[scheme.name] = scheme
    return scheme


def preset_names() -> list[str]:
    """Names of the registered presets, sorted."""
    return sorted(_PRESETS)


for _bits, _group, _symmetric in [
    (8, 128, False), (8, 128, True), (8, None, False), (8, None, True),
    (4, 32, False), (4, 64, False), (4, 128, False), (4, 128, True), (4, None, False),
    (3, 64, False), (3, 128, False),
    (2, 32, False), (2, 64, False), (2, 128, False),
    (1, 64, False),
]:
    register_preset(QuantScheme(_bits, _group, _symmetric))
