"""WebAssembly core spec tests through the micro-guest's wasm engine
(devtools/conformance.py): a representative subset in the host-native
harness, a few files in real micro-VMs, and proof that the runner can fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import conformance

# Files of the CI subset that pass completely today; any failure there is a
# regression of the runtime (the others run too, and their counts are printed).
MUST_PASS = (
    "i32", "i64", "f32", "f64", "f32_cmp", "conversions", "int_exprs", "call_indirect", "memory_grow",
    "memory_trap", "address", "traps", "unreachable", "fac", "left-to-right", "stack", "bulk", "table_grow",
)


# The spec suite lives outside the repository (../shared/wasm-testsuite, or
# $LIGHTCELL_WASM_TESTSUITE); only the tests that read it need it. The runner's
# own tests bring their .wast files.
needs_suite = pytest.mark.skipif(
    not conformance.SUITE_DIR.is_dir(),
    reason=f"WebAssembly spec tests not found in {conformance.SUITE_DIR} "
    f"(set ${conformance.SUITE_ENV} to a checkout of WebAssembly/testsuite)",
)


@needs_suite
@pytest.mark.slow
def test_ci_subset_native(capsys: pytest.CaptureFixture[str]) -> None:
    files = [conformance.SUITE_DIR / f"{n}.wast" for n in conformance.CI_SUBSET]
    results = {r.name: r for r in conformance.run_files(files, jobs=2)}
    with capsys.disabled():
        for r in results.values():
            print(f"\n{r.name:20} passed {r.passed:5} failed {r.failed:4} skipped {r.skipped:4}", end="")
        print()
    for name in MUST_PASS:
        r = results[name]
        assert r.failed == 0 and r.passed > 0, r.failures
    assert sum(r.passed for r in results.values()) > 4000


@needs_suite
@pytest.mark.kvm
def test_spec_files_in_real_micro_vms() -> None:
    files = [conformance.SUITE_DIR / f"{n}.wast" for n in ("i32", "traps", "memory_grow", "call_indirect")]
    for r in conformance.run_files(files, vm=True):
        assert r.failed == 0 and r.passed > 0, r.failures


WRONG = """
(module
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "div") (param i32 i32) (result i32) (i32.div_u (local.get 0) (local.get 1))))
(assert_return (invoke "add" (i32.const 1) (i32.const 2)) (i32.const 3))
(assert_return (invoke "add" (i32.const 1) (i32.const 2)) (i32.const 4))
(assert_trap (invoke "div" (i32.const 1) (i32.const 0)) "integer divide by zero")
(assert_trap (invoke "div" (i32.const 1) (i32.const 1)) "integer divide by zero")
"""


def test_the_runner_reports_failures(tmp_path: Path) -> None:
    wast = tmp_path / "wrong.wast"
    wast.write_text(WRONG)
    r = conformance.run_file(wast)
    assert (r.passed, r.failed) == (3, 2)  # module + 1 return + 1 trap pass; one of each fails
    assert any("add" in f for f in r.failures) and any("div" in f for f in r.failures)


def test_cli_prints_counts_per_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "wrong.wast").write_text(WRONG)
    assert conformance.main([str(tmp_path / "wrong.wast")]) == 0
    out = capsys.readouterr().out
    assert "wrong" in out and "passed     3" in out and "failed     2" in out and "TOTAL" in out


def test_the_suite_is_found_beside_the_repository_or_by_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(conformance.SUITE_ENV, raising=False)
    repo = Path(__file__).resolve().parent.parent
    found = conformance._suite_dir()
    assert found.name == "wasm-testsuite" and found.parent.name == "shared"
    assert found.parent.parent in repo.parents  # beside the repository or one of its parents
    monkeypatch.setenv(conformance.SUITE_ENV, str(tmp_path))
    assert conformance._suite_dir() == tmp_path
