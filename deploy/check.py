"""Render every kustomization under deploy/ and validate the result offline; lint the Dockerfile.

`make deploy-check` runs it with the tools of deploy/check-requirements.txt in the project's
virtual environment: kubectl (its built-in kustomize renders), kubernetes-validate (the Kubernetes
JSON schemas, shipped in the package: no cluster, no network) and hadolint. Any error fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
TOOLS = Path(sys.executable).parent
# The oldest and the newest Kubernetes the manifests are checked against.
KUBE_VERSIONS = ("1.28.0", "1.37.0")
# Kinds with no built-in schema (custom resources) that a manifest may use on purpose. None so far:
# metrics are scraped through annotations, not ServiceMonitor objects. Anything else without a
# schema is a typo in kind or apiVersion.
CUSTOM_KINDS: frozenset[str] = frozenset()
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PriorityClass"})


def render(kustomization: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` makes of one folder."""
    result = subprocess.run(
        [str(TOOLS / "kubectl"), "kustomize", str(kustomization)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"{kustomization.relative_to(ROOT)}: kubectl kustomize failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def problems(objects: list[dict[str, Any]], rendered: bool) -> list[str]:
    """Schema errors for every version checked, kinds without a schema, objects with no namespace."""
    found = []
    for obj in objects:
        kind = obj.get("kind", "?")
        name = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path)
                found.append(f"{name}: Kubernetes {version}: {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                if kind not in CUSTOM_KINDS:
                    found.append(f"{name}: {exc.message} (a custom resource? add it to CUSTOM_KINDS)")
        # A namespaced object with no namespace lands in the default namespace, and kustomize does
        # not point it at generated ConfigMaps of another namespace: set `namespace:` in the
        # kustomization that adds it.
        if rendered and kind not in CLUSTER_SCOPED and not obj.get("metadata", {}).get("namespace"):
            found.append(f"{name}: no namespace")
    return found


def main() -> int:
    """Check the base, each overlay and each secret template; then the Dockerfile."""
    folders = [DEPLOY / "base", *sorted(p.parent for p in DEPLOY.glob("overlays/*/kustomization.yaml"))]
    failed = False
    for folder in folders:
        objects = render(folder)
        found = problems(objects, rendered=True)
        failed |= bool(found)
        verdict = "FAILED" if found else "ok"
        print(f"{verdict}: {folder.relative_to(ROOT)} ({len(objects)} objects, Kubernetes {', '.join(KUBE_VERSIONS)})")
        for line in found:
            print(f"  {line}")
    for template in sorted(DEPLOY.rglob("*.example.yaml")):
        with template.open(encoding="utf-8") as stream:
            objects = [doc for doc in yaml.safe_load_all(stream) if doc]
        found = problems(objects, rendered=False)
        failed |= bool(found)
        print(f"{'FAILED' if found else 'ok'}: {template.relative_to(ROOT)} ({len(objects)} objects)")
        for line in found:
            print(f"  {line}")
    lint = subprocess.run([str(TOOLS / "hadolint"), str(ROOT / "Dockerfile")], check=False)
    failed |= lint.returncode != 0
    print(f"{'FAILED' if lint.returncode else 'ok'}: Dockerfile (hadolint)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
