//! Shared helpers for the HTTP end-to-end tests: a real upstream HTTP/1.1 server, a raw
//! HTTP/1.1 client, and a running `courier` process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server on a thread of its own (a single-threaded tokio runtime): each accepted
/// connection is handed to `serve`, as a task of its own.
pub fn spawn_tokio_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s));
            }
        });
    });
    addr
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The status line's version (`HTTP/1.1`).
    pub version: String,
    pub status: u16,
    /// The status line's reason phrase.
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn read_head(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let first = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Some((first, headers))
}

pub fn read_body(
    r: &mut BufReader<TcpStream>,
    headers: &[(String, String)],
    until_close: bool,
) -> Option<Vec<u8>> {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                // trailers
                loop {
                    let mut l = String::new();
                    r.read_line(&mut l).ok()?;
                    if l.trim_end().is_empty() {
                        break;
                    }
                }
                return Some(body);
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..n]);
        }
    }
    if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().ok()?;
        let mut body = vec![0; n];
        r.read_exact(&mut body).ok()?;
        return Some(body);
    }
    if until_close {
        let mut body = Vec::new();
        r.read_to_end(&mut body).ok()?;
        return Some(body);
    }
    Some(Vec::new())
}

/// How the upstream answers: by path prefix.
///
/// - `/status/<code>`: that status.
/// - `/delay/<ms>`: 200 after a delay.
/// - `/flaky/<n>`: 503 for the first `n` requests on this path, then 200.
/// - `/flaky-header/<n>/<name>=<value>`: 200 with that field and body `flaky` for the
///   first `n` requests on this path, then as below.
/// - `/stall/<ms>`: 200 announcing a 10-byte body, 3 bytes of it, the rest after a delay.
/// - `/close`: closes the connection without a response.
/// - anything else: 200 with body `<name> <method> <path>`.
///
/// Every response carries `x-upstream: <name>`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let flaky = Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
        let (n, r, c, s) = (
            name.to_string(),
            requests.clone(),
            connections.clone(),
            seen.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (n, r, s, flaky) = (n.clone(), r.clone(), s.clone(), flaky.clone());
                std::thread::spawn(move || serve_conn(stream, &n, &r, &s, &flaky));
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            requests,
            connections,
            seen,
        }
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().ok()?.last().cloned()
    }
}

