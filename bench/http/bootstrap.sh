# The bootstrap Courier and Envoy run in the HTTP benchmarks: one HTTP listener sending
# everything to one static upstream, circuit breakers out of the way. Sourced by run.sh and
# kernel_share.sh.
#
#   courier_bootstrap LISTENER_PORT UPSTREAM_PORT [HCM_EXTRA [CLUSTERS_EXTRA]] > bootstrap.yaml
#
# HCM_EXTRA (connection manager fields, indented by 10, ending in a newline) and
# CLUSTERS_EXTRA (more clusters, as list items indented by 2) are for variants such as
# observability.sh's.

courier_bootstrap() { # listener_port upstream_port [hcm_extra [clusters_extra]]
  cat <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: $1 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
${3:-}          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [ { match: { prefix: "/" }, route: { cluster: up } } ]
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: { thresholds: [ { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 } ] }
    load_assignment:
      cluster_name: up
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } } } ] } ]
EOF
  printf '%s' "${4:-}"
}
