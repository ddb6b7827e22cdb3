//! `envoy.stat_sinks.statsd` (UDP to `address`, or TCP to `tcp_cluster_name`) and
//! `envoy.stat_sinks.dog_statsd` (UDP, tagged): each flush sends every used counter as
//! `<prefix>.<name>:<delta>|c` and every used gauge as `<prefix>.<name>:<value>|g`, as
//! Envoy's `UdpStatsdSink` and `TcpStatsdSink` write them. DogStatsD names a stat by its
//! tag-extracted name and appends its tags (`|#k:v,k2:v2`); it packs several lines
//! (newline-separated) into a datagram of up to `max_bytes_per_datagram` bytes, where
//! plain StatsD sends one line a datagram.
//!
//! Histograms are not sent: Envoy writes each recorded value as it is recorded, from the
//! worker that records it (`|ms`); Courier's histograms keep bucket counts, not values,
//! so there is no value to send (integration-tests/DIFFERENCES.md).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use bytes::Bytes;
use courier_proto::envoy::config::metrics::v3::dog_statsd_sink::DogStatsdSpecifier;
use courier_proto::envoy::config::metrics::v3::statsd_sink::StatsdSpecifier;
use courier_proto::envoy::config::metrics::v3::{DogStatsdSink, StatsdSink};
use courier_proto::google::protobuf::Any;

use super::{FlushContext, MetricSnapshot, Sink};
use crate::config::ConfigError;
use crate::stats::{Counter, Store, MAIN_THREAD};

/// Envoy's prefix when none is configured.
const DEFAULT_PREFIX: &str = "envoy";

/// How many flushes may wait for a TCP collector before they are dropped (Envoy drops
/// past 16 MiB buffered and counts `statsd.cx_overflow`).
const TCP_QUEUE: usize = 16;

/// How stat lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFormat {
    /// Put before every name, with a dot.
    pub prefix: String,
    /// DogStatsD: the tag-extracted name, then `|#tag:value,…`.
    pub tagged: bool,
}

impl LineFormat {
    /// One line (no newline): `<prefix>.<name>:<value>|<kind>[|#k:v,…]`.
    pub fn line(&self, store: &Store, name: &str, value: &str, kind: &str) -> String {
        if !self.tagged {
            return format!("{}.{name}:{value}|{kind}", self.prefix);
        }
        let (base, tags) = store.view().tags.produce(name);
        let mut line = format!("{}.{base}:{value}|{kind}", self.prefix);
        if !tags.is_empty() {
            line.push_str("|#");
            for (i, (k, v)) in tags.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(k);
                line.push(':');
                line.push_str(v);
            }
        }
        line
    }

    /// The lines of a flush: used counters (their delta), then used gauges.
    pub fn lines(&self, snapshot: &MetricSnapshot, store: &Store) -> Vec<String> {
        let counters = snapshot
            .counters
            .iter()
            .filter(|c| c.used)
            .map(|c| self.line(store, &c.name, &c.delta.to_string(), "c"));
        let gauges = snapshot
            .gauges
            .iter()
            .filter(|g| g.used)
            .map(|g| self.line(store, &g.name, &g.value.to_string(), "g"));
        counters.chain(gauges).collect()
    }
}

/// Packs lines into datagrams as Envoy's `UdpStatsdSink::writeBuffer` does: a line as
/// long as the buffer or longer goes alone; otherwise lines join with `\n` while the
/// datagram (counting the separator) stays within `buffer_size`. A `buffer_size` of 0
/// sends each line alone.
pub fn datagrams(lines: &[String], buffer_size: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut buffer = String::new();
    for line in lines {
        if line.len() >= buffer_size {
            out.push(line.clone());
            continue;
        }
        if buffer.len() + line.len() + 1 > buffer_size {
            if !buffer.is_empty() {
                out.push(std::mem::take(&mut buffer));
            }
        } else if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(line);
    }
    if !buffer.is_empty() {
        out.push(buffer);
    }
    out
}