fn serve_conn(
    stream: TcpStream,
    name: &str,
    requests: &AtomicUsize,
    seen: &std::sync::Mutex<Vec<Seen>>,
    flaky: &std::sync::Mutex<HashMap<String, usize>>,
) {
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    while let Some((line, headers)) = read_head(&mut r) {
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let Some(body) = read_body(&mut r, &headers, false) else {
            return;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut s) = seen.lock() {
            s.push(Seen {
                method: method.clone(),
                path: path.clone(),
                headers: headers.clone(),
                body: body.clone(),
            });
        }
        let mut status = 200;
        let mut out_body = format!("{name} {method} {path}");
        let mut extra_header = String::new();
        let after = |pat: &str| path.find(pat).map(|i| &path[i + pat.len()..]);
        // The number that follows a path prefix (`/delay/<ms>`), up to `/` or `?`.
        fn number<T: std::str::FromStr>(rest: &str) -> Option<T> {
            rest.split(['/', '?']).next().and_then(|c| c.parse().ok())
        }
        if let Some(code) = after("/status/") {
            status = number(code).unwrap_or(500);
        } else if let Some(ms) = after("/delay/") {
            let ms: u64 = number(ms).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
        } else if let Some(n) = after("/flaky/") {
            let n: usize = number(n).unwrap_or(1);
            let mut f = flaky.lock().expect("lock");
            let count = f.entry(path.clone()).or_insert(0);
            *count += 1;
            if *count <= n {
                status = 503;
                out_body = "flaky".into();
            }
        } else if let Some(rest) = after("/flaky-header/") {
            // `/flaky-header/<n>/<name>=<value>`: the first n answers carry that field.
            let n: usize = number(rest).unwrap_or(1);
            let field = rest.split('/').nth(1).unwrap_or("x-flaky=1");
            let mut f = flaky.lock().expect("lock");
            let count = f.entry(path.clone()).or_insert(0);
            *count += 1;
            if *count <= n {
                if let Some((k, v)) = field.split_once('=') {
                    extra_header = format!("{k}: {v}\r\n");
                }
                out_body = "flaky".into();
            }
        } else if let Some(ms) = after("/stall/") {
            let ms: u64 = number(ms).unwrap_or(0);
            let head =
                format!("HTTP/1.1 200 X\r\nx-upstream: {name}\r\ncontent-length: 10\r\n\r\nabc");
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(ms));
            if w.write_all(b"defghij").is_err() {
                return;
            }
            continue;
        } else if let Some(query) = after("/shape?") {
            if !shaped(&mut w, name, &method, query, &headers, &body) {
                return;
            }
            continue;
        } else if path.contains("/close") {
            return;
        } else if path.contains("/echo") {
            out_body = String::from_utf8_lossy(&body).into_owned();
        }
        let len = out_body.len();
        if method == "HEAD" {
            out_body.clear();
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\nx-upstream: {name}\r\n{extra_header}content-length: {len}\r\n\r\n{out_body}"
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// The body of a `/shape` response: `n` bytes of text.
pub fn shape_text(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"the quick brown fox jumps over the lazy dog "[i % 44] ^ ((i / 997) as u8 & 1))
        .collect()
}

/// Answers `/shape?<query>`: `&`-separated `key=value`s choose the response.
///
/// - `status` (200), `n` (100; the body is [`shape_text`]`(n)`), `ct` (content-type),
///   `etag` (`abc` → `"abc"`, `W-abc` → `W/"abc"`), `vary`, `cc` (cache-control), `ce`
///   (content-encoding): the response's.
/// - `chunked=1`: no length, the body in `chunks` (1) chunks, flushed apart; `trailer=v`
///   ends it with the trailer `x-trailer: v`.
/// - `echo=1`: the body is the request's.
///
/// The response says what the request's `accept-encoding` and `content-encoding` were
/// (`x-seen-ae`, `x-seen-ce`: `-` when absent).
fn shaped(
    w: &mut TcpStream,
    name: &str,
    method: &str,
    query: &str,
    req_headers: &[(String, String)],
    req_body: &[u8],
) -> bool {
    let q: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let num = |k: &str, d: usize| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let status = num("status", 200);
    let mut body = if q.get("echo") == Some(&"1") {
        req_body.to_vec()
    } else {
        shape_text(num("n", 100))
    };
    let seen = |k: &str| {
        req_headers
            .iter()
            .find(|(n, _)| n == k)
            .map_or("-".to_string(), |(_, v)| v.clone())
    };
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nx-upstream: {name}\r\nx-seen-ae: {}\r\nx-seen-ce: {}\r\n",
        seen("accept-encoding"),
        seen("content-encoding")
    );
    for (k, field) in [
        ("ct", "content-type"),
        ("vary", "vary"),
        ("cc", "cache-control"),
        ("ce", "content-encoding"),
    ] {
        if let Some(v) = q.get(k) {
            head.push_str(&format!("{field}: {v}\r\n"));
        }
    }
    if let Some(e) = q.get("etag") {
        match e.strip_prefix("W-") {
            Some(weak) => head.push_str(&format!("etag: W/\"{weak}\"\r\n")),
            None => head.push_str(&format!("etag: \"{e}\"\r\n")),
        }
    }
    let no_body = method == "HEAD" || status == 204 || status == 304;
    let chunked = q.get("chunked") == Some(&"1");
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else if status != 204 && status != 304 {
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    } else {
        head.push_str("\r\n");
    }
    if no_body {
        body.clear();
    }
    if w.write_all(head.as_bytes()).is_err() {
        return false;
    }
    if !chunked {
        return w.write_all(&body).is_ok();
    }
    if !no_body {
        let parts = num("chunks", 1).max(1);
        let size = body.len().div_ceil(parts).max(1);
        for part in body.chunks(size) {
            let mut c = format!("{:x}\r\n", part.len()).into_bytes();
            c.extend_from_slice(part);
            c.extend_from_slice(b"\r\n");
            if w.write_all(&c).and_then(|_| w.flush()).is_err() {
                return false;
            }
        }
        let end = match q.get("trailer") {
            Some(t) => format!("0\r\nx-trailer: {t}\r\n\r\n"),
            None => "0\r\n\r\n".to_string(),
        };
        return w.write_all(end.as_bytes()).is_ok();
    }
    true
}

