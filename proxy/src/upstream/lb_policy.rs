//! Load-balancing policies: a cluster's `lb_policy` (with its `lb_config`) or its typed
//! `load_balancing_policy`, compiled into one [`LbPolicy`].
//!
//! As Envoy (`ClusterInfoImpl`): when `load_balancing_policy` is set (or `lb_policy` is
//! `LOAD_BALANCING_POLICY_CONFIG`) it decides alone and `lb_policy`/`lb_config` are
//! ignored; its `policies` are tried in order and the first whose type is registered wins.
//! A type Envoy does not know is skipped as Envoy skips it; a type Envoy knows but Courier
//! does not build is refused by its path rather than skipped, since Envoy would pick it
//! and balance otherwise.

use courier_proto::envoy::config::cluster::v3::{self as pb, cluster};
use courier_proto::envoy::config::core::v3::RuntimeDouble;
use courier_proto::envoy::extensions::load_balancing_policies as lbp;
use courier_proto::google::protobuf::Any;

use super::maglev::{is_prime, DEFAULT_TABLE_SIZE};
use super::ring_hash::{DEFAULT_MAX_RING_SIZE, DEFAULT_MIN_RING_SIZE};
use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};

/// How a cluster picks a host for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbPolicy {
    /// ROUND_ROBIN (weighted).
    RoundRobin,
    /// RANDOM: uniform among the eligible hosts (Envoy ignores weights here).
    Random,
    /// LEAST_REQUEST: the fewest active requests among `choice_count` random hosts (equal
    /// weights), or weights scaled down by active requests (unequal weights).
    LeastRequest(LeastRequest),
    /// RING_HASH: requests with the same hash (a route's `hash_policy`) go to the same host
    /// ([`super::ring_hash`]).
    RingHash {
        /// `minimum_ring_size` (default 1024).
        min_ring_size: u64,
        /// `maximum_ring_size` (default 8M).
        max_ring_size: u64,
    },
    /// MAGLEV: as `RingHash`, with a lookup table ([`super::maglev`]).
    Maglev {
        /// `table_size` (default 65537, a prime).
        table_size: u64,
    },
    /// CLUSTER_PROVIDED: the cluster picks (an `ORIGINAL_DST` cluster).
    ClusterProvided,
}

/// A LEAST_REQUEST policy's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeastRequest {
    /// `choice_count` (default 2, at least 2): hosts sampled per pick when weights are
    /// equal.
    pub choice_count: u32,
    /// `active_request_bias.default_value` (default 1.0): with unequal weights a host's
    /// weight is `weight / (active_requests + 1)^bias`.
    pub active_request_bias: f64,
    /// `selection_method: FULL_SCAN`: every host is compared instead of `choice_count`
    /// random ones.
    pub full_scan: bool,
}

impl Default for LeastRequest {
    fn default() -> Self {
        LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0,
            full_scan: false,
        }
    }
}

/// A cluster's compiled load balancing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balancing {
    /// The policy that picks a host.
    pub policy: LbPolicy,
    /// `locality_weighted_lb_config`: a locality is picked first, by its weight scaled by
    /// the share of its hosts that are eligible, then a host in it by `policy`.
    pub locality_weighted: bool,
    /// `slow_start_config` (round robin and least request).
    pub slow_start: Option<SlowStart>,
}

impl From<LbPolicy> for Balancing {
    fn from(policy: LbPolicy) -> Self {
        Balancing {
            policy,
            locality_weighted: false,
            slow_start: None,
        }
    }
}

/// `slow_start_config` of a round robin or least request policy: a host newer than the
/// window gets `weight * max(min_weight, (age / window)^(1 / aggression))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// `slow_start_window` (positive; unset or zero disables slow start, as Envoy).
    pub window: std::time::Duration,
    /// `aggression.default_value` (default 1.0; not positive or NaN is Envoy's 1.0).
    pub aggression: f64,
    /// `min_weight_percent` as a fraction (default 0.1).
    pub min_weight: f64,
}

impl SlowStart {
    /// The factor scaling the weight of a host `age` old (1 once out of the window).
    pub fn factor(&self, age: std::time::Duration) -> f64 {
        if age >= self.window {
            return 1.0;
        }
        // Envoy counts at least a millisecond of age.
        let time =
            age.max(std::time::Duration::from_millis(1)).as_secs_f64() / self.window.as_secs_f64();
        let ramp = if self.aggression == 1.0 {
            time
        } else {
            time.powf(1.0 / self.aggression)
        };
        ramp.max(self.min_weight)
    }
}

