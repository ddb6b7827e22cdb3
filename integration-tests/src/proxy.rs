//! The proxy under test as a process guard, and its admin API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{eventually, FACT_TIMEOUT};

/// Which proxy the suite drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// `courier` (the default).
    Courier,
    /// A real Envoy (`PROXY_UNDER_TEST=envoy`).
    Envoy,
}

impl ProxyKind {
    /// From `PROXY_UNDER_TEST` (`courier` or `envoy`; default courier).
    pub fn from_env() -> ProxyKind {
        match std::env::var("PROXY_UNDER_TEST").as_deref() {
            Ok("envoy") => ProxyKind::Envoy,
            Ok("courier") | Ok("") | Err(_) => ProxyKind::Courier,
            Ok(other) => panic!("PROXY_UNDER_TEST={other}: expected courier or envoy"),
        }
    }

    /// The binary: `COURIER_BIN` or the workspace's `target/debug/courier` (honouring
    /// `CARGO_TARGET_DIR`); `ENVOY_BIN` or `envoy` on PATH.
    pub fn binary(self) -> PathBuf {
        match self {
            ProxyKind::Courier => {
                if let Ok(p) = std::env::var("COURIER_BIN") {
                    return p.into();
                }
                let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                let target = std::env::var("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| manifest.join("../target"));
                let bin = target.join("debug/courier");
                assert!(
                    bin.exists(),
                    "{} not found: run `cargo build --workspace --bins` first or set COURIER_BIN",
                    bin.display()
                );
                bin
            }
            ProxyKind::Envoy => std::env::var("ENVOY_BIN")
                .unwrap_or_else(|_| "envoy".into())
                .into(),
        }
    }
}

/// Process options.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `--drain-time-s`.
    pub drain_time_s: u64,
    /// `--concurrency`.
    pub concurrency: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            drain_time_s: 5,
            concurrency: 2,
        }
    }
}

/// A running proxy; killed when dropped (also when the test panics, which prints its log).
pub struct Proxy {
    /// Which proxy.
    pub kind: ProxyKind,
    /// Its admin address.
    pub admin: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("--- {:?} log (tail) ---\n{}", self.kind, tail.join("\n"));
        }
    }
}

impl Proxy {
    /// Starts the proxy under test on `bootstrap` (YAML); waits for its admin address only.
    pub async fn start(bootstrap: &str) -> Proxy {
        Proxy::start_with(ProxyKind::from_env(), bootstrap, ProxyOptions::default()).await
    }

