//! Hot restart end to end: real `courier` generations taking each other's listen sockets
//! over (Envoy's protocol driven by a restarter written here, as Envoy's
//! `hot-restarter.py`), under constant HTTP/1.1 load and a long tcp_proxy transfer; then a
//! self restart (SIGHUP); then bad input.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// An HTTP/1.1 upstream answering every request with a small body, keeping connections.
fn http_upstream() -> Upstream {
    Upstream::spawn(Arc::new(|s: TcpStream| {
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        loop {
            let mut line = String::new();
            // Read a head (no request bodies in these tests).
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    }))
}

fn bootstrap(http_port: u16, tcp_port: u16, http_up: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {http_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: web }}
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {tcp_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: echo
  clusters:
  - name: web
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
"#,
        http_up.port(),
        echo.port()
    )
}

/// A base id no other test (nor a stray Envoy) uses: from the test process's pid, and a
/// count for the tests of this process, which run in parallel.
fn base_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst) % 8;
    (1000 + u64::from(std::process::id()) % 100_000 * 8 + n).to_string()
}

/// One generation of a hot-restarted proxy.
struct Generation {
    child: Child,
    admin_path: PathBuf,
    stderr: PathBuf,
}

impl Generation {
    fn start(
        binary: &str,
        dir: &Path,
        epoch: u32,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Generation {
        let admin_path = dir.join(format!("admin-{epoch}"));
        let stderr = dir.join(format!("stderr-{epoch}"));
        let child = Command::new(binary)
            .arg("-c")
            .arg(dir.join("bootstrap.yaml"))
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--restart-epoch", &epoch.to_string()])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn");
        Generation {
            child,
            admin_path,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The admin address once it answers `/ready` with LIVE.
    fn wait_live(&mut self) -> SocketAddr {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "generation exited ({status}) before it was live:\n{}",
                    self.stderr()
                );
            }
            let admin = std::fs::read_to_string(&self.admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            if let Some(admin) = admin {
                if http_request(admin, "GET", "/ready").is_ok_and(|r| r.body.trim() == "LIVE") {
                    return admin;
                }
            }
            assert!(Instant::now() < deadline, "not live:\n{}", self.stderr());
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "did not exit:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clients and their tallies.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut e) = self.errors.lock() {
            e.push(what);
        }
    }
}

/// One GET on `conn`; `Ok(close)` when answered 200.
fn get(conn: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> Result<bool, String> {
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|e| format!("read: {e}"))?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {status:?}"));
    }
    let (mut close, mut len) = (false, 0usize);
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection: close") {
            close = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    Ok(close)
}

fn keep_alive_client(addr: SocketAddr, load: Arc<Load>) {
    while !load.stop.load(Ordering::SeqCst) {
        let mut conn = match TcpStream::connect(addr) {
            Ok(c) => c,
            Err(e) => {
                load.fail(format!("keep-alive connect: {e}"));
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let (opened, mut n) = (Instant::now(), 0u64);
        loop {
            if load.stop.load(Ordering::SeqCst) {
                return;
            }
            match get(&mut conn, &mut reader) {
                Ok(close) => {
                    n += 1;
                    load.ok.fetch_add(1, Ordering::SeqCst);
                    if close {
                        // A draining proxy asks the client to reconnect: not a failure.
                        break;
                    }
                }
                Err(e) => {
                    // Where and when, to find it in a trace of the proxy.
                    load.fail(format!(
                        "keep-alive: {e} (from {:?}, after {n} requests, {:?} after connect)",
                        conn.local_addr().ok(),
                        opened.elapsed()
                    ));
                    break;
                }
            }
        }
    }
}

fn new_connection_client(addr: SocketAddr, load: Arc<Load>) {
    while !load.stop.load(Ordering::SeqCst) {
        let result = TcpStream::connect(addr)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|mut conn| {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
                get(&mut conn, &mut reader)
            });
        match result {
            Ok(_) => {
                load.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => load.fail(format!("new connection: {e}")),
        }
    }
}

/// HTTP/2 (prior knowledge) requests one after another on one connection; a new
/// connection once the proxy's GOAWAY closes it. A request the client did not send because
/// the connection was going away is sent again on the next one (not a failure).
fn h2_client(addr: SocketAddr, load: Arc<Load>) {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        while !load.stop.load(Ordering::SeqCst) {
            let tcp = match tokio::net::TcpStream::connect(addr).await {
                Ok(t) => t,
                Err(e) => {
                    load.fail(format!("h2 connect: {e}"));
                    continue;
                }
            };
            let (mut sender, conn) = match hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    load.fail(format!("h2 handshake: {e}"));
                    continue;
                }
            };
            let driver = tokio::spawn(conn);
            while !load.stop.load(Ordering::SeqCst) {
                if sender.ready().await.is_err() {
                    break;
                }
                let req = http::Request::get("http://x/")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .expect("request");
                match sender.try_send_request(req).await {
                    Ok(resp) if resp.status() == 200 => match resp.into_body().collect().await {
                        Ok(_) => {
                            load.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            load.fail(format!("h2 body: {e}"));
                            break;
                        }
                    },
                    Ok(resp) => load.fail(format!("h2 status {}", resp.status())),
                    Err(mut e) => {
                        if e.take_message().is_none() {
                            load.fail(format!("h2: {}", e.error()));
                        }
                        break;
                    }
                }
            }
            drop(sender);
            let _ = driver.await;
        }
    });
}

