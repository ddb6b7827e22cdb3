//! Applying xDS responses to the managers, with Envoy's acceptance rules.
//!
//! - CDS/LDS: every valid resource is applied; the rest are reported together in one
//!   NACK (a duplicate name is rejected, the first copy kept). In SotW, dynamic
//!   clusters/listeners absent from the response are removed.
//! - EDS/RDS: one bad resource rejects the whole response; resources nobody subscribed to
//!   are ignored; absence never removes anything.
//! - RTDS: as EDS/RDS; a resource replaces its runtime layers' values, a delta removal
//!   empties them.
//!
//! An `Err` is the NACK's `error_detail` message.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use courier_proto::envoy::config::listener::v3::Listener;
use courier_proto::envoy::config::route::v3::RouteConfiguration;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::Secret;
use courier_proto::envoy::service::discovery::v3::Resource as ResourceWrapper;
use courier_proto::envoy::service::runtime::v3::Runtime;
use courier_proto::google::protobuf::Any;
use courier_proto::{type_url, unwrap_resource, ResourceError, ResourceMessage, ResourceType};

use crate::http::route::RouteTable;
use crate::memory::Encoded;
use crate::server::Server;
use crate::stats::MAIN_THREAD;

/// A decoded resource.
pub enum Proto {
    /// CDS, kept encoded until applied: a response with thousands of clusters would
    /// otherwise hold every 3.4 KB decoded message at once, and the heap stays at that peak.
    Cluster(Encoded<Cluster>),
    /// EDS, kept encoded like clusters: an unchanged assignment (SotW EDS re-sends all of
    /// them) is recognised by its bytes without decoding it again.
    Assignment(Encoded<ClusterLoadAssignment>),
    /// LDS.
    Listener(Box<Listener>),
    /// RDS.
    Route(Box<RouteConfiguration>),
    /// SDS.
    Secret(Box<Secret>),
    /// RTDS.
    Runtime(Box<Runtime>),
    /// A `Resource` wrapper without a resource: a heartbeat refreshing the TTL of a
    /// resource held at that version (it keeps it, and changes nothing).
    Heartbeat,
}

/// One resource of a response.
pub struct Resource {
    /// Resource name.
    pub name: String,
    /// Delta: the resource's version.
    pub version: String,
    /// The wrapper's TTL: the resource goes away unless refreshed within it.
    pub ttl: Option<std::time::Duration>,
    /// The message.
    pub proto: Proto,
}

impl Resource {
    fn heartbeat(
        name: String,
        version: String,
        ttl: Option<&courier_proto::google::protobuf::Duration>,
    ) -> Resource {
        Resource {
            name,
            version,
            ttl: ttl.and_then(ttl_of),
            proto: Proto::Heartbeat,
        }
    }
}

/// A TTL as a duration (a negative or zero one: none).
fn ttl_of(d: &courier_proto::google::protobuf::Duration) -> Option<std::time::Duration> {
    let ttl = crate::config::duration(d, "ttl").ok()?;
    (!ttl.is_zero()).then_some(ttl)
}

/// A response to apply.
pub enum Update<'a> {
    /// SotW: the full set (CDS/LDS) or some (EDS/RDS) resources.
    Sotw {
        /// `version_info`.
        version: &'a str,
        /// Resources.
        resources: Vec<Resource>,
    },
    /// Delta: changed resources and removed names.
    Delta {
        /// `system_version_info`.
        version: &'a str,
        /// Added or updated.
        resources: Vec<Resource>,
        /// Removed.
        removed: &'a [String],
    },
}