/// A `SlowStartConfig` (legacy or typed: the same fields) at `path`.
fn slow_start(
    window: Option<&courier_proto::google::protobuf::Duration>,
    aggression: Option<&RuntimeDouble>,
    min_weight_percent: Option<f64>,
    path: &str,
) -> Result<Option<SlowStart>, ConfigError> {
    let window = match window {
        Some(d) => crate::config::duration(d, &format!("{path}.slow_start_window"))?,
        None => std::time::Duration::ZERO,
    };
    if window.is_zero() {
        return Ok(None);
    }
    let aggression = match aggression {
        None => 1.0,
        Some(a) if !a.runtime_key.is_empty() => {
            return Err(ConfigError::unsupported(format!(
                "{path}.aggression.runtime_key"
            )))
        }
        Some(a) if a.default_value <= 0.0 || a.default_value.is_nan() => {
            tracing::warn!(
                path,
                value = a.default_value,
                "invalid aggression, using 1.0"
            );
            1.0
        }
        Some(a) => a.default_value,
    };
    let min_weight = match min_weight_percent {
        None => 0.1,
        Some(p) if (0.0..=100.0).contains(&p) => p / 100.0,
        Some(_) => {
            return Err(ConfigError::new(
                format!("{path}.min_weight_percent.value"),
                "value must be inside range [0, 100]",
            ))
        }
    };
    Ok(Some(SlowStart {
        window,
        aggression,
        min_weight,
    }))
}

/// A typed policy's `slow_start_config`.
fn typed_slow_start(
    c: Option<&lbp::common::v3::SlowStartConfig>,
    path: &str,
) -> Result<Option<SlowStart>, ConfigError> {
    match c {
        None => Ok(None),
        Some(c) => slow_start(
            c.slow_start_window.as_ref(),
            c.aggression.as_ref(),
            c.min_weight_percent.as_ref().map(|p| p.value),
            &format!("{path}.slow_start_config"),
        ),
    }
}

/// A legacy `lb_config`'s `slow_start_config`.
fn legacy_slow_start(
    c: Option<&cluster::SlowStartConfig>,
    path: &str,
) -> Result<Option<SlowStart>, ConfigError> {
    match c {
        None => Ok(None),
        Some(c) => slow_start(
            c.slow_start_window.as_ref(),
            c.aggression.as_ref(),
            c.min_weight_percent.as_ref().map(|p| p.value),
            &format!("{path}.slow_start_config"),
        ),
    }
}

/// Builds a policy from a typed config (`Any`) and its path.
type Build = fn(&Any, &str) -> Result<Balancing, ConfigError>;

/// Envoy's error for a cluster-provided policy on a cluster that provides none.
fn none_provided(proto: &pb::Cluster, path: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!(
            "cluster manager: cluster provided LB specified but cluster '{}' did not provide one. Check cluster documentation.",
            proto.name
        ),
    )
}

/// The load-balancing policy extension point: the built-in policies, then the policies
/// Envoy has that Courier refuses (so that they are not skipped as unknown).
static LB_POLICIES: Registry<Build> = Registry {
    point: "load balancing policy",
    factories: &[
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
            name: "envoy.load_balancing_policies.round_robin",
            build: round_robin,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
            name: "envoy.load_balancing_policies.least_request",
            build: least_request,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.random.v3.Random",
            name: "envoy.load_balancing_policies.random",
            build: random,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
            name: "envoy.load_balancing_policies.ring_hash",
            build: ring_hash,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
            name: "envoy.load_balancing_policies.maglev",
            build: maglev,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
            name: "envoy.load_balancing_policies.client_side_weighted_round_robin",
            build: not_built,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided",
            name: "envoy.load_balancing_policies.cluster_provided",
            build: cluster_provided,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.subset.v3.Subset",
            name: "envoy.load_balancing_policies.subset",
            build: not_built,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality",
            name: "envoy.load_balancing_policies.wrr_locality",
            build: not_built,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
            name: "envoy.load_balancing_policies.override_host",
            build: not_built,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst",
            name: "envoy.load_balancing_policies.pick_first",
            build: not_built,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.load_aware_locality.v3.LoadAwareLocality",
            name: "envoy.load_balancing_policies.load_aware_locality",
            build: not_built,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.random_subsetting.v3.RandomSubsetting",
            name: "envoy.load_balancing_policies.random_subsetting",
            build: not_built,
        },
        Factory {
            type_name: "envoy.extensions.load_balancing_policies.dynamic_modules.v3.DynamicModulesLoadBalancerConfig",
            name: "envoy.load_balancing_policies.dynamic_modules",
            build: not_built,
        },
    ],
};

