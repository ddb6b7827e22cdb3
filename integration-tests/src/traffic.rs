//! Clients: TCP sessions through tcp_proxy, a small HTTP/1.1 client (one-shot and
//! keep-alive) and background load with per-upstream success and error counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(port: u16) -> Result<TcpStream, String> {
    match tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect :{port}: {e}")),
        Err(_) => Err(format!("connect :{port}: timed out")),
    }
}

/// A TCP session through a tcp_proxy listener to an echo upstream.
pub struct TcpSession {
    /// The upstream's name (from its greeting).
    pub upstream: String,
    reader: BufReader<TcpStream>,
}

impl TcpSession {
    /// Connects to `port` and reads the upstream's greeting.
    pub async fn open(port: u16) -> Result<TcpSession, String> {
        let s = connect(port).await?;
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(0)) => return Err("closed before the greeting".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("reading the greeting: {e}")),
            Err(_) => return Err("no greeting within 10s".into()),
        }
        let upstream = line
            .trim()
            .strip_prefix("upstream ")
            .ok_or_else(|| format!("unexpected greeting {line:?}"))?
            .to_string();
        Ok(TcpSession { upstream, reader })
    }

    /// Sends a line and reads its echo.
    pub async fn roundtrip(&mut self, msg: &str) -> Result<(), String> {
        let line = format!("{msg}\n");
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut back = String::new();
        match tokio::time::timeout(IO_TIMEOUT, self.reader.read_line(&mut back)).await {
            Ok(Ok(0)) => Err("closed instead of echoing".into()),
            Ok(Ok(_)) if back == line => Ok(()),
            Ok(Ok(_)) => Err(format!("echo mismatch: {back:?}")),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Err(_) => Err("no echo within 10s".into()),
        }
    }

    /// Waits until the proxy closes the session (EOF or reset) within `d`.
    pub async fn closed_within(&mut self, d: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(d, self.reader.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// One greeting + echo exchange on a new connection: the serving upstream's name.
pub async fn tcp_hello(port: u16) -> Result<String, String> {
    let mut s = TcpSession::open(port).await?;
    s.roundtrip("ping").await?;
    Ok(s.upstream)
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers (lower-cased names).
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: String,
}

impl HttpResponse {
    /// The `x-upstream` header (the serving upstream).
    pub fn upstream(&self) -> Option<&str> {
        self.headers.get("x-upstream").map(String::as_str)
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub async fn http1_once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
) -> std::io::Result<HttpResponse> {
    let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let mut c = HttpConn {
        reader: BufReader::new(s),
    };
    c.request(method, path, host, true).await
}

/// GET `/` on 127.0.0.1:`port` (new connection).
pub async fn http_get(port: u16) -> Result<HttpResponse, String> {
    http1_once(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        "GET",
        "/",
        "localhost",
    )
    .await
    .map_err(|e| e.to_string())
}

/// A keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    /// Connects.
    pub async fn open(port: u16) -> Result<HttpConn, String> {
        Ok(HttpConn {
            reader: BufReader::new(connect(port).await?),
        })
    }

    /// Sends one request and reads its response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        host: &str,
        close: bool,
    ) -> std::io::Result<HttpResponse> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\n{}\r\n",
            if close { "connection: close\r\n" } else { "" }
        );
        self.reader.get_mut().write_all(req.as_bytes()).await?;
        tokio::time::timeout(IO_TIMEOUT, self.read_response(close))
            .await
            .map_err(|_| std::io::Error::other("response timed out"))?
    }

    /// GET / on this connection.
    pub async fn get(&mut self) -> Result<HttpResponse, String> {
        self.request("GET", "/", "localhost", false)
            .await
            .map_err(|e| e.to_string())
    }

    async fn read_response(&mut self, to_eof: bool) -> std::io::Result<HttpResponse> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line).await? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::other("closed in headers"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let mut body = Vec::new();
        if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let mut chunk = vec![0u8; n + 2];
                self.reader.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = headers.get("content-length").and_then(|v| v.parse().ok()) {
            body = vec![0u8; n];
            self.reader.read_exact(&mut body).await?;
        } else if to_eof || headers.get("connection").is_some_and(|v| v == "close") {
            self.reader.read_to_end(&mut body).await?;
        }
        Ok(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Successful exchanges per serving upstream.
    pub ok: BTreeMap<String, u64>,
    /// Failures (first few messages kept) and their count.
    pub errors: Vec<String>,
    /// Number of failures.
    pub error_count: u64,
}

impl LoadReport {
    /// Total successes.
    pub fn total_ok(&self) -> u64 {
        self.ok.values().sum()
    }
}

/// Background load: `workers` tasks each repeating an exchange until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Bumped by [`Load::reset`]; an exchange counts only in the window it started in.
    window: Arc<AtomicU64>,
    report: Arc<Mutex<LoadReport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Which exchange a load repeats.
#[derive(Debug, Clone, Copy)]
pub enum LoadKind {
    /// `tcp_hello` on new connections.
    Tcp,
    /// HTTP/1.1 GET on new connections, success = 200 (the upstream from `x-upstream`).
    Http,
}

impl Load {
    /// Starts load on `port`.
    pub fn start(kind: LoadKind, port: u16, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let window = Arc::new(AtomicU64::new(0));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, window, report) = (stop.clone(), window.clone(), report.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let started_in = window.load(Ordering::SeqCst);
                        let r = match kind {
                            LoadKind::Tcp => tcp_hello(port).await,
                            LoadKind::Http => match http_get(port).await {
                                Ok(r) if r.status == 200 => {
                                    Ok(r.upstream().unwrap_or("?").to_string())
                                }
                                Ok(r) => Err(format!("status {}: {}", r.status, r.body.trim())),
                                Err(e) => Err(e),
                            },
                        };
                        {
                            let mut rep = report.lock().expect("report");
                            match r {
                                // Begun before a reset: it may have been routed by the old
                                // configuration, so it belongs to no window.
                                Ok(_) if window.load(Ordering::SeqCst) != started_in => {}
                                Ok(name) => *rep.ok.entry(name).or_default() += 1,
                                Err(e) => {
                                    rep.error_count += 1;
                                    if rep.errors.len() < 10 {
                                        rep.errors.push(e);
                                    }
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            window,
            report,
            tasks,
        }
    }

    /// A copy of the report so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report.lock().expect("report").clone()
    }

    /// Starts a new window of successes (e.g. after a traffic shift completed): the
    /// successes so far are cleared, and exchanges already under way are not counted.
    /// Failures are kept: they count over the whole run.
    pub fn reset(&self) {
        let mut rep = self.report.lock().expect("report");
        self.window.fetch_add(1, Ordering::SeqCst);
        rep.ok.clear();
    }

    /// Waits until at least `n` more successes happened.
    pub async fn wait_progress(&self, n: u64) {
        let base = self.snapshot().total_ok();
        crate::eventually(&format!("{n} more successful exchanges"), || async {
            (self.snapshot().total_ok() >= base + n).then_some(())
        })
        .await
    }

    /// Stops the workers; returns the report.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let r = self.report.lock().expect("report").clone();
        r
    }
}

/// Tallies which upstreams serve `n` new TCP sessions on `port`.
pub async fn tcp_distribution(port: u16, n: usize) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let name = tcp_hello(port)
            .await
            .unwrap_or_else(|e| format!("error: {e}"));
        *out.entry(name).or_default() += 1;
    }
    out
}
