"""Long fuzz runs: `python -m devtools.fuzz hostcalls --examples 10000000`.

Engines: `random` (seeded bytes, the fastest, reproducible from --seed) and
`atheris` (coverage-guided libFuzzer, when the atheris wheel is installed).
Every input goes through the same oracle as the test suite
(devtools/fuzz_hostcalls.py); a finding is printed with its input in hex and
the run goes on. Exit status 1 if anything was found.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable

from devtools.fuzz_hostcalls import Finding, HostcallHarness, record_from_bytes

MAX_INPUT = 96


class Run:
    def __init__(self, report_every: float, limit: int) -> None:
        self.limit = limit
        self.harness = HostcallHarness()
        self.outcomes: Counter[str] = Counter()
        self.findings: dict[str, bytes] = {}
        self.n = 0
        self.start = self.last = time.monotonic()
        self.report_every = report_every

    def one(self, data: bytes) -> None:
        self.n += 1
        try:
            self.outcomes[self.harness.run(record_from_bytes(data))] += 1
        except Finding as e:
            key = str(e).split(":", 1)[0]
            if key not in self.findings:
                self.findings[key] = data
                print(f"FINDING {e}\n  input {data.hex()}", flush=True)
        if self.n == self.limit:  # libFuzzer ends the process itself after its last run
            self.report("done")
            if self.findings:
                sys.stdout.flush()
                os._exit(1)
        now = time.monotonic()
        if now - self.last >= self.report_every:
            self.last = now
            self.report("progress")

    def report(self, what: str) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed else 0.0
        print(f"{what}: {self.n} inputs in {elapsed:.0f} s ({rate:.0f}/s), findings "
              f"{len(self.findings)}, outcomes {dict(self.outcomes)}", flush=True)


def _random(run: Run, examples: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(examples):
        run.one(rng.randbytes(rng.randrange(MAX_INPUT)))


def _atheris(run: Run, examples: int, seed: int) -> None:
    import atheris  # optional: the long run's engine

    import devtools.fuzz_hostcalls
    import vmm.capabilities
    import vmm.kvstore
    import vmm.microvm.hostcalls
    import vmm.microvm.layout
    import vmm.microvm.vm
    import vmm.microvm.wasip2_host

    for module in (devtools.fuzz_hostcalls, vmm.capabilities, vmm.kvstore, vmm.microvm.hostcalls,
                   vmm.microvm.layout, vmm.microvm.vm, vmm.microvm.wasip2_host):
        for value in vars(module).values():
            _instrument(atheris, value, module.__name__)
    atheris.Setup([sys.argv[0], f"-runs={examples}", f"-seed={seed}", f"-max_len={MAX_INPUT}",
                   "-print_final_stats=1"], run.one)
    with contextlib.suppress(SystemExit):  # libFuzzer exits when -runs is reached
        atheris.Fuzz()


def _instrument(atheris: object, value: object, module: str) -> None:
    """Coverage for the code under test only (instrument_all would slow every library)."""
    instrument: Callable[[object], object] = atheris.instrument_func  # type: ignore[attr-defined]
    if getattr(value, "__module__", None) != module:
        return
    if isinstance(value, type):
        for attr in vars(value).values():
            if callable(attr) and hasattr(attr, "__code__"):
                instrument(attr)
    elif callable(value) and hasattr(value, "__code__"):
        instrument(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.fuzz", description=__doc__)
    parser.add_argument("target", choices=["hostcalls"])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=["random", "atheris"], default="random")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    run = Run(args.report_every, args.examples)
    with run.harness.installed():
        (_atheris if args.engine == "atheris" else _random)(run, args.examples, args.seed)
    return 1 if run.findings else 0


if __name__ == "__main__":
    sys.exit(main())