/// A checksum sensitive to order.
fn checksum(acc: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(acc, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Sends `total` bytes through the echo tcp_proxy in two halves, the second once
/// `resume` is set; returns (sent checksum, received checksum, bytes received).
fn long_transfer(addr: SocketAddr, total: usize, resume: Arc<AtomicBool>) -> (u64, u64, usize) {
    let mut conn = TcpStream::connect(addr).expect("tcp connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reader = conn.try_clone().expect("clone");
    let reading = thread::spawn(move || {
        let mut sum = 0xcbf2_9ce4_8422_2325u64;
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while got < total {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sum = checksum(sum, &buf[..n]);
                    got += n;
                }
            }
        }
        (sum, got)
    });
    let block = pattern_block();
    let mut sent_sum = 0xcbf2_9ce4_8422_2325u64;
    let mut sent = 0usize;
    while sent < total {
        if sent >= total / 2 {
            let deadline = Instant::now() + DEADLINE;
            while !resume.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        let n = block.len().min(total - sent);
        let chunk = &block[..n];
        conn.write_all(chunk).expect("tcp write");
        sent_sum = checksum(sent_sum, chunk);
        sent += n;
    }
    let (sum, got) = reading.join().expect("reader");
    (sent_sum, sum, got)
}

fn server_info(admin: SocketAddr) -> serde_json::Value {
    http_request(admin, "GET", "/server_info")
        .expect("server_info")
        .json()
}

fn stat(admin: SocketAddr, name: &str) -> i64 {
    let body = http_request(admin, "GET", "/stats").expect("stats").body;
    parse_stats(&body).get(name).copied().unwrap_or(0)
}

struct Setup {
    dir: tempfile::TempDir,
    http: SocketAddr,
    tcp: SocketAddr,
    _web: Upstream,
    _echo: Upstream,
}

fn setup() -> Setup {
    let web = http_upstream();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let (hp, tp) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("bootstrap.yaml"),
        bootstrap(hp, tp, web.addr, echo.addr),
    )
    .expect("bootstrap");
    Setup {
        dir,
        http: format!("127.0.0.1:{hp}").parse().expect("addr"),
        tcp: format!("127.0.0.1:{tp}").parse().expect("addr"),
        _web: web,
        _echo: echo,
    }
}

/// A port free now, below the ephemeral range.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn start_load(s: &Setup) -> (Arc<Load>, Vec<thread::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (l, a) = (load.clone(), s.http);
        clients.push(thread::spawn(move || keep_alive_client(a, l)));
        let (l, a) = (load.clone(), s.http);
        clients.push(thread::spawn(move || new_connection_client(a, l)));
    }
    let (l, a) = (load.clone(), s.http);
    clients.push(thread::spawn(move || h2_client(a, l)));
    (load, clients)
}

