"""Shared set-up for the KVM tests: the test guest (boot + C test runtime)."""

from __future__ import annotations

from vmm.capabilities import HostCapabilities
from vmm.kvm import System
from vmm.kvstore import KvStore
from vmm.microvm import guest_build
from vmm.microvm.image import load_image
from vmm.microvm.layout import Layout
from vmm.microvm.machine import Template, build_template
from vmm.microvm.vm import MicroVm
from vmm.policy import Grants, Limits


def make_test_template(memory_bytes: int = 4 << 20) -> Template:
    return build_template(load_image(guest_build.build_test_image()), Layout.for_memory_limit(memory_bytes))


def booted(system: System, template: Template) -> MicroVm:
    vm = MicroVm(system, template)
    vm.boot()
    return vm


def host(*grants: str) -> HostCapabilities:
    return HostCapabilities(listener="l", plugin="p", grants=Grants(frozenset(grants)), limits=Limits(),
                            kv=KvStore(100, 1024))
