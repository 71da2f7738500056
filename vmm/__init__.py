"""Lightcell's sandbox layer: the tier-agnostic sandbox interface, host
capabilities shared by every tier, the wasmtime tier and the KVM micro-VM tier.

Nothing in this package knows about Envoy or gRPC.
"""
