//! The layered runtime (`layered_runtime`): static, disk and admin layers merged as
//! Envoy merges them, `/runtime` and `/runtime_modify`, the `runtime.*` stats, a disk
//! layer reloaded when its symlink is swapped, and runtime keys steering requests live
//! (a route's `runtime_fraction`, the fault filter's keys). Runs through Courier and, when
//! `envoy` is on PATH, through Envoy 1.40; the two must agree.

mod http_support;

use std::path::Path;
use std::time::{Duration, Instant};

use http_support::*;

/// A disk layer tree: `root/current` -> `root/<version>`, holding `files`.
fn disk_version(root: &Path, version: &str, files: &[(&str, &str)]) {
    let dir = root.join(version);
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write runtime file");
    }
    // Swapped as operators do: a new symlink renamed over the old one.
    let tmp = root.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&dir, &tmp).expect("symlink");
    std::fs::rename(&tmp, root.join("current")).expect("swap symlink");
}

fn runtime_bootstrap(disk_root: &Path) -> String {
    let boot = bootstrap(
        "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/\", runtime_fraction: { default_value: { numerator: 0 }, runtime_key: routing.canary } }
                direct_response: { status: 200, body: { inline_string: canary } }
              - match: { prefix: \"/\" }
                direct_response: { status: 200, body: { inline_string: stable } }
",
        "",
        "    []\n",
    );
    let boot = with_filters(
        &boot,
        "          - name: envoy.filters.http.fault
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { http_status: 503, percentage: { numerator: 0 } }
",
    );
    format!(
        "{boot}layered_runtime:
  layers:
  - name: base
    static_layer:
      a: 1
      b: 4294967295
      c: true
      d: str
      e: 1.5
      g: {{ h: {{ i: 3 }} }}
      overridden: 1
  - name: disk
    disk_layer: {{ symlink_root: {root}/current, subdirectory: rt }}
  - name: admin
    admin_layer: {{}}
",
        root = disk_root.display()
    )
}

/// `/runtime` as JSON.
fn runtime(proxy: &Courier) -> serde_json::Value {
    let body = admin_get(proxy.admin, "/runtime").expect("/runtime answers");
    serde_json::from_str(&body).expect("/runtime is JSON")
}

/// The `runtime.*` stats, sorted.
fn runtime_stats(proxy: &Courier) -> Vec<String> {
    let body = admin_get(proxy.admin, "/stats").unwrap_or_default();
    let mut v: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("runtime."))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Waits until `key`'s final value in `/runtime` is `want`.
fn wait_final_value(proxy: &Courier, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = runtime(proxy)["entries"][key]["final_value"].clone();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key} stayed {got}, want {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bodies (or statuses) of `n` requests.
fn outcomes(proxy: &Courier, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| {
            let r = get(proxy.listener, "h", "/", &[]);
            format!("{} {}", r.status, r.body_str())
        })
        .collect()
}

/// Everything the scenario observes, in order.
fn run(proxy: &Courier, disk_root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let snap = |label: &str, out: &mut Vec<String>| {
        out.push(format!("{label}: {}", runtime(proxy)));
        out.push(format!("{label}: {:?}", runtime_stats(proxy)));
    };
    snap("start", &mut out);
    out.push(format!("traffic: {:?}", outcomes(proxy, 20)));

    let modify = |q: &str| admin_post(proxy.admin, &format!("/runtime_modify?{q}"));
    out.push(format!(
        "modify: {:?}",
        modify("routing.canary=100&a=9&zz=1&overridden=")
    ));
    snap("modified", &mut out);
    out.push(format!("canary: {:?}", outcomes(proxy, 20)));
    out.push(format!("modify: {:?}", modify("routing.canary=50")));
    out.push(format!("half: {:?}", outcomes(proxy, 200)));
    out.push(format!(
        "modify: {:?}",
        modify(
            "routing.canary=0&fault.http.abort.abort_percent=100&fault.http.abort.http_status=429"
        )
    ));
    out.push(format!("fault: {:?}", outcomes(proxy, 20)));
    out.push(format!(
        "modify: {:?}",
        modify("fault.http.abort.abort_percent=&fault.http.abort.http_status=&zz=")
    ));
    out.push(format!("cleared: {:?}", outcomes(proxy, 20)));

    // The disk layer under the admin layer: its value shows once the admin's goes.
    disk_version(
        disk_root,
        "v2",
        &[("rt/routing/canary", "100\n"), ("rt/x", "two")],
    );
    wait_final_value(proxy, "x", "two");
    out.push(format!("admin over disk: {:?}", outcomes(proxy, 20)));
    out.push(format!("modify: {:?}", modify("routing.canary=")));
    snap("swapped", &mut out);
    out.push(format!("disk: {:?}", outcomes(proxy, 20)));
    out
}

#[test]
fn layers_admin_and_disk_steer_requests_like_envoy() {
    let go = |start: &dyn Fn(&str) -> Option<Courier>| {
        let dir = tempfile::tempdir().expect("tempdir");
        disk_version(
            dir.path(),
            "v1",
            &[
                ("rt/x", "# a comment\none\n"),
                ("rt/b/c", "7"),
                ("rt/overridden", "2"),
            ],
        );
        let proxy = start(&runtime_bootstrap(dir.path()))?;
        Some(run(&proxy, dir.path()))
    };
    let got = go(&|b| Some(Courier::start(b))).expect("courier starts");
    if let Some(envoy) = go(&|b| Courier::start_envoy(b)) {
        assert_eq!(envoy.len(), got.len());
        for (e, c) in envoy.iter().zip(&got) {
            // JSON object order differs (both are hash maps): compare parsed values.
            let parse = |s: &str| {
                s.split_once(": ")
                    .and_then(|(_, j)| serde_json::from_str::<serde_json::Value>(j).ok())
            };
            match (parse(e), parse(c)) {
                (Some(e), Some(c)) => assert_eq!(e, c, "envoy vs courier"),
                _ => assert_eq!(e, c, "envoy vs courier"),
            }
        }
    }
    let at = |prefix: &str| {
        got.iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {got:#?}"))
            .clone()
    };
    assert_eq!(at("traffic"), r#"traffic: {"200 stable"}"#);
    assert_eq!(at("canary"), r#"canary: {"200 canary"}"#);
    assert_eq!(at("half"), r#"half: {"200 canary", "200 stable"}"#);
    assert_eq!(at("fault"), r#"fault: {"429 fault filter abort"}"#);
    assert_eq!(at("cleared"), r#"cleared: {"200 stable"}"#);
    assert_eq!(at("admin over disk"), r#"admin over disk: {"200 stable"}"#);
    assert_eq!(at("disk"), r#"disk: {"200 canary"}"#);
    let start = runtime_value(&at("start: {"));
    assert_eq!(
        start["layers"],
        serde_json::json!(["base", "disk", "admin"])
    );
    assert_eq!(start["entries"]["g.h.i"]["final_value"], "3");
    assert_eq!(
        start["entries"]["x"]["layer_values"],
        serde_json::json!(["", "one", ""])
    );
    assert_eq!(start["entries"]["overridden"]["final_value"], "2");
    assert!(
        got.iter().any(|l| l.contains("runtime.load_success: 2")),
        "{got:#?}"
    );
}

fn runtime_value(line: &str) -> serde_json::Value {
    let (_, json) = line.split_once(": ").expect("a labelled line");
    serde_json::from_str(json).expect("JSON")
}

#[test]
fn runtime_modify_needs_an_admin_layer_and_post() {
    let boot = bootstrap(&all_to("a"), "", "    []\n")
        .replace("route: { cluster: a }", "direct_response: { status: 200 }");
    let got = |proxy: &Courier| {
        (
            admin_post(proxy.admin, "/runtime_modify?k=v"),
            runtime(proxy),
            admin_get(proxy.admin, "/runtime_modify?k=v").is_some(),
        )
    };
    let courier = got(&Courier::start(&boot));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(got(&envoy), courier, "envoy vs courier");
    }
    assert_eq!(courier.0, Some(503));
    assert_eq!(
        courier.1,
        serde_json::json!({ "entries": {}, "layers": [] })
    );
}

#[test]
fn invalid_layers_are_refused_by_path() {
    let base = bootstrap(&all_to("a"), "", "    []\n");
    for (layers, want) in [
        (
            "  - { name: x, static_layer: {} }\n  - { name: x, admin_layer: {} }\n",
            "layered_runtime.layers[1].name: Duplicate layer name: x",
        ),
        (
            "  - { name: x, admin_layer: {} }\n  - { name: z, admin_layer: {} }\n",
            "Too many admin layers",
        ),
        (
            "  - { name: x, static_layer: { k: [1] } }\n",
            "Invalid runtime entry value for k",
        ),
        (
            "  - { name: x, rtds_layer: { name: r } }\n",
            "layered_runtime.layers[0].rtds_layer.rtds_config",
        ),
    ] {
        let (code, stderr) = validate(&format!("{base}layered_runtime:\n  layers:\n{layers}"));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(want), "want {want:?} in {stderr}");
    }
}

/// An RTDS layer whose control plane never answers holds start-up back only until its
/// `initial_fetch_timeout`: then the server is LIVE with the layer empty, and
/// `runtime.init_fetch_timeout` counts it.
#[test]
fn an_unanswered_rtds_layer_times_out_its_initial_fetch_like_envoy() {
    let xds = cluster(
        "xds",
        &[refusing_addr()],
        "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
",
    );
    // Envoy refuses an RTDS subscription without a named node.
    let boot = format!(
        "{}node: {{ id: n1, cluster: c1 }}
layered_runtime:
  layers:
  - {{ name: base, static_layer: {{ k: 1 }} }}
  - name: rtds
    rtds_layer:
      name: nowhere
      rtds_config:
        resource_api_version: V3
        initial_fetch_timeout: 0.5s
        api_config_source: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}
",
        bootstrap(&all_to("xds"), "", &xds)
            .replace("route: { cluster: xds }", "direct_response: { status: 200 }")
    );
    let observe = |proxy: &Courier| {
        let stats: Vec<String> = runtime_stats(proxy)
            .into_iter()
            .filter(|l| {
                [
                    "runtime.init_fetch_timeout:",
                    "runtime.update_success:",
                    "runtime.update_rejected:",
                    "runtime.num_layers:",
                    "runtime.num_keys:",
                    "runtime.load_success:",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .collect();
        (runtime(proxy), stats)
    };
    let courier = observe(&Courier::start(&boot));
    assert_eq!(
        courier.0["layers"],
        serde_json::json!(["base", "rtds"]),
        "{courier:?}"
    );
    assert!(
        courier
            .1
            .contains(&"runtime.init_fetch_timeout: 1".to_string()),
        "{courier:?}"
    );
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(observe(&envoy), courier, "envoy vs courier");
    }
}
