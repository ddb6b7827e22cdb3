//! `courier-cp`: serves the Envoy resources of a file (or directory) over xDS, reloads it on
//! change, and offers a management HTTP API. The logic lives in the library; this is wiring.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use courier_control_plane::admin::Admin;
use courier_control_plane::app::App;
use courier_control_plane::{
    file_watch, ControlPlane, NodeClusterHash, NodeIdHash, ServerConfig, ServerTls, SnapshotCache,
};
use tokio::sync::watch;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("COURIER_CP_GIT_REV"),
    ")"
);

/// How long in-flight work may take after SIGTERM before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NodeKey {
    /// `node.id`
    Id,
    /// `node.cluster`
    Cluster,
}

/// Courier's xDS control plane.
#[derive(Debug, Parser)]
#[command(name = "courier-cp", version = VERSION)]
struct Args {
    /// Address of the xDS gRPC server.
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
    /// Also serve REST-JSON xDS (`api_type: REST`, HTTP/1.1 or h2c, plaintext) here.
    #[arg(long)]
    rest_listen: Option<SocketAddr>,
    /// Resources file (YAML/JSON) or directory of them; watched for changes.
    #[arg(long)]
    resources: Option<PathBuf>,
    /// Address of the management HTTP API (status, snapshot, PUT/DELETE, /metrics).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Which node field keys snapshots (and the `nodes:` overrides of the file).
    #[arg(long, value_enum, default_value = "id")]
    node_key: NodeKey,
    /// On ADS, answer EDS/RDS only once every requested name exists (go-control-plane).
    #[arg(long)]
    ads_strict: bool,
    /// Serve xDS over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates chaining to this CA (PEM): mTLS. Needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing::info!("{}", courier_control_plane::version_string());
    let cache = match args.node_key {
        NodeKey::Id => SnapshotCache::with_hash(NodeIdHash),
        NodeKey::Cluster => SnapshotCache::with_hash(NodeClusterHash),
    };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert: read(cert)?,
            key: read(key)?,
            client_ca: args.client_ca.as_ref().map(read).transpose()?,
        }),
        _ => None,
    };
    let config = ServerConfig {
        ads_strict: args.ads_strict,
        tls,
    };
    let cp = ControlPlane::with_cache(cache.clone(), config);
    let app = Arc::new(App::new(cache, cp.status().clone(), args.resources.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(path) = &args.resources {
        // Fingerprint before loading so an edit racing the first load is not missed.
        let fp = file_watch::fingerprint(path);
        app.reload()
            .with_context(|| format!("loading resources from {}", path.display()))?;
        let app = app.clone();
        tokio::spawn(file_watch::watch(path.clone(), fp, move || {
            // Errors are logged and kept as last_error by reload itself.
            let _ = app.reload();
        }));
    } else {
        cp.cache()
            .set_default_snapshot(Some(courier_control_plane::Snapshot::empty()));
    }

    if let Some(addr) = args.admin {
        Admin::new(app.clone(), cp.status().clone())
            .start(addr, stop_rx.clone())
            .await
            .with_context(|| format!("binding the admin API on {addr}"))?;
    }

    let rest = match args.rest_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the REST xDS server on {addr}"))?;
            tracing::info!(%addr, "REST xDS server listening");
            Some(tokio::spawn(
                cp.xds_server().serve_rest(listener, stop_rx.clone()),
            ))
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the xDS server on {}", args.listen))?;
    tracing::info!(addr = %args.listen, "xDS server listening");
    let mut stop_wait = stop_rx.clone();
    let server = tokio::spawn(cp.xds_server().serve(listener, async move {
        let _ = stop_wait.wait_for(|s| *s).await;
    }));

    wait_for_signal().await?;
    tracing::info!("shutting down");
    stop_tx.send_replace(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("stopped"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "xDS server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "xDS server task failed"),
        Err(_) => tracing::warn!("graceful shutdown timed out"),
    }
    if let Some(rest) = rest {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, rest).await;
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}
