"""hypothesis profiles for the fuzz tests: `ci` (default: bounded, derandomized, so a CI
run is stable and takes seconds) and `long` (LIGHTCELL_FUZZ=long: many random examples,
for a developer's run). Imported by every tests/test_fuzz_*.py."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.load_profile(os.environ.get("LIGHTCELL_FUZZ", "ci"))


def examples(n: int) -> settings:
    """At most n examples under `ci` (for the slower targets), the profile's count under `long`."""
    current = settings.default
    assert current is not None
    cap = min(n, current.max_examples) if current.derandomize else current.max_examples
    return settings(max_examples=cap)