/// Unwraps, checks and decodes one resource of a response of `kind`; an `Err` is the
/// NACK's message (Envoy's wording).
fn decode_one(kind: ResourceType, any: &Any, index: usize) -> Result<Resource, String> {
    if let Some(hb) = courier_proto::heartbeat(any) {
        return Ok(Resource::heartbeat(hb.name, hb.version, hb.ttl.as_ref()));
    }
    let expected = kind.type_url();
    let unwrapped = unwrap_resource(kind, any).map_err(|e| match e {
        ResourceError::Decode {
            type_url: t,
            message,
        } if t == type_url::RESOURCE => {
            format!("resources[{index}]: cannot decode Resource wrapper: {message}")
        }
        ResourceError::MissingResource => {
            format!("resources[{index}]: Resource wrapper without a resource")
        }
        ResourceError::WrongType { actual, .. } => format!(
            "{actual} does not match the message-wide type URL {expected} in DiscoveryResponse"
        ),
        ResourceError::Decode { message, .. } => {
            format!("resources[{index}]: cannot decode {expected}: {message}")
        }
        other => format!("resources[{index}]: {other}"),
    })?;
    let proto = match unwrapped.message {
        // Only the bytes are kept: the decoded message is dropped at once.
        ResourceMessage::Cluster(_) => {
            Proto::Cluster(Encoded::from_valid_bytes(&unwrapped.any.value))
        }
        ResourceMessage::Endpoint(_) => {
            Proto::Assignment(Encoded::from_valid_bytes(&unwrapped.any.value))
        }
        ResourceMessage::Listener(l) => Proto::Listener(l),
        ResourceMessage::Route(r) => Proto::Route(r),
        ResourceMessage::Secret(s) => Proto::Secret(s),
        ResourceMessage::Runtime(r) => Proto::Runtime(r),
    };
    Ok(Resource {
        name: unwrapped.name,
        version: unwrapped.version,
        ttl: unwrapped.ttl.as_ref().and_then(ttl_of),
        proto,
    })
}

/// Decodes a SotW response's resources (unwrapping `Resource` wrappers).
pub fn decode(kind: ResourceType, resources: &[Any]) -> Result<Vec<Resource>, String> {
    resources
        .iter()
        .enumerate()
        .map(|(i, any)| decode_one(kind, any, i))
        .collect()
}

/// Decodes a delta response's resources.
pub fn decode_delta(
    kind: ResourceType,
    resources: &[ResourceWrapper],
) -> Result<Vec<Resource>, String> {
    resources
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let Some(any) = r.resource.as_ref() else {
                // No body: a TTL heartbeat (the mux checks the resource is held).
                return Ok(Resource::heartbeat(
                    r.name.clone(),
                    r.version.clone(),
                    r.ttl.as_ref(),
                ));
            };
            let mut decoded = decode_one(kind, any, i)?;
            decoded.version.clone_from(&r.version);
            decoded.ttl = r.ttl.as_ref().and_then(ttl_of);
            if decoded.name.is_empty() {
                decoded.name.clone_from(&r.name);
            }
            Ok(decoded)
        })
        .collect()
}

/// Applies one response from a stream; then re-syncs dependent subscriptions and
/// initialisation (which may send requests on any mux before this response is ACKed, as
/// Envoy does).
pub fn apply(server: &Rc<Server>, kind: ResourceType, update: Update<'_>) -> Result<(), String> {
    apply_unmuxed(server, kind, update)
}

/// Applies a response that came from a file rather than a stream.
pub fn apply_unmuxed(
    server: &Rc<Server>,
    kind: ResourceType,
    update: Update<'_>,
) -> Result<(), String> {
    let result = match kind {
        ResourceType::Cluster => apply_cds(server, update),
        ResourceType::Endpoint => apply_eds(server, update),
        ResourceType::Listener => apply_lds(server, update),
        ResourceType::Route => apply_rds(server, update),
        ResourceType::Secret => apply_sds(server, update),
        ResourceType::Runtime => apply_rtds(server, update),
    };
    // A first response, accepted or not, completes that type's initial fetch.
    super::mark_initialized(server, kind);
    super::after_update(server);
    result
}

fn split(update: Update<'_>) -> (String, Vec<Resource>, Option<Vec<String>>, bool) {
    match update {
        Update::Sotw { version, resources } => (version.to_string(), resources, None, true),
        Update::Delta {
            version,
            resources,
            removed,
        } => (
            version.to_string(),
            resources,
            Some(removed.to_vec()),
            false,
        ),
    }
}