/// Stops the clients; asserts no request failed: not one refused or reset connection.
fn stop_load(load: &Load, clients: Vec<thread::JoinHandle<()>>) {
    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client");
    }
    let errors = load.errors.lock().expect("errors").clone();
    assert_eq!(
        load.failed.load(Ordering::SeqCst),
        0,
        "failed requests: {errors:?}"
    );
}

/// #25's scenario: 5 restarts in a row under HTTP/1.1 keep-alive, new connections per
/// request and HTTP/2, with a 100 MB tcp_proxy transfer started before the first.
#[test]
fn envoys_protocol_five_restarts_under_load_lose_nothing() {
    const TRANSFER: usize = 100 << 20;
    let s = setup();
    let id = base_id();
    let args = [
        "--base-id",
        &id,
        "--concurrency",
        "2",
        "--drain-time-s",
        "1",
        "--parent-shutdown-time-s",
        "3",
        "-l",
        "info",
    ];
    let mut current = Generation::start(COURIER, s.dir.path(), 0, &args, &[]);
    let mut admin = current.wait_live();
    assert_eq!(
        http_request(admin, "GET", "/hot_restart_version")
            .expect("version")
            .body
            .trim(),
        server_info(admin)["hot_restart_version"]
            .as_str()
            .expect("version")
    );
    let (load, clients) = start_load(&s);
    let resume = Arc::new(AtomicBool::new(false));
    let mut transfer = Some({
        let (addr, resume) = (s.tcp, resume.clone());
        thread::spawn(move || long_transfer(addr, TRANSFER, resume))
    });
    let mut last_total = 0;
    for epoch in 1..=5u32 {
        // Requests reach this generation before it is replaced.
        let before = load.ok.load(Ordering::SeqCst);
        wait_for("requests served", DEADLINE, || {
            (load.ok.load(Ordering::SeqCst) > before + 20).then_some(())
        });
        // The restarter: start epoch N+1, wait for epoch N to exit.
        let mut next = Generation::start(COURIER, s.dir.path(), epoch, &args, &[]);
        let next_admin = next.wait_live();
        // The transfer's second half flows while its generation drains.
        resume.store(true, Ordering::SeqCst);
        if let Some(transfer) = transfer.take() {
            // It completes on the process it started on, before that one is terminated.
            let (sent, received, got) = transfer.join().expect("transfer");
            assert_eq!(got, TRANSFER);
            assert_eq!(sent, received, "the long transfer's checksum");
        }
        assert_eq!(current.wait_exit(), 0, "parent:\n{}", current.stderr());
        let info = server_info(next_admin);
        assert_eq!(info["command_line_options"]["restart_epoch"], epoch);
        assert_eq!(
            stat(next_admin, "server.hot_restart_epoch"),
            i64::from(epoch)
        );
        // Totals continue across epochs.
        let total = stat(next_admin, "http.ingress.downstream_rq_total");
        assert!(
            total > last_total,
            "epoch {epoch}: {total} after {last_total}"
        );
        last_total = total;
        current = next;
        admin = next_admin;
    }
    if std::env::var_os("HOT_RESTART_KEEP").is_some() {
        let _ = std::fs::create_dir_all("/tmp/hr-logs");
        for e in std::fs::read_dir(s.dir.path()).expect("dir").flatten() {
            let _ = std::fs::copy(e.path(), Path::new("/tmp/hr-logs").join(e.file_name()));
        }
    }
    stop_load(&load, clients);
    let total = stat(admin, "http.ingress.downstream_rq_total");
    assert!(
        total as u64 >= load.ok.load(Ordering::SeqCst),
        "every answered request of every epoch is counted: {total}"
    );
    assert!(
        stat(admin, "http.ingress.downstream_cx_http2_total") > 0,
        "HTTP/2 clients were served"
    );
}

