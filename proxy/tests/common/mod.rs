//! Shared harness for the end-to-end tests: a `courier` process guard, a tiny admin HTTP
//! client, upstream servers as threads, and waiting on facts with deadlines (never bare
//! sleeps).
//!
//! Every courier binds its admin and listeners on port 0; the admin address is read from
//! `--admin-address-path` and listener ports from admin `/listeners`, so tests never race
//! for ports.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const COURIER: &str = env!("CARGO_BIN_EXE_courier");

/// How long any single fact may take to become true. Generous: the machine is shared and
/// the binary is a debug build.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A static bootstrap: admin on 127.0.0.1:0, one listener `tcp_in` on `listener_port`
/// (0 = any) with a tcp_proxy to cluster `backend` holding `endpoints`. `tcp_extra` and
/// `cluster_extra` are YAML lines appended to the tcp_proxy config and the cluster
/// (indented by the caller-independent helper).
pub fn static_tcp_yaml(
    listener_port: u16,
    endpoints: &[SocketAddr],
    tcp_extra: &[&str],
    cluster_extra: &[&str],
) -> String {
    let mut eps = String::new();
    for e in endpoints {
        eps.push_str(&format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
            e.ip(),
            e.port()
        ));
    }
    let tcp_extra: String = tcp_extra
        .iter()
        .map(|l| format!("          {l}\n"))
        .collect();
    let cluster_extra: String = cluster_extra.iter().map(|l| format!("    {l}\n")).collect();
    format!(
        "\
node: {{ id: test-node, cluster: test }}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: tcp_in
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_in
          cluster: backend
{tcp_extra}  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
{cluster_extra}    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
{eps}"
    )
}

/// Makes `cmd`'s child start under an `RLIMIT_NOFILE` of `soft` and `hard`.
pub fn with_nofile(cmd: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the hook only calls setrlimit (async-signal-safe) on a
    // struct of its own; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `(soft, hard)` "Max open files" of process `pid`, from `/proc/<pid>/limits`.
pub fn nofile_limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut numbers = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("a number"));
    (numbers.next().expect("soft"), numbers.next().expect("hard"))
}

