//! Secrets a TLS context names rather than holds (`*_sds_secret_config`): from the
//! bootstrap's `static_resources.secrets`, or from a file (`sds_config:
//! { path_config_source }`, a `DiscoveryResponse` of `Secret`s, as Envoy reads it) that
//! is re-read when it changes. A context built from files registers here; when one of its
//! files changes, the main thread rebuilds the context and the next handshakes use it
//! (connections keep theirs: nothing is drained, as in Envoy). A rebuild that fails
//! keeps the last good context.
//!
//! Each secret read from a file counts its updates as Envoy's filesystem subscription
//! does: `sds.<name>.update_attempt`, `update_success`, `update_rejected` (the file holds
//! a secret that does not build) and `update_failure` (the file cannot be read or
//! parsed).
//!
//! Secrets from a management server (`ads`, `api_config_source`) are not built yet and
//! are refused by path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::{
    secret, SdsSecretConfig, Secret,
};
use courier_proto::envoy::service::discovery::v3::DiscoveryResponse;

use crate::config::ConfigError;
use crate::stats::{Store, MAIN_THREAD};

const POLL: Duration = Duration::from_millis(500);

thread_local! {
    /// `static_resources.secrets` by name (set on the main thread before anything compiles).
    static STATIC: RefCell<HashMap<String, Secret>> = RefCell::new(HashMap::new());
    /// Whether the bootstrap's node has an `id` and a `cluster`, which a secret
    /// subscription needs (Envoy's `checkLocalInfo`).
    static NODE_NAMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Contexts built from files, with the files' contents when they were built.
    static WATCHES: RefCell<Vec<Watch>> = const { RefCell::new(Vec::new()) };
    /// Where `sds.*` stats go (none in `--mode validate`).
    static STORE: RefCell<Option<Store>> = const { RefCell::new(None) };
    /// Secrets read from files so far: their first read is counted once, however many
    /// contexts name them (Envoy shares one subscription per secret).
    static LOADED: RefCell<std::collections::HashSet<String>> = RefCell::new(Default::default());
}

/// Counts `sds.<name>.<stat>`.
fn count(name: &str, stat: &str) {
    STORE.with(|s| {
        if let Some(store) = &*s.borrow() {
            store
                .counter(&format!("sds.{name}.{stat}"))
                .inc(MAIN_THREAD);
        }
    });
}

/// Sends `sds.*` stats to `store`.
pub fn set_store(store: &Store) {
    STORE.with(|s| *s.borrow_mut() = Some(store.clone()));
}

/// Something rebuilt when a file it was built from changes.
pub trait Reload {
    /// Rebuilds from the current files (a failure leaves the old build in place).
    fn reload(&self) -> Result<(), ConfigError>;
}

struct Watch {
    /// Each file, the secret read from it, and its contents when last read.
    files: Vec<(PathBuf, String, String)>,
    target: Weak<dyn Reload + Send + Sync>,
}

/// A secret file a context was built from.
#[derive(Debug, Clone)]
pub struct SecretFile {
    /// The file.
    pub path: PathBuf,
    /// The secret it holds.
    pub name: String,
}

/// Installs the bootstrap's `static_resources.secrets` and notes whether its node is
/// named (after `--service-node`/`--service-cluster`).
pub fn configure(bootstrap: &Bootstrap) -> Result<(), ConfigError> {
    let named = bootstrap
        .node
        .as_ref()
        .is_some_and(|n| !n.id.is_empty() && !n.cluster.is_empty());
    NODE_NAMED.with(|n| n.set(named));
    let secrets = bootstrap
        .static_resources
        .as_ref()
        .map(|sr| sr.secrets.as_slice())
        .unwrap_or_default();
    let mut map = HashMap::new();
    for (i, s) in secrets.iter().enumerate() {
        if s.name.is_empty() {
            return Err(ConfigError::new(
                format!("static_resources.secrets[{i}].name"),
                "a static secret needs a name",
            ));
        }
        if map.insert(s.name.clone(), s.clone()).is_some() {
            return Err(ConfigError::new(
                format!("static_resources.secrets[{i}].name"),
                format!("duplicate static secret '{}'", s.name),
            ));
        }
    }
    STATIC.with(|m| *m.borrow_mut() = map);
    Ok(())
}

/// The secret `config` names (`path` is its place in the config, for errors); a file it
/// came from is added to `files`.
pub fn resolve(
    config: &SdsSecretConfig,
    path: &str,
    files: &mut Vec<SecretFile>,
) -> Result<secret::Type, ConfigError> {
    if config.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "value length must be at least 1 characters",
        ));
    }
    let found = match config
        .sds_config
        .as_ref()
        .and_then(|s| s.config_source_specifier.as_ref())
    {
        None => STATIC.with(|m| m.borrow().get(&config.name).cloned()).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.name"),
                format!(
                    "Unknown static secret: {} (not in static_resources.secrets)",
                    config.name
                ),
            )
        })?,
        Some(ConfigSourceSpecifier::PathConfigSource(p)) => {
            if p.watched_directory.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{path}.sds_config.path_config_source.watched_directory"
                )));
            }
            first_read(&p.path, &config.name, path, files)?
        }
        #[allow(deprecated)]
        Some(ConfigSourceSpecifier::Path(p)) => first_read(p, &config.name, path, files)?,
        Some(_) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.sds_config (secrets from a management server: use static_resources.secrets or a path_config_source file)"
            )))
        }
    };
    found.r#type.ok_or_else(|| {
        ConfigError::new(
            format!("{path}.name"),
            format!("secret '{}' holds nothing", config.name),
        )
    })
}