/// The cluster's policy, from `load_balancing_policy` when set, else from `lb_policy`.
/// `original_dst`: the cluster is `ORIGINAL_DST`, the one type that provides its own
/// balancer (and takes no other).
pub fn compile(proto: &pb::Cluster, original_dst: bool) -> Result<Balancing, ConfigError> {
    let typed = proto.load_balancing_policy.is_some()
        || proto.lb_policy == cluster::LbPolicy::LoadBalancingPolicyConfig as i32;
    let balancing = if typed {
        typed_policy(proto)?
    } else {
        legacy_policy(proto, original_dst)?
    };
    match (balancing.policy, original_dst) {
        (LbPolicy::ClusterProvided, false) => Err(none_provided(proto, "load_balancing_policy")),
        (LbPolicy::ClusterProvided, true) | (_, false) => Ok(balancing),
        // Without `lb_policy: CLUSTER_PROVIDED` the cluster refuses itself, with Envoy's
        // message (`original_dst`).
        (_, true) if proto.lb_policy != cluster::LbPolicy::ClusterProvided as i32 => Ok(balancing),
        // The cluster's own balancer picks by each request's destination: a typed policy
        // of another kind would have no hosts to pick from.
        (_, true) => Err(ConfigError::new(
            "load_balancing_policy",
            "only a cluster-provided policy is valid for an ORIGINAL_DST cluster",
        )),
    }
}

fn cluster_provided(any: &Any, path: &str) -> Result<Balancing, ConfigError> {
    let _: lbp::cluster_provided::v3::ClusterProvided = unpack(any, path)?;
    Ok(LbPolicy::ClusterProvided.into())
}

fn typed_policy(proto: &pb::Cluster) -> Result<Balancing, ConfigError> {
    let Some(lbp) = &proto.load_balancing_policy else {
        return Err(ConfigError::new(
            "load_balancing_policy",
            "cluster: field load_balancing_policy need to be set",
        ));
    };
    // Envoy's checks, in its order.
    if proto.lb_subset_config.is_some() {
        return Err(ConfigError::new(
            "lb_subset_config",
            "cluster: load_balancing_policy cannot be combined with lb_subset_config",
        ));
    }
    if let Some(c) = &proto.common_lb_config {
        use cluster::common_lb_config::LocalityConfigSpecifier;
        if c.locality_config_specifier.is_some() || c.consistent_hashing_lb_config.is_some() {
            let field = match c.locality_config_specifier {
                Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => "zone_aware_lb_config",
                Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => {
                    "locality_weighted_lb_config"
                }
                None => "consistent_hashing_lb_config",
            };
            return Err(ConfigError::new(
                format!("common_lb_config.{field}"),
                "cluster: load_balancing_policy cannot be combined with partial fields \
                 (zone_aware_lb_config, locality_weighted_lb_config, \
                 consistent_hashing_lb_config) of common_lb_config",
            ));
        }
    }
    let mut missing = Vec::new();
    for (i, policy) in lbp.policies.iter().enumerate() {
        let path = format!("load_balancing_policy.policies[{i}].typed_extension_config");
        let Some(ext) = &policy.typed_extension_config else {
            missing.push(String::new());
            continue;
        };
        match LB_POLICIES.resolve(ext.typed_config.as_ref(), &ext.name, true, &path)? {
            Some(found) => {
                // Envoy loads a policy named without a config with its defaults.
                let config = found.config.unwrap_or_else(|| Any {
                    type_url: format!("type.googleapis.com/{}", found.factory.type_name),
                    value: Vec::new(),
                });
                return (found.factory.build)(&config, &format!("{path}.typed_config"));
            }
            None => missing.push(ext.name.clone()),
        }
    }
    Err(ConfigError::new(
        "load_balancing_policy",
        format!(
            "cluster: didn't find a registered load balancer factory implementation for \
             cluster: '{}' with names from [{}]",
            proto.name,
            missing.join(", ")
        ),
    ))
}

/// Decodes a typed config of type `T`, refusing a mismatched type at `path`.
fn unpack<T: prost::Message + Default + prost::Name>(
    any: &Any,
    path: &str,
) -> Result<T, ConfigError> {
    courier_proto::unpack_any(any).map_err(|e| ConfigError::new(path, e.to_string()))
}

