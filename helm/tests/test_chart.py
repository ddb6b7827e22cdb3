"""Lint and render the chart with Helm's Go SDK, validate every manifest against the Kubernetes
schemas, and check every rendered bootstrap with a real Envoy (`envoy --mode validate`)."""
import hashlib
import json
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

import helm_python as helm

from conftest import CHART_DIR, K8S_VERSION, NAMESPACE, RELEASE, envoy_validate, render

CUSTOM_BOOTSTRAP = """\
node:
  metadata: {custom: "yes"}
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: 9901}
static_resources:
  listeners:
  - name: tcp_in
    address:
      socket_address: {address: 0.0.0.0, port_value: 10000}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_in
          cluster: backend
  clusters:
  - name: backend
    type: STRICT_DNS
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: backend.edge.svc, port_value: 8080}}}
"""

# name -> values. Each set is linted, rendered, schema-validated and (bootstrap) Envoy-validated.
VALUE_SETS = {
    "default": {},
    "external-xds": {"xds": {"address": "my-cp.ns.svc:18000"}},
    "daemonset": {
        "kind": "DaemonSet",
        "xds": {"address": "istiod.istio-system.svc:15010"},
        "hostNetwork": True,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "tolerations": [{"operator": "Exists"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "priorityClassName": "system-node-critical",
    },
    "control-plane": {"controlPlane": {"enabled": True, "rollOnResourceChange": True}},
    "hot-restart": {"xds": {"address": "my-cp.ns.svc:18000"}, "hotRestart": {"onConfigChange": True}},
    "hpa-pdb": {
        "xds": {"address": "my-cp.ns.svc:18000"},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12,
                        "targetMemoryUtilizationPercentage": 80},
        "podDisruptionBudget": {"enabled": True, "minAvailable": "50%"},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
    },
    "custom-bootstrap": {"xds": {"address": "unused.ns.svc:18000"}, "bootstrap": {"custom": CUSTOM_BOOTSTRAP},
                         "readyListener": {"enabled": False}, "admin": {"address": "0.0.0.0"}},
    "servicemonitor": {
        "xds": {"address": "my-cp.ns.svc:18000"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "metricRelabelings": [{"action": "drop", "regex": "envoy_cluster_.*_bucket",
                                                  "sourceLabels": ["__name__"]}]},
    },
    "tls-xds": {
        "xds": {"address": "xds.mesh.svc:15012",
                "tls": {"enabled": True, "secretName": "xds-client-cert", "mtls": True,
                        "subjectAltNames": ["xds.mesh.svc"]}},
    },
    "everything-else": {
        "xds": {"address": "10.0.0.10:18000", "clusterType": "STATIC", "initialFetchTimeout": "30s"},
        "admin": {"address": "0.0.0.0", "port": 15000},
        "readyListener": {"enabled": False},
        "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "1500m", "memory": "256Mi"}},
        "drain": {"mode": "admin", "timeSeconds": 20, "strategy": "immediate"},
        "node": {"id": "$(POD_NAME).$(POD_NAMESPACE)", "cluster": "ingress",
                 "metadata": {"team": "edge"}, "locality": {"zone": "z1"}},
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                    "loadBalancerSourceRanges": ["192.0.2.0/24"],
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                              {"name": "https", "port": 443, "targetPort": 8443, "appProtocol": "https"}]},
        "networkPolicy": {"enabled": True, "restrictEgress": True,
                          "egressTo": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
        "extraArgs": ["--service-zone", "z1"],
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "extraVolumes": [{"name": "certs", "secret": {"secretName": "edge-certs"}}],
        "extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/certs", "readOnly": True}],
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"example.com/team": "edge"},
        "podLabels": {"tier": "edge"},
        "image": {"digest": "sha256:" + "a" * 64},
        "bootstrap": {"overrides": {"stats_config": {"stats_tags": [
            {"tag_name": "team", "fixed_value": "edge"}]}}},
        "serviceAccount": {"annotations": {"iam.example.com/role": "edge"}},
    },
}

