//! Admin endpoints.

use std::collections::HashMap;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};

use super::{config_dump, response};
use crate::server::{Server, ServerState};
use crate::stats;

const TEXT: &str = "text/plain; charset=UTF-8";
const JSON: &str = "application/json";

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Routes one admin request.
pub async fn handle(server: &std::rc::Rc<Server>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let q = query(&req);
    let path = req.uri().path().to_string();
    let mutating = matches!(
        path.as_str(),
        "/healthcheck/fail"
            | "/healthcheck/ok"
            | "/drain_listeners"
            | "/quitquitquit"
            | "/hot_restart"
            | "/runtime_modify"
            | "/logging"
            | "/reset_counters"
            | "/stats/recentlookups/enable"
            | "/stats/recentlookups/disable"
            | "/stats/recentlookups/clear"
    );
    // Envoy requires POST for endpoints that change state.
    if mutating && req.method() != Method::POST {
        return response(405, TEXT, "This endpoint requires POST.\n");
    }
    let json = q.get("format").is_some_and(|f| f == "json");
    server.refresh_server_stats();
    match path.as_str() {
        "/ready" => {
            let state = server.state();
            let status = if state == ServerState::Live { 200 } else { 503 };
            response(status, TEXT, format!("{}\n", state.name()))
        }
        "/server_info" => response(200, JSON, pretty(&server.server_info())),
        "/runtime" => response(200, JSON, pretty(&server.runtime.dump())),
        "/logging" => logging(&q),
        "/reset_counters" => {
            server.store.reset_counters();
            response(200, TEXT, "OK\n")
        }
        "/memory" => response(200, JSON, pretty(&memory())),
        "/hot_restart_version" => {
            response(200, TEXT, format!("{}\n", server.hot_restart_version()))
        }
        "/init_dump" => response(200, JSON, pretty(&init_dump(server))),
        "/runtime_modify" => runtime_modify(server, req).await,
        "/certs" => {
            let report =
                crate::transport_socket::tls::inventory::report(std::time::SystemTime::now());
            response(
                200,
                JSON,
                pretty(&courier_proto::to_json_with_defaults(&report)),
            )
        }
        "/listeners" => listeners(server, json),
        "/clusters" => clusters(server, json),
        "/config_dump" => {
            let dump = config_dump(server, q.get("resource").map(String::as_str));
            response(200, JSON, pretty(&dump))
        }
        "/stats" | "/stats/prometheus" => {
            let query = match stats_query(&req) {
                Ok(q) => q,
                Err(e) => return response(400, TEXT, e),
            };
            if server.flushes_on_admin() {
                server.flush_stats();
            }
            if path == "/stats/prometheus" {
                response(
                    200,
                    "text/plain; version=0.0.4; charset=UTF-8",
                    stats::render_prometheus(&server.store, &query),
                )
            } else if json {
                response(
                    200,
                    JSON,
                    pretty(&stats::render_json(&server.store, &query)),
                )
            } else {
                response(200, TEXT, stats::render_text(&server.store, &query))
            }
        }
        "/stats/recentlookups" => response(200, TEXT, recent_lookups(&server.store)),
        "/stats/recentlookups/enable" => {
            server.store.track_lookups(true);
            response(200, TEXT, "OK\n")
        }
        "/stats/recentlookups/disable" => {
            server.store.track_lookups(false);
            response(200, TEXT, "OK\n")
        }
        "/stats/recentlookups/clear" => {
            server.store.clear_lookups();
            response(200, TEXT, "OK\n")
        }
        "/healthcheck/fail" => {
            server.set_health_failed(true).await;
            response(200, TEXT, "OK\n")
        }
        "/healthcheck/ok" => {
            server.set_health_failed(false).await;
            response(200, TEXT, "OK\n")
        }
        "/drain_listeners" => {
            let graceful = q.contains_key("graceful");
            let inbound_only = q.contains_key("inboundonly");
            server.drain_listeners(graceful, inbound_only);
            response(200, TEXT, "OK\n")
        }
        "/quitquitquit" => {
            server.request_exit();
            response(200, TEXT, "OK\n")
        }
        // Courier's own: a self hot restart, as on SIGHUP.
        "/hot_restart" => match server.self_restart() {
            Ok(done) => response(200, TEXT, format!("OK: {done}\n")),
            Err(e) => response(409, TEXT, format!("{e}\n")),
        },
        "/" | "/help" => response(200, TEXT, HELP),
        _ => response(404, TEXT, format!("invalid path: {path}\n{HELP}")),
    }
}