fn not_built(_: &Any, path: &str) -> Result<Balancing, ConfigError> {
    // The path ends in `.typed_config`; the policy as a whole is what is refused.
    Err(ConfigError::unsupported(
        path.strip_suffix(".typed_config").unwrap_or(path),
    ))
}

/// A typed policy's `locality_lb_config`: whether it asks for locality-weighted
/// balancing. Zone-aware routing needs the bootstrap's `local_cluster_name`, which
/// Courier refuses, so Envoy does no zone routing either and its settings change nothing;
/// except `fail_traffic_on_panic`, which Envoy applies to any cluster in panic (refused).
fn locality_lb_config(
    c: Option<&lbp::common::v3::LocalityLbConfig>,
    path: &str,
) -> Result<bool, ConfigError> {
    use lbp::common::v3::locality_lb_config::LocalityConfigSpecifier;
    match c.and_then(|c| c.locality_config_specifier.as_ref()) {
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => Ok(true),
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(z)) if z.fail_traffic_on_panic => {
            Err(ConfigError::unsupported(format!(
                "{path}.locality_lb_config.zone_aware_lb_config.fail_traffic_on_panic"
            )))
        }
        _ => Ok(false),
    }
}

fn round_robin(any: &Any, path: &str) -> Result<Balancing, ConfigError> {
    let c: lbp::round_robin::v3::RoundRobin = unpack(any, path)?;
    Ok(Balancing {
        policy: LbPolicy::RoundRobin,
        locality_weighted: locality_lb_config(c.locality_lb_config.as_ref(), path)?,
        slow_start: typed_slow_start(c.slow_start_config.as_ref(), path)?,
    })
}

fn random(any: &Any, path: &str) -> Result<Balancing, ConfigError> {
    let c: lbp::random::v3::Random = unpack(any, path)?;
    Ok(Balancing {
        policy: LbPolicy::Random,
        locality_weighted: locality_lb_config(c.locality_lb_config.as_ref(), path)?,
        slow_start: None,
    })
}

fn least_request(any: &Any, path: &str) -> Result<Balancing, ConfigError> {
    use lbp::least_request::v3::least_request::SelectionMethod;
    let c: lbp::least_request::v3::LeastRequest = unpack(any, path)?;
    let slow_start = typed_slow_start(c.slow_start_config.as_ref(), path)?;
    let locality_weighted = locality_lb_config(c.locality_lb_config.as_ref(), path)?;
    // `enable_full_scan` is documented "Unused" and Envoy reads it nowhere.
    let full_scan = match SelectionMethod::try_from(c.selection_method) {
        Ok(SelectionMethod::NChoices) => false,
        Ok(SelectionMethod::FullScan) => true,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.selection_method"),
                "value must be one of the defined enum values",
            ))
        }
    };
    Ok(Balancing {
        policy: LbPolicy::LeastRequest(LeastRequest {
            choice_count: choice_count(c.choice_count.map(|v| v.value), path)?,
            active_request_bias: active_request_bias(c.active_request_bias.as_ref(), path)?,
            full_scan,
        }),
        locality_weighted,
        slow_start,
    })
}

/// `choice_count`, checked as Envoy's proto validation checks it.
fn choice_count(value: Option<u32>, path: &str) -> Result<u32, ConfigError> {
    match value {
        None => Ok(2),
        Some(n) if n >= 2 => Ok(n),
        Some(_) => Err(ConfigError::new(
            format!("{path}.choice_count"),
            "value must be greater than or equal to 2",
        )),
    }
}

/// `active_request_bias`: its default value (Envoy falls back to 1.0, with a warning, for
/// a negative or NaN one). A runtime key is refused: the balancers read their settings once, not per pick.
fn active_request_bias(bias: Option<&RuntimeDouble>, path: &str) -> Result<f64, ConfigError> {
    let Some(bias) = bias else {
        return Ok(1.0);
    };
    if !bias.runtime_key.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.active_request_bias.runtime_key"
        )));
    }
    let value = bias.default_value;
    if value < 0.0 || value.is_nan() {
        tracing::warn!(
            path,
            value,
            "invalid active request bias supplied, using 1.0"
        );
        return Ok(1.0);
    }
    Ok(value)
}

