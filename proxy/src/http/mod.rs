//! HTTP on the workers: the connection manager, its codecs, the router and route tables.
//!
//! - [`hcm`]: the compiled `http_connection_manager` config ([`HcmConfig`]).
//! - [`conn`]: a downstream connection: protocol detection, idle and drain handling.
//! - [`h1_server`] and [`downstream_h1`]: Courier's own HTTP/1.1 server codec (the
//!   connection's state machine, and the sans-I/O parser and encoder); HTTP/2 is hyper's
//!   server, driven by the worker's runtime ([`courier_runtime::event::rt`]).
//! - [`h1_head`]: a parsed HTTP/1.1 head made into a header map without copies, its framing
//!   fields noted; [`header_map_pool`]: the worker's spare header maps, reused per message.
//! - [`cors`], [`fault`], [`local_ratelimit`], [`health_check`], [`rbac`] and
//!   [`compressor`]: the CORS, fault injection, local rate limit, health check, RBAC and
//!   compressor (gzip) filters; [`filter_config`]: their per-route settings.
//! - [`router`]: one request: sanitising, route selection, local replies, forwarding with
//!   retries and timeouts.
//! - [`internal_address`]: which requests are internal (`internal_address_config`);
//!   [`request_controls`]: the `x-envoy-*` headers through which they steer the router.
//! - [`stream_idle`]: the stream idle timeout (`stream_idle_timeout`, a route's
//!   `idle_timeout`), and the route `timeout` once the response has started.
//! - [`request_stats`]: the upstream request stats of a cluster, a route with a
//!   `stat_prefix` and a virtual cluster.
//! - [`pool`]: per-worker upstream connection pools and circuit breakers;
//!   [`h2_settings`]: an HTTP/2 server's stream limit, read off its frames;
//!   [`stream_limits`]: what a cluster bounds on each upstream stream.
//! - [`upstream_h1`]: Courier's own HTTP/1.1 upstream client, driven by the request that
//!   uses the connection (complete request bodies; streamed ones and upgrades use hyper's).
//! - [`route`]: route tables compiled from `RouteConfiguration`s (inline or RDS).
//!
//! # Known differences from Envoy
//!
//! `tests/http_differential.rs` runs the same bootstrap through Courier and Envoy 1.40 and
//! compares 89 requests (all equal today; `tests/http_upgrade.rs` does the same for
//! websockets). Differences that remain, by design or not yet
//! done:
//!
//! - HTTP/1.1 codec errors get Envoy's replies (status, reason as body, `connection:
//!   close`); `tests/http_differential.rs::codec_replies_match_envoy` compares 55 malformed
//!   or unusual requests. One deliberate difference: an obs-fold header line is refused
//!   with `400` (Envoy unfolds it). Response trailers are not sent on HTTP/1.1 (Envoy's
//!   default, `enable_trailers` off).
//! - `<`, `>` and a backtick in an HTTP/1.1 request path, and `"`, `<` and `>` in its
//!   query, go upstream percent-encoded (`%3C`); Envoy forwards them as they came. The
//!   `http` crate's URI grammar refuses them raw; encoding names the same resource to any
//!   URI decoder, where refusing them (as Courier did) broke such clients. Routes match the
//!   encoded path. Over HTTP/2 the `h2` crate refuses such a `:path` (the stream is reset).
//! - `downstream_rq_time`/`upstream_rq_time` use Envoy's default bucket bounds; `/stats`
//!   quantiles are interpolated linearly inside a bucket (Envoy's log-linear histogram gives
//!   slightly different figures) and, with no flush interval, the interval figure is `nan`.
//! - Upstream HTTP/2: another connection opens when the open ones carry as many streams as
//!   their server allows (`SETTINGS_MAX_CONCURRENT_STREAMS`, read off the frames by
//!   [`h2_settings`]) or the cluster's `max_concurrent_streams`, as in Envoy. Unlike Envoy
//!   1.40, no second stream goes on a new connection before the server's settings have
//!   arrived: Envoy sends them, and a server with a low limit refuses them (`503 …
//!   remote refused stream reset`, measured in `tests/http_h2.rs`'s setting).
//! - Circuit breakers are counted per worker (Envoy's are per cluster across workers); with
//!   `--concurrency 1` they match.
//! - Upgraded (websocket) connections go upstream on a connection of their own, as Envoy's,
//!   and count in `downstream_cx_active` until the tunnel closes (a shutdown drain waits
//!   for them). Removing a listener closes its tunnels when the drain time ends, as Envoy
//!   closes all of a drained listener's connections.
//!   A client's half-close is carried through the tunnel; Envoy closes the whole tunnel.
//!   Websockets over HTTP/2 (extended CONNECT, `allow_connect`) are converted to HTTP/1.1
//!   upgrades as Envoy's codec does ([`upgrade`]); to an HTTP/2 cluster an upgrade goes as
//!   an extended CONNECT, also as Envoy.
//! - Header matchers (routes, retry policies, fault injection) may name pseudo-headers as
//!   Envoy's do: `:method`, `:path` (with its query), `:authority`, `:scheme` of a
//!   request, `:status` of a response in `retriable_headers`; another pseudo-header is
//!   never present (`pseudo_header_matchers_match_envoy`).
//! - While the server fails its health checks (`/healthcheck/fail`), every HTTP response
//!   drain-closes its connection (`connection: close`, HTTP/2 GOAWAY;
//!   `downstream_cx_drain_close`), as Envoy's (`tests/http_health_fail.rs`).
//! - An HTTP/1.1 client that closes its connection while its request is being served (its
//!   body all read) takes the request with it, as Envoy resets the stream: a half-close
//!   gets no response, as from Envoy. Bytes it pipelines meanwhile wait for their turn.
//! - `delayed_close_timeout` (default 1 s; `0s`: none): an HTTP/1.1 connection Courier
//!   closes is half-closed at once and what the client still sends is read and dropped
//!   until the client closes or the delay ends, as nginx's lingering close. Envoy sends its
//!   FIN only when the delay ends (or the client closes first), so a client that reads to
//!   the end of the connection waits a second for Envoy and not for Courier
//!   (`delayed_close_timeout_bounds_the_linger`).
//! - Upstream request stats ([`request_stats`]) as Envoy's router counts them, compared in
//!   `tests/http_request_stats.rs`: for the cluster (its codes again under `external.` /
//!   `internal.`, retried answers under `retry.`), for a route with a `stat_prefix`
//!   (`vhost.<virtual host>.route.<stat_prefix>.`) and for a virtual host's
//!   `virtual_clusters` (`vhost.<virtual host>.vcluster.<name>.`, `other` for requests
//!   none matched). `upstream_rq_total` counts attempts that had a connection; the code a
//!   request ends with is charged once (a timeout as its `504`, a reset or connect
//!   failure as its `503`, a protocol error as its `502`); `upstream_rq_retry_success`
//!   and `_limit_exceeded` as Envoy's retry state. A route timeout that cuts a response
//!   body off counts in the cluster's `upstream_rq_timeout` only (Envoy also in the
//!   route's and virtual cluster's).
//! - A route's `hash_policy` ([`route::hash_policy`]: header, with `regex_rewrite`; cookie,
//!   made with Envoy's value and `set-cookie` when a `ttl` is set; query parameter; source
//!   address; `terminal`) feeds `RING_HASH` and `MAGLEV` clusters
//!   ([`crate::upstream::ring_hash`], [`crate::upstream::maglev`]), and the same request
//!   goes to the same host as from Envoy: the same ring of xxHash64 points, the same Maglev
//!   table, over the same addresses and weights (`tests/http_hash_policy.rs`, compared host
//!   for host). Without a hash a host is picked at random, as in Envoy. Refused:
//!   `MURMUR_HASH_2`, `use_hostname_for_hashing`, `hash_balance_factor`, a `filter_state`
//!   policy. Courier has no `ring_hash_lb.*`/`maglev_lb.*` gauges. A ring or table is built
//!   once per host set and shared by the workers, as Envoy's; a Maglev slot takes a byte
//!   for up to 255 hosts (64 KiB for the default 65537 slots).
//! - `Upgrade: h2c` is not honoured, as in Envoy: the request is served as HTTP/1.1 without
//!   its upgrade headers.
//! - Found by a differential review (Courier and Envoy 1.40 side by side) and not yet
//!   matched:
//!   - A stream idle timeout before the response answers `408` when the request body had
//!     not been read to its end, `504` otherwise; Envoy's choice follows whether its codec
//!     had received the whole request (they differ when a complete body waits unread, for
//!     an upstream connection).
//!   - Header order: fields keep the client's order and the proxy's own follow them, as
//!     in Envoy, except that removing a field (hop-by-hop ones, `request_headers_to_remove`)
//!     moves the map's last field (usually `x-request-id`) into its place.
//! - Matched since (each compared with Envoy in `tests/http_differential.rs` or
//!   `tests/http_upstream_h1.rs`): the method tokens Envoy's codec accepts (others `400`),
//!   Envoy's reason phrases (`418 Unknown`), a repeated `Host` joined with `,` (empty
//!   values left out), an empty `content-length: 0` for every method but GET, HEAD, DELETE,
//!   TRACE and CONNECT, a HEAD response without a length announcing
//!   `transfer-encoding: chunked` to HTTP/1.1 clients, HTTP/1 upstream trailers dropped
//!   without the cluster's `enable_trailers`, a loopback client's (`127.0.0.1` or `::1`)
//!   `x-forwarded-for` naming the machine's own address ([`crate::server::local_info`]), a
//!   request target that is neither a path, an absolute URL, OPTIONS' `*` nor CONNECT's
//!   authority refused with `400` (it was read as an authority overriding `Host`),
//!   expectations other than `100-continue` forwarded, a CONNECT target other than
//!   `host:port` refused with `400`, and the route `timeout` spanning the response body
//!   (a body still arriving when it ends is cut off: the HTTP/1.1 connection closes, an
//!   HTTP/2 stream is reset; `upstream_rq_timeout`, flag `UT`; `tests/http_stream_idle.rs`).
//! - Inline route configurations are checked against the known clusters at load
//!   (`validate_clusters`, on by default for them, off for RDS, as Envoy): a static
//!   listener naming an unknown cluster fails start-up, an LDS one is NACKed.
//! - On a route with retries a request body goes upstream as it arrives while a copy is
//!   kept for a retry ([`retry_buffer`]), up to the route's (or virtual host's)
//!   `request_body_buffer_limit` / `per_request_buffer_limit_bytes`, else the listener's
//!   `per_connection_buffer_limit_bytes`; past it the request goes on without retries
//!   (`retry_or_shadow_abandoned`), as in Envoy (`tests/http_retries.rs`).
//! - Retries: `retry_on` takes Envoy's conditions, gRPC ones included (`unavailable`, …:
//!   a trailers-only answer's `grpc-status`), `retriable-headers`, `envoy-ratelimited`
//!   and `refused-stream`; `retriable_request_headers` limits which requests are retried;
//!   `reset-before-request` retries only a request that could not be sent; an answer
//!   carrying `x-envoy-ratelimited` is retried under `envoy-ratelimited` alone
//!   (`tests/http_retries.rs` and `tests/http_h2.rs` compare them with Envoy).
//!   `internal_only_headers` leave every external request. The `previous_hosts` retry host
//!   predicate with `host_selection_retry_max_attempts` (as Istio sets on every route) sends
//!   a retry away from the hosts already tried, the hashing balancers stepping as Envoy's
//!   (`tests/http_hash_policy.rs`); other predicates and `retry_priority` are refused.
//! - `path_with_escaped_slashes_action` (`%2F`, `%5C`): kept, refused (`400`, the
//!   connection closes), redirected (`307` to the unescaped, normalised path) or unescaped
//!   before routing, as Envoy (`escaped_slash_actions_match_envoy`).
//! - `strip_trailing_host_dot` as Envoy (`trailing_host_dot_matches_envoy`).
//! - A virtual host's `require_tls` (`ALL`, `EXTERNAL_ONLY`) answers a request whose
//!   `x-forwarded-proto` is not `https` (Courier's listeners are plaintext; a
//!   TLS-terminating load balancer in front says `https`) with Envoy's `301` to
//!   `https://<host><path>`, before any route is matched; `EXTERNAL_ONLY` spares requests
//!   marked `x-envoy-internal: true` (`require_tls_matches_envoy`).
//! - A local reply (direct responses included) to a gRPC request (`content-type:
//!   application/grpc`, or `+` a suffix; not `grpc-web`) takes gRPC's form, as Envoy's:
//!   `200`, the status mapped to a `grpc-status` (gRPC's table: 404 → 12, 503 → 14, …),
//!   the body as a percent-encoded `grpc-message` (`tests/http_h2.rs`).
//! - Request mirroring (`request_mirror_policies` of a route, virtual host or route
//!   configuration) as Envoy's streaming shadows: [`shadow`], `tests/http_shadow.rs`.
//! - A request field sent on several lines goes upstream as it came; Envoy joined two
//!   `accept-encoding` lines into one (seen in `tests/http_compressor.rs`'s setting).
//! - Not yet: hedging, global rate limits (`envoy.filters.http.ratelimit`). Refused as
//!   unsupported (they were accepted without effect): a route's `priority: HIGH` and
//!   `path_rewrite`, a weighted cluster's `host_rewrite_literal` and `header_name`,
//!   `most_specific_header_mutations_wins`, `ignore_path_parameters_in_path_matching`, a
//!   retry policy's `per_try_idle_timeout`, `rate_limited_retry_back_off` and
//!   `retry_options_predicates`, a route's `internal_redirect_action:
//!   HANDLE_INTERNAL_REDIRECT`, and a filter chain's `use_proxy_proto`.
//! - A route's `max_stream_duration` replaces its `timeout` and ends the stream
//!   (`504 downstream duration timeout`, gRPC's DEADLINE_EXCEEDED,
//!   `downstream_rq_max_duration_reached`), its `grpc_timeout_header_max`/`_offset` taking
//!   the duration from `grpc-timeout`; a gRPC request learns it as its `grpc-timeout`.
//!   `max_grpc_timeout`/`grpc_timeout_offset` make a gRPC request's `grpc-timeout` the
//!   route timeout. As Envoy (`stream_durations_and_grpc_timeouts_match_envoy`). The
//!   connection manager's `common_http_protocol_options.max_stream_duration` is the
//!   duration of every stream whose route sets none, beside the route timeout
//!   (`connection_manager_stream_duration_matches_envoy`). Either ends an upgrade's
//!   tunnel, however busy, as Envoy resets it (`websocket_ends_with_its_stream_duration_like_envoy`).
//! - Accepted and not acted on (control planes set them routinely, so refusing them would
//!   refuse whole listeners; found by an audit of every field): a route's
//!   `flush_timeout`; `typed_per_filter_config` entries for filters
//!   other than Courier's (CORS, fault injection, local rate limits, health checks,
//!   RBAC, the compressor, the router); the connection manager's `stream_flush_timeout`,
//!   `drain_timeout`, HTTP/2 flood settings, and HTTP/1 `allow_absolute_url` and
//!   `override_stream_error_on_invalid_http_message`; a cluster's slow start,
//!   `respect_dns_ttl` and the DNS failure back-off's growth; HTTP/2's `interval_jitter`,
//!   `connection_idle_interval` and `hpack_table_size`.
//! - A virtual host's `include_request_attempt_count`, `include_attempt_count_in_response`
//!   (`x-envoy-attempt-count`, on the router's own replies too) and
//!   `include_is_timeout_retry_header` (`x-envoy-is-timeout-retry`); a route's
//!   `append_x_forwarded_host`. As Envoy.
//! - Internal requests ([`internal_address`]: `internal_address_config`, by the peer's
//!   address or `x-forwarded-for`'s only one) keep their `x-envoy-*` controls and request
//!   id and are marked `x-envoy-internal: true`; the router obeys and removes the controls
//!   ([`request_controls`]: `x-envoy-retry-on`, `x-envoy-retry-grpc-on`,
//!   `x-envoy-max-retries`, `x-envoy-retriable-status-codes`,
//!   `x-envoy-retriable-header-names`, `x-envoy-upstream-rq-timeout-ms`,
//!   `x-envoy-upstream-rq-per-try-timeout-ms`, `x-envoy-upstream-rq-timeout-alt-response`),
//!   and an internal `x-envoy-force-trace` has the response echo `x-request-id`. As Envoy
//!   (`tests/http_internal_requests.rs`). A per-try timeout no shorter than the route's is
//!   none, as in Envoy. `x-envoy-upstream-alt-stat-name` and
//!   `x-envoy-hedge-on-per-try-timeout` are removed without effect (no alternative stats,
//!   no hedging); `unix_sockets` has no effect (HTTP listeners are TCP). The router's
//!   `respect_expected_rq_timeout` and `strict_check_headers` (`400 invalid header …`)
//!   act as Envoy's.
//! - HTTP filters before the router, in the chain's order: CORS (`envoy.filters.http.cors`,
//!   [`cors`]), fault injection (`envoy.filters.http.fault`, [`fault`]), local rate
//!   limits (`envoy.filters.http.local_ratelimit`, [`local_ratelimit`]), health checks
//!   (`envoy.filters.http.health_check`, [`health_check`]), RBAC
//!   (`envoy.filters.http.rbac`, [`rbac`]) and the compressor
//!   (`envoy.filters.http.compressor` with the gzip library, [`compressor`]), with their
//!   per-route settings in `typed_per_filter_config` (route, virtual host, route
//!   configuration; [`filter_config`]) and CORS's deprecated `cors` fields, as Envoy
//!   (`tests/http_cors.rs`, `tests/http_fault.rs`, `tests/http_local_ratelimit.rs`,
//!   `tests/http_rbac.rs`, `tests/http_compressor.rs`). The compressor judges every
//!   response sent after the filters (a filter's answer, a CORS preflight, the router's
//!   own replies, direct responses), as Envoy's encoder pass does; a request a filter
//!   before it answered has no `accept-encoding` for it. Compressor differences: gzip is
//!   the only library (brotli, zstd are refused), one compressor per chain (a second is
//!   refused), `status_header_enabled` is refused, Gzip's `memory_level`,
//!   `compression_strategy` and `chunk_size` are accepted without effect (compressed
//!   bytes differ from Envoy's zlib, the decompressed body is the same), and a `require_tls`
//!   redirect (answered before the filters) is not judged by it. RBAC differences: connections have no TLS, so
//!   `requested_server_name` matches an empty name and `authenticated` never matches
//!   (as Envoy's on a plaintext connection); its dynamic metadata (`access_log_hint`,
//!   the effective policy) is not kept and `%RESPONSE_CODE_DETAILS%` is not logged. The xDS
//!   `matcher`/`shadow_matcher`, CEL conditions, audit logging and permissions or
//!   principals on metadata, filter state, URI templates or extensions are refused.
//!   Other HTTP filters are refused unless `is_optional`; a filter `disabled` in the chain
//!   runs only where a route's `FilterConfig` turns it on. A request no route takes goes
//!   through the filters too, with no per-route settings (a health check, fault, rate limit
//!   or RBAC denial answers it; CORS leaves it alone), and gets the `404` if they pass it
//!   on (`tests/http_filters_no_route.rs`). Fault injection's
//!   `upstream_cluster` does not match requests routed by `weighted_clusters`, and
//!   runtime keys have no effect (no runtime). A local rate limit bucket is shared by all workers (an atomic
//!   word), as Envoy's.
//! - A cluster's `retry_budget` (in place of `max_retries`) and
//!   `per_host_thresholds.max_connections`, as Envoy (`tests/http_retries.rs`); counted
//!   per worker like every circuit breaker here.
//! - HTTP/1.1 `http_protocol_options` (connection manager and cluster):
//!   `header_key_format: proper_case_words`, `enable_trailers` for responses and
//!   `allow_chunked_length`, as Envoy
//!   ([`key_format`], `tests/http1_options.rs`). A difference: a chunked request's trailers
//!   are not forwarded (Envoy forwards them when both sides enable trailers).
//! - `http2_protocol_options` windows and `connection_keepalive`, downstream and upstream,
//!   as Envoy ([`h2_options`], `tests/http_h2_options.rs`); unset windows stay hyper's
//!   (1 to 5 MiB; Envoy: 256 MiB), a documented difference.
//! - Upstream connections live as a cluster's `common_http_protocol_options` say, as in
//!   Envoy (`tests/http_conn_lifetime.rs`): `idle_timeout` (default 1 h) closes a
//!   connection with nothing on it; `max_requests_per_connection` (or the legacy cluster
//!   field, not both) and `max_connection_duration` retire one, closing it once its last
//!   request ends (HTTP/2: no new streams). Counted in `upstream_cx_idle_timeout`,
//!   `upstream_cx_max_requests`, `upstream_cx_max_duration_reached`. One sweeper task per
//!   pool closes what is due ([`pool`]), so an idle connection costs no timer.
//! - Upstream streams are bounded as a cluster's `common_http_protocol_options` say
//!   ([`stream_limits`]; compared with Envoy 1.40 in `tests/http_cluster_stream_limits.rs`
//!   over HTTP/1.1, both of Courier's HTTP/1.1 clients, and HTTP/2):
//!   `max_headers_count` (default 100) caps a response head's fields (`502` protocol
//!   error, `upstream_cx_protocol_error`, over HTTP/1.1; over HTTP/2, `:status` counted,
//!   the stream is reset: `503 … remote reset`, `upstream_rq_rx_reset`);
//!   `max_stream_duration` ends an attempt that outlives it, counted from the moment it
//!   has a connection: `504 upstream max stream duration reached` (`408` while the
//!   request is still arriving; flag `UMSDR`; retried under `retry_on: reset`) before the
//!   response, a cut-off body after it; `upstream_rq_max_duration_reached` either way.
//!   `headers_with_underscores_action` has no effect on a cluster, as in Envoy, which
//!   applies it only to the requests its server codecs receive. Differences: an HTTP/2
//!   stream is reset with `CANCEL` (Envoy: `INTERNAL_ERROR`), and hyper parses an HTTP/2
//!   head whole before it is counted, so a response that ended with its head is
//!   refused without a reset frame; Courier has no `upstream_rq_tx_reset` or
//!   `http2.tx_reset`/`http2.header_overflow` counters;
//!   a body cut off closes the client's HTTP/1.1 connection at once (Envoy after its
//!   `delayed_close_timeout`); a mirrored request's response body is not bounded by it
//!   (its head is). A websocket tunnel ends with it, as in Envoy, but its access log
//!   line, written at the `101`, has no `UMSDR` (Envoy logs the flag at the tunnel's end).

pub mod codec;
pub mod conn_manager;
pub mod request_stats;
pub mod route;
pub mod router;

pub use conn_manager::config::{HcmConfig, RdsSubscription, HTTP_CONNECTION_MANAGER};
