# The bootstraps of the filter benchmark (bench/filters/run.sh): the same one for Courier
# and Envoy in each configuration. One HTTP listener, the filter under test before the
# router, one static upstream, circuit breakers out of the way (the gRPC services' clusters
# too), a fixed admin port for the counters the script checks.
#
#   filters_bootstrap CONFIG > bootstrap.yaml
#
# CONFIG is none, jwt_authn, ext_authz, ratelimit or rbac. Reads PX_PORT, ADMIN_PORT,
# UP_PORT, AUTHZ_PORT, RLS_PORT and, for jwt_authn, JWKS (the key set's JSON).

# A cluster of one host on 127.0.0.1 (name, port, protocol options or nothing).
filters_cluster() {
  cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: { thresholds: [ { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 } ] }
$3    load_assignment:
      cluster_name: $1
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } } } ] } ]
EOF
}

FILTERS_H2='    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
'

# The filter under test, as items of http_filters (indented by 10).
filters_http_filters() {
  case "$1" in
    none) ;;
    jwt_authn) cat <<EOF
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: https://bench.courier
                  audiences: [bench]
                  local_jwks: { inline_string: '$JWKS' }
              rules:
              - match: { prefix: / }
                requires: { provider_name: bench }
EOF
    ;;
    ext_authz) cat <<EOF
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: { envoy_grpc: { cluster_name: authz }, timeout: 1s }
EOF
    ;;
    ratelimit) cat <<EOF
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: bench
              timeout: 1s
              rate_limit_service:
                transport_api_version: V3
                grpc_service: { envoy_grpc: { cluster_name: rls } }
EOF
    ;;
    # Kuma's and Envoy Gateway's shape: a matcher list over the client's address, the path
    # and headers, first match wins, everything else denied.
    rbac)
      local ip='input: { name: ip, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput } }'
      local path='input: { name: path, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: ":path" } }'
      local allow='{ action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: ALLOW_NAME, action: ALLOW } } }'
      local deny='{ action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: DENY_NAME, action: DENY } } }'
      hdr() { echo "input: { name: h, typed_config: { \"@type\": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: $1 } }"; }
      cidr() { echo "custom_match: { name: envoy.matching.matchers.ip, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip, cidr_ranges: [{ address_prefix: $1, prefix_len: $2 }], stat_prefix: $3 } }"; }
      cat <<EOF
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      single_predicate:
                        $path
                        value_match: { prefix: /admin }
                    on_match: ${deny/DENY_NAME/admin}
                  - predicate:
                      or_matcher:
                        predicate:
                        - single_predicate:
                            $(hdr x-user)
                            value_match: { exact: blocked }
                        - single_predicate:
                            $(hdr x-tenant)
                            value_match: { safe_regex: { google_re2: {}, regex: "banned-[0-9]+" } }
                    on_match: ${deny/DENY_NAME/blocked}
                  - predicate:
                      and_matcher:
                        predicate:
                        - single_predicate:
                            $ip
                            $(cidr 10.0.0.0 8 corp)
                        - single_predicate:
                            $path
                            value_match: { prefix: /internal }
                    on_match: ${allow/ALLOW_NAME/corp}
                  - predicate:
                      and_matcher:
                        predicate:
                        - single_predicate:
                            $ip
                            $(cidr 127.0.0.0 8 local)
                        - not_matcher:
                            single_predicate:
                              $(hdr x-debug)
                              value_match: { exact: "on" }
                    on_match: ${allow/ALLOW_NAME/local}
                on_no_match: ${deny/DENY_NAME/default}
EOF
    ;;
    *) echo "unknown configuration $1" >&2; return 1 ;;
  esac
}

filters_bootstrap() { # config
  local rate_limits=""
  [ "$1" = ratelimit ] && rate_limits=',
                   rate_limits: [ { actions: [ { generic_key: { descriptor_value: bench } }, { request_headers: { header_name: host, descriptor_key: host } } ] } ]'
  cat <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $ADMIN_PORT } } }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: $PX_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters:
$(filters_http_filters "$1")
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [ { match: { prefix: "/" }, route: { cluster: up$rate_limits } } ]
  clusters:
$(filters_cluster up "$UP_PORT" "")
$(filters_cluster authz "$AUTHZ_PORT" "$FILTERS_H2")
$(filters_cluster rls "$RLS_PORT" "$FILTERS_H2")
EOF
}