/// A UDP StatsD or DogStatsD sink.
pub struct UdpSink {
    format: LineFormat,
    address: SocketAddr,
    buffer_size: usize,
    /// Opened at the first flush (non-blocking: a full socket buffer drops a datagram,
    /// never stalls the main thread).
    socket: Option<UdpSocket>,
}

impl UdpSink {
    fn socket(&mut self) -> Option<&UdpSocket> {
        if self.socket.is_none() {
            let local: SocketAddr = if self.address.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            match UdpSocket::bind(local).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                Ok(s) => self.socket = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "statsd sink: cannot open a UDP socket");
                }
            }
        }
        self.socket.as_ref()
    }
}

impl Sink for UdpSink {
    fn flush(&mut self, snapshot: &MetricSnapshot, cx: &FlushContext<'_>) {
        let lines = self.format.lines(snapshot, cx.store);
        let datagrams = datagrams(&lines, self.buffer_size);
        let address = self.address;
        let Some(socket) = self.socket() else { return };
        for d in datagrams {
            if let Err(e) = socket.send_to(d.as_bytes(), address) {
                tracing::debug!(error = %e, %address, "statsd sink: datagram not sent");
            }
        }
    }
}

/// A TCP StatsD sink: each flush's lines (`\n`-terminated) written on a connection to a
/// host of the cluster, kept open between flushes.
pub struct TcpSink {
    format: LineFormat,
    cluster: String,
    queue: Option<tokio::sync::mpsc::Sender<Bytes>>,
    overflow: Option<Arc<Counter>>,
}

/// Writes queued flushes to the cluster, connecting when needed; a flush that cannot be
/// written (no host, connection refused or lost) is dropped, as Envoy drops it.
async fn tcp_writer(cluster: String, mut rx: tokio::sync::mpsc::Receiver<Bytes>) {
    use tokio::io::AsyncWriteExt;
    let mut conn: Option<tokio::net::TcpStream> = None;
    while let Some(data) = rx.recv().await {
        if conn.is_none() {
            let Some(addr) = crate::upstream::async_client::host_of(&cluster) else {
                tracing::debug!(%cluster, "statsd sink: the cluster has no host");
                continue;
            };
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                }
                Err(e) => {
                    tracing::debug!(error = %e, %addr, "statsd sink: cannot connect");
                    continue;
                }
            }
        }
        if let Some(s) = &mut conn {
            if let Err(e) = s.write_all(&data).await {
                tracing::debug!(error = %e, %cluster, "statsd sink: connection lost");
                conn = None;
            }
        }
    }
}

impl Sink for TcpSink {
    fn required_cluster(&self) -> Option<&str> {
        Some(&self.cluster)
    }

    fn flush(&mut self, snapshot: &MetricSnapshot, cx: &FlushContext<'_>) {
        let store = cx.store;
        let overflow = self
            .overflow
            .get_or_insert_with(|| store.counter("statsd.cx_overflow"))
            .clone();
        let queue = self.queue.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(TCP_QUEUE);
            tokio::task::spawn_local(tcp_writer(self.cluster.clone(), rx));
            tx
        });
        let mut text = String::new();
        for line in self.format.lines(snapshot, store) {
            text.push_str(&line);
            text.push('\n');
        }
        if text.is_empty() {
            return;
        }
        if queue.try_send(Bytes::from(text)).is_err() {
            overflow.inc(MAIN_THREAD);
        }
    }
}

fn prefix(p: &str) -> String {
    if p.is_empty() {
        DEFAULT_PREFIX.to_string()
    } else {
        p.to_string()
    }
}

/// `envoy.stat_sinks.statsd`.
pub fn build_statsd(any: &Any, path: &str) -> Result<Box<dyn Sink>, ConfigError> {
    let c: StatsdSink = super::unpack(any, path)?;
    let format = LineFormat {
        prefix: prefix(&c.prefix),
        tagged: false,
    };
    match &c.statsd_specifier {
        Some(StatsdSpecifier::Address(a)) => Ok(Box::new(UdpSink {
            format,
            address: crate::config::socket_address(
                Some(a),
                &format!("{path}.typed_config.address"),
            )?,
            buffer_size: 0,
            socket: None,
        })),
        Some(StatsdSpecifier::TcpClusterName(cluster)) => Ok(Box::new(TcpSink {
            format,
            cluster: cluster.clone(),
            queue: None,
            overflow: None,
        })),
        None => Err(ConfigError::new(
            format!("{path}.typed_config.statsd_specifier"),
            "value is required",
        )),
    }
}

