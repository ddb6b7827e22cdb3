//! End to end: the `courier` binary proxying TCP over real sockets to upstream threads.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const LISTENER_STATS: &str = "listener.127.0.0.1_0";

/// Opens `n` connections at once, exchanges a distinct message on each, checks the echo.
fn echo_many(addr: std::net::SocketAddr, n: usize) {
    let mut conns: Vec<TcpStream> = (0..n).map(|_| connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("hello {i}\n").as_bytes())
            .expect("write");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let want = format!("hello {i}\n");
        let mut got = vec![0; want.len()];
        c.read_exact(&mut got).expect("read echo");
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
}

fn proxies_through(workers: usize) {
    let echo = Upstream::echo();
    let courier = Courier::start(
        &static_tcp_yaml(0, &[echo.addr], &[], &[]),
        &["--concurrency", &workers.to_string()],
    );
    let addr = courier.listener("tcp_in");
    echo_many(addr, 40);
    // Connections close: the proxy sees the FINs and closes both sides.
    courier.wait_stat(
        &format!("{LISTENER_STATS}.downstream_cx_active"),
        "to return to 0",
        |v| v == 0,
    );
    let stats = courier.stats();
    assert_eq!(stats["server.concurrency"], workers as i64);
    assert_eq!(stats[&format!("{LISTENER_STATS}.downstream_cx_total")], 40);
    assert_eq!(stats["cluster.backend.upstream_cx_total"], 40);
    assert_eq!(stats["tcp.tcp_in.downstream_cx_total"], 40);
    assert_eq!(echo.accepted(), 40);
}

#[test]
fn static_tcp_proxy_one_worker() {
    proxies_through(1);
}

#[test]
fn static_tcp_proxy_four_workers() {
    proxies_through(4);
}

/// Sequential connections, each proven to reach an upstream by its echo.
fn spread(addr: std::net::SocketAddr, n: usize) {
    for i in 0..n {
        let mut c = connect(addr);
        let msg = format!("rr {i}");
        assert_eq!(echo_roundtrip(&mut c, msg.as_bytes()), msg.as_bytes());
    }
}

#[test]
fn round_robin_across_three_upstreams() {
    // One worker: the rotation is exact.
    let ups: Vec<Upstream> = (0..3).map(|_| Upstream::echo()).collect();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let courier = Courier::start(
        &static_tcp_yaml(0, &addrs, &[], &["lb_policy: ROUND_ROBIN"]),
        &["--concurrency", "1"],
    );
    spread(courier.listener("tcp_in"), 30);
    let counts: Vec<usize> = ups.iter().map(Upstream::accepted).collect();
    assert_eq!(counts, vec![10, 10, 10]);
    drop(courier);

    // Two workers, each with its own rotation: every host is within one of its share
    // (each worker deviates by less than one connection per host).
    let ups: Vec<Upstream> = (0..3).map(|_| Upstream::echo()).collect();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let courier = Courier::start(
        &static_tcp_yaml(0, &addrs, &[], &["lb_policy: ROUND_ROBIN"]),
        &["--concurrency", "2"],
    );
    spread(courier.listener("tcp_in"), 30);
    let counts: Vec<usize> = ups.iter().map(Upstream::accepted).collect();
    assert!(
        counts.iter().all(|&c| (9..=11).contains(&c)),
        "uneven round robin over two workers: {counts:?}"
    );
    assert_eq!(counts.iter().sum::<usize>(), 30);
}

#[test]
fn weighted_round_robin_follows_weights() {
    let ups: Vec<Upstream> = (0..3).map(|_| Upstream::echo()).collect();
    let eps: String = ups
        .iter()
        .zip([1, 2, 1])
        .map(|(u, w)| {
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          load_balancing_weight: {w}\n",
                u.addr.port()
            )
        })
        .collect();
    let yaml = static_tcp_yaml(0, &[], &[], &[]) + &eps;
    let courier = Courier::start(&yaml, &["--concurrency", "1"]);
    spread(courier.listener("tcp_in"), 40);
    let counts: Vec<usize> = ups.iter().map(Upstream::accepted).collect();
    assert_eq!(counts, vec![10, 20, 10]);
}