/// Reads one response from `r` (for a HEAD request pass `head = true`).
pub fn read_response(r: &mut BufReader<TcpStream>, head: bool) -> Option<Resp> {
    loop {
        let (line, headers) = read_head(r)?;
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        if status == 100 {
            continue;
        }
        let close = headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        let body = if head || status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(
                r,
                &headers,
                close && !headers.iter().any(|(k, _)| k == "content-length"),
            )?
        };
        return Some(Resp {
            version: line.split(' ').next().unwrap_or_default().to_string(),
            status,
            reason: line.splitn(3, ' ').nth(2).unwrap_or_default().to_string(),
            headers,
            body,
        });
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    pub stream: TcpStream,
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to courier");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }

    pub fn send_raw(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("write");
    }

    pub fn read(&mut self) -> Option<Resp> {
        read_response(&mut self.reader, false)
    }

    /// GET `path` with `host` and extra headers.
    pub fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", host, path, headers, b"")
    }

    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
        read_response(&mut self.reader, method == "HEAD").expect("a response")
    }

    /// True when the server closed the connection (EOF before any byte).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    Client::connect(addr).get(host, path, headers)
}

/// An address whose connections are refused for the rest of the process: a socket is
/// bound to it and never listens. (A port from [`free_port`] can meanwhile be taken by a
/// listener of a test running in parallel, which then answers.)
pub fn refusing_addr() -> SocketAddr {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address");
    // Held (bound, not listening) until the test process ends.
    std::mem::forget(s);
    addr
}

/// A free TCP port on 127.0.0.1.
/// A port free now, below the kernel's ephemeral range: a port the kernel hands out (port
/// 0) is soon taken again by some outgoing connection of a proxy under test. Each process
/// starts at its own offset and walks up (as `courier_integration_tests::free_port`).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(LOW + 1_000, 65_535);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    (0..span)
        .filter_map(|_| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            u16::try_from(LOW + (start + n) % span).ok()
        })
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free TCP port below the ephemeral range")
}

/// A running courier.
pub struct Courier {
    pub child: Child,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Courier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raw GET to the admin port.
pub fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false)?;
    Some(resp.body_str())
}

/// POSTs to an admin endpoint (`/healthcheck/fail`, …); the status.
pub fn admin_post(admin: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .ok()?;
    read_response(&mut BufReader::new(s), false).map(|r| r.status)
}

impl Courier {
    /// Starts courier with `bootstrap` (YAML text; `LISTENER_PORT` is replaced by a free
    /// port) and waits until it is ready and accepting.
    pub fn start(bootstrap: &str) -> Courier {
        Courier::start_with(bootstrap, &[])
    }

    pub fn start_with(bootstrap: &str, args: &[&str]) -> Courier {
        Courier::launch(env!("CARGO_BIN_EXE_courier"), bootstrap, args, &[])
    }

    /// [`Courier::start_with`], the process having the environment variables `env` too.
    pub fn start_with_env(bootstrap: &str, args: &[&str], env: &[(&str, &str)]) -> Courier {
        Courier::launch(env!("CARGO_BIN_EXE_courier"), bootstrap, args, env)
    }