/// Open descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU time (user + system) process `pid` has used, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime), counted from the state (field 3).
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The result of running `courier` to completion.
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Finished {
    /// The exit code (panics on death by signal: courier must always exit by itself).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("courier died of a signal: {self:?}"))
    }

    /// stderr without the tracing log lines: what a user reads as the error.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .collect()
    }
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Writes `yaml` to a file in `dir` and returns its path.
pub fn write_config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// Runs `courier args` to completion (killed after [`DEADLINE`]).
pub fn run_to_exit(args: &[&str]) -> Finished {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(COURIER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn courier");
    let status = match wait_for_exit(&mut child, DEADLINE) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "courier {args:?} did not exit within {DEADLINE:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A running `courier`; killed when dropped.
pub struct Courier {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The admin server's address.
    pub admin: SocketAddr,
}

impl Courier {
    /// Starts courier on `yaml` with extra `args` and waits until `/ready` says LIVE.
    pub fn start(yaml: &str, args: &[&str]) -> Courier {
        let c = Courier::spawn(yaml, args);
        c.wait_ready();
        c
    }

    /// Starts courier and waits only for the admin address.
    pub fn spawn(yaml: &str, args: &[&str]) -> Courier {
        Courier::try_spawn(yaml, args)
            .unwrap_or_else(|stderr| panic!("courier exited early; stderr:\n{stderr}"))
    }

    /// Starts courier and waits for the admin address; `Err(stderr)` if it exits first
    /// (e.g. a port that was free a moment ago is taken now).
    pub fn try_spawn(yaml: &str, args: &[&str]) -> Result<Courier, String> {
        Courier::try_spawn_with(yaml, args, |_| {})
    }

    /// [`Courier::spawn`] under an `RLIMIT_NOFILE` of `soft` and `hard`, set in the child
    /// before it runs courier.
    pub fn spawn_with_nofile(yaml: &str, args: &[&str], soft: u64, hard: u64) -> Courier {
        Courier::try_spawn_with(yaml, args, |cmd| with_nofile(cmd, soft, hard))
            .unwrap_or_else(|stderr| panic!("courier exited early; stderr:\n{stderr}"))
    }

    /// [`Courier::try_spawn`], with `prepare` adjusting the command first.
    pub fn try_spawn_with(
        yaml: &str,
        args: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Result<Courier, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), "bootstrap.yaml", yaml);
        let admin_path = dir.path().join("admin-address");
        let mut cmd = Command::new(COURIER);
        prepare(&mut cmd);
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(args);
        // Quiet unless the test asks for a level.
        if !args.iter().any(|a| *a == "-l" || *a == "--log-level") {
            cmd.args(["-l", "warning"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn courier");
        let mut c = Courier {
            child: Some(child),
            dir,
            admin: "0.0.0.0:0".parse().expect("placeholder"),
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(addr) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                c.admin = addr;
                return Ok(c);
            }
            if c.has_exited() {
                return Err(c.stderr());
            }
            if Instant::now() >= deadline {
                panic!(
                    "no admin address after {DEADLINE:?}; stderr:\n{}",
                    c.stderr()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Panics with stderr if the process has exited.
    fn assert_running(&self) {
        let child = self.child.as_ref().expect("child");
        // `try_wait` needs `&mut`; /proc is enough to tell a zombie from a live process.
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X")) {
            panic!("courier exited early; stderr:\n{}", self.stderr());
        }
    }

    /// Waits until `/ready` answers 200 LIVE.
    pub fn wait_ready(&self) {
        wait_for("/ready to say LIVE", DEADLINE, || {
            self.assert_running();
            let r = self.try_admin("GET", "/ready").ok()?;
            (r.status == 200 && r.body.trim() == "LIVE").then_some(())
        });
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// Everything courier wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Waits for the process to exit (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("child");
        match wait_for_exit(child, timeout) {
            Some(s) => s,
            None => panic!(
                "courier did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))))
    }

    /// An admin request; panics on connection failure.
    pub fn admin(&self, method: &str, path: &str) -> AdminResponse {
        self.try_admin(method, path)
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> AdminResponse {
        self.admin("GET", path)
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> AdminResponse {
        self.admin("POST", path)
    }

    /// An admin request.
    pub fn try_admin(&self, method: &str, path: &str) -> io::Result<AdminResponse> {
        http_request(self.admin, method, path)
    }

    /// The bound address of listener `name`, from admin `/listeners` (`name::ip:port`).
    pub fn listener(&self, name: &str) -> SocketAddr {
        let body = self.get("/listeners").body;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}::")))
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("listener {name} not in /listeners:\n{body}"))
    }

    /// Every stat from `/stats` as name → value.
    pub fn stats(&self) -> HashMap<String, i64> {
        parse_stats(&self.get("/stats").body)
    }

    /// One stat (panics if absent).
    pub fn stat(&self, name: &str) -> i64 {
        let stats = self.stats();
        *stats
            .get(name)
            .unwrap_or_else(|| panic!("no stat {name}; have {:?}", sorted_keys(&stats)))
    }

    /// Waits until stat `name` satisfies `pred`.
    pub fn wait_stat(&self, name: &str, what: &str, pred: impl Fn(i64) -> bool) -> i64 {
        wait_for(&format!("{name} {what}"), DEADLINE, || {
            let v = self.stats().get(name).copied()?;
            pred(v).then_some(v)
        })
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn sorted_keys(m: &HashMap<String, i64>) -> Vec<&String> {
    let mut k: Vec<_> = m.keys().collect();
    k.sort();
    k
}

/// Parses Envoy's `/stats` text (`name: value`).
pub fn parse_stats(body: &str) -> HashMap<String, i64> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// An HTTP/1.1 response from admin.
#[derive(Debug)]
pub struct AdminResponse {
    /// Status code.
    pub status: u16,
    /// Headers, lower-cased names.
    pub headers: HashMap<String, String>,
    /// Body as text.
    pub body: String,
}

impl AdminResponse {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.body))
    }
}

/// A minimal HTTP/1.1 client: one request, `Connection: close`, reads to EOF.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> io::Result<AdminResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("malformed response: {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line: {head:?}")))?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(AdminResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// How an upstream serves one accepted connection.
pub type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A TCP server on 127.0.0.1:0 serving each connection on its own (small-stack) thread.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    /// Serves every connection with `handler`.
    pub fn spawn(handler: Handler) -> Upstream {
        let listener = listen_any(4096);
        let addr = listener.local_addr().expect("upstream addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let accepted = accepted.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    let spawned = thread::Builder::new()
                        .stack_size(128 * 1024)
                        .spawn(move || handler(stream));
                    if spawned.is_err() {
                        // Out of threads: the connection is dropped, the test will notice.
                        continue;
                    }
                }
            })
        };
        Upstream {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// An echo server: writes back everything, half-closes after the client's FIN.
    pub fn echo() -> Upstream {
        Upstream::spawn(Arc::new(echo))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echo until EOF, then FIN.
pub fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A connected client with read/write timeouts, so a broken proxy fails a test instead of
/// hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    s.set_write_timeout(Some(DEADLINE)).expect("write timeout");
    s
}

/// Sends `msg` and reads back exactly as many bytes.
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read echo");
    back
}

/// Reads until EOF; returns the bytes or the error (e.g. a reset).
pub fn read_to_eof(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// A listener on 127.0.0.1:0 with a deep accept queue (std's 128 overflows when courier
/// opens thousands of upstream connections at once, and a dropped SYN costs a 1 s retry).
pub fn listen_any(backlog: i32) -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    s.bind(&any.into()).expect("bind");
    s.listen(backlog).expect("listen");
    s.into()
}

/// A port nothing listens on (bound then released; the kernel will not hand it out again
/// at once since allocation walks the range).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A listener whose accept queue is full (backlog 0, one connection queued and never
/// accepted): further connects get no SYN-ACK and stay pending, deterministically on Linux.
pub struct Blackhole {
    /// Where connects hang.
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Creates one.
    pub fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        l.bind(&any.into()).expect("bind");
        l.listen(0).expect("listen");
        let addr = l
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet addr");
        // Backlog 0 admits one queued connection; fill it.
        let fillers = vec![TcpStream::connect(addr).expect("fill the accept queue")];
        Blackhole {
            addr,
            _listener: l,
            _fillers: fillers,
        }
    }
}

/// SHA-256 via `sha256sum` (coreutils): a debug-built Rust SHA-256 runs at ~20 MB/s,
/// far too slow for 100 MB transfers.
pub struct Sha256Pipe {
    child: Child,
}

impl Sha256Pipe {
    /// Starts a hasher.
    pub fn new() -> Sha256Pipe {
        let child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sha256sum (coreutils) must be installed");
        Sha256Pipe { child }
    }

    /// Hashes more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(bytes)
            .expect("feed sha256sum");
    }

    /// The hex digest.
    pub fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read sha256sum");
        let _ = self.child.wait();
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// A deterministic pseudo-random 1 MiB block; streams are built from it with each 64 KiB
/// chunk stamped with its index, so reordering, loss or duplication changes the digest.
pub fn pattern_block() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = Vec::with_capacity(1 << 20);
    while block.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.extend_from_slice(&x.to_le_bytes());
    }
    block
}

/// Shared text collected by threads (e.g. errors seen by clients).
pub type Errors = Arc<Mutex<Vec<String>>>;