/// `envoy.stat_sinks.dog_statsd`.
pub fn build_dog_statsd(any: &Any, path: &str) -> Result<Box<dyn Sink>, ConfigError> {
    let c: DogStatsdSink = super::unpack(any, path)?;
    let Some(DogStatsdSpecifier::Address(a)) = &c.dog_statsd_specifier else {
        return Err(ConfigError::new(
            format!("{path}.typed_config.dog_statsd_specifier"),
            "value is required",
        ));
    };
    let buffer_size = c
        .max_bytes_per_datagram
        .map_or(0, |v| usize::try_from(v.value).unwrap_or(usize::MAX));
    Ok(Box::new(UdpSink {
        format: LineFormat {
            prefix: prefix(&c.prefix),
            tagged: true,
        },
        address: crate::config::socket_address(Some(a), &format!("{path}.typed_config.address"))?,
        buffer_size,
        socket: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::sinks::flush::Latches;

    #[test]
    fn statsd_lines_are_envoys() {
        let store = Store::new(1);
        store.counter("cluster.backend.upstream_rq_total").add(0, 3);
        store.counter("cluster.backend.upstream_rq_timeout");
        store.gauge("cluster.backend.upstream_cx_active").inc(0);
        store.gauge("server.state").set(0);
        store.gauge("never.set");
        let snapshot = Latches::default().snapshot(&store);
        let plain = LineFormat {
            prefix: "envoy".into(),
            tagged: false,
        };
        assert_eq!(
            plain.lines(&snapshot, &store),
            [
                "envoy.cluster.backend.upstream_rq_total:3|c",
                "envoy.cluster.backend.upstream_cx_active:1|g",
                "envoy.server.state:0|g",
            ]
        );
        let dog = LineFormat {
            prefix: "p".into(),
            tagged: true,
        };
        assert_eq!(
            dog.lines(&snapshot, &store),
            [
                "p.cluster.upstream_rq_total:3|c|#envoy.cluster_name:backend",
                "p.cluster.upstream_cx_active:1|g|#envoy.cluster_name:backend",
                "p.server.state:0|g",
            ]
        );
    }

    #[test]
    fn lines_pack_into_datagrams_as_envoy_buffers_them() {
        let lines: Vec<String> = ["aaaa", "bbbb", "cccccccccccc", "dd", "ee"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // No buffer: a line a datagram.
        assert_eq!(datagrams(&lines, 0), lines);
        // The 12-byte line does not fit in 10: it goes at once, alone, ahead of the
        // buffered "aaaa\nbbbb" (as Envoy writes it directly); "dd" would make the
        // buffer 12 bytes, so "aaaa\nbbbb" goes, and "dd\nee" fits.
        assert_eq!(
            datagrams(&lines, 10),
            ["cccccccccccc", "aaaa\nbbbb", "dd\nee"]
        );
        // The separator is counted even before the first line: 4 + 1 > 4.
        assert_eq!(datagrams(&lines[..1], 5), ["aaaa"]);
    }

    fn pack<T: prost::Message + prost::Name + Default>(yaml: &str) -> Any {
        let m: T = courier_proto::from_yaml(yaml).expect("config");
        Any {
            type_url: format!("type.googleapis.com/{}", T::full_name()),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn configs_are_checked() {
        let err = build_statsd(&pack::<StatsdSink>("{prefix: x}"), "stats_sinks[0]")
            .err()
            .map(|e| e.path);
        assert_eq!(
            err.as_deref(),
            Some("stats_sinks[0].typed_config.statsd_specifier")
        );
        assert!(build_dog_statsd(
            &pack::<DogStatsdSink>(
                "{address: {socket_address: {address: 127.0.0.1, port_value: 8125}}, max_bytes_per_datagram: 512}"
            ),
            "stats_sinks[0]"
        )
        .is_ok());
    }
}