/// 100 MB each way through one connection to an echo upstream, concurrently (so both
/// directions' flow control is exercised), with SHA-256 of what was sent and received.
#[test]
fn hundred_megabytes_both_ways_keep_their_digest() {
    const TOTAL: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let echo = Upstream::echo();
    let courier = Courier::start(
        &static_tcp_yaml(0, &[echo.addr], &[], &[]),
        &["--concurrency", "2"],
    );
    let mut conn = connect(courier.listener("tcp_in"));
    let mut reader = conn.try_clone().expect("clone");
    let started = Instant::now();
    let writer = thread::spawn(move || {
        let block = pattern_block();
        let mut hash = Sha256Pipe::new();
        let mut chunk = vec![0u8; CHUNK];
        let mut sent = 0usize;
        let mut index = 0u64;
        while sent < TOTAL {
            let off = sent % block.len();
            chunk.copy_from_slice(&block[off..off + CHUNK]);
            chunk[..8].copy_from_slice(&index.to_le_bytes());
            conn.write_all(&chunk).expect("write upstream");
            hash.update(&chunk);
            sent += CHUNK;
            index += 1;
        }
        conn.shutdown(Shutdown::Write).expect("half-close");
        hash.finish()
    });
    let mut hash = Sha256Pipe::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0usize;
    loop {
        let n = reader.read(&mut buf).expect("read echo");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n;
    }
    let sent_digest = writer.join().expect("writer");
    let received_digest = hash.finish();
    eprintln!("200 MB through the proxy in {:?}", started.elapsed());
    assert_eq!(received, TOTAL);
    assert_eq!(sent_digest.len(), 64);
    assert_eq!(received_digest, sent_digest);
    let stats = courier.stats();
    assert_eq!(
        stats["tcp.tcp_in.downstream_cx_rx_bytes_total"],
        TOTAL as i64
    );
    assert_eq!(
        stats["tcp.tcp_in.downstream_cx_tx_bytes_total"],
        TOTAL as i64
    );
    assert_eq!(
        stats["cluster.backend.upstream_cx_tx_bytes_total"],
        TOTAL as i64
    );
    assert_eq!(
        stats["cluster.backend.upstream_cx_rx_bytes_total"],
        TOTAL as i64
    );
}

#[test]
fn half_close_downstream_fin_reaches_upstream_and_reply_still_flows() {
    // The upstream reads to EOF, then answers and closes: the answer must come back after
    // the client's FIN.
    let upstream = Upstream::spawn(Arc::new(|mut s: TcpStream| {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).is_ok() {
            let _ = s.write_all(format!("got {} bytes", all.len()).as_bytes());
        }
    }));
    let courier = Courier::start(&static_tcp_yaml(0, &[upstream.addr], &[], &[]), &[]);
    let mut c = connect(courier.listener("tcp_in"));
    c.write_all(&[7u8; 100_000]).expect("write");
    c.shutdown(Shutdown::Write).expect("half-close");
    let reply = read_to_eof(&mut c).expect("reply after half-close");
    assert_eq!(String::from_utf8_lossy(&reply), "got 100000 bytes");
}

#[test]
fn half_close_upstream_fin_reaches_downstream_and_requests_still_flow() {
    // The upstream greets, half-closes, then keeps reading: the client sees the greeting
    // and EOF, and what it sends afterwards still arrives.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let upstream = Upstream::spawn(Arc::new(move |mut s: TcpStream| {
        let _ = s.write_all(b"hello");
        let _ = s.shutdown(Shutdown::Write);
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let _ = tx.lock().map(|tx| tx.send(all));
    }));
    let courier = Courier::start(&static_tcp_yaml(0, &[upstream.addr], &[], &[]), &[]);
    let mut c = connect(courier.listener("tcp_in"));
    let greeting = read_to_eof(&mut c).expect("greeting then EOF");
    assert_eq!(greeting, b"hello");
    c.write_all(b"still talking")
        .expect("write after upstream FIN");
    c.shutdown(Shutdown::Write).expect("half-close");
    let got = rx.recv_timeout(DEADLINE).expect("upstream received");
    assert_eq!(got, b"still talking");
    courier.wait_stat(
        &format!("{LISTENER_STATS}.downstream_cx_active"),
        "to return to 0",
        |v| v == 0,
    );
}

