"""Lightcell's Envoy-facing side: the network ext_proc gRPC service, per-connection
sessions, the listener policy read from the Envoy bootstrap, and the `lightcell` CLI.

Nothing in this package knows about KVM or wasmtime: plugins are loaded through
extproc.plugins, which hands back tier-agnostic vmm.sandbox.SandboxFactory objects.
"""
