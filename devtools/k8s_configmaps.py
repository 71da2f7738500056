"""Write the Envoy-config ConfigMaps of deploy/kubernetes/ from deploy/kubernetes/envoy.yaml.

`python -m devtools.k8s_configmaps` after editing envoy.yaml; tests/test_kubernetes.py fails
while a ConfigMap differs from what this writes (so the variants never drift apart).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
SOURCE = ROOT / "envoy.yaml"
TARGETS = {
    ROOT / "sidecar" / "envoy-config.yaml": "lightcell",
    ROOT / "node" / "envoy-config.yaml": "lightcell-node",
}
NAME = "envoy-lightcell"
LABELS = {"app.kubernetes.io/part-of": "lightcell"}


class _Literal(str):
    """A string YAML writes as a `|` block, so the ConfigMap reads like the file."""


def _literal(dumper: yaml.SafeDumper, data: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


def render(namespace: str) -> str:
    yaml.SafeDumper.add_representer(_Literal, _literal)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": NAME, "namespace": namespace, "labels": LABELS},
        "data": {"envoy.yaml": _Literal(SOURCE.read_text())},
    }
    head = "# Written by `python -m devtools.k8s_configmaps` from deploy/kubernetes/envoy.yaml: edit that.\n"
    return head + yaml.safe_dump(config_map, sort_keys=False, width=200)


def main() -> int:
    for path, namespace in TARGETS.items():
        path.write_text(render(namespace))
        print(f"wrote {path.relative_to(ROOT.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
