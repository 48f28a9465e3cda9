"""Errors the user can act on.

Everything the user controls (the model file, options, inputs, artifacts) is checked and reported
with a :class:`SailError` whose message names the problem and the fix. The CLI prints the message
on one line (or a short list) and exits with :attr:`SailError.exit_code`; ``--traceback`` shows
the stack. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations

import tvm_ffi


class SailError(Exception):
    """A problem with what the user gave; the message says what is wrong and how to fix it."""

    exit_code: int = 2


class ModelCheckError(SailError):
    """The model failed the checks run before import; ``problems`` lists every one found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{path}: {len(self.problems)} {noun} found before import:\n{lines}")


class OptionError(SailError):
    """An option value is out of range or inconsistent; the message lists the valid choices."""


class ImportFailure(SailError):
    """TVM's importer failed on a model that passed the checks."""


class ArtifactError(SailError):
    """A compiled artifact is missing, incomplete, or from an incompatible version."""


class InputError(SailError):
    """Run-time inputs do not match the compiled model's signature."""


def tvm_message(err: BaseException) -> str:
    """The message of an error raised through TVM: its last line (TVM prints the C++ trace
    first), without a trailing period; the exception type if it has no text."""
    text = str(err).strip()
    return text.splitlines()[-1].rstrip(".") if text else type(err).__name__


def valid_choices(choices: list[str] | tuple[str, ...]) -> str:
    """The "valid choices are ..." part of an error message."""
    return f"valid choices are: {', '.join(sorted(choices))}"


# An exception raised inside a pass crosses TVM's FFI and comes back as RuntimeError unless its
# class is registered under its name; registered, the caller catches the SailError it raised.
# (ModelCheckError is raised before any pass runs, and its constructor takes structured data.)
for _error in (SailError, OptionError, ImportFailure, ArtifactError, InputError):
    tvm_ffi.register_error(_error.__name__, _error)
