//! Command-line options, with Envoy's flag names.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What the process does with its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Run the proxy.
    Serve,
    /// Check the configuration and exit 0 (valid) or 1, opening no sockets.
    Validate,
    /// Initialise (bind, connect to xDS) and exit.
    #[value(name = "init_only")]
    InitOnly,
}

/// How connections are drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrainStrategy {
    /// Encourage connections to close progressively over the drain time.
    Gradual,
    /// Encourage every connection to close as soon as the drain starts.
    Immediate,
}

/// `courier` options. Unknown Envoy flags are errors.
#[derive(Debug, Clone, Parser)]
#[command(name = "courier", version = crate::VERSION, about = "An Envoy-compatible proxy configured by xDS")]
pub struct Options {
    /// Path to a v3 Bootstrap (YAML or JSON).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,
    /// A YAML Bootstrap, merged over the one from --config-path.
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,
    /// Worker threads (default: CPUs available to the process, honouring cgroup limits).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// `node.id` override.
    #[arg(long = "service-node")]
    pub service_node: Option<String>,
    /// `node.cluster` override.
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,
    /// `node.locality.zone` override.
    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,
    /// serve, validate or init_only.
    #[arg(long, value_enum, default_value = "serve")]
    pub mode: Mode,
    /// trace, debug, info, warning/warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// Log to this file (created if absent, appended to) instead of stderr.
    #[arg(long = "log-path")]
    pub log_path: Option<PathBuf>,
    /// Envoy's (spdlog's) log line pattern, e.g. `[%Y-%m-%d %T.%e][%t][%l][%n] %v`; the
    /// supported flags are listed in `courier::logging`. Without it, `tracing`'s shape.
    #[arg(long = "log-format")]
    pub log_format: Option<String>,
    /// Escape newlines and control characters in `%v` (Envoy's flag of the same name).
    #[arg(long = "log-format-escaped")]
    pub log_format_escaped: bool,
    /// Seconds connections are given to close during a drain.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,
    /// gradual or immediate.
    #[arg(long = "drain-strategy", value_enum, default_value = "gradual")]
    pub drain_strategy: DrainStrategy,
    /// File the admin server's bound address (`127.0.0.1:9901`) is written to once it
    /// listens, so a configured port 0 can be discovered.
    #[arg(long = "admin-address-path")]
    pub admin_address_path: Option<PathBuf>,
    /// Hot restart: this process's generation (0: the first; N > 0 takes over from the
    /// running epoch N-1, see `server::hot_restart`).
    #[arg(long = "restart-epoch", default_value_t = 0)]
    pub restart_epoch: u32,
    /// Seconds after which a hot-restarted child terminates its parent.
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    pub parent_shutdown_time_s: u64,
    /// Hot-restart base id: processes sharing it restart into each other.
    #[arg(long = "base-id", conflicts_with = "use_dynamic_base_id")]
    pub base_id: Option<u64>,
    /// Pick an unused base id (epoch 0 only); see `--base-id-path`.
    #[arg(long = "use-dynamic-base-id")]
    pub use_dynamic_base_id: bool,
    /// File the base id in use is written to.
    #[arg(long = "base-id-path")]
    pub base_id_path: Option<PathBuf>,
    /// Disable hot restart (no domain socket is bound).
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,
    /// Courier's own: a self hot restart whenever the bootstrap file (`-c`) changes
    /// (polled every second, so a ConfigMap volume's atomic swap counts).
    #[arg(long = "hot-restart-on-config-change")]
    pub hot_restart_on_config_change: bool,
    /// Prefix of the hot restart domain sockets: a path, or `@name` (abstract namespace).
    #[arg(long = "socket-path", default_value = "@envoy_domain_socket")]
    pub socket_path: String,
    /// Permissions (octal) of path domain sockets.
    #[arg(long = "socket-mode", default_value = "600", value_parser = parse_octal)]
    pub socket_mode: u32,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("'{s}' is not an octal file mode"))
}

impl Options {
    /// Refuses what Envoy refuses among the hot restart flags.
    pub fn check(&self) -> Result<(), String> {
        if self.hot_restart_on_config_change && self.disable_hot_restart {
            return Err(
                "--hot-restart-on-config-change needs hot restart, but --disable-hot-restart is set"
                    .into(),
            );
        }
        if self.hot_restart_on_config_change && self.config_path.is_none() {
            return Err("--hot-restart-on-config-change needs a bootstrap file (-c)".into());
        }
        if self.use_dynamic_base_id && self.restart_epoch > 0 {
            return Err(format!(
                "cannot use --use-dynamic-base-id with --restart-epoch {} (a child takes its parent's --base-id)",
                self.restart_epoch
            ));
        }
        Ok(())
    }

    /// The drain time.
    pub fn drain_time(&self) -> Duration {
        Duration::from_secs(self.drain_time_s)
    }

    /// Worker count: `--concurrency`, else the CPUs this process may use (std reads the
    /// cgroup v1/v2 CPU quota and the affinity mask).
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The `tracing` filter for `--log-level`.
    pub fn tracing_filter(&self) -> Result<&'static str, String> {
        crate::logging::tracing_level(&self.log_level)
            .map_err(|_| format!("invalid log level '{}'", self.log_level))
    }
}