fn apply_cds(server: &Server, update: Update<'_>) -> Result<(), String> {
    let started = Instant::now();
    let (version, resources, removed, _) = split(update);
    let mut changed = 0usize;
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut cm = server.cluster_manager.borrow_mut();
    for r in resources {
        let Proto::Cluster(encoded) = r.proto else {
            // A heartbeat keeps its cluster (state of the world included).
            if matches!(r.proto, Proto::Heartbeat) {
                seen.insert(r.name);
            }
            continue;
        };
        if !seen.insert(r.name.clone()) {
            errors.push(format!("duplicate cluster {} found", r.name));
            continue;
        }
        let cluster = encoded.decode();
        match cm.add_or_update(&cluster, &version, true) {
            Ok(change) => {
                if change != crate::upstream::ClusterChange::Unchanged {
                    changed += 1;
                }
                server
                    .xds
                    .borrow_mut()
                    .clear_error(ResourceType::Cluster, &r.name);
            }
            Err(e) => {
                server.xds.borrow_mut().record_error(
                    ResourceType::Cluster,
                    &r.name,
                    &version,
                    courier_proto::to_json(&cluster),
                    &e.to_string(),
                );
                errors.push(format!("{}: {e}", r.name));
            }
        }
    }
    let to_remove: Vec<String> = match removed {
        Some(removed) => removed,
        None => cm
            .active()
            .iter()
            .chain(cm.warming().iter())
            .filter(|(name, e)| e.added_via_api && !seen.contains(*name))
            .map(|(name, _)| name.clone())
            .collect(),
    };
    for name in to_remove {
        if cm.get(&name).is_some_and(|e| !e.added_via_api) {
            continue;
        }
        cm.remove(&name);
    }
    cm.publish();
    drop(cm);
    let stats = server.xds.borrow().stats.cds.clone();
    let result = finish(
        stats.as_slice(),
        &version,
        started,
        errors,
        "Error adding/updating cluster(s) ",
    );
    // Envoy's `config_reload`: an accepted update that added or changed clusters.
    if result.is_ok() && changed > 0 {
        if let Some((reloads, at)) = &server.xds.borrow().stats.cds_config_reload {
            reloads.inc(MAIN_THREAD);
            at.set(super::subscription_stats::now_ms());
        }
    }
    result
}

fn apply_lds(server: &Server, update: Update<'_>) -> Result<(), String> {
    let started = Instant::now();
    let (version, resources, removed, _) = split(update);
    let mut errors = Vec::new();
    let mut failures = Vec::new();
    let mut seen = HashSet::new();
    let xds = server.xds.borrow();
    let ready = |name: &str| xds.route_ready(name);
    let mut lm = server.listener_manager.borrow_mut();
    let cm = server.cluster_manager.borrow();
    // Removals first, so a new listener can take a removed one's address.
    let names_in_update: HashSet<String> = resources.iter().map(|r| r.name.clone()).collect();
    let to_remove: Vec<String> = match removed {
        Some(removed) => removed,
        None => lm
            .listeners()
            .iter()
            .chain(lm.warming().iter())
            .filter(|(name, e)| e.added_via_api && !names_in_update.contains(*name))
            .map(|(name, _)| name.clone())
            .collect(),
    };
    for name in to_remove {
        if lm.listeners().get(&name).is_some_and(|e| !e.added_via_api) {
            continue;
        }
        lm.remove(&name);
    }
    for r in resources {
        let Proto::Listener(listener) = r.proto else {
            continue;
        };
        if !seen.insert(r.name.clone()) {
            errors.push(format!("duplicate listener {} found", r.name));
            continue;
        }
        match lm.add_or_update(&listener, &version, true, &ready, &|name| cm.contains(name)) {
            Ok(_) => failures.push((r.name.clone(), None)),
            Err(e) => {
                failures.push((
                    r.name.clone(),
                    Some((courier_proto::to_json(&*listener), e.to_string())),
                ));
                errors.push(format!("{}: {e}", r.name));
            }
        }
    }
    drop(lm);
    drop(cm);
    drop(xds);
    let mut xds = server.xds.borrow_mut();
    for (name, failure) in failures {
        match failure {
            None => xds.clear_error(ResourceType::Listener, &name),
            Some((json, detail)) => {
                xds.record_error(ResourceType::Listener, &name, &version, json, &detail)
            }
        }
    }
    drop(xds);
    let stats = server.xds.borrow().stats.lds.clone();
    finish(
        stats.as_slice(),
        &version,
        started,
        errors,
        "Error adding/updating listener(s) ",
    )
}