    /// Starts `kind` on `bootstrap` with `opts`.
    pub async fn start_with(kind: ProxyKind, bootstrap: &str, opts: ProxyOptions) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bootstrap.yaml");
        std::fs::write(&cfg, bootstrap).expect("write bootstrap");
        let admin_path = dir.path().join("admin-address");
        let child = Command::new(kind.binary())
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                &opts.concurrency.to_string(),
                "--drain-time-s",
                &opts.drain_time_s.to_string(),
                "-l",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).expect("stdout"))
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", kind.binary()));
        let mut p = Proxy {
            kind,
            admin: "0.0.0.0:0".parse().expect("placeholder"),
            child,
            dir,
        };
        p.admin = eventually("the admin address file", || {
            let running = p.running();
            let addr = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            async move {
                assert!(running, "the proxy exited at start");
                addr
            }
        })
        .await;
        eventually("admin answers", || async {
            self_admin(p.admin, "/server_info").await.map(|_| ())
        })
        .await;
        p
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process lives (a zombie counts as dead).
    pub fn running(&self) -> bool {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, None | Some("Z") | Some("X"))
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `GET path` on admin: (status, body); panics if admin does not answer.
    pub async fn get(&self, path: &str) -> (u16, String) {
        assert!(self.running(), "the proxy died; log:\n{}", self.log());
        self_admin(self.admin, path)
            .await
            .unwrap_or_else(|| panic!("admin GET {path} failed"))
    }

    /// `POST path` on admin.
    pub async fn post(&self, path: &str) -> (u16, String) {
        crate::traffic::http1_once(self.admin, "POST", path, "localhost")
            .await
            .map(|r| (r.status, r.body))
            .unwrap_or_else(|e| panic!("admin POST {path}: {e}"))
    }

    /// `/stats` as the admin renders it.
    pub async fn stats_text(&self) -> String {
        self.get("/stats").await.1
    }

    /// Every stat as name → value.
    pub async fn stats(&self) -> HashMap<String, i64> {
        let (_, body) = self.get("/stats").await;
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect()
    }

    /// One stat, if present.
    pub async fn stat(&self, name: &str) -> Option<i64> {
        self.stats().await.get(name).copied()
    }

    /// Waits until stat `name` satisfies `pred`; returns its value.
    pub async fn wait_stat(&self, name: &str, what: &str, pred: impl Fn(i64) -> bool) -> i64 {
        eventually(&format!("stat {name} {what}"), || async {
            self.stat(name).await.filter(|v| pred(*v))
        })
        .await
    }

    /// `/ready` says LIVE.
    pub async fn is_live(&self) -> bool {
        matches!(self.get("/ready").await, (200, b) if b.trim() == "LIVE")
    }

    /// Waits for `/ready` LIVE.
    pub async fn wait_live(&self) {
        eventually("/ready says LIVE", || async {
            self.is_live().await.then_some(())
        })
        .await
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> Value {
        let (status, body) = self.get("/config_dump").await;
        assert_eq!(status, 200, "config_dump: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("config_dump not JSON: {e}"))
    }

    fn dump_section<'a>(dump: &'a Value, type_suffix: &str) -> Option<&'a Value> {
        dump["configs"].as_array()?.iter().find(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with(type_suffix))
        })
    }

    /// Dynamic active clusters: name → version_info.
    pub async fn active_clusters(&self) -> HashMap<String, String> {
        let dump = self.config_dump().await;
        let mut out = HashMap::new();
        if let Some(s) = Self::dump_section(&dump, "ClustersConfigDump") {
            for c in s["dynamic_active_clusters"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let name = c["cluster"]["name"].as_str().unwrap_or_default();
                out.insert(
                    name.to_string(),
                    c["version_info"].as_str().unwrap_or_default().to_string(),
                );
            }
        }
        out
    }

    /// Dynamic warming cluster names.
    pub async fn warming_clusters(&self) -> Vec<String> {
        let dump = self.config_dump().await;
        Self::dump_section(&dump, "ClustersConfigDump")
            .and_then(|s| s["dynamic_warming_clusters"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// The CDS `version_info` of config_dump.
    pub async fn cds_version(&self) -> String {
        let dump = self.config_dump().await;
        Self::dump_section(&dump, "ClustersConfigDump")
            .and_then(|s| s["version_info"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The LDS `version_info` of config_dump.
    pub async fn lds_version(&self) -> String {
        let dump = self.config_dump().await;
        Self::dump_section(&dump, "ListenersConfigDump")
            .and_then(|s| s["version_info"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Dynamic listeners with an active state: name → its version_info.
    pub async fn active_listeners(&self) -> HashMap<String, String> {
        let dump = self.config_dump().await;
        let mut out = HashMap::new();
        if let Some(s) = Self::dump_section(&dump, "ListenersConfigDump") {
            for l in s["dynamic_listeners"].as_array().into_iter().flatten() {
                if l["active_state"].is_object() {
                    out.insert(
                        l["name"].as_str().unwrap_or_default().to_string(),
                        l["active_state"]["version_info"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        }
        out
    }

    /// Dynamic listener names with a warming state.
    pub async fn warming_listeners(&self) -> Vec<String> {
        let dump = self.config_dump().await;
        Self::dump_section(&dump, "ListenersConfigDump")
            .and_then(|s| s["dynamic_listeners"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|l| l["warming_state"].is_object())
            .filter_map(|l| l["name"].as_str().map(str::to_string))
            .collect()
    }

    /// `/clusters` hosts of `cluster`: (address, health_flags, weight).
    pub async fn hosts(&self, cluster: &str) -> Vec<(String, String, u32)> {
        let (_, body) = self.get("/clusters").await;
        let mut hosts: Vec<(String, String, u32)> = Vec::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(&format!("{cluster}::")) else {
                continue;
            };
            let mut parts = rest.rsplitn(3, "::");
            let (Some(value), Some(key), Some(addr)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !addr.contains(':') {
                continue;
            }
            let i = match hosts.iter().position(|h| h.0 == addr) {
                Some(i) => i,
                None => {
                    hosts.push((addr.to_string(), String::new(), 0));
                    hosts.len() - 1
                }
            };
            match key {
                "health_flags" => hosts[i].1 = value.to_string(),
                "weight" => hosts[i].2 = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        hosts
    }

    /// Waits until `/clusters` lists exactly `ports` as hosts of `cluster`.
    pub async fn wait_hosts(&self, cluster: &str, ports: &[u16]) {
        let mut want: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        want.sort();
        eventually(&format!("{cluster} has hosts {want:?}"), || async {
            let mut have: Vec<String> =
                self.hosts(cluster).await.into_iter().map(|h| h.0).collect();
            have.sort();
            (have == want).then_some(())
        })
        .await
    }
}

async fn self_admin(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = tokio::time::timeout(
        FACT_TIMEOUT,
        crate::traffic::http1_once(addr, "GET", path, "localhost"),
    )
    .await
    .ok()?
    .ok()?;
    Some((r.status, r.body))
}

/// True if something accepts a connection on `port` now.
pub async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Reads what is available within `d` (for probing a connection).
pub async fn read_some(s: &mut TcpStream, d: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(d, s.read(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Writes all of `b`.
pub async fn write_all(s: &mut TcpStream, b: &[u8]) -> std::io::Result<()> {
    s.write_all(b).await
}