# Just enough of the Prometheus Operator CRD to catch a malformed ServiceMonitor (CRDs have no
# schema in kubernetes-validate).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {k: {"type": "string"} for k in ["port", "path", "interval", "scrapeTimeout"]}
                    | {"relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}},
                }},
            },
        },
    },
}


@pytest.fixture(scope="module", params=list(VALUE_SETS), ids=list(VALUE_SETS))
def case(request, chart):
    return request.param, VALUE_SETS[request.param], render(chart, VALUE_SETS[request.param])


def test_lint_has_no_errors():
    for values in VALUE_SETS.values():
        report = helm.lint(str(CHART_DIR), values, strict=True, namespace=NAMESPACE, kube_version="v1.35.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2 and "icon is recommended" not in m["error"]]
        assert not report["errors"] and not problems, json.dumps(report, indent=1)


def test_manifests_validate_against_kubernetes_schemas(case):
    name, _, r = case
    assert r.docs
    for doc in r.docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_bootstrap_is_accepted_by_real_envoy(case, chart, tmp_path):
    name, values, r = case
    if name == "tls-xds":
        # Envoy reads the certificate files while validating: point the mount path at real ones.
        certs = make_certs(tmp_path)
        values = {**values, "xds": {**values["xds"], "tls": {**values["xds"]["tls"], "mountPath": str(certs)}}}
        r = render(chart, values)
    path = tmp_path / "bootstrap.yaml"
    path.write_text(r.bootstrap_text)
    ok, output = envoy_validate(path)
    assert ok, output[-3000:]


def make_certs(tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=proxy", "-keyout", "tls.key", "-out", "tls.csr")
    run("openssl", "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-out", "tls.crt")
    return d


def xds_cluster(bootstrap):
    return next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds_cluster")


def xds_endpoint(bootstrap):
    ep = xds_cluster(bootstrap)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return ep["address"]["socket_address"]


# ---- assertions on what each value set renders -------------------------------------------------

def test_default_render(chart):
    r = render(chart)
    assert r.kinds() == sorted(["ConfigMap", "ConfigMap", "Deployment", "Deployment", "Pod", "Service",
                                "Service", "ServiceAccount"])
    b = r.bootstrap
    ads = b["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC" and ads["transport_api_version"] == "V3"
    assert ads["grpc_services"] == [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]
    assert b["dynamic_resources"]["cds_config"]["ads"] == {} and b["dynamic_resources"]["lds_config"]["ads"] == {}
    xc = xds_cluster(b)
    assert xc["type"] == "STRICT_DNS"
    assert xc["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "explicit_http_config"] == {"http2_protocol_options": {}}
    # No xds.address: the bundled courier-cp is deployed and the proxy points at its Service.
    assert xds_endpoint(b) == {"address": f"{RELEASE}-cp.{NAMESPACE}.svc.cluster.local", "port_value": 18000}
    assert b["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    assert "node" not in b  # id/cluster come from the command line
    c = r.container
    args = c["args"]
    assert args[:6] == ["-c", "/etc/courier/bootstrap.yaml", "--service-node", "$(POD_NAME)",
                        "--service-cluster", "$(POD_NAMESPACE)"]
    assert args[args.index("--drain-time-s") + 1] == "30" and args[args.index("--drain-strategy") + 1] == "gradual"
    assert "--concurrency" not in args  # no CPU limit: the binary's default
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    # Probes go through the ready listener (the admin is loopback-only).
    assert c["startupProbe"]["httpGet"] == {"path": "/ready", "port": "ready"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ready"}
    assert c["livenessProbe"]["tcpSocket"] == {"port": "ready"}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 60
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 10000, "ready": 19001}
    # Drain: preStop sleep, then SIGTERM; the grace period covers delay + drain time.
    pod = r.workload["spec"]["template"]["spec"]
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 10
    # Security defaults.
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["runAsNonRoot"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Config checksum rolls the pods when the bootstrap changes.
    cm_text = r.files["courier/templates/configmap-bootstrap.yaml"]
    annotations = r.workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/bootstrap"] == hashlib.sha256(cm_text.encode()).hexdigest()
    other = render(chart, {"xds": {"connectTimeout": "2s"}})
    assert other.workload["spec"]["template"]["metadata"]["annotations"]["checksum/bootstrap"] != annotations[
        "checksum/bootstrap"]
    # Service: listener ports + metrics.
    svc = r.one("Service", RELEASE)
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "http": (80, "http"), "metrics": (9902, "ready")}
    # NOTES tell how to reach the admin and check xDS.
    assert "port-forward" in r.notes and "control_plane.connected_state" in r.notes and "/ready" in r.notes
    # helm test pod checks /ready and the xDS connection state.
    test_pod = r.one("Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test_pod["spec"]["containers"][0]["command"][-1]
    assert "/ready" in script and "LIVE" in script and "control_plane_connected_state" in script


def test_external_xds_has_no_control_plane(chart):
    r = render(chart, VALUE_SETS["external-xds"])
    assert xds_endpoint(r.bootstrap) == {"address": "my-cp.ns.svc", "port_value": 18000}
    assert [d["metadata"]["name"] for d in r.of_kind("Deployment")] == [RELEASE]
    assert not [d for d in r.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-cp-resources")]
    assert "courier-cp" not in r.notes


@pytest.mark.parametrize("drain,grace", [
    # sigterm: the preStop sleep, then a drain a request that never ends holds to its end.
    ({}, 5 + 30 + 10),
    ({"preStopDelaySeconds": 15, "timeSeconds": 600}, 15 + 600 + 10),
    # admin: the preStop hook drains and waits, then SIGTERM drains what is still open.
    ({"mode": "admin", "timeSeconds": 20}, 2 * 20 + 10),
    ({"mode": "none"}, 30 + 10),
])
def test_grace_period_exceeds_the_drain(chart, drain, grace):
    r = render(chart, {"drain": drain})
    pod = r.workload["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace
    args = r.container["args"]
    drain_time = int(args[args.index("--drain-time-s") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain_time


@pytest.mark.parametrize("values,needed", [
    ({"terminationGracePeriodSeconds": 30}, 35),
    ({"terminationGracePeriodSeconds": 35}, 35),
    ({"terminationGracePeriodSeconds": 50, "drain": {"mode": "admin"}}, 60),
    ({"terminationGracePeriodSeconds": 30, "drain": {"mode": "none"}}, 30),
])
def test_grace_period_that_would_cut_the_drain_fails(chart, values, needed):
    with pytest.raises(helm.HelmRenderError, match=f"must exceed the shutdown it covers, {needed} s"):
        render(chart, values)


def test_grace_period_given_and_long_enough_is_kept(chart):
    r = render(chart, {"terminationGracePeriodSeconds": 36})
    assert r.workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 36


def test_control_plane_disabled_without_address_fails(chart):
    with pytest.raises(helm.HelmRenderError, match="xds.address is required"):
        render(chart, {"controlPlane": {"enabled": False}})


def test_daemonset(chart):
    r = render(chart, VALUE_SETS["daemonset"])
    ds = r.one("DaemonSet")
    assert not r.of_kind("Deployment")
    assert "replicas" not in ds["spec"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}] and pod["priorityClassName"] == "system-node-critical"
    assert [p.get("hostPort") for p in r.container["ports"] if p["name"] == "http"] == [10000]
    assert xds_endpoint(r.bootstrap) == {"address": "istiod.istio-system.svc", "port_value": 15010}


def test_host_network_daemonset_cannot_surge(chart):
    with pytest.raises(helm.HelmRenderError, match="cannot surge"):
        render(chart, {"kind": "DaemonSet", "hostNetwork": True, "xds": {"address": "a.b:1"}})


def test_control_plane_enabled(chart):
    r = render(chart, VALUE_SETS["control-plane"])
    cp = r.one("Deployment", f"{RELEASE}-cp")
    c = cp["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["--listen", "0.0.0.0:18000", "--resources", "/etc/courier-cp/resources.yaml",
                         "--admin", "0.0.0.0:18001"]
    assert cp["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == f"{RELEASE}-cp-resources"
    assert "checksum/resources" in cp["spec"]["template"]["metadata"]["annotations"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    svc = r.one("Service", f"{RELEASE}-cp")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc-xds": 18000, "http-admin": 18001}
    res = r.cp_resources()
    assert set(res) == {"clusters", "endpoints", "listeners", "routes"}
    assert res["listeners"][0]["address"]["socket_address"]["port_value"] == 10000
    # The proxy and courier-cp Services select different pods.
    assert svc["spec"]["selector"] != r.one("Service", RELEASE)["spec"]["selector"]
    assert xds_endpoint(r.bootstrap)["address"] == f"{RELEASE}-cp.{NAMESPACE}.svc.cluster.local"


def test_hpa_and_pdb(chart):
    r = render(chart, VALUE_SETS["hpa-pdb"])
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert "replicas" not in r.workload["spec"]  # the HPA owns it
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == r.workload["spec"]["selector"]["matchLabels"]
    tsc = r.workload["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert tsc["labelSelector"]["matchLabels"] == r.workload["spec"]["selector"]["matchLabels"]
    assert tsc["topologyKey"] == "topology.kubernetes.io/zone"


def test_hpa_with_daemonset_fails(chart):
    with pytest.raises(helm.HelmRenderError, match="autoscaling.enabled needs kind: Deployment"):
        render(chart, {"kind": "DaemonSet", "autoscaling": {"enabled": True}})


def test_custom_bootstrap(chart):
    r = render(chart, VALUE_SETS["custom-bootstrap"])
    assert r.bootstrap_text.strip() == CUSTOM_BOOTSTRAP.strip()
    assert r.container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    r2 = render(chart, {"xds": {"address": "a.b:1"}, "bootstrap": {"existingConfigMap": "mine"}})
    assert not [d for d in r2.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-bootstrap")]
    pod = r2.workload["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == "mine"
    assert "checksum/bootstrap" not in r2.workload["spec"]["template"]["metadata"].get("annotations", {})


def test_servicemonitor(chart):
    r = render(chart, VALUE_SETS["servicemonitor"])
    sm = r.one("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    ep = sm["spec"]["endpoints"][0]
    assert (ep["port"], ep["path"]) == ("metrics", "/stats/prometheus")
    svc = r.one("Service", RELEASE)
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert "metrics" in [p["name"] for p in svc["spec"]["ports"]]


def test_tls_to_xds(chart):
    r = render(chart, VALUE_SETS["tls-xds"])
    ts = xds_cluster(r.bootstrap)["transport_socket"]
    assert ts["name"] == "envoy.transport_sockets.tls"
    tc = ts["typed_config"]
    assert tc["@type"].endswith("UpstreamTlsContext") and tc["sni"] == "xds.mesh.svc"
    ctx = tc["common_tls_context"]
    assert ctx["validation_context"]["trusted_ca"]["filename"] == "/etc/courier/xds-tls/ca.crt"
    assert ctx["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "xds.mesh.svc"}}]
    assert ctx["tls_certificates"][0]["private_key"]["filename"] == "/etc/courier/xds-tls/tls.key"
    mounts = {m["name"]: m["mountPath"] for m in r.container["volumeMounts"]}
    assert mounts["xds-tls"] == "/etc/courier/xds-tls"
    vols = {v["name"]: v for v in r.workload["spec"]["template"]["spec"]["volumes"]}
    assert vols["xds-tls"]["secret"]["secretName"] == "xds-client-cert"
    with pytest.raises(helm.HelmRenderError, match="xds.tls.secretName"):
        render(chart, {"xds": {"address": "a.b:1", "tls": {"enabled": True}}})


def test_everything_else(chart):
    r = render(chart, VALUE_SETS["everything-else"])
    b = r.bootstrap
    assert xds_cluster(b)["type"] == "STATIC" and xds_endpoint(b) == {"address": "10.0.0.10", "port_value": 18000}
    assert b["dynamic_resources"]["cds_config"]["initial_fetch_timeout"] == "30s"
    assert b["node"] == {"metadata": {"team": "edge"}, "locality": {"zone": "z1"}}
    assert b["stats_config"] == {"stats_tags": [{"tag_name": "team", "fixed_value": "edge"}]}
    assert [l["name"] for l in b["static_resources"].get("listeners", [])] == []
    c = r.container
    args = c["args"]
    assert args[args.index("--concurrency") + 1] == "2"  # ceil(1500m)
    assert args[args.index("--service-node") + 1] == "$(POD_NAME).$(POD_NAMESPACE)"
    assert args[-2:] == ["--service-zone", "z1"]
    assert c["image"].endswith("@sha256:" + "a" * 64)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "https": 8443, "admin": 15000}
    assert c["readinessProbe"]["httpGet"]["port"] == "admin" and c["livenessProbe"]["tcpSocket"]["port"] == "admin"
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert "http://127.0.0.1:15000/drain_listeners?graceful" in pre[-1] and "sleep 20" in pre[-1]
    assert args[args.index("--drain-strategy") + 1] == "immediate"
    svc = r.one("Service", RELEASE)
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local"
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"http": "http", "https": "https",
                                                                         "metrics": "admin"}
    np = r.one("NetworkPolicy", RELEASE)
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for p in np["spec"]["ingress"][0]["ports"]} == {8080, 8443}
    egress_ports = [p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])]
    assert 53 in egress_ports and 18000 in egress_ports
    pod = r.workload["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert r.workload["spec"]["template"]["metadata"]["labels"]["tier"] == "edge"
    assert any(v["name"] == "certs" for v in pod["volumes"])
    assert any(e.get("name") == "RUST_BACKTRACE" for e in c["env"])


@pytest.mark.parametrize("cpu,expected", [("500m", "1"), ("1", "1"), ("2", "2"), ("2500m", "3"), (4, "4"),
                                          ("0.5", "1")])
def test_concurrency_follows_cpu_limit(chart, cpu, expected):
    r = render(chart, {"resources": {"limits": {"cpu": cpu}}})
    args = r.container["args"]
    assert args[args.index("--concurrency") + 1] == expected
    r = render(chart, {"concurrency": 7, "resources": {"limits": {"cpu": cpu}}})
    assert r.container["args"][r.container["args"].index("--concurrency") + 1] == "7"


def test_loopback_admin_needs_ready_listener(chart):
    with pytest.raises(helm.HelmRenderError, match="readyListener.enabled=false"):
        render(chart, {"readyListener": {"enabled": False}})


def test_hot_restart_on_config_change(chart):
    """A bootstrap change rolls by a self hot restart: courier watches its bootstrap, and the pod
    template has no bootstrap checksum (which would restart the pods)."""
    default = render(chart, {"xds": {"address": "my-cp.ns.svc:18000"}})
    assert "checksum/bootstrap" in default.workload["spec"]["template"]["metadata"]["annotations"]
    assert "--hot-restart-on-config-change" not in default.container["args"]
    r = render(chart, {"xds": {"address": "my-cp.ns.svc:18000"}, "hotRestart": {"onConfigChange": True}})
    args = r.container["args"]
    assert "--hot-restart-on-config-change" in args
    assert args[args.index("--parent-shutdown-time-s") + 1] == "45"
    assert "checksum/bootstrap" not in r.workload["spec"]["template"]["metadata"].get("annotations", {})
    with pytest.raises(helm.HelmRenderError, match="must exceed drain.timeSeconds"):
        render(chart, {"hotRestart": {"onConfigChange": True, "parentShutdownTimeSeconds": 30}})
