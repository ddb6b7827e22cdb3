//! Churn under load: for 60 s (`CHURN_SECS`), endpoints change every 100 ms, clusters and
//! listeners are added and removed and a listener is updated every second, while load runs
//! on listeners whose targets stay valid: zero errors there, and the proxy's RSS returns to
//! within 10% of its level before the churn.

use std::time::{Duration, Instant};

use courier_control_plane::ResourceType;
use courier_integration_tests::proxy::ProxyOptions;
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{tcp_hello, Load, LoadKind};
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Cp};

use crate::fixture::{Fx, NODE};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_under_load() {
    let secs: u64 = std::env::var("CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ups = [
        Upstream::tcp_echo("a").await,
        Upstream::tcp_echo("b").await,
        Upstream::tcp_echo("c").await,
        Upstream::tcp_echo("d").await,
    ];
    let (ls, lu) = (free_port(), free_port());
    let fx = Fx::with_opts(
        Cp::start().await,
        |p| Bootstrap::ads(NODE, p),
        vec![
            eds_cluster("cs"),
            endpoints("cs", &[ups[0].port, ups[1].port]),
            tcp_listener("ls", ls, "cs"),
            tcp_listener("lu", lu, "cs"),
        ],
        ProxyOptions {
            drain_time_s: 2,
            ..ProxyOptions::default()
        },
    )
    .await;
    let cache = fx.cp.cp.cache().clone();

    // Baseline: load without churn.
    let load_s = Load::start(LoadKind::Tcp, ls, 3);
    let load_u = Load::start(LoadKind::Tcp, lu, 2);
    load_s.wait_progress(200).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // settle allocations under load
    let rss_before = fx.proxy.rss_kib();

    let started = Instant::now();
    let mut tick: u64 = 0;
    let mut temp: Vec<(String, String)> = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tick += 1;
        // Endpoints: a and b always; c and d come and go (all keep running).
        let mut eps = vec![
            (ups[0].port, 1 + (tick % 3) as u32, ""),
            (ups[1].port, 1, ""),
        ];
        if tick.is_multiple_of(2) {
            eps.push((ups[2].port, 2, ""));
        }
        if tick.is_multiple_of(3) {
            eps.push((ups[3].port, 1, "DRAINING"));
        }
        cache
            .update_resource(NODE, endpoints_weighted("cs", &eps))
            .expect("eds");
        if tick.is_multiple_of(10) {
            let i = tick / 10;
            let (c, l) = (format!("tmp{i}"), format!("lt{i}"));
            let mut up = vec![
                static_cluster(&c, &[ups[(i % 4) as usize].port], ""),
                tcp_listener(&l, free_port(), &c),
                // lu is updated (a listener-level change: full update + drain).
                listener_yaml(&tcp_listener_text(
                    "lu",
                    lu,
                    "cluster: cs",
                    &format!(
                        "per_connection_buffer_limit_bytes: {}",
                        16384 + (i % 7) * 1024
                    ),
                )),
            ];
            let mut rm = Vec::new();
            temp.push((c, l));
            if temp.len() > 3 {
                let (oc, ol) = temp.remove(0);
                rm.push((ResourceType::Listener, ol));
                rm.push((ResourceType::Cluster, oc));
            }
            if i.is_multiple_of(5) {
                // A fresh EDS cluster comes and goes too.
                up.push(eds_cluster(&format!("e{i}")));
                up.push(endpoints(&format!("e{i}"), &[ups[0].port]));
            }
            cache.update_resources(NODE, up, rm).expect("churn");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Converge to a final state without the temporaries.
    let rm: Vec<(ResourceType, String)> = temp
        .drain(..)
        .flat_map(|(c, l)| [(ResourceType::Listener, l), (ResourceType::Cluster, c)])
        .collect();
    let last = cache
        .update_resources(NODE, [endpoints("cs", &[ups[0].port, ups[1].port])], rm)
        .expect("final");
    let report_s = load_s.stop().await;
    let report_u = load_u.stop().await;
    fx.cp.ack_all(NODE, &last).await;
    eprintln!(
        "churn: {tick} ticks; ls {} ok {:?}; lu {} ok {:?}",
        report_s.total_ok(),
        report_s.ok,
        report_u.total_ok(),
        report_u.ok
    );
    assert_eq!(
        report_s.error_count, 0,
        "ls failures: {:?}",
        report_s.errors
    );
    assert_eq!(
        report_u.error_count, 0,
        "lu failures: {:?}",
        report_u.errors
    );
    assert!(report_s.total_ok() > 100 && report_u.total_ok() > 100);
    assert!(fx.proxy.running());
    fx.proxy
        .wait_stat("listener_manager.total_listeners_draining", "== 0", |v| {
            v == 0
        })
        .await;
    assert_eq!(tcp_hello(ls).await.map(|n| n == "a" || n == "b"), Ok(true));
    // RSS back within 10% (allow the allocator a moment to return freed pages).
    let rss_after = eventually("RSS back within 10% of the baseline", || async {
        let r = fx.proxy.rss_kib();
        (r * 10 <= rss_before * 11).then_some(r)
    })
    .await;
    eprintln!("churn: RSS before {rss_before} KiB, after {rss_after} KiB");
}