#[test]
fn self_restart_on_sighup_keeps_the_first_process_as_holder() {
    let s = setup();
    let id = base_id();
    let args = [
        "--base-id",
        &id,
        "--drain-time-s",
        "1",
        "--parent-shutdown-time-s",
        "2",
        "--drain-strategy",
        "immediate",
        "-l",
        "info",
    ];
    let mut first = Generation::start(COURIER, s.dir.path(), 0, &args, &[]);
    let holder = first.child.id();
    let admin0 = first.wait_live();
    let (load, clients) = start_load(&s);
    // Every generation writes the same --admin-address-path: wait for the epoch's own.
    let live_epoch = |first: &Generation, epoch: u32| {
        wait_for(&format!("generation {epoch} live"), DEADLINE, || {
            let a: SocketAddr = std::fs::read_to_string(&first.admin_path)
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let info = http_request(a, "GET", "/server_info").ok()?.json();
            (info["command_line_options"]["restart_epoch"] == epoch && info["state"] == "LIVE")
                .then_some(a)
        })
    };
    // Only the holder and the serving generation are left once the parent is terminated.
    let parent_gone = |first: &mut Generation, epoch: u32| {
        wait_for(
            &format!("generation {epoch}'s parent to exit"),
            DEADLINE,
            || (descendants(holder).len() == 1).then_some(()),
        );
        assert!(
            first.child.try_wait().expect("wait").is_none(),
            "the first process holds:\n{}",
            first.stderr()
        );
    };
    let mut admin = admin0;
    let mut last_total = 0;
    for epoch in 1..=5u32 {
        let before = load.ok.load(Ordering::SeqCst);
        wait_for("requests served", DEADLINE, || {
            (load.ok.load(Ordering::SeqCst) > before + 20).then_some(())
        });
        match epoch {
            // SIGHUP to the supervisor's process (the holder from epoch 1 on).
            // SAFETY: kill takes plain integers.
            1 | 2 => unsafe {
                libc::kill(holder as i32, libc::SIGHUP);
            },
            // The admin endpoint of the serving generation.
            3 => {
                let r = http_request(admin, "POST", "/hot_restart").expect("hot_restart");
                assert_eq!(r.status, 200, "{}", r.body);
                assert!(r.body.contains("next generation started"), "{}", r.body);
            }
            // Two in a row: the second, while epoch 4 still has its parent, is queued and
            // runs once that parent is terminated.
            4 => {
                unsafe { libc::kill(holder as i32, libc::SIGHUP) };
                live_epoch(&first, 4);
                let r = http_request(
                    std::fs::read_to_string(&first.admin_path)
                        .expect("admin")
                        .trim()
                        .parse()
                        .expect("admin address"),
                    "POST",
                    "/hot_restart",
                )
                .expect("hot_restart");
                assert!(r.body.contains("queued"), "{}", r.body);
            }
            _ => {}
        }
        admin = live_epoch(&first, epoch);
        let total = stat(admin, "http.ingress.downstream_rq_total");
        assert!(
            total > last_total,
            "epoch {epoch}: {total} after {last_total}"
        );
        last_total = total;
        if epoch == 4 {
            // Its queued successor starts as its parent is terminated.
            continue;
        }
        if epoch == 1 {
            // The first generation is the holder itself: it stops serving, does not exit.
            wait_for("the first process to become the holder", DEADLINE, || {
                first
                    .stderr()
                    .contains("this process now only holds the generations it started")
                    .then_some(())
            });
        }
        parent_gone(&mut first, epoch);
    }
    stop_load(&load, clients);
    assert!(
        stat(admin, "http.ingress.downstream_rq_total") as u64 >= load.ok.load(Ordering::SeqCst)
    );
    assert_eq!(stat(admin, "server.hot_restart_epoch"), 5);
    // SIGTERM to the holder reaches the serving generation; all exit, with its code.
    // SAFETY: as above.
    unsafe { libc::kill(holder as i32, libc::SIGTERM) };
    assert_eq!(first.wait_exit(), 0, "{}", first.stderr());
    assert!(descendants(holder).is_empty());
}