fn apply_eds(server: &Server, update: Update<'_>) -> Result<(), String> {
    let started = Instant::now();
    let (version, resources, removed, _) = split(update);
    let assignments: Vec<(String, Encoded<ClusterLoadAssignment>)> = {
        let cm = server.cluster_manager.borrow();
        resources
            .into_iter()
            .filter_map(|r| match r.proto {
                // Resources nobody subscribed to are ignored (not NACKed).
                Proto::Assignment(a) if cm.eds_users(&r.name).next().is_some() => Some((r.name, a)),
                _ => None,
            })
            .collect()
    };
    // Validate everything before changing anything: one bad assignment rejects all (and
    // every subscription the response serves counts the rejection, as Envoy's mux does).
    let reject = |e: String| {
        for (name, _) in &assignments {
            for stats in super::subscriptions_of(server, ResourceType::Endpoint, name) {
                stats.rejected();
            }
        }
        Err(e)
    };
    for (name, cla) in &assignments {
        if let Err(e) = crate::upstream::validate_assignment(&cla.decode()) {
            return reject(format!("{name}: {e}"));
        }
    }
    let mut outcomes = Vec::with_capacity(assignments.len());
    for (name, cla) in &assignments {
        let applied = server
            .cluster_manager
            .borrow_mut()
            .update_assignment(name, cla);
        match applied {
            Ok(rebuilt) => outcomes.push((name, rebuilt)),
            Err(e) => return reject(format!("{name}: {e}")),
        }
        server.xds.borrow_mut().eds_received(name);
    }
    let took = started.elapsed();
    let cm = server.cluster_manager.borrow();
    for (name, rebuilt) in outcomes {
        for e in cm.eds_users(name) {
            let stats = &e.info.stats;
            if stats.eds {
                stats.updates.accepted(&version, took);
                if !rebuilt.contains(&e.info.name) {
                    stats.updates.not_rebuilt();
                }
            }
        }
    }
    drop(cm);
    let mut cm = server.cluster_manager.borrow_mut();
    for name in removed.unwrap_or_default() {
        // Delta removal of an assignment: the cluster keeps existing with no hosts.
        let empty = Encoded::new(&ClusterLoadAssignment {
            cluster_name: name.clone(),
            ..Default::default()
        });
        let _ = cm.update_assignment(&name, &empty);
    }
    cm.publish();
    Ok(())
}

fn apply_rds(server: &Server, update: Update<'_>) -> Result<(), String> {
    let started = Instant::now();
    let (version, resources, removed, _) = split(update);
    let wanted = server.listener_manager.borrow().rds_needs();
    let mut compiled = Vec::new();
    for r in resources {
        let Proto::Route(route) = r.proto else {
            continue;
        };
        let scopes = super::rds_scopes_in(&wanted, &r.name);
        if scopes.is_empty() {
            continue;
        }
        let subscriptions: Vec<_> = scopes
            .iter()
            .map(|scope| super::SubscriptionStats::new(&server.store, scope))
            .collect();
        let compiled_table =
            RouteTable::compile(&route, &server.store, &crate::filters::http::HTTP_FILTERS)
                .and_then(|t| {
                    let cm = server.cluster_manager.borrow();
                    match t.unknown_cluster(false, &|name| cm.contains(name)) {
                        Some(e) => Err(e),
                        None => Ok(t),
                    }
                });
        match compiled_table {
            Ok(table) => compiled.push((Arc::new(table), scopes, subscriptions)),
            Err(e) => {
                for stats in &subscriptions {
                    stats.rejected();
                }
                return Err(format!("{}: {e}", r.name));
            }
        }
    }
    let took = started.elapsed();
    let mut xds = server.xds.borrow_mut();
    for (table, scopes, subscriptions) in compiled {
        // Envoy's `config_reload`: the route configuration's content changed.
        let reloaded = !xds.routes.same_proto(&table);
        for stats in &subscriptions {
            stats.accepted(&version, took);
        }
        if reloaded {
            for scope in &scopes {
                server
                    .store
                    .counter(&format!("{scope}.config_reload"))
                    .inc(MAIN_THREAD);
                server
                    .store
                    .gauge(&format!("{scope}.config_reload_time_ms"))
                    .set(super::subscription_stats::now_ms());
            }
        }
        xds.set_route(table);
    }
    for name in removed.unwrap_or_default() {
        xds.remove_route(&name);
    }
    xds.publish_routes();
    let ready = |name: &str| xds.route_ready(name);
    server.listener_manager.borrow_mut().on_routes_ready(&ready);
    Ok(())
}