/// Ring sizes checked as Envoy checks them (`prefix` names the message holding them).
fn ring_sizes(min: Option<u64>, max: Option<u64>, prefix: &str) -> Result<LbPolicy, ConfigError> {
    let min_ring_size = min.unwrap_or(DEFAULT_MIN_RING_SIZE);
    let max_ring_size = max.unwrap_or(DEFAULT_MAX_RING_SIZE);
    for (field, value) in [
        ("minimum_ring_size", min_ring_size),
        ("maximum_ring_size", max_ring_size),
    ] {
        if value > DEFAULT_MAX_RING_SIZE {
            return Err(ConfigError::new(
                format!("{prefix}.{field}"),
                format!("value must be less than or equal to {DEFAULT_MAX_RING_SIZE}"),
            ));
        }
    }
    if min_ring_size > max_ring_size {
        return Err(ConfigError::new(
            prefix,
            format!("ring hash: minimum_ring_size ({min_ring_size}) > maximum_ring_size ({max_ring_size})"),
        ));
    }
    Ok(LbPolicy::RingHash {
        min_ring_size,
        max_ring_size,
    })
}

/// A Maglev table size checked as Envoy checks it.
fn table_size(size: Option<u64>, path: &str) -> Result<LbPolicy, ConfigError> {
    let table_size = size.unwrap_or(DEFAULT_TABLE_SIZE);
    if table_size > 5_000_011 {
        return Err(ConfigError::new(
            path,
            "value must be less than or equal to 5000011",
        ));
    }
    if !is_prime(table_size) {
        return Err(ConfigError::new(
            path,
            "The table size of maglev must be prime number",
        ));
    }
    Ok(LbPolicy::Maglev { table_size })
}

/// Refuses the consistent-hashing settings Courier lacks (`prefix` names the message).
fn consistent_hashing(
    use_hostname_for_hashing: bool,
    hash_balance_factor: Option<u32>,
    prefix: &str,
) -> Result<(), ConfigError> {
    if use_hostname_for_hashing {
        return Err(ConfigError::unsupported(format!(
            "{prefix}.use_hostname_for_hashing"
        )));
    }
    if let Some(f) = hash_balance_factor {
        if f < 100 {
            return Err(ConfigError::new(
                format!("{prefix}.hash_balance_factor"),
                "value must be greater than or equal to 100",
            ));
        }
        return Err(ConfigError::unsupported(format!(
            "{prefix}.hash_balance_factor"
        )));
    }
    Ok(())
}

#[allow(deprecated)] // the deprecated fields still act in Envoy
fn ring_hash(any: &Any, path: &str) -> Result<Balancing, ConfigError> {
    use lbp::ring_hash::v3::ring_hash::HashFunction;
    let c: lbp::ring_hash::v3::RingHash = unpack(any, path)?;
    let (use_hostname, balance) = (
        c.use_hostname_for_hashing,
        c.hash_balance_factor.map(|v| v.value),
    );
    if c.hash_function == HashFunction::MurmurHash2 as i32 {
        return Err(ConfigError::unsupported(format!("{path}.hash_function")));
    }
    consistent_hashing(use_hostname, balance, path)?;
    hashing_common(
        c.consistent_hashing_lb_config.as_ref(),
        c.locality_weighted_lb_config.is_some(),
        path,
    )?;
    ring_sizes(
        c.minimum_ring_size.map(|v| v.value),
        c.maximum_ring_size.map(|v| v.value),
        path,
    )
    .map(Balancing::from)
}

/// What ring hash and Maglev share: `consistent_hashing_lb_config`, and the
/// locality weighting Courier does not build for hashing policies.
fn hashing_common(
    ch: Option<&lbp::common::v3::ConsistentHashingLbConfig>,
    locality_weighted: bool,
    path: &str,
) -> Result<(), ConfigError> {
    if let Some(ch) = ch {
        consistent_hashing(
            ch.use_hostname_for_hashing,
            ch.hash_balance_factor.map(|v| v.value),
            &format!("{path}.consistent_hashing_lb_config"),
        )?;
    }
    if locality_weighted {
        return Err(ConfigError::unsupported(format!(
            "{path}.locality_weighted_lb_config"
        )));
    }
    Ok(())
}

fn maglev(any: &Any, path: &str) -> Result<Balancing, ConfigError> {
    let c: lbp::maglev::v3::Maglev = unpack(any, path)?;
    hashing_common(
        c.consistent_hashing_lb_config.as_ref(),
        c.locality_weighted_lb_config.is_some(),
        path,
    )?;
    table_size(c.table_size.map(|v| v.value), &format!("{path}.table_size")).map(Balancing::from)
}