    /// Starts a real Envoy (`envoy` on PATH) on the same bootstrap, if there is one.
    pub fn start_envoy(bootstrap: &str) -> Option<Courier> {
        Courier::start_envoy_with(bootstrap, &[])
    }

    /// [`Courier::start_envoy`] with more command-line arguments.
    pub fn start_envoy_with(bootstrap: &str, args: &[&str]) -> Option<Courier> {
        Courier::start_envoy_with_env(bootstrap, args, &[])
    }

    /// [`Courier::start_envoy_with`], the process having the environment variables `env`
    /// too.
    pub fn start_envoy_with_env(
        bootstrap: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Option<Courier> {
        Courier::envoy_on_path().then(|| {
            let mut all = vec!["--use-dynamic-base-id", "-l", "error"];
            all.extend_from_slice(args);
            Courier::launch("envoy", bootstrap, &all, env)
        })
    }

    /// Whether an `envoy` binary runs.
    fn envoy_on_path() -> bool {
        Command::new("envoy")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts another binary (a wrapper script, say) taking courier's arguments.
    pub fn launch_binary(binary: &str, bootstrap: &str, args: &[&str]) -> Courier {
        Courier::launch(binary, bootstrap, args, &[])
    }

    /// Starts `binary` on `bootstrap`. A start whose listener port was taken meanwhile (a
    /// free port is only free until someone binds it: tests run in parallel) is retried
    /// on another port.
    fn launch(binary: &str, bootstrap: &str, args: &[&str], env: &[(&str, &str)]) -> Courier {
        for _ in 0..3 {
            if let Some(started) = Courier::try_launch(binary, bootstrap, args, env, true) {
                return started;
            }
        }
        panic!("{binary} exited during start-up three times");
    }

    /// One start; `None` when the process exited before it was ready.
    fn try_launch(
        binary: &str,
        bootstrap: &str,
        args: &[&str],
        env: &[(&str, &str)],
        wait_ready: bool,
    ) -> Option<Courier> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let text = bootstrap.replace("LISTENER_PORT", &port.to_string());
        let cfg: PathBuf = dir.path().join("bootstrap.yaml");
        std::fs::write(&cfg, text).expect("write bootstrap");
        let admin_path = dir.path().join("admin.txt");
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&cfg)
            // One worker unless the test asks for more.
            .args(
                (!args.contains(&"--concurrency"))
                    .then_some(["--concurrency", "1"])
                    .into_iter()
                    .flatten(),
            )
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn courier");
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin = loop {
            if let Some(a) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("{binary} exited during start-up: {status}");
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "courier did not write its admin address"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let listener: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut started = Courier {
            child,
            admin,
            listener,
            _dir: dir,
        };
        if wait_ready && !started.wait_ready() {
            return None;
        }
        Some(started)
    }

    /// Waits until the server is live and its listener accepts; false when it exited.
    pub fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = admin_get(self.admin, "/ready").is_some_and(|b| b.contains("LIVE"));
            if ready && TcpStream::connect(self.listener).is_ok() {
                return true;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("the proxy exited before it was ready: {status}");
                return false;
            }
            assert!(Instant::now() < deadline, "courier did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts Courier without waiting for it to be ready (its admin answers).
    pub fn start_unready(bootstrap: &str) -> Courier {
        Courier::try_launch(env!("CARGO_BIN_EXE_courier"), bootstrap, &[], &[], false)
            .expect("courier exited during start-up")
    }

    /// Starts Envoy (if on PATH) without waiting for it to be ready.
    pub fn start_envoy_unready(bootstrap: &str) -> Option<Courier> {
        Courier::envoy_on_path().then(|| {
            let args = ["--use-dynamic-base-id", "-l", "error"];
            Courier::try_launch("envoy", bootstrap, &args, &[], false)
                .expect("envoy exited during start-up")
        })
    }

    /// A counter's value from `/stats`.
    pub fn stat(&self, name: &str) -> u64 {
        let body = admin_get(self.admin, "/stats").unwrap_or_default();
        body.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(": ")?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    /// Waits until counter `name` reaches `at_least`.
    pub fn wait_stat(&self, name: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.stat(name);
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A static cluster YAML block.
pub fn cluster(name: &str, hosts: &[SocketAddr], extra: &str) -> String {
    let endpoints: String = hosts
        .iter()
        .map(|h| {
            format!(
                "\n          - endpoint:\n              address:\n                socket_address: {{ address: {}, port_value: {} }}",
                h.ip(),
                h.port()
            )
        })
        .collect();
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:{endpoints}\n"
    )
}

/// Raw HTTP/2 for clients and servers written frame by frame.
pub mod h2_raw {
    /// The client connection preface.
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// Frame types.
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// Flags.
    pub const ACK: u8 = 0x1;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    /// A frame read off the wire: its type, flags, stream and payload.
    pub struct RawFrame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    /// Takes every whole frame off the front of `buf` (a partial one stays).
    pub fn take_frames(buf: &mut Vec<u8>) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = (usize::from(buf[at]) << 16)
                | (usize::from(buf[at + 1]) << 8)
                | usize::from(buf[at + 2]);
            if buf.len() < at + 9 + len {
                break;
            }
            let id = [buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]];
            frames.push(RawFrame {
                kind: buf[at + 3],
                flags: buf[at + 4],
                stream: u32::from_be_bytes(id) & 0x7fff_ffff,
                payload: buf[at + 9..at + 9 + len].to_vec(),
            });
            at += 9 + len;
        }
        buf.drain(..at);
        frames
    }

    /// One frame, encoded.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
}

/// A route configuration (the body [`bootstrap`] takes) sending every request to `cluster`.
pub fn all_to(cluster: &str) -> String {
    format!(
        "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: {cluster} }}\n"
    )
}

/// A bootstrap with one HTTP listener (`hcm_extra` goes into the HCM typed_config,
/// `route_config` is the inline RouteConfiguration body indented by 10) and clusters.
pub fn bootstrap(route_config: &str, hcm_extra: &str, clusters: &str) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: http
    address:
      socket_address: {{ address: 127.0.0.1, port_value: LISTENER_PORT }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
{hcm_extra}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
{route_config}
  clusters:
{clusters}"#
    )
}

