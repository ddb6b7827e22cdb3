"""values.schema.json rejects bad values; the schema and the README's values table are generated
from their sources and must not drift."""
import pytest

import helm_python as helm

import gen_readme
import gen_schema
from conftest import CHART_DIR

BAD_VALUES = [
    ({"kind": "StatefulSet"}, "/kind"),
    ({"kind": 3}, "/kind"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"replicaCount": -1}, "/replicaCount"),
    ({"xds": {"address": "no-port"}}, "/xds/address"),
    ({"xds": {"address": 18000}}, "/xds/address"),
    ({"xds": {"clusterType": "EDS"}}, "/xds/clusterType"),
    ({"xds": {"connectTimeout": 5}}, "/xds/connectTimeout"),
    ({"xds": {"tls": {"enabled": "yes"}}}, "/xds/tls/enabled"),
    ({"admin": {"port": 70000}}, "/admin/port"),
    ({"concurrency": 0}, "/concurrency"),
    ({"concurrency": "4"}, "/concurrency"),
    ({"drain": {"strategy": "slow"}}, "/drain/strategy"),
    ({"drain": {"mode": "sigkill"}}, "/drain/mode"),
    ({"service": {"type": "ExternalName"}}, "/service/type"),
    ({"service": {"ports": [{"name": "http", "port": "80"}]}}, "/service/ports/0/port"),
    ({"service": {"ports": [{"port": 80}]}}, "/service/ports/0"),
    ({"service": {"ports": [{"name": "Not_A_Name", "port": 80}]}}, "/service/ports/0/name"),
    ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget/maxUnavailable"),
    ({"controlPlane": {"enabled": "true"}}, "/controlPlane/enabled"),
    ({"controlPlane": {"xdsResources": {"secrets": []}}}, "/controlPlane/xdsResources"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"logLevel": "verbose"}, "/logLevel"),
    ({"nodeSelector": {"disk": 1}}, "/nodeSelector/disk"),
    ({"replicas": 3}, "replicas"),  # a typo of replicaCount: unknown keys are rejected
    ({"serviceMonitor": {"enable": True}}, "enable"),
]


@pytest.mark.parametrize("values,where", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(values)
    assert where in str(err.value)
    # `helm install/template` refuse them too.
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name="courier", namespace="default")


@pytest.mark.parametrize("values", [
    {},
    {"kind": "DaemonSet", "xds": {"address": "[fd00::1]:18000", "clusterType": "STATIC"}},
    {"concurrency": 4, "podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
    {"controlPlane": {"enabled": False}, "xds": {"address": "cp:18000"}},
    {"resources": {"limits": {"cpu": 2, "memory": "1Gi"}}},
    {"global": {"imageRegistry": "x"}},
])
def test_schema_accepts(chart, values):
    chart.validate_schema(values)


def test_schema_file_is_generated():
    assert (CHART_DIR / "values.schema.json").read_text() == gen_schema.render(), (
        "values.schema.json is stale: run python3 helm/tests/gen_schema.py")


def test_every_value_is_documented():
    assert gen_readme.undocumented() == [], "values without a `# --` comment in values.yaml"


def test_readme_values_table_is_current():
    assert (CHART_DIR / "README.md").read_text() == gen_readme.rendered_readme(), (
        "helm/courier/README.md is stale: run python3 helm/tests/gen_readme.py")


def test_every_schema_property_is_a_value():
    """The schema and values.yaml describe the same keys (no schema-only or value-only keys)."""
    import yaml
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    def walk(schema, node, prefix):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key == "global":
                continue
            assert isinstance(node, dict) and key in node, f"schema key {prefix}{key} has no default in values.yaml"
            if sub.get("properties") and sub.get("additionalProperties") is False and key not in PASS_THROUGH:
                walk(sub, node[key], f"{prefix}{key}.")
        if isinstance(node, dict) and props:
            extra = set(node) - set(props)
            assert not extra, f"values.yaml keys {extra} under {prefix or '.'} are missing from the schema"

    PASS_THROUGH = {"locality", "resources", "xdsResources"}  # user-shaped objects with optional keys
    walk(gen_schema.SCHEMA, values, "")
