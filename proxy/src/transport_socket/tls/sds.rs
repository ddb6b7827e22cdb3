//! Secrets a TLS context names rather than holds (`*_sds_secret_config`): from the
//! bootstrap's `static_resources.secrets`, from a file (`sds_config: { path_config_source }`,
//! a `DiscoveryResponse` holding the one `Secret`, as Envoy reads it), or from a management
//! server (`sds_config: { ads }` or an `api_config_source`: SDS subscriptions).
//!
//! A context that names secrets from files or servers registers here. When a file
//! changes (polled every 500 ms) or a server sends the secret, the main thread rebuilds
//! every context that names it, and the next handshakes use the new build (connections
//! keep theirs: nothing is drained, as in Envoy). A rebuild that fails keeps the last good
//! context (and NACKs the update). A context whose server secret has not arrived yet is
//! *pending*: its listener or cluster warms until the secret arrives or its
//! `initial_fetch_timeout` passes (then handshakes fail, counted as Envoy's
//! `*_context_secrets_not_ready`).
//!
//! Each secret counts its updates as Envoy's subscriptions do: `sds.<name>.update_attempt`,
//! `update_success`, `update_rejected` (a secret that does not build) and `update_failure`
//! (a file that cannot be read or parsed).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use courier_proto::envoy::config::core::v3::ConfigSource;
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
    static LOADED: RefCell<HashSet<String>> = RefCell::new(Default::default());
    /// Secrets received from management servers, by name.
    static RECEIVED: RefCell<HashMap<String, Secret>> = RefCell::new(HashMap::new());
    /// Server secrets whose initial fetch timed out: their users stop warming.
    static GAVE_UP: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
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
    /// The server secrets it names, with their config sources.
    served: Vec<(String, ConfigSource)>,
    target: Weak<dyn Reload + Send + Sync>,
}

/// Where a secret a context names comes from, when it can change.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// A file, re-read when it changes.
    File(PathBuf),
    /// A management server (an SDS subscription).
    Server(ConfigSource),
}

/// A changeable secret a context was built from (or waits for).
#[derive(Debug, Clone)]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
    /// Where it comes from.
    pub source: SecretSource,
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

/// The secret `config` names (`path` is its place in the config, for errors), `None`
/// while a server has not sent it yet; a file or server it comes from is added to `refs`.
pub fn resolve(
    config: &SdsSecretConfig,
    path: &str,
    refs: &mut Vec<SecretRef>,
) -> Result<Option<secret::Type>, ConfigError> {
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
        None => STATIC
            .with(|m| m.borrow().get(&config.name).cloned())
            .ok_or_else(|| {
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
            first_read(&p.path, &config.name, path, refs)?
        }
        #[allow(deprecated)]
        Some(ConfigSourceSpecifier::Path(p)) => first_read(p, &config.name, path, refs)?,
        Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::ApiConfigSource(_)) => {
            check_node(path)?;
            let source = config.sds_config.clone().unwrap_or_default();
            refs.push(SecretRef {
                name: config.name.clone(),
                source: SecretSource::Server(source),
            });
            match RECEIVED.with(|r| r.borrow().get(&config.name).cloned()) {
                Some(secret) => secret,
                None => return Ok(None),
            }
        }
        Some(_) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.sds_config (only ads, api_config_source and path_config_source)"
            )))
        }
    };
    found.r#type.map(Some).ok_or_else(|| {
        ConfigError::new(
            format!("{path}.name"),
            format!("secret '{}' holds nothing", config.name),
        )
    })
}

/// A secret subscription needs a named node (Envoy's `checkLocalInfo`).
fn check_node(path: &str) -> Result<(), ConfigError> {
    if NODE_NAMED.with(|n| n.get()) {
        return Ok(());
    }
    Err(ConfigError::new(
        format!("{path}.sds_config"),
        "TlsCertificateSdsApi: node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options.",
    ))
}