/// A bootstrap with one `tcp_proxy` listener to cluster `c`, defined in `clusters`.
pub fn tcp_bootstrap(clusters: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: LISTENER_PORT }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
  clusters:
{clusters}"#
    )
}

/// `boot` with the network filter(s) `filter` (YAML list items, indented as
/// [`tcp_bootstrap`] and [`bootstrap`] write them) before its first chain's first filter.
pub fn before_terminal(boot: &str, filter: &str) -> String {
    boot.replacen("    - filters:\n", &format!("    - filters:\n{filter}"), 1)
}

/// `bootstrap` with the HTTP filters `filters` (YAML list items, indented as
/// [`bootstrap`] writes them) ahead of the router.
pub fn with_filters(bootstrap: &str, filters: &str) -> String {
    const ROUTER: &str = "          - name: envoy.filters.http.router\n";
    bootstrap.replacen(ROUTER, &format!("{filters}{ROUTER}"), 1)
}

/// An upstream that accepts and holds its connections, never reading nor answering; its
/// address.
pub fn silent_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// An upstream that echoes what it reads until the client closes; its address.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The local rate limit filters' counters under each of `prefixes`, a line each:
/// `<prefix>: enabled=… ok=… rate_limited=… enforced=…`.
pub fn local_rate_limit_counters(proxy: &Courier, prefixes: &[&str]) -> Vec<String> {
    prefixes
        .iter()
        .map(|prefix| {
            let counts: Vec<String> = ["enabled", "ok", "rate_limited", "enforced"]
                .iter()
                .map(|c| {
                    let v = proxy.stat(&format!("{prefix}.http_local_rate_limit.{c}"));
                    format!("{c}={v}")
                })
                .collect();
            format!("{prefix}: {}", counts.join(" "))
        })
        .collect()
}

