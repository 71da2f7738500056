"""vmm/microvm/abi.py must match the C headers the guest is built from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmm.microvm import abi

INCLUDE = Path(__file__).resolve().parents[1] / "guest" / "include"


def _defines(text: str) -> dict[str, int]:
    out = {}
    for name, value in re.findall(r"^#define\s+(LC_\w+)\s+(0x[0-9a-fA-F]+|\d+)u?(?:ll)?u?\b", text, re.M):
        out[name] = int(value, 0)
    return out


def _enum_values(text: str, enum_name: str) -> dict[str, int]:
    body = re.search(r"enum\s+" + enum_name + r"\s*\{(.*?)\};", text, re.S)
    assert body, enum_name
    values = {}
    for name, value in re.findall(r"(LC_\w+)\s*=\s*(\d+)", body.group(1)):
        values[name] = int(value)
    return values


def _struct_fields(text: str, struct_name: str) -> list[str]:
    body = re.search(r"struct\s+" + struct_name + r"\s*\{(.*?)\};", text, re.S)
    assert body, struct_name
    return re.findall(r"uint(\d+)_t\s+\w+;", body.group(1))


def test_defines_match() -> None:
    defines = _defines((INCLUDE / "lightcell_abi.h").read_text())
    assert len(defines) > 25
    for name, value in defines.items():
        assert getattr(abi, name) == value, name


@pytest.mark.parametrize(
    ("enum_name", "py_enum", "prefix"),
    [
        ("lc_op", abi.Op, "LC_OP_"),
        ("lc_status", abi.Status, "LC_STATUS_"),
        ("lc_trap", abi.Trap, "LC_TRAP_"),
        ("lc_hostfn", abi.HostFn, "LC_HOST_"),
        ("lc_hostcall_status", abi.HostcallStatus, "LC_HOSTCALL_"),
    ],
)
def test_enums_match(enum_name: str, py_enum: type, prefix: str) -> None:
    values = _enum_values((INCLUDE / "lc_guest.h").read_text(), enum_name)
    assert values
    mirrored = {prefix + m.name: int(m.value) for m in py_enum}  # type: ignore[attr-defined]
    assert mirrored == values


@pytest.mark.parametrize(
    ("header", "struct_name", "fmt"),
    [
        ("lc_guest.h", "lc_request", abi.REQUEST.format),
        ("lc_guest.h", "lc_response", abi.RESPONSE.format),
        ("lc_guest.h", "lc_hostcall", abi.HOSTCALL.format),
        ("lc_guest.h", "lc_hostcall_result", abi.HOSTCALL_RESULT.format),
        ("lightcell_abi.h", "lc_image_header", abi.IMAGE_HEADER.format),
    ],
)
def test_records_match(header: str, struct_name: str, fmt: str) -> None:
    bits = _struct_fields((INCLUDE / header).read_text(), struct_name)
    codes = {"8": "B", "16": "H", "32": "I", "64": "Q"}
    assert "<" + "".join(codes[b] for b in bits) == fmt