/// Reads secret `name` from `file` for a context being compiled; the first read of a
/// secret counts as its first update.
fn first_read(
    file: &str,
    name: &str,
    path: &str,
    refs: &mut Vec<SecretRef>,
) -> Result<Secret, ConfigError> {
    check_node(path)?;
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
    refs.push(SecretRef {
        name: name.to_string(),
        source: SecretSource::File(PathBuf::from(file)),
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

/// Rebuilds `target` whenever one of the secrets `refs` names changes: a file (from the
/// main thread's watcher) or a server's secret ([`on_secrets`]).
pub fn watch(refs: Vec<SecretRef>, target: Weak<dyn Reload + Send + Sync>) {
    let mut files = Vec::new();
    let mut served = Vec::new();
    for r in refs {
        match r.source {
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                files.push((path, r.name, text));
            }
            SecretSource::Server(source) => served.push((r.name, source)),
        }
    }
    WATCHES.with(|w| {
        w.borrow_mut().push(Watch {
            files,
            served,
            target,
        })
    });
}

/// The server secrets that live contexts name, grouped by config source (for the SDS
/// subscriptions); contexts no longer held are forgotten.
pub fn server_needs() -> Vec<(ConfigSource, Vec<String>)> {
    WATCHES.with(|w| {
        let mut w = w.borrow_mut();
        w.retain(|w| w.target.strong_count() > 0);
        let mut by_source: BTreeMap<Vec<u8>, (ConfigSource, Vec<String>)> = BTreeMap::new();
        for (name, source) in w.iter().flat_map(|w| w.served.iter()) {
            let names = &mut by_source
                .entry(prost::Message::encode_to_vec(source))
                .or_insert_with(|| (source.clone(), Vec::new()))
                .1;
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        by_source.into_values().collect()
    })
}

/// Whether the secret `config` names comes from a management server (ADS or an API
/// config source): what it is used by then waits for it (a listener warms on it).
pub fn from_server(config: &SdsSecretConfig) -> bool {
    config
        .sds_config
        .as_ref()
        .and_then(|c| c.config_source_specifier.as_ref())
        .is_some_and(|s| {
            matches!(
                s,
                ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::ApiConfigSource(_)
            )
        })
}

/// Whether the server secret `name` has arrived.
pub fn received(name: &str) -> bool {
    RECEIVED.with(|r| r.borrow().contains_key(name))
}

/// Whether the users of `name` may stop warming: it arrived, or its fetch timed out.
pub fn settled(name: &str) -> bool {
    received(name) || GAVE_UP.with(|g| g.borrow().contains(name))
}

/// The initial fetch of server secret `name` timed out: its users stop warming.
pub fn give_up(name: &str) {
    GAVE_UP.with(|g| g.borrow_mut().insert(name.to_string()));
}

/// Forgets server secrets no context names any more (`needed`), as Envoy drops an SDS
/// subscription with its last user.
pub fn retain_received(needed: &HashSet<String>) {
    RECEIVED.with(|r| r.borrow_mut().retain(|n, _| needed.contains(n)));
    GAVE_UP.with(|g| g.borrow_mut().retain(|n| needed.contains(n)));
}

/// Applies secrets a server sent: each is stored and every context naming it rebuilt.
/// A secret that does not build is refused whole (its previous value is restored, the
/// contexts keep their builds): the error names it. Secrets nobody names are ignored.
pub fn on_secrets(secrets: Vec<Secret>) -> Result<(), String> {
    let mut errors = Vec::new();
    for secret in secrets {
        let name = secret.name.clone();
        let users: Vec<std::sync::Arc<dyn Reload + Send + Sync>> = WATCHES.with(|w| {
            w.borrow()
                .iter()
                .filter(|w| w.served.iter().any(|(n, _)| *n == name))
                .filter_map(|w| w.target.upgrade())
                .collect()
        });
        if users.is_empty() {
            continue;
        }
        count(&name, "update_attempt");
        let previous = RECEIVED.with(|r| r.borrow_mut().insert(name.clone(), secret));
        let failed = users.iter().find_map(|u| u.reload().err());
        match failed {
            None => count(&name, "update_success"),
            Some(e) => {
                count(&name, "update_rejected");
                RECEIVED.with(|r| {
                    let mut r = r.borrow_mut();
                    match previous {
                        Some(p) => r.insert(name.clone(), p),
                        None => r.remove(&name),
                    }
                });
                // Contexts already rebuilt from the refused secret go back.
                for u in &users {
                    let _ = u.reload();
                }
                errors.push(format!("{name}: {e}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
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
                    unreadable: false,
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
            u.unreadable = true;
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
    for u in updates.iter().filter(|u| !u.unreadable) {
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
    /// The file holds no secret it can be read as (counted as `update_failure`).
    unreadable: bool,
    /// Why the update was refused, if it was.
    rejected: Option<String>,
}