/// A request an HTTP collector received.
pub struct Posted {
    pub method: String,
    pub path: String,
    /// Every header, names lowercase, values as text.
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

/// An HTTP/1.1 collector (Zipkin, OTLP/HTTP, a Datadog agent): each request goes whole to
/// `on_request`, then is answered `status` with `answer` as `content_type`.
pub fn http_collector<F>(
    status: u16,
    content_type: &'static str,
    answer: &'static [u8],
    on_request: F,
) -> SocketAddr
where
    F: Fn(Posted) + Send + Sync + 'static,
{
    http_service(move |posted| {
        on_request(posted);
        Answer {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: bytes::Bytes::from_static(answer),
        }
    })
}

/// What [`http_service`] answers a request.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

/// An HTTP/1.1 service: each request goes whole to `answer`, which says what it gets.
pub fn http_service<F>(answer: F) -> SocketAddr
where
    F: Fn(Posted) -> Answer + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    let answer = Arc::new(answer);
    spawn_tokio_server(move |stream| {
        let answer = answer.clone();
        async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let a = answer(Posted {
                            method,
                            path,
                            headers,
                            body,
                        });
                        let mut r = hyper::Response::builder().status(a.status);
                        for (k, v) in &a.headers {
                            r = r.header(k.as_str(), v.as_str());
                        }
                        Ok::<_, std::convert::Infallible>(
                            r.body(http_body_util::Full::new(a.body)).expect("response"),
                        )
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    })
}

/// The lines of the file at `path` once it has `n` (or what it has after 10 s): an
/// access log's, written by another process.
pub fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fields of a gRPC request's metadata named in `names`, as (name, value) pairs.
pub fn grpc_headers(
    metadata: &tonic::metadata::MetadataMap,
    names: &[&str],
) -> Vec<(String, String)> {
    metadata
        .clone()
        .into_headers()
        .iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Runs the same differential case through Courier, then (when `envoy` is on PATH) Envoy
/// 1.40: each gets a temporary directory and an upstream `a` of its own, is started on the
/// bootstrap `boot` makes with them, and `run` says what it did. The two must agree;
/// Courier's account is returned (for the values the test expects).
pub fn courier_and_envoy_agree<T: PartialEq + std::fmt::Debug>(
    boot: impl Fn(&std::path::Path, &Upstream) -> String,
    run: impl Fn(&Courier, &std::path::Path, &Upstream) -> T,
) -> T {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(dir.path(), &a)), dir.path(), &a);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(dir.path(), &a)) {
        Some(envoy) => assert_eq!(run(&envoy, dir.path(), &a), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: Courier's side only"),
    }
    got
}

/// Each `(from, to, want)` replaces `from` in `base`: Courier must refuse the result with
/// `want` in its error; `base` itself must validate.
pub fn assert_refused_by_path(base: &str, cases: &[(&str, &str, &str)]) {
    for (from, to, want) in cases {
        assert!(base.contains(from), "{from}");
        let (code, stderr) = validate(&base.replacen(from, to, 1));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(want), "want {want:?} in {stderr}");
    }
    let (code, stderr) = validate(base);
    assert_eq!(code, Some(0), "{stderr}");
}

/// Serves a tonic gRPC service (a collector, a management server) on a new local port, on
/// a thread of its own; its address.
pub fn spawn_grpc_server<S>(service: S) -> SocketAddr
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        })
    });
    addr
}