const HELP: &str = "admin commands are:
  /certs: print certificate info
  /clusters: upstream cluster status
  /config_dump: dump current Courier configs
  /drain_listeners: drain listeners (POST; ?graceful, ?inboundonly)
  /healthcheck/fail: cause the server to fail health checks (POST)
  /healthcheck/ok: cause the server to pass health checks (POST)
  /listeners: print listener info
  /quitquitquit: exit the server (POST)
  /ready: print server state, return 200 if LIVE, otherwise 503
  /hot_restart: start the next generation of this binary, which takes over (POST)
  /hot_restart_version: print the hot restart compatibility version
  /init_dump: dump the initialization targets not yet ready
  /logging: query/change logging levels (POST; ?level=, ?<logger>=<level>, ?paths=)
  /memory: print current allocation/heap usage
  /reset_counters: reset all counters to zero (POST)
  /runtime: print runtime values
  /runtime_modify: modify runtime values (POST; ?key=value, an empty value removes the key)
  /server_info: print server version/status information
  /stats: print server stats (?format=json, ?filter=<regex>, ?usedonly)
  /stats/prometheus: print server stats in prometheus format (?filter=<regex>, ?usedonly)
  /stats/recentlookups: show recent stat-name lookups
  /stats/recentlookups/clear: clear list of stat-name lookups and counter (POST)
  /stats/recentlookups/disable: disable recording of reset stat-name lookup names (POST)
  /stats/recentlookups/enable: enable recording of reset stat-name lookup names (POST)
";

/// `/stats`' `filter=` (percent-decoded, a regex searched in each name, refused with
/// Envoy's 400 when invalid) and `usedonly`.
fn stats_query(req: &Request<Incoming>) -> Result<stats::StatsQuery, String> {
    let pairs = form_pairs(req.uri().query().unwrap_or(""));
    let mut query = stats::StatsQuery::default();
    for (k, v) in pairs {
        match k.as_str() {
            "usedonly" => query.used_only = true,
            "filter" if !v.is_empty() => {
                let re = regex::Regex::new(&v).map_err(|e| {
                    let reason = match e {
                        regex::Error::Syntax(s) => {
                            s.lines().last().unwrap_or("").trim().to_string()
                        }
                        other => other.to_string(),
                    };
                    format!("Invalid re2 regex: {reason}: {v}")
                })?;
                query.filter = Some(re);
            }
            _ => {}
        }
    }
    Ok(query)
}

