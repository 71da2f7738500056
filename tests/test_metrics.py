"""Metrics and logs without a server: the exported collectors, the address rule, JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc import cli
from extproc.config import ConfigError
from extproc.logsetup import JsonFormatter
from extproc.metrics_http import parse_address
from vmm.capabilities import HostCapabilities
from vmm.kvstore import KvStore
from vmm.metrics import EXPORTED, Metrics
from vmm.policy import Grants, Limits


def exported(name: str, **labels: str) -> float:
    return EXPORTED.registry.get_sample_value(f"lightcell_{name}", labels) or 0.0


def test_exporting_metrics_feed_prometheus_and_private_ones_do_not() -> None:
    labels = {"listener": "unit-export", "tier": "wasmtime"}
    before = exported("connections_total", **labels)
    Metrics(export=True).inc("connections_total", 2, **labels)
    Metrics().inc("connections_total", 5, **labels)  # a private instance (tests, warm instances)
    assert exported("connections_total", **labels) == before + 2


def test_missing_labels_are_empty_and_undeclared_counters_are_made_on_first_use() -> None:
    m = Metrics(export=True)
    m.inc("streams_refused_total", reason="unit-missing")  # the network service gives no protocol
    assert exported("streams_refused_total", reason="unit-missing", protocol="tcp") == 1
    m.inc("unit_new_total", listener="a")
    m.inc("unit_new_total", listener="a", extra="dropped")  # logged once, not exported
    assert exported("unit_new_total", listener="a") == 2
    assert m.get("unit_new_total", listener="a") == 2  # the in-memory count as before


def test_gauges_and_histograms() -> None:
    m = Metrics(export=True)
    with m.active("connections_active", listener="unit-gauge", tier="microvm"):
        assert exported("connections_active", listener="unit-gauge", tier="microvm") == 1
    assert exported("connections_active", listener="unit-gauge", tier="microvm") == 0
    with m.timed("hook_seconds", hook="unit-hook", tier="wasmtime"):
        pass
    assert exported("hook_seconds_count", hook="unit-hook", tier="wasmtime") == 1
    assert exported("hook_seconds_bucket", hook="unit-hook", tier="wasmtime", le="+Inf") == 1


@pytest.mark.parametrize(
    ("text", "public", "host", "port"),
    [
        ("127.0.0.1:9464", False, "127.0.0.1", 9464),
        ("localhost:1", False, "localhost", 1),
        ("[::1]:9464", False, "::1", 9464),
        ("127.1.2.3:0", False, "127.1.2.3", 0),
        ("0.0.0.0:9464", True, "0.0.0.0", 9464),
        ("[::]:9464", True, "::", 9464),
    ],
)
def test_metrics_addresses_accepted(text: str, public: bool, host: str, port: int) -> None:
    address = parse_address(text, public)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0.0.0.0:9464", "not a loopback address"),
        ("[::]:9464", "not a loopback address"),
        ("10.1.2.3:9464", "not a loopback address"),
        ("example.com:9464", "must be an IP address"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:70000", "expected HOST:PORT"),
        (":9464", "expected HOST:PORT"),
    ],
)
def test_metrics_addresses_refused(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_address(text)


def test_serve_refuses_a_public_metrics_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(tmp_path / "unused.yaml")
    assert cli.main(["serve", "--envoy-config", config, "--metrics-address", "0.0.0.0:9464"]) == 1
    err = capsys.readouterr().err
    assert "is not a loopback address" in err and "--metrics-public" in err
    assert cli.main(["serve", "--envoy-config", config, "--metrics-public"]) == 1
    assert "--metrics-public needs --metrics-address" in capsys.readouterr().err


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_json_lines_carry_the_call_site_fields(json_log: io.StringIO) -> None:
    logger = logging.getLogger("lightcell.unit")
    logger.warning("plugin fault %s", "x", extra={"listener": "edge", "fault": "trap", "sandbox": "vm-1"})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("internal error", extra={"listener": "edge"})
    first, second = (json.loads(line) for line in json_log.getvalue().splitlines())
    assert first["level"] == "warning" and first["logger"] == "lightcell.unit"
    assert first["message"] == "plugin fault x"
    assert (first["listener"], first["fault"], first["sandbox"]) == ("edge", "trap", "vm-1")
    assert first["time"].endswith("+00:00") and "plugin" not in first
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]


FORGED = 'hi"}\n{"time":"x","level":"error","logger":"lightcell.server","message":"forged"}\u2028\r\x1b[2J'


def test_plugin_log_lines_cannot_forge_json_records(json_log: io.StringIO) -> None:
    grants = Grants(frozenset({"log"}))
    host = HostCapabilities("edge", "evil", grants, Limits(), KvStore(1, 1), metrics=Metrics())
    host.log(2, FORGED)
    lines = json_log.getvalue().splitlines()
    assert len(lines) == 1, lines  # no newline, CR or U+2028 of the plugin's reaches the output
    (record,) = (json.loads(line) for line in lines)
    assert record["logger"] == "lightcell.plugin" and record["level"] == "info"
    assert (record["listener"], record["plugin"]) == ("edge", "evil")
    assert record["message"].startswith("[edge/evil] hi\"}\\x0a{") and "\\x1b" in record["message"]


def test_plugin_log_lines_cannot_forge_text_records() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("lightcell.plugin")
    logger.addHandler(handler)
    try:
        host = HostCapabilities("edge", "evil", Grants(frozenset({"log"})), Limits(), KvStore(1, 1),
                                metrics=Metrics())  # fmt: skip
        host.log(2, FORGED)
    finally:
        logger.removeHandler(handler)
    assert len(out.getvalue().splitlines()) == 1


@pytest.mark.parametrize("char", ["\x85", "\x9b", "\u202e", "\u2066", "\u200f", "\u2029", "\x7f"])
def test_c1_controls_and_bidi_overrides_are_escaped_in_plugin_text(char: str) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("lightcell.plugin")
    logger.addHandler(handler)
    try:
        host = HostCapabilities("edge", "evil", Grants(frozenset({"log"})), Limits(), KvStore(1, 1),
                                metrics=Metrics())  # fmt: skip
        host.log(2, f"before{char}after\ttab")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert char not in text and "\t" in text  # a tab is harmless and kept
    escaped = f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    assert f"before{escaped}after" in text