/// Runs `fut` to its end on a single-threaded tokio runtime of its own.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(fut)
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, driven by a task of its own.
pub async fn h2_connect(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// A GET of `path` on an HTTP/2 connection: the response head, its body as text, and the
/// value of its trailer `trailer` if it has one.
pub async fn h2_fetch(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
    trailer: &str,
) -> (http::response::Parts, String, Option<String>) {
    let (parts, body, value) = h2_fetch_bytes(sender, path, &[], trailer).await;
    (parts, String::from_utf8_lossy(&body).into_owned(), value)
}

/// A GET of `path` with `headers` on an HTTP/2 connection: the response head, its body, and
/// the value of its trailer `trailer` if it has one.
pub async fn h2_fetch_bytes(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
    trailer: &str,
) -> (http::response::Parts, bytes::Bytes, Option<String>) {
    use http_body_util::BodyExt;
    let mut req = http::Request::get(format!("http://example.com{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Empty::new()).expect("request");
    let (parts, body) = sender
        .send_request(req)
        .await
        .expect("response")
        .into_parts();
    let collected = body.collect().await.expect("body");
    let value = collected
        .trailers()
        .and_then(|t| t.get(trailer))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (parts, collected.to_bytes(), value)
}

/// Runs `courier --mode validate` on `bootstrap` (its `LISTENER_PORT` made 0): the exit
/// code and what it printed on stderr. A refusal must never be a panic.
/// `envoy --mode validate` on `bootstrap` (`None` without `envoy` on PATH): its exit code
/// and what it wrote.
pub fn envoy_validate(bootstrap: &str) -> Option<(Option<i32>, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bootstrap.yaml");
    std::fs::write(&cfg, bootstrap.replace("LISTENER_PORT", "0")).expect("write bootstrap");
    let out = std::process::Command::new("envoy")
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&cfg)
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.code(), text))
}

pub fn validate(bootstrap: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bootstrap.yaml");
    std::fs::write(&cfg, bootstrap.replace("LISTENER_PORT", "0")).expect("write bootstrap");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["--mode", "validate", "-c"])
        .arg(&cfg)
        .output()
        .expect("run courier");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), stderr)
}