/// `/stats/recentlookups`, as Envoy writes it: a `Count Lookup` table sorted by name and
/// the total, or a hint when tracking is off.
fn recent_lookups(store: &stats::Store) -> String {
    let (names, total) = store.recent_lookups();
    let mut out = match names {
        None => "Lookup tracking is not enabled. Use /stats/recentlookups/enable to enable.\n"
            .to_string(),
        Some(names) => {
            let mut out = String::from("   Count Lookup\n");
            for (name, count) in names {
                out.push_str(&format!("{count:8} {name}\n"));
            }
            out
        }
    };
    out.push_str(&format!("\ntotal: {total}\n"));
    out
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn listeners(server: &Server, json: bool) -> Response<Full<Bytes>> {
    let lm = server.listener_manager.borrow();
    if json {
        let statuses: Vec<_> = lm
            .listeners()
            .iter()
            .map(|(name, e)| {
                serde_json::json!({
                    "name": name,
                    "local_address": {"socket_address": {
                        "address": e.bound.ip().to_string(),
                        "port_value": e.bound.port(),
                    }},
                })
            })
            .collect();
        return response(
            200,
            JSON,
            pretty(&serde_json::json!({ "listener_statuses": statuses })),
        );
    }
    let mut out = String::new();
    for (name, e) in lm.listeners() {
        out.push_str(&format!("{name}::{}\n", e.bound));
    }
    response(200, TEXT, out)
}

fn clusters(server: &Server, json: bool) -> Response<Full<Bytes>> {
    let cm = server.cluster_manager.borrow();
    if json {
        let statuses: Vec<_> = cm
            .active()
            .values()
            .map(|e| {
                let hosts: Vec<_> = e
                    .info
                    .hosts
                    .hosts
                    .iter()
                    .map(|h| {
                        serde_json::json!({
                            "address": {"socket_address": {
                                "address": h.address.ip().to_string(),
                                "port_value": h.address.port(),
                            }},
                            "stats": [
                                {"name": "cx_total", "value": h.stats.cx_total.value().to_string(), "type": "COUNTER"},
                                {"name": "cx_active", "value": h.stats.cx_active.value().to_string(), "type": "GAUGE"},
                                {"name": "cx_connect_fail", "value": h.stats.cx_connect_fail.value().to_string(), "type": "COUNTER"},
                                {"name": "rq_total", "value": h.stats.rq_total.value().to_string(), "type": "COUNTER"},
                                {"name": "rq_active", "value": h.stats.rq_active.value().to_string(), "type": "GAUGE"},
                            ],
                            "health_status": health_status(h),
                            "weight": h.weight,
                            "priority": h.priority,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": e.info.name,
                    "added_via_api": e.added_via_api,
                    "host_statuses": hosts,
                })
            })
            .collect();
        return response(
            200,
            JSON,
            pretty(&serde_json::json!({ "cluster_statuses": statuses })),
        );
    }
    let mut out = String::new();
    for e in cm.active().values() {
        let c = &e.info;
        let t = c.thresholds;
        for (k, v) in [
            ("max_connections", t.max_connections),
            ("max_pending_requests", t.max_pending_requests),
            ("max_requests", t.max_requests),
            ("max_retries", t.max_retries),
        ] {
            out.push_str(&format!("{}::default_priority::{k}::{v}\n", c.name));
        }
        out.push_str(&format!("{}::added_via_api::{}\n", c.name, e.added_via_api));
        for h in &c.hosts.hosts {
            let p = format!("{}::{}", c.name, h.address);
            out.push_str(&format!("{p}::cx_active::{}\n", h.stats.cx_active.value()));
            out.push_str(&format!(
                "{p}::cx_connect_fail::{}\n",
                h.stats.cx_connect_fail.value()
            ));
            out.push_str(&format!("{p}::cx_total::{}\n", h.stats.cx_total.value()));
            out.push_str(&format!("{p}::rq_active::{}\n", h.stats.rq_active.value()));
            out.push_str(&format!("{p}::rq_total::{}\n", h.stats.rq_total.value()));
            out.push_str(&format!("{p}::health_flags::{}\n", h.health_flags_text()));
            out.push_str(&format!("{p}::weight::{}\n", h.weight));
            out.push_str(&format!("{p}::priority::{}\n", h.priority));
        }
    }
    response(200, TEXT, out)
}

/// Envoy's JSON `health_status` of a host: its EDS status and the flags checking set.
fn health_status(h: &crate::upstream::Host) -> serde_json::Value {
    use crate::upstream::{HealthFlags, HostHealth};
    let mut out = serde_json::Map::new();
    let eds = match h.eds_health {
        HostHealth::Healthy => "HEALTHY",
        HostHealth::Degraded => "DEGRADED",
        HostHealth::Unhealthy => "UNHEALTHY",
    };
    out.insert("eds_health_status".into(), eds.into());
    let flags = h.stats.flags();
    for (flag, name) in [
        (HealthFlags::FAILED_ACTIVE_HC, "failed_active_health_check"),
        (HealthFlags::FAILED_OUTLIER_CHECK, "failed_outlier_check"),
        (
            HealthFlags::DEGRADED_ACTIVE_HC,
            "failed_active_degraded_check",
        ),
        (HealthFlags::ACTIVE_HC_TIMEOUT, "active_hc_timeout"),
    ] {
        if flags.intersects(flag) {
            out.insert(name.into(), true.into());
        }
    }
    serde_json::Value::Object(out)
}

/// `/runtime_modify`: the query's (or a form body's) pairs set admin-layer keys; an empty
/// value removes one. Without an admin layer: 503, as Envoy.
async fn runtime_modify(server: &Server, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let mut pairs: Vec<(String, String)> = form_pairs(req.uri().query().unwrap_or(""));
    if pairs.is_empty() {
        // Envoy takes the pairs from an urlencoded body when the query has none.
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return response(400, TEXT, format!("cannot read the body: {e}\n")),
        };
        pairs = form_pairs(&String::from_utf8_lossy(&body));
    }
    match server.runtime.modify(&pairs) {
        Ok(()) => {
            // Answered once every worker has the new values: a request sent after the
            // answer sees them.
            server.tls.run_on_all_workers_async(|_| {}).await;
            response(200, TEXT, "OK\n")
        }
        Err(e) => response(503, TEXT, format!("{e}\n")),
    }
}

/// `k=v&k2=v2`, percent-decoded (`+` is a space, as in forms).
fn form_pairs(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// `/logging`: sets levels (`level=` for every logger, `<logger>=<level>`, or
/// `paths=<logger>:<level>,…`) and lists every logger's level; a bad name or level is
/// 400 with Envoy's usage text.
fn logging(q: &HashMap<String, String>) -> Response<Full<Bytes>> {
    let mut changes: Vec<(Option<&str>, &str)> = Vec::new();
    for (key, value) in q {
        match key.as_str() {
            "level" => changes.push((None, value)),
            "paths" => changes.extend(value.split(',').filter(|p| !p.is_empty()).map(|p| {
                let (name, level) = p.split_once(':').unwrap_or((p, ""));
                (Some(name), level)
            })),
            name => changes.push((Some(name), value)),
        }
    }
    // `level=` first, so that a named logger in the same request keeps its own level.
    changes.sort_by_key(|(name, _)| name.is_some());
    match crate::logging::set_levels(&changes) {
        Ok(()) => response(200, TEXT, crate::logging::levels_text()),
        Err(e) => response(
            400,
            TEXT,
            format!(
                "error: {e}\n\nusage: /logging?<name>=<level> (change single level)\n\
                 usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n\
                 usage: /logging?level=<level> (change all levels)\n\
                 levels: trace debug info warning error critical off \n{}",
                crate::logging::levels_text()
            ),
        ),
    }
}

/// `/memory`: the allocator's figures under Envoy's names (glibc's `mallinfo2` stands for
/// tcmalloc: `allocated` is in use, `heap_size` held from the system, `pageheap_free` held
/// but free; glibc keeps no per-thread caches and unmaps nothing on its own).
fn memory() -> serde_json::Value {
    let heap = crate::memory::heap_stats();
    let physical = crate::memory::resident_bytes().unwrap_or(0);
    serde_json::json!({
        "allocated": heap.in_use.to_string(),
        "heap_size": heap.held.to_string(),
        "pageheap_unmapped": "0",
        "pageheap_free": heap.free.to_string(),
        "total_thread_cache": "0",
        "total_physical_bytes": physical.to_string(),
    })
}

/// `/init_dump`: `{}` once everything is initialized, else the listeners still warming
/// (what Courier's initialization waits on).
fn init_dump(server: &Server) -> serde_json::Value {
    let warming: Vec<String> = server
        .listener_manager
        .borrow()
        .warming()
        .keys()
        .cloned()
        .collect();
    if warming.is_empty() {
        return serde_json::json!({});
    }
    serde_json::json!({
        "unready_targets_dumps": [{ "name": "Listener-init-manager", "target_names": warming }]
    })
}