#[test]
fn upstream_reset_is_propagated_as_reset() {
    // The upstream aborts (SO_LINGER 0); the client must see a reset, not a clean EOF.
    let upstream = Upstream::spawn(Arc::new(|mut s: TcpStream| {
        let mut b = [0u8; 5];
        let _ = s.read_exact(&mut b);
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    }));
    let courier = Courier::start(&static_tcp_yaml(0, &[upstream.addr], &[], &[]), &[]);
    let mut c = connect(courier.listener("tcp_in"));
    c.write_all(b"hello").expect("write");
    let r = read_to_eof(&mut c);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
}

#[test]
fn upstream_refused_closes_downstream_and_counts_failure() {
    let refused = closed_port();
    let courier = Courier::start(&static_tcp_yaml(0, &[refused], &[], &[]), &[]);
    let mut c = connect(courier.listener("tcp_in"));
    let r = read_to_eof(&mut c);
    assert!(
        matches!(&r, Ok(b) if b.is_empty()) || r.is_err(),
        "expected the connection closed, got {r:?}"
    );
    courier.wait_stat("cluster.backend.upstream_cx_connect_fail", "to be 1", |v| {
        v == 1
    });
    assert_eq!(
        courier.stat("cluster.backend.upstream_cx_connect_timeout"),
        0
    );
}

#[test]
fn refused_attempt_is_retried_on_the_next_host() {
    let refused = closed_port();
    let echo = Upstream::echo();
    let courier = Courier::start(
        &static_tcp_yaml(0, &[refused, echo.addr], &["max_connect_attempts: 3"], &[]),
        &["--concurrency", "1"],
    );
    let addr = courier.listener("tcp_in");
    // Round robin alternates: whichever host comes first, both connections succeed.
    for _ in 0..2 {
        let mut c = connect(addr);
        assert_eq!(echo_roundtrip(&mut c, b"retry"), b"retry");
    }
    assert_eq!(echo.accepted(), 2);
    // One or two refusals, depending on where the rotation starts.
    let fails = courier.stat("cluster.backend.upstream_cx_connect_fail");
    assert!((1..=2).contains(&fails), "connect failures: {fails}");
    assert_eq!(courier.stat("cluster.backend.upstream_cx_total"), 2 + fails);
}

#[test]
fn connect_timeout_closes_downstream() {
    let hole = Blackhole::new();
    let yaml = static_tcp_yaml(0, &[hole.addr], &[], &[])
        .replace("connect_timeout: 1s", "connect_timeout: 0.3s");
    let courier = Courier::start(&yaml, &[]);
    let mut c = connect(courier.listener("tcp_in"));
    let started = Instant::now();
    let r = read_to_eof(&mut c);
    let waited = started.elapsed();
    assert!(
        matches!(&r, Ok(b) if b.is_empty()) || r.is_err(),
        "expected the connection closed, got {r:?}"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}, before the connect timeout"
    );
    courier.wait_stat(
        "cluster.backend.upstream_cx_connect_timeout",
        "to be 1",
        |v| v == 1,
    );
    assert_eq!(courier.stat("cluster.backend.upstream_cx_connect_fail"), 1);
}

#[test]
fn two_thousand_concurrent_connections() {
    const N: usize = 2000;
    let echo = Upstream::echo();
    let yaml = static_tcp_yaml(0, &[echo.addr], &[], &[])
        .replace("connect_timeout: 1s", "connect_timeout: 20s");
    let courier = Courier::start(&yaml, &["--concurrency", "2"]);
    let addr = courier.listener("tcp_in");
    let mut conns: Vec<TcpStream> = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = connect(addr);
        c.write_all(format!("{i:06}").as_bytes()).expect("write");
        conns.push(c);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut got = [0u8; 6];
        c.read_exact(&mut got).expect("echo");
        assert_eq!(&got, format!("{i:06}").as_bytes());
    }
    // All of them are open at once.
    assert_eq!(
        courier.stat(&format!("{LISTENER_STATS}.downstream_cx_active")),
        N as i64
    );
    assert_eq!(courier.stat("cluster.backend.upstream_cx_active"), N as i64);
    drop(conns);
    courier.wait_stat(
        &format!("{LISTENER_STATS}.downstream_cx_active"),
        "to return to 0",
        |v| v == 0,
    );
    courier.wait_stat(
        "cluster.backend.upstream_cx_active",
        "to return to 0",
        |v| v == 0,
    );
}