/// `lb_policy` with its `lb_config`. Settings of another policy than the cluster's are
/// ignored, as Envoy ignores them.
fn legacy_policy(proto: &pb::Cluster, original_dst: bool) -> Result<Balancing, ConfigError> {
    let mut slow_start = None;
    let policy = match cluster::LbPolicy::try_from(proto.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => {
            if let Some(cluster::LbConfig::RoundRobinLbConfig(c)) = &proto.lb_config {
                slow_start =
                    legacy_slow_start(c.slow_start_config.as_ref(), "round_robin_lb_config")?;
            }
            LbPolicy::RoundRobin
        }
        Ok(cluster::LbPolicy::Random) => LbPolicy::Random,
        Ok(cluster::LbPolicy::LeastRequest) => {
            let mut lr = LeastRequest::default();
            if let Some(cluster::LbConfig::LeastRequestLbConfig(c)) = &proto.lb_config {
                let path = "least_request_lb_config";
                slow_start = legacy_slow_start(c.slow_start_config.as_ref(), path)?;
                lr.choice_count = choice_count(c.choice_count.map(|v| v.value), path)?;
                lr.active_request_bias = active_request_bias(c.active_request_bias.as_ref(), path)?;
            }
            LbPolicy::LeastRequest(lr)
        }
        Ok(cluster::LbPolicy::RingHash) => {
            use cluster::ring_hash_lb_config::HashFunction;
            let config = match &proto.lb_config {
                Some(cluster::LbConfig::RingHashLbConfig(c)) => Some(c),
                _ => None,
            };
            let policy = ring_sizes(
                config
                    .and_then(|c| c.minimum_ring_size.as_ref())
                    .map(|v| v.value),
                config
                    .and_then(|c| c.maximum_ring_size.as_ref())
                    .map(|v| v.value),
                "ring_hash_lb_config",
            )?;
            if config.is_some_and(|c| c.hash_function == HashFunction::MurmurHash2 as i32) {
                return Err(ConfigError::unsupported(
                    "ring_hash_lb_config.hash_function",
                ));
            }
            legacy_consistent_hashing(proto)?;
            policy
        }
        Ok(cluster::LbPolicy::Maglev) => {
            let size = match &proto.lb_config {
                Some(cluster::LbConfig::MaglevLbConfig(c)) => {
                    c.table_size.as_ref().map(|v| v.value)
                }
                _ => None,
            };
            let policy = table_size(size, "maglev_lb_config.table_size")?;
            legacy_consistent_hashing(proto)?;
            policy
        }
        Ok(cluster::LbPolicy::ClusterProvided) if original_dst => LbPolicy::ClusterProvided,
        Ok(cluster::LbPolicy::ClusterProvided) => return Err(none_provided(proto, "lb_policy")),
        _ => return Err(ConfigError::unsupported("lb_policy")),
    };
    let locality_weighted = legacy_common_lb_config(proto)?;
    if locality_weighted && matches!(policy, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }) {
        // Envoy weighs a hashing policy's hosts by their localities' weights; not built.
        return Err(ConfigError::unsupported(
            "common_lb_config.locality_weighted_lb_config",
        ));
    }
    Ok(Balancing {
        policy,
        locality_weighted,
        slow_start,
    })
}

/// `common_lb_config.consistent_hashing_lb_config` of a hashing `lb_policy`.
fn legacy_consistent_hashing(proto: &pb::Cluster) -> Result<(), ConfigError> {
    match proto
        .common_lb_config
        .as_ref()
        .and_then(|c| c.consistent_hashing_lb_config.as_ref())
    {
        Some(c) => consistent_hashing(
            c.use_hostname_for_hashing,
            c.hash_balance_factor.map(|v| v.value),
            "common_lb_config.consistent_hashing_lb_config",
        ),
        None => Ok(()),
    }
}

/// `common_lb_config`'s locality settings: whether locality-weighted balancing is on
/// (zone-aware settings change nothing without a local cluster, but
/// `fail_traffic_on_panic`, refused).
fn legacy_common_lb_config(proto: &pb::Cluster) -> Result<bool, ConfigError> {
    use cluster::common_lb_config::LocalityConfigSpecifier;
    match proto
        .common_lb_config
        .as_ref()
        .and_then(|c| c.locality_config_specifier.as_ref())
    {
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => Ok(true),
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(z)) if z.fail_traffic_on_panic => Err(
            ConfigError::unsupported("common_lb_config.zone_aware_lb_config.fail_traffic_on_panic"),
        ),
        _ => Ok(false),
    }
}