/// Reads secret `name` from `file` for a context being compiled; the first read of a
/// secret counts as its first update.
fn first_read(
    file: &str,
    name: &str,
    path: &str,
    files: &mut Vec<SecretFile>,
) -> Result<Secret, ConfigError> {
    if !NODE_NAMED.with(|n| n.get()) {
        return Err(ConfigError::new(
            format!("{path}.sds_config"),
            "TlsCertificateSdsApi: node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options.",
        ));
    }
    let at = format!("{path}.sds_config.path_config_source.path");
    let first = LOADED.with(|l| l.borrow_mut().insert(name.to_string()));
    if first {
        count(name, "update_attempt");
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::new(&at, format!("cannot read '{file}': {e}")))?;
    let secret = from_text(&text, file, name).map_err(|e| ConfigError::new(&at, e))?;
    if first {
        count(name, "update_success");
    }
    files.push(SecretFile {
        path: PathBuf::from(file),
        name: name.to_string(),
    });
    Ok(secret)
}

/// The secret in a file's `text`: a `DiscoveryResponse` holding exactly the one secret
/// named `name`, as Envoy requires of an SDS update.
fn from_text(text: &str, file: &str, name: &str) -> Result<Secret, String> {
    let response: DiscoveryResponse = if file.ends_with(".json") {
        courier_proto::from_json(text)
    } else {
        courier_proto::from_yaml(text)
    }
    .map_err(|e| format!("'{file}' is not a DiscoveryResponse: {e}"))?;
    let [any] = response.resources.as_slice() else {
        return Err(format!(
            "'{file}': Unexpected SDS secrets length: {} (one secret, '{name}', expected)",
            response.resources.len()
        ));
    };
    let secret = courier_proto::unpack_any::<Secret>(any)
        .map_err(|e| format!("'{file}' holds no Secret: {e}"))?;
    if secret.name != name {
        return Err(format!(
            "'{file}': Unexpected SDS secret (expecting {name}): {}",
            secret.name
        ));
    }
    Ok(secret)
}

/// Rebuilds `target` whenever one of `files` changes (from the main thread's watcher).
pub fn watch(files: Vec<SecretFile>, target: Weak<dyn Reload + Send + Sync>) {
    let files = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f.path).unwrap_or_default();
            (f.path, f.name, text)
        })
        .collect();
    WATCHES.with(|w| w.borrow_mut().push(Watch { files, target }));
}

/// The main thread's watcher: every 500 ms, rebuilds the contexts whose files changed
/// and forgets those no listener or cluster holds any more.
pub async fn watch_files() {
    loop {
        tokio::time::sleep(POLL).await;
        poll_once();
    }
}

fn poll_once() {
    // Rebuilding may register new watches (never, today): take the list out first.
    let mut watches = WATCHES.with(|w| std::mem::take(&mut *w.borrow_mut()));
    watches.retain(|w| w.target.strong_count() > 0);
    // Each changed secret is one update, however many contexts it feeds: read the
    // changed files once, then rebuild every context that names one of them.
    let mut updates: Vec<Update> = Vec::new();
    for w in &mut watches {
        for (file, name, seen) in &mut w.files {
            let Ok(text) = std::fs::read_to_string(&*file) else {
                continue;
            };
            if text == *seen {
                continue;
            }
            *seen = text.clone();
            if !updates.iter().any(|u| u.file == *file && u.name == *name) {
                updates.push(Update {
                    file: file.clone(),
                    name: name.clone(),
                    text,
                    rejected: None,
                });
            }
        }
    }
    for u in &mut updates {
        count(&u.name, "update_attempt");
        if let Err(e) = from_text(&u.text, &u.file.display().to_string(), &u.name) {
            tracing::warn!(secret = %u.name, error = %e, "secret file update failed; the last good secret stays");
            count(&u.name, "update_failure");
            u.rejected = Some(e);
        }
    }
    for w in &watches {
        let touched = updates.iter().any(|u| {
            u.rejected.is_none() && w.files.iter().any(|(f, n, _)| *f == u.file && *n == u.name)
        });
        if !touched {
            continue;
        }
        let Some(target) = w.target.upgrade() else {
            continue;
        };
        if let Err(e) = target.reload() {
            tracing::warn!(error = %e, "changed secret rejected; the last good context stays");
            for u in &mut updates {
                if w.files.iter().any(|(f, n, _)| *f == u.file && *n == u.name) {
                    u.rejected.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    for u in &updates {
        match &u.rejected {
            None => {
                tracing::info!(secret = %u.name, file = %u.file.display(), "secret updated from its file");
                count(&u.name, "update_success");
            }
            Some(_) => count(&u.name, "update_rejected"),
        }
    }
    WATCHES.with(|w| {
        let mut w = w.borrow_mut();
        watches.append(&mut w);
        *w = watches;
    });
}

/// One changed secret file in a poll.
struct Update {
    file: PathBuf,
    name: String,
    text: String,
    /// Why the update was refused, if it was.
    rejected: Option<String>,
}
