"""Shared fixtures (generated example models, written once per session) and the test tiers.

Tiers (markers registered in pyproject.toml, assigned here at collection so test files need no
edits):

* ``cbuild``: builds C with ``cc``/``make``: a test (or its module) skipped when no C compiler is
  found, one parametrized with ``target="c"``, or one of the c target's files (``test_c_*.py``);
* ``realmodel``: needs a real model's files (Gemma 3 270M under ``~/.cache/sail-models``): a test
  skipped when they are not built;
* ``slow``: every ``cbuild`` and ``realmodel`` test; every test that uses a module-scoped
  fixture of its own file (they build a model once for the file's tests: a compile, a C build);
  and the tests listed in ``tests/slow_tests.txt`` (measured; the file says how).

``python -m pytest -q -m "not slow"`` is the fast tier for the edit-test loop;
``python -m pytest -q -n 2 --dist loadfile`` runs every tier (the README's and CI's command).
``SAIL_TEST_TIMES=FILE`` appends ``nodeid<TAB>seconds`` (setup + call + teardown) per test to
FILE as the run goes, for refreshing ``slow_tests.txt``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model

TESTS = Path(__file__).resolve().parent
#: Node ids measured slow, one a line (``#`` comments).
SLOW_LIST = TESTS / "slow_tests.txt"
#: skipif reasons that say a test builds C, or needs a real model's files.
_CBUILD_REASON = re.compile(r"\bcc\b|\bmake\b|C compiler")
_REALMODEL_REASON = re.compile(r"Gemma|sail-models|real model")


def _slow_ids() -> set[str]:
    if not SLOW_LIST.exists():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in SLOW_LIST.read_text().splitlines())
    return {line for line in lines if line}


def _skip_reasons(item: pytest.Item) -> list[str]:
    return [str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")]


def _uses_module_fixture(item: pytest.Item) -> bool:
    """Whether ``item`` requests a fixture of broader than function scope defined in its own
    test file (pytest's fixture table: ``_fixtureinfo`` has no public accessor)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    module = item.nodeid.split("::", 1)[0]
    return any(d.scope != "function" and d.baseid == module
               for defs in info.name2fixturedefs.values() for d in defs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = _slow_ids()
    for item in items:
        reasons = _skip_reasons(item)
        params = getattr(getattr(item, "callspec", None), "params", {})
        cbuild = (any(_CBUILD_REASON.search(r) for r in reasons) or params.get("target") == "c"
                  or item.path.name.startswith("test_c_"))
        realmodel = any(_REALMODEL_REASON.search(r) for r in reasons)
        if cbuild:
            item.add_marker(pytest.mark.cbuild)
        if realmodel:
            item.add_marker(pytest.mark.realmodel)
        if cbuild or realmodel or item.nodeid in slow or _uses_module_fixture(item):
            item.add_marker(pytest.mark.slow)


_times: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("SAIL_TEST_TIMES")
    if not path:
        return
    _times[report.nodeid] = _times.get(report.nodeid, 0.0) + report.duration
    if report.when == "teardown":
        with open(path, "a") as f:
            f.write(f"{report.nodeid}\t{_times.pop(report.nodeid):.2f}\n")


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ~1M-parameter example decoder without KV cache."""
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    save_model(make_decoder(PRESETS["tiny"]), path)
    return path


@pytest.fixture(scope="session")
def tiny_decoder_kv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ~1M-parameter example decoder with past/present KV tensors."""
    path = tmp_path_factory.mktemp("models") / "tiny_kv.onnx"
    save_model(make_decoder(PRESETS["tiny"], kv_cache=True), path)
    return path


@pytest.fixture(scope="session")
def micro_decoder_kv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro example decoder with past/present KV tensors (32-row rotary tables)."""
    path = tmp_path_factory.mktemp("models") / "micro_kv.onnx"
    save_model(make_decoder(PRESETS["micro"], kv_cache=True), path)
    return path


@pytest.fixture(scope="session")
def micro_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer decoder: the fastest model that has every op of the example."""
    path = tmp_path_factory.mktemp("models") / "micro.onnx"
    save_model(make_decoder(PRESETS["micro"]), path)
    return path