/// A request a [`grpc_upstream`] received: its path (with its query), headers and whole
/// body.
#[derive(Debug, Clone)]
pub struct GrpcSeen {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// One gRPC message framed (flags `0`, big-endian length, the message).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// A gRPC-like HTTP/2 (prior knowledge) upstream answering by the path's last part, with
/// what it received kept in the returned list:
/// - `Echo`: `200 application/grpc`, the request body as it came, trailers
///   `grpc-status: 0`, `grpc-message: ok`;
/// - `Slow`: as `Echo`, 300 ms after the request's whole body arrived;
/// - `Many`: three framed messages in three chunks, then `grpc-status: 0`;
/// - `Fail`: trailers-only (headers only): `grpc-status: 7`, `grpc-message: denied`;
/// - `Error`: one framed message, then `grpc-status: 13`, `grpc-message: bad thing`;
/// - `Garbage`: a body whose second frame has flags `0x42`, then `grpc-status: 0`;
/// - `plain503` / `plain200`: not gRPC: `text/plain` `oops` / `hello`;
/// - anything else: `404` without a body.
pub fn grpc_upstream() -> (SocketAddr, Arc<std::sync::Mutex<Vec<GrpcSeen>>>) {
    use http_body_util::BodyExt;
    type Frames = Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>;
    let seen: Arc<std::sync::Mutex<Vec<GrpcSeen>>> = Arc::default();
    let kept = seen.clone();
    let addr = spawn_tokio_server(move |stream| {
        let seen = kept.clone();
        async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let path_and_query = req
                            .uri()
                            .path_and_query()
                            .map_or_else(|| path.clone(), |p| p.to_string());
                        let headers = req.headers().clone();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        seen.lock().expect("seen").push(GrpcSeen {
                            path: path_and_query,
                            headers,
                            body: body.clone(),
                        });
                        let trailers = |status: &str, message: &str| {
                            let mut t = http::HeaderMap::new();
                            t.insert("grpc-status", status.parse().expect("status"));
                            if !message.is_empty() {
                                t.insert("grpc-message", message.parse().expect("message"));
                            }
                            Ok(hyper::body::Frame::trailers(t))
                        };
                        let data = |b: Vec<u8>| Ok(hyper::body::Frame::data(bytes::Bytes::from(b)));
                        let method = path.rsplit('/').next().unwrap_or("");
                        if method == "Slow" {
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        }
                        let mut resp = hyper::Response::builder().status(200);
                        let frames: Frames = match method {
                            "Echo" | "Slow" => vec![data(body.to_vec()), trailers("0", "ok")],
                            "Many" => vec![
                                data(grpc_frame(b"one")),
                                data(grpc_frame(b"two")),
                                data(grpc_frame(b"three")),
                                trailers("0", ""),
                            ],
                            "Fail" => {
                                resp = resp
                                    .header("grpc-status", "7")
                                    .header("grpc-message", "denied");
                                vec![]
                            }
                            "Error" => {
                                vec![data(grpc_frame(b"partial")), trailers("13", "bad thing")]
                            }
                            "Garbage" => {
                                let mut b = grpc_frame(b"fine");
                                b.extend_from_slice(&[0x42, 0, 0, 0, 1, 9]);
                                vec![data(b), trailers("0", "")]
                            }
                            "plain503" => {
                                resp = resp.status(503).header("content-type", "text/plain");
                                vec![data(b"oops".to_vec())]
                            }
                            "plain200" => {
                                resp = resp.header("content-type", "text/plain");
                                vec![data(b"hello".to_vec())]
                            }
                            _ => {
                                resp = resp.status(404);
                                vec![]
                            }
                        };
                        if matches!(
                            method,
                            "Echo" | "Slow" | "Many" | "Fail" | "Error" | "Garbage"
                        ) {
                            resp = resp.header("content-type", "application/grpc");
                        }
                        // No frames: headers only (a real trailers-only response).
                        let body = if frames.is_empty() {
                            http_body_util::Either::Right(http_body_util::Empty::new())
                        } else {
                            http_body_util::Either::Left(http_body_util::StreamBody::new(
                                tokio_stream::iter(frames),
                            ))
                        };
                        Ok::<_, std::convert::Infallible>(resp.body(body).expect("response"))
                    }
                });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    });
    (addr, seen)
}

/// A cluster's options for HTTP/2 upstream connections (a [`cluster`]'s `extra`).
pub const H2_CLUSTER: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {}\n";

/// The lines of `/stats` whose name contains `part`, sorted.
pub fn stats_with(proxy: &Courier, part: &str) -> Vec<String> {
    let body = admin_get(proxy.admin, "/stats").unwrap_or_default();
    let mut lines: Vec<String> = body
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|n| n.contains(part)))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// What an HTTP/2 call got: the response head, its whole body and its trailers.
pub struct H2Answer {
    pub parts: http::response::Parts,
    pub body: bytes::Bytes,
    pub trailers: Option<http::HeaderMap>,
}

/// One `method` request to `path` with `headers` and `body` (sent whole, with its length)
/// on a fresh HTTP/2 (prior knowledge) connection to `addr`; `None` when the stream or
/// the connection failed.
pub fn h2_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<H2Answer> {
    use http_body_util::BodyExt;
    let body = bytes::Bytes::copy_from_slice(body);
    block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .ok()?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://example.com{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(http_body_util::Full::new(body)).ok()?;
        let (parts, body) = sender.send_request(req).await.ok()?.into_parts();
        let collected = body.collect().await.ok()?;
        let trailers = collected.trailers().cloned();
        Some(H2Answer {
            parts,
            body: collected.to_bytes(),
            trailers,
        })
    })
}

/// A filter chain's `filters` (at a chain's indentation) whose connection manager answers
/// every request `200` with the body `name`: tells which chain or listener took a request.
pub fn answering_filters(name: &str) -> String {
    format!(
        r#"      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: {name} }} }}
"#
    )
}