/// Live descendants of `pid` (from /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut pairs = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        if f.next() == Some("Z") {
            continue;
        }
        if let Some(pp) = f.next().and_then(|x| x.parse::<u32>().ok()) {
            pairs.push((p, pp));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(pairs.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

#[test]
fn a_bad_child_leaves_the_parent_serving_and_bad_epochs_fail_clearly() {
    let s = setup();
    let id = base_id();
    let args = ["--base-id", &id, "--parent-shutdown-time-s", "2"];
    let mut parent = Generation::start(COURIER, s.dir.path(), 0, &args, &[]);
    let admin = parent.wait_live();
    // A second epoch 0 with the same base id: the socket is taken.
    let mut twin = Generation::start(COURIER, s.dir.path(), 0, &args, &[]);
    assert_eq!(twin.wait_exit(), 1);
    assert!(
        twin.stderr()
            .contains("unable to bind hot restart domain socket"),
        "{}",
        twin.stderr()
    );
    // A child whose bootstrap is bad exits non-zero; the parent serves on.
    let good = std::fs::read_to_string(s.dir.path().join("bootstrap.yaml")).expect("read");
    std::fs::write(
        s.dir.path().join("bootstrap.yaml"),
        good.replace("connect_timeout: 1s", "connect_timeout: nope"),
    )
    .expect("write");
    let mut bad = Generation::start(COURIER, s.dir.path(), 1, &args, &[]);
    assert_eq!(bad.wait_exit(), 1);
    assert!(bad.stderr().contains("error"), "{}", bad.stderr());
    std::fs::write(s.dir.path().join("bootstrap.yaml"), &good).expect("write");
    // A child whose extra listener cannot bind (the port is taken) exits non-zero too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let with_clash = good.replacen(
        "  clusters:",
        &format!("  - name: clash\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: c\n          cluster: echo\n  clusters:"),
        1,
    );
    std::fs::write(s.dir.path().join("bootstrap.yaml"), with_clash).expect("write");
    let mut clash = Generation::start(COURIER, s.dir.path(), 1, &args, &[]);
    assert_eq!(clash.wait_exit(), 1);
    assert!(clash.stderr().contains("cannot bind"), "{}", clash.stderr());
    std::fs::write(s.dir.path().join("bootstrap.yaml"), &good).expect("write");
    // The parent is untouched: live, its admin open, its listener answering.
    assert!(parent.child.try_wait().expect("wait").is_none());
    assert_eq!(
        http_request(admin, "GET", "/ready")
            .expect("ready")
            .body
            .trim(),
        "LIVE"
    );
    let mut conn = TcpStream::connect(s.http).expect("connect");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    get(&mut conn, &mut reader).expect("the parent still serves");
    // An epoch with no parent behind it: a clear error, not a hang.
    let mut orphan = Generation::start(COURIER, s.dir.path(), 2, &args, &[]);
    assert_eq!(orphan.wait_exit(), 1);
    assert!(
        orphan.stderr().contains("no parent of epoch 1"),
        "{}",
        orphan.stderr()
    );
    // A running generation of another hot restart version.
    let version = format!("/dev/shm/courier_hot_restart_{id}");
    std::fs::write(&version, "other.0").expect("write version");
    let mut mismatched = Generation::start(COURIER, s.dir.path(), 1, &args, &[]);
    assert_eq!(mismatched.wait_exit(), 1);
    assert!(
        mismatched.stderr().contains("hot restart version mismatch"),
        "{}",
        mismatched.stderr()
    );
    let _ = std::fs::remove_file(&version);
    // --disable-hot-restart with an epoch is refused.
    let mut disabled = Generation::start(COURIER, s.dir.path(), 1, &["--disable-hot-restart"], &[]);
    assert_eq!(disabled.wait_exit(), 1);
    assert!(
        disabled.stderr().contains("--disable-hot-restart"),
        "{}",
        disabled.stderr()
    );
}

/// `--drain-strategy` on the parent's drain, as Envoy's `drainClose()`: `immediate` ends
/// every HTTP/1.1 connection on its next response; `gradual` (a 20 s drain) only a share
/// (probability elapsed/drain time) at first.
#[test]
fn drain_strategy_shapes_the_parents_drain() {
    let s = setup();
    for (strategy, all_close) in [("immediate", true), ("gradual", false)] {
        let id = base_id();
        let args = [
            "--base-id",
            &id,
            "--concurrency",
            "1",
            "--drain-time-s",
            "20",
            "--drain-strategy",
            strategy,
        ];
        let mut parent = Generation::start(COURIER, s.dir.path(), 0, &args, &[]);
        parent.wait_live();
        // Connections to the parent, each used once so the parent serves them.
        let mut conns: Vec<(TcpStream, BufReader<TcpStream>)> = (0..20)
            .map(|_| {
                let c = TcpStream::connect(s.http).expect("connect");
                let r = BufReader::new(c.try_clone().expect("clone"));
                (c, r)
            })
            .collect();
        for (c, r) in conns.iter_mut() {
            assert!(!get(c, r).expect("before the restart"));
        }
        let mut child = Generation::start(COURIER, s.dir.path(), 1, &args, &[]);
        child.wait_live();
        // The parent is told to drain once the child's workers accept.
        wait_for("the parent to drain", DEADLINE, || {
            parent
                .stderr()
                .contains("child is serving; draining listeners")
                .then_some(())
        });
        let closed = conns
            .iter_mut()
            .map(|(c, r)| get(c, r).expect("after the drain started"))
            .filter(|close| *close)
            .count();
        if all_close {
            assert_eq!(closed, 20, "{strategy}");
        } else {
            assert!(closed < 20, "{strategy}: {closed} of 20 closed at once");
        }
    }
}

/// `--hot-restart-on-config-change`: a new bootstrap written to the `-c` path is served by
/// a self-restarted generation; the first process holds; a bad one leaves it serving.
#[test]
fn a_bootstrap_change_hot_restarts_with_the_new_config() {
    let s = setup();
    let id = base_id();
    let args = [
        "--base-id",
        &id,
        "--drain-time-s",
        "1",
        "--parent-shutdown-time-s",
        "1",
        "--hot-restart-on-config-change",
    ];
    let mut first = Generation::start(COURIER, s.dir.path(), 0, &args, &[]);
    let holder = first.child.id();
    first.wait_live();
    let path = s.dir.path().join("bootstrap.yaml");
    let good = std::fs::read_to_string(&path).expect("read");
    // Written whole and renamed in, as the kubelet swaps a ConfigMap volume.
    let swap = |text: &str| {
        let tmp = s.dir.path().join("bootstrap.yaml.new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    };
    swap(&good.replace("connect_timeout: 1s", "connect_timeout: 7s"));
    let admin = wait_for("the new bootstrap served", DEADLINE, || {
        let a: SocketAddr = std::fs::read_to_string(&first.admin_path)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let info = http_request(a, "GET", "/server_info").ok()?.json();
        (info["command_line_options"]["restart_epoch"] == 1 && info["state"] == "LIVE").then_some(a)
    });
    let dump = http_request(admin, "GET", "/config_dump")
        .expect("dump")
        .body;
    assert!(
        dump.contains("\"7s\""),
        "the new connect_timeout is in effect"
    );
    wait_for("the first generation to hold", DEADLINE, || {
        first
            .stderr()
            .contains("this process now only holds the generations it started")
            .then_some(())
    });
    // A bad bootstrap: its generation fails, the serving one serves on and does not retry.
    swap(&good.replace("connect_timeout: 1s", "connect_timeout: nope"));
    wait_for("the bad generation to fail", DEADLINE, || {
        first
            .stderr()
            .contains("exited before taking over; still serving")
            .then_some(())
    });
    let mut conn = TcpStream::connect(s.http).expect("connect");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    get(&mut conn, &mut reader).expect("still served");
    assert_eq!(
        server_info(admin)["command_line_options"]["restart_epoch"],
        1
    );
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(holder as i32, libc::SIGTERM) };
    assert_eq!(first.wait_exit(), 0, "{}", first.stderr());
}
