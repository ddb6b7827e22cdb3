"""A minimal ADS (state-of-the-world) server over gRPC, for the e2e test's reference runs.

It serves the same resources file courier-cp takes (`clusters:`, `endpoints:`, `listeners:`,
`routes:` in proto3 JSON mapping) to a real Envoy, so the chart's rendered bootstrap is proven
against a real proxy independently of courier-cp. One static snapshot, version "1": CDS/LDS are
wildcard, EDS/RDS answer the names asked for; ACKs get no response.
"""
import itertools
import queue
import threading
from concurrent import futures

import grpc
import yaml
from google.protobuf import any_pb2, json_format

# Register every message type a resource file may carry in typed_config (Any) fields.
import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401
import envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

TYPES = {
    "clusters": ("type.googleapis.com/envoy.config.cluster.v3.Cluster", cluster_pb2.Cluster, "name"),
    "endpoints": ("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                  endpoint_pb2.ClusterLoadAssignment, "cluster_name"),
    "listeners": ("type.googleapis.com/envoy.config.listener.v3.Listener", listener_pb2.Listener, "name"),
    "routes": ("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", route_pb2.RouteConfiguration, "name"),
}
WILDCARD = {TYPES["clusters"][0], TYPES["listeners"][0]}


def load(path):
    """{type_url: {name: Any}} from a courier-cp resources file."""
    doc = yaml.safe_load(open(path)) or {}
    out = {}
    for key, (type_url, cls, name_field) in TYPES.items():
        out[type_url] = {}
        for item in doc.get(key) or []:
            msg = json_format.ParseDict(item, cls())
            packed = any_pb2.Any()
            packed.Pack(msg)
            out[type_url][getattr(msg, name_field)] = packed
    return out


class _Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, resources):
        self.resources = resources
        self.nonces = itertools.count(1)
        self.requests = []  # every DiscoveryRequest seen, for assertions
        self.nacks = []

    def StreamAggregatedResources(self, request_iterator, context):
        out = queue.Queue()
        sent = {}  # type_url -> (names, nonce)

        def reader():
            try:
                for req in request_iterator:
                    self.requests.append(req)
                    if req.HasField("error_detail") and req.error_detail.message:
                        self.nacks.append(req)
                    names = tuple(sorted(req.resource_names))
                    last = sent.get(req.type_url)
                    if last is not None and last[0] == names and req.response_nonce == last[1]:
                        continue  # ACK/NACK of the latest response with the same subscription
                    if last is not None and req.response_nonce and req.response_nonce != last[1]:
                        continue  # stale nonce
                    have = self.resources.get(req.type_url, {})
                    if req.type_url in WILDCARD and names in ((), ("*",)):
                        chosen = list(have.values())
                    else:
                        chosen = [have[n] for n in names if n in have]
                    nonce = str(next(self.nonces))
                    sent[req.type_url] = (names, nonce)
                    out.put(discovery_pb2.DiscoveryResponse(
                        version_info="1", resources=chosen, type_url=req.type_url, nonce=nonce))
            except grpc.RpcError:
                pass  # the client went away (the test stops the proxy)
            finally:
                out.put(None)

        threading.Thread(target=reader, daemon=True).start()
        while True:
            item = out.get()
            if item is None:
                return
            yield item


class ReferenceXdsServer:
    def __init__(self, resources_path, port):
        self.servicer = _Ads(load(resources_path))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.servicer, self.server)
        bound = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert bound == port, f"could not bind 127.0.0.1:{port}"

    def start(self):
        self.server.start()
        return self

    def stop(self):
        self.server.stop(grace=0).wait(5)