#[test]
fn sigterm_drains_and_lets_inflight_transfer_complete() {
    let echo = Upstream::echo();
    let mut courier = Courier::start(
        &static_tcp_yaml(0, &[echo.addr], &[], &[]),
        &["--drain-time-s", "120", "--concurrency", "2"],
    );
    let addr = courier.listener("tcp_in");
    let mut c = connect(addr);
    let first = vec![1u8; 1 << 20];
    assert_eq!(echo_roundtrip(&mut c, &first).len(), first.len());

    courier.signal(libc::SIGTERM);
    // Draining: /ready turns 503 and new connections are no longer accepted.
    wait_for("/ready to say DRAINING", DEADLINE, || {
        let r = courier.try_admin("GET", "/ready").ok()?;
        (r.status == 503 && r.body.trim() == "DRAINING").then_some(())
    });
    wait_for(
        "the listener to stop accepting",
        DEADLINE,
        || match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(_) => Some(()),
            Ok(_) => None,
        },
    );
    assert!(!courier.has_exited(), "exited with a connection in flight");

    // The in-flight connection keeps working until it is done.
    let second = vec![2u8; 4 << 20];
    let mut writer = c.try_clone().expect("clone");
    let t = thread::spawn(move || {
        writer.write_all(&second).expect("write during drain");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let rest = read_to_eof(&mut c).expect("read during drain");
    t.join().expect("writer");
    assert_eq!(rest.len(), 4 << 20);
    assert!(rest.iter().all(|&b| b == 2));
    drop(c);

    // ... and then the process exits 0, long before the drain time.
    let status = courier.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", courier.stderr());
}

/// Envoy's drain semantics: a drain asks connections to close and never cuts them, so one
/// that never ends holds the process for the whole `--drain-time-s` (documented in
/// DIFFERENCES.md; the Helm chart's grace period must exceed it).
#[test]
fn a_connection_that_never_ends_holds_the_drain_to_its_end() {
    const DRAIN: Duration = Duration::from_secs(2);
    let echo = Upstream::echo();
    let mut courier = Courier::start(
        &static_tcp_yaml(0, &[echo.addr], &[], &[]),
        &["--drain-time-s", "2", "-l", "info"],
    );
    let mut c = connect(courier.listener("tcp_in"));
    assert_eq!(echo_roundtrip(&mut c, b"x"), b"x");
    let signalled = Instant::now();
    courier.signal(libc::SIGTERM);
    let status = courier.wait_exit(DEADLINE);
    let held = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", courier.stderr());
    assert!(
        held >= DRAIN,
        "exited after {held:?}, before the drain time"
    );
    assert!(
        courier.stderr().contains("drain time over; exiting"),
        "{}",
        courier.stderr()
    );
    drop(c);
}

#[test]
fn second_signal_exits_at_once_with_code_1() {
    let echo = Upstream::echo();
    let mut courier = Courier::start(
        &static_tcp_yaml(0, &[echo.addr], &[], &[]),
        &["--drain-time-s", "120"],
    );
    let mut c = connect(courier.listener("tcp_in"));
    assert_eq!(echo_roundtrip(&mut c, b"x"), b"x");
    courier.signal(libc::SIGTERM);
    wait_for("/ready to say DRAINING", DEADLINE, || {
        let r = courier.try_admin("GET", "/ready").ok()?;
        (r.status == 503).then_some(())
    });
    courier.signal(libc::SIGINT);
    let status = courier.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "stderr:\n{}", courier.stderr());
    assert!(
        !courier.stderr().contains("panicked"),
        "{}",
        courier.stderr()
    );
}
