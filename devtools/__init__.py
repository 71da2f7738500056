"""Test and build tooling: not part of the installed package, never run in production.

- `devtools.native`: the host-native harness (a plugin compiled with
  `target="native"` run as a shared library in this process, no VM).
- `devtools.conformance`: the WebAssembly core spec-test runner for the
  micro-guest's wasm engine (`python -m devtools.conformance --help`, run
  from the repository root); `conformance_glue` and `conformance.c` are its
  generated-C and runtime halves.
"""
