"""Writes helm/courier/values.schema.json (run: python3 helm/tests/gen_schema.py).

The schema is kept as Python so that shared shapes (image, resources, probes) are written once;
test_schema.py checks that the committed JSON equals what this script produces.
"""
import json
import pathlib

CHART = pathlib.Path(__file__).resolve().parent.parent / "courier"


def obj(props, required=(), extra=False, **kw):
    o = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        o["required"] = list(required)
    o.update(kw)
    return o


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
DICT = {"type": "object"}
LIST = {"type": "array"}
LIST_OF_DICTS = {"type": "array", "items": {"type": "object"}}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
DURATION = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"}
INT_OR_PERCENT = {
    "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^[0-9]+%$"}]
}
NULLABLE_POS_INT = {"type": ["integer", "null"], "minimum": 1}
QUANTITY = {"type": ["string", "number"]}
RESOURCES = obj(
    {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
        "claims": LIST_OF_DICTS,
    }
)


def image(required_repo=True):
    return obj(
        {
            "repository": {"type": "string", "minLength": 1},
            "tag": STR,
            "digest": {"type": "string", "pattern": r"^$|^sha256:[a-f0-9]{64}$"},
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        },
        required=["repository"],
    )


def probe():
    return obj(
        {
            "enabled": BOOL,
            "periodSeconds": {"type": "integer", "minimum": 1},
            "failureThreshold": {"type": "integer", "minimum": 1},
        }
    )


SERVICE_PORT = obj(
    {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$"},
        "port": PORT,
        "targetPort": PORT,
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
        "nodePort": {"type": "integer", "minimum": 1, "maximum": 65535},
        "appProtocol": STR,
    },
    required=["name", "port"],
)