/// SDS: secrets are stored and the contexts naming them rebuilt (a secret that does not
/// build rejects the update; the others of the response still apply, as Envoy applies
/// each SDS subscription on its own). A delta removal is ignored: the last secret keeps
/// serving, as in Envoy. Listeners and clusters waiting on the secrets stop warming.
fn apply_sds(server: &Server, update: Update<'_>) -> Result<(), String> {
    let (_version, resources, _removed, _) = split(update);
    let secrets = resources
        .into_iter()
        .filter_map(|r| match r.proto {
            Proto::Secret(s) if !s.name.is_empty() => Some(*s),
            Proto::Secret(mut s) => {
                s.name = r.name;
                Some(*s)
            }
            _ => None,
        })
        .collect();
    let result = crate::transport_socket::tls::sds::on_secrets(secrets);
    super::on_secrets_settled(server);
    result
}

/// A source that hands a subscription every resource of a response without matching
/// names (REST polls, files: Envoy's `HttpSubscriptionImpl` and
/// `FilesystemSubscriptionImpl`) gives an RTDS layer exactly one resource, or the response
/// is rejected with Envoy's message. gRPC streams deliver only the names subscribed to, so
/// there a response without the layer's resource is simply not for it.
pub fn check_rtds_singleton(
    kind: ResourceType,
    resources: Vec<Resource>,
) -> Result<Vec<Resource>, String> {
    if kind == ResourceType::Runtime && resources.len() != 1 {
        return Err(format!(
            "Unexpected RTDS resource length, number of added resources {}, number of removed resources 0",
            resources.len()
        ));
    }
    Ok(resources)
}

/// RTDS: each resource an RTDS layer subscribes to replaces that layer's values, a delta
/// removal (or a TTL expiry) empties them; a heartbeat keeps them. One invalid resource
/// rejects the response and no layer changes (Envoy's NACK message: the resource's own
/// error). Resources no layer subscribes to are ignored, and a response carrying none
/// changes and counts nothing (Envoy calls no RTDS subscription for it).
///
/// A response, accepted or rejected, ends the initial fetch of the layers it answers; a
/// rejected one ends every RTDS layer's (Envoy fails every watch of the type).
fn apply_rtds(server: &Rc<Server>, update: Update<'_>) -> Result<(), String> {
    let started = Instant::now();
    let (version, resources, removed, _) = split(update);
    let mut updates: Vec<(String, Option<&Runtime>)> = resources
        .iter()
        .filter_map(|r| match &r.proto {
            Proto::Runtime(runtime) => Some((r.name.clone(), Some(&**runtime))),
            _ => None,
        })
        .collect();
    updates.extend(removed.unwrap_or_default().into_iter().map(|n| (n, None)));
    let watched: Vec<String> = updates
        .iter()
        .filter(|(name, _)| server.runtime.rtds_watchers(name) > 0)
        .map(|(name, _)| name.clone())
        .collect();
    if watched.is_empty() {
        return Ok(());
    }
    let result = server.runtime.apply_rtds(&updates);
    let took = started.elapsed();
    for name in &watched {
        for stats in super::subscriptions_of(server, ResourceType::Runtime, name) {
            match &result {
                Ok(_) => stats.accepted(&version, took),
                Err(_) => stats.rejected(),
            }
        }
    }
    match result {
        Ok(changed) => {
            tracing::info!(version = %version, layers = changed, "RTDS layers updated");
            super::rtds_settled(server, &watched);
            Ok(())
        }
        Err(e) => {
            let every: Vec<String> = server
                .runtime
                .rtds_layers()
                .iter()
                .map(|l| l.resource.clone())
                .collect();
            super::rtds_settled(server, &every);
            Err(e.to_string())
        }
    }
}

/// Counts the outcome of a CDS/LDS update on its subscriptions; an `Err` is the NACK.
fn finish(
    subscriptions: &[super::SubscriptionStats],
    version: &str,
    started: Instant,
    errors: Vec<String>,
    prefix: &str,
) -> Result<(), String> {
    let took = started.elapsed();
    for stats in subscriptions {
        if errors.is_empty() {
            stats.accepted(version, took);
        } else {
            stats.rejected();
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{prefix}{}", errors.join(", ")))
    }
}
