"""WebAssembly core spec tests through the micro-guest's wasm engine
(devtools/conformance.py): a representative subset in the host-native
harness beside the reference interpreter (devtools/spec_reference.py), a few
files natively and in real micro-VMs with equal results, the spec semantics
the runner must honour, and proof that the runner can fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import conformance, spec_reference
from devtools.conformance_result import ENGINE, FEATURE_OFF, TEXT, WASM2C, FileResult

# Files of the CI subset that pass completely today; any failure there is a
# regression of the runtime (the others run too, and their counts are printed).
MUST_PASS = (
    "i32", "i64", "f32", "f64", "f32_cmp", "conversions", "int_exprs", "call_indirect", "memory_grow",
    "memory_trap", "address", "traps", "unreachable", "fac", "left-to-right", "stack", "bulk", "table_grow",
    "imports",
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
    assert sum(r.passed for r in results.values()) >= 10500
    # Beside the reference (spectest-interp): wherever Lightcell does worse it
    # is for a refused proposal, a wasm2c limitation or a text-format module,
    # never the runner or the engine.
    comparisons = [spectest_compare(results[f.stem], f) for f in files]
    with capsys.disabled():
        print(spec_reference.report(comparisons))
    worse = {cause for c in comparisons for cause in c.worse}
    assert worse and all(c.split(":")[0] in (FEATURE_OFF, WASM2C, TEXT) for c in worse), worse
    assert all(c.ref.total > 0 and not c.ref.error for c in comparisons)


def spectest_compare(r: FileResult, wast: Path) -> spec_reference.Comparison:
    return spec_reference.compare(r, spec_reference.run_reference(wast))


def test_the_reference_comparison_names_what_is_worse() -> None:
    out = ("/s/x.wast:5: assert_trap passed: trap\n/s/x.wast:9: mismatch in result 0 of assert_return\n"
           "/s/x.wast:12: error reading module: \"x.3.wasm\"\n3/5 tests passed.\n")
    ref = spec_reference._parse("x", out)
    assert (ref.passed, ref.total, ref.failing_lines) == (3, 5, {9, 12})
    ours = FileResult("x")
    ours.fail(9, "got 1", f"{ENGINE}: wrong result")  # the reference fails it too
    ours.refuse(5, f"{FEATURE_OFF}: memory64")
    ours.skip(7, f"{TEXT}: assert_malformed")
    c = spec_reference.compare(ours, ref)
    assert c.worse == {f"{FEATURE_OFF}: memory64": 1, f"{TEXT}: assert_malformed": 1}
    assert c.better == [12]
    assert "memory64" in spec_reference.report([c])
    with pytest.raises(ValueError):
        ours.fail(1, "?", "no category")


@pytest.mark.kvm
def test_a_trapping_instantiation_keeps_its_writes_in_a_micro_vm(tmp_path: Path) -> None:
    (tmp_path / "spec.wast").write_text(SPEC)
    r = conformance.run_file(tmp_path / "spec.wast", vm=True)
    assert {m[0]: m[1:] for m in r.misses} == SPEC_OUTCOMES, r.failures


@needs_suite
@pytest.mark.kvm
def test_spec_files_in_real_micro_vms_as_natively() -> None:
    names = ("traps", "memory_grow", "call_indirect", "linking")
    files = [conformance.SUITE_DIR / f"{n}.wast" for n in names]
    native = list(conformance.run_files(files, jobs=2))
    for r, n in zip(conformance.run_files(files, jobs=2, vm=True), native, strict=True):
        assert (r.passed, r.failed, r.skipped, r.refused, r.causes) == (
            n.passed, n.failed, n.skipped, n.refused, n.causes), r.failures
        assert not any(c.startswith("engine bug") for c in r.causes), r.failures
    assert sum(r.passed for r in native) >= 350  # linking.wast: 150 of 154


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
    assert r.causes == {"engine bug: wrong result": 1, "engine bug: no trap": 1}
    assert sorted(m[0] for m in r.misses) == [6, 8]


# The spec's semantics, each of which the runner got wrong once: a module that
# does not build sinks only its importers; a definition is never instantiated;
# a trap has a kind; names come from the binary; `either`; the linker refuses
# unknown or mistyped imports; a trapping instantiation keeps what it wrote
# into an imported memory.
SPEC = r"""
(module $A (memory i64 1) (func (export "f") (result i32) (i32.const 1)))
(module $B (func (export "g") (result i32) (i32.const 2))
  (func (export "a\"b\\c") (result i32) (i32.const 3))
  (func (export "div") (param i32 i32) (result i32) (i32.div_u (local.get 0) (local.get 1))))
(register "B" $B)
(module (import "B" "g" (func $g (result i32))) (func (export "h") (result i32) (call $g)))
(assert_return (invoke "h") (either (i32.const 7) (i32.const 2)))
(assert_return (invoke $B "a\"b\\c") (i32.const 3))
(assert_trap (invoke $B "div" (i32.const 1) (i32.const 0)) "integer divide by zero")
(assert_trap (invoke $B "div" (i32.const 1) (i32.const 0)) "unreachable")
(assert_unlinkable (module (import "B" "nope" (func))) "unknown import")
(assert_unlinkable (module (import "B" "g" (func (param i32)))) "incompatible import type")
(assert_unlinkable (module (import "B" "g" (func (result i32)))) "incompatible import type")
(module definition (memory 65536))
(module $M (memory (export "mem") 1)
  (func (export "peek") (param i32) (result i32) (i32.load8_u (local.get 0))))
(register "M" $M)
(assert_trap (module (import "M" "mem" (memory 1)) (data (i32.const 0) "\2a")
  (func $s unreachable) (start $s)) "unreachable")
(assert_return (invoke $M "peek" (i32.const 0)) (i32.const 42))
"""
SPEC_OUTCOMES = {  # line -> outcome, cause: everything else passes
    2: ["refused", "refused proposal: memory64"],
    11: ["failed", "engine bug: wrong trap"],
    14: ["failed", "runner limitation: link check"],
}


def test_commands_are_checked_as_the_spec_says(tmp_path: Path) -> None:
    (tmp_path / "spec.wast").write_text(SPEC)
    r = conformance.run_file(tmp_path / "spec.wast")
    assert {m[0]: m[1:] for m in r.misses} == SPEC_OUTCOMES, r.failures
    assert (r.passed, r.failed, r.refused) == (11, 2, 1)


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