SCHEMA = obj(
    {
        "global": DICT,
        "kind": {"enum": ["Deployment", "DaemonSet"]},
        "replicaCount": {"type": "integer", "minimum": 0},
        "updateStrategy": DICT,
        "image": image(),
        "imagePullSecrets": {
            "type": "array",
            "items": obj({"name": {"type": "string", "minLength": 1}}, required=["name"]),
        },
        "nameOverride": STR,
        "fullnameOverride": STR,
        "clusterDomain": {"type": "string", "minLength": 1},
        "xds": obj(
            {
                "address": {"type": "string", "pattern": r"^$|^(\[[0-9a-fA-F:.]+\]|[^:\s]+):[0-9]{1,5}$"},
                "clusterType": {"enum": ["STRICT_DNS", "LOGICAL_DNS", "STATIC"]},
                "connectTimeout": DURATION,
                "initialFetchTimeout": DURATION,
                "setNodeOnFirstMessageOnly": BOOL,
                "tls": obj(
                    {
                        "enabled": BOOL,
                        "secretName": STR,
                        "mtls": BOOL,
                        "sni": STR,
                        "subjectAltNames": {"type": "array", "items": STR},
                        "mountPath": {"type": "string", "pattern": "^/"},
                    }
                ),
            }
        ),
        "node": obj(
            {
                "id": {"type": "string", "minLength": 1},
                "cluster": {"type": "string", "minLength": 1},
                "metadata": DICT,
                "locality": obj({"region": STR, "zone": STR, "sub_zone": STR}),
            }
        ),
        "admin": obj({"address": {"type": "string", "minLength": 1}, "port": PORT}),
        "readyListener": obj({"enabled": BOOL, "port": PORT}),
        "bootstrap": obj({"custom": STR, "existingConfigMap": STR, "overrides": DICT}),
        "concurrency": NULLABLE_POS_INT,
        "logLevel": {"enum": ["trace", "debug", "info", "warning", "warn", "error", "critical", "off"]},
        "drain": obj(
            {
                "timeSeconds": {"type": "integer", "minimum": 0},
                "strategy": {"enum": ["gradual", "immediate"]},
                "mode": {"enum": ["sigterm", "admin", "none"]},
                "preStopDelaySeconds": {"type": "integer", "minimum": 1},
            }
        ),
        "hotRestart": obj(
            {
                "onConfigChange": BOOL,
                "parentShutdownTimeSeconds": {"type": "integer", "minimum": 1},
            }
        ),
        "terminationGracePeriodSeconds": {"type": ["integer", "null"], "minimum": 0},
        "extraArgs": {"type": "array", "items": STR},
        "extraEnv": LIST_OF_DICTS,
        "extraVolumes": LIST_OF_DICTS,
        "extraVolumeMounts": LIST_OF_DICTS,
        "resources": RESOURCES,
        "nodeSelector": STRMAP,
        "tolerations": LIST_OF_DICTS,
        "affinity": DICT,
        "topologySpreadConstraints": LIST_OF_DICTS,
        "podAnnotations": STRMAP,
        "podLabels": STRMAP,
        "priorityClassName": STR,
        "hostNetwork": BOOL,
        "podSecurityContext": DICT,
        "securityContext": DICT,
        "probes": obj({"startup": probe(), "readiness": probe(), "liveness": probe()}),
        "service": obj(
            {
                "enabled": BOOL,
                "type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]},
                "ports": {"type": "array", "items": SERVICE_PORT},
                "metricsPort": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
                "annotations": STRMAP,
                "labels": STRMAP,
                "externalTrafficPolicy": {"enum": ["", "Cluster", "Local"]},
                "loadBalancerSourceRanges": {"type": "array", "items": STR},
                "clusterIP": STR,
            }
        ),
        "serviceAccount": obj(
            {"create": BOOL, "name": STR, "annotations": STRMAP, "automountServiceAccountToken": BOOL}
        ),
        "podDisruptionBudget": obj(
            {
                "enabled": BOOL,
                "minAvailable": {"oneOf": [INT_OR_PERCENT["oneOf"][0], INT_OR_PERCENT["oneOf"][1], {"type": "null"}]},
                "maxUnavailable": INT_OR_PERCENT,
            }
        ),
        "autoscaling": obj(
            {
                "enabled": BOOL,
                "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "targetCPUUtilizationPercentage": {"type": ["integer", "null"], "minimum": 1},
                "targetMemoryUtilizationPercentage": {"type": ["integer", "null"], "minimum": 1},
                "behavior": DICT,
            }
        ),
        "serviceMonitor": obj(
            {
                "enabled": BOOL,
                "interval": DURATION,
                "scrapeTimeout": DURATION,
                "labels": STRMAP,
                "metricRelabelings": LIST_OF_DICTS,
                "relabelings": LIST_OF_DICTS,
            }
        ),
        "networkPolicy": obj(
            {
                "enabled": BOOL,
                "ingressFrom": LIST_OF_DICTS,
                "metricsFrom": LIST_OF_DICTS,
                "restrictEgress": BOOL,
                "egressTo": LIST_OF_DICTS,
            }
        ),
        "controlPlane": obj(
            {
                "enabled": {"type": ["boolean", "null"]},
                "replicaCount": {"type": "integer", "minimum": 0},
                "image": image(),
                "port": PORT,
                "adminPort": PORT,
                "rollOnResourceChange": BOOL,
                "extraArgs": {"type": "array", "items": STR},
                "extraEnv": LIST_OF_DICTS,
                "resources": RESOURCES,
                "nodeSelector": STRMAP,
                "tolerations": LIST_OF_DICTS,
                "affinity": DICT,
                "podAnnotations": STRMAP,
                "podLabels": STRMAP,
                "priorityClassName": STR,
                "xdsResources": obj(
                    {
                        "clusters": LIST_OF_DICTS,
                        "endpoints": LIST_OF_DICTS,
                        "listeners": LIST_OF_DICTS,
                        "routes": LIST_OF_DICTS,
                    }
                ),
            }
        ),
        "tests": obj({"image": obj({"repository": {"type": "string", "minLength": 1}, "tag": STR})}),
    },
    required=["kind", "image", "xds", "admin", "drain", "service"],
    **{"$schema": "http://json-schema.org/draft-07/schema#", "title": "Courier chart values"},
)
# Put the meta keys first for readability.
SCHEMA = {"$schema": SCHEMA.pop("$schema"), "title": SCHEMA.pop("title"), **SCHEMA}


def render() -> str:
    return json.dumps(SCHEMA, indent=2) + "\n"


if __name__ == "__main__":
    (CHART / "values.schema.json").write_text(render())
