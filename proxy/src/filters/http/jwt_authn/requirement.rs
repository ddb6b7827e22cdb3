//! Requirements (`JwtRequirement`) compiled to a tree and checked against a request, as
//! Envoy's verifiers and authenticator check them: `provider_name` and
//! `provider_and_audiences` need every token their provider finds to be good;
//! `requires_any` is the first child to pass, else the last child's failure;
//! `requires_all` the first failure; `allow_missing` and `allow_missing_or_failed` look
//! at the tokens of the providers around them (in a `requires_any`, its siblings').
//! A check is synchronous: a token whose provider's remote key set this worker does not
//! have yet leaves the check undecided ([`Check::fetch`]), and the connection manager
//! runs it again, from the start, once it has fetched the set.

use std::sync::Arc;

use courier_proto::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use http::{HeaderMap, HeaderValue};

use super::extract::{without_param, Extractor, Place, Token};
use super::jwks::Jwks;
use super::jwt::Jwt;
use super::provider::{Audiences, KeySource, Provider, RemoteJwks};
use super::status::Status;
use crate::config::ConfigError;

/// A compiled requirement.
pub enum Requirement {
    /// `provider_name` or `provider_and_audiences` (`audiences` replacing the
    /// provider's).
    Provider {
        provider: usize,
        audiences: Option<Audiences>,
        extractor: Extractor,
    },
    RequiresAny(Vec<Requirement>),
    RequiresAll(Vec<Requirement>),
    /// `allow_missing`, with the extractor of the providers around it.
    AllowMissing(Extractor),
    /// `allow_missing_or_failed`, likewise.
    AllowMissingOrFailed(Extractor),
    /// No requirement set: anything goes.
    AllowAll,
}

/// What a check reads and changes of a request.
pub struct Check<'r> {
    pub headers: &'r mut HeaderMap,
    /// `:path` with its query; rewritten when a parameter's token is not forwarded.
    pub path: String,
    pub path_changed: bool,
    /// Seconds since the epoch.
    pub now: u64,
    /// What this worker has of a remote key set, for this request.
    pub remote: &'r dyn Fn(&RemoteJwks) -> Fetched,
    /// A remote key set a token needs that [`Check::remote`] does not have yet: the
    /// check's outcome stands for nothing until it is fetched.
    pub fetch: Option<Arc<RemoteJwks>>,
    /// Tokens looked up in their provider's JWT cache (counted once the check is
    /// decided).
    pub cache_misses: u64,
}

/// What a worker has of a provider's remote key set.
pub enum Fetched {
    /// The set, fetched within its `cache_duration` (or for this request).
    Keys(Arc<Jwks>),
    /// This request's fetch failed.
    Failed,
    /// Not fetched (or expired): to fetch.
    NotYet,
}

fn provider_index(providers: &[Provider], name: &str, path: &str) -> Result<usize, ConfigError> {
    providers
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| {
            ConfigError::new(
                path,
                format!("Required provider ['{name}'] is not configured."),
            )
        })
}

impl Requirement {
    /// Compiles `r` at `path`; `around`: the providers an `allow_missing(_or_failed)`
    /// extracts for (its `requires_any` siblings').
    pub fn compile(
        r: &pb::JwtRequirement,
        providers: &[Provider],
        around: &[usize],
        path: &str,
    ) -> Result<Requirement, ConfigError> {
        use pb::jwt_requirement::RequiresType as T;
        // At the top (or in `requires_all`), Envoy 1.40 extracts for every provider
        // (measured).
        let extractor = || match around {
            [] => Extractor::new(providers),
            some => Extractor::new(some.iter().map(|&i| &providers[i])),
        };
        Ok(match &r.requires_type {
            None => Requirement::AllowAll,
            Some(T::ProviderName(name)) => {
                let provider = provider_index(providers, name, &format!("{path}.provider_name"))?;
                Requirement::Provider {
                    provider,
                    audiences: None,
                    extractor: Extractor::new([&providers[provider]]),
                }
            }
            Some(T::ProviderAndAudiences(pa)) => {
                let at = format!("{path}.provider_and_audiences.provider_name");
                let provider = provider_index(providers, &pa.provider_name, &at)?;
                Requirement::Provider {
                    provider,
                    audiences: (!pa.audiences.is_empty()).then(|| Audiences::new(&pa.audiences)),
                    extractor: Extractor::new([&providers[provider]]),
                }
            }
            Some(T::RequiresAny(list)) => {
                let at = format!("{path}.requires_any.requirements");
                if list.requirements.len() < 2 {
                    return Err(ConfigError::new(
                        at,
                        "value must contain at least 2 item(s)",
                    ));
                }
                let mut children = Vec::new();
                let mut used = Vec::new();
                // Envoy checks one bypass (`allow_missing_or_failed` over `allow_missing`)
                // last, with the extractor of the other children's providers.
                let mut bypass: Option<(usize, &pb::JwtRequirement)> = None;
                for (i, child) in list.requirements.iter().enumerate() {
                    match &child.requires_type {
                        Some(T::ProviderName(n)) => used.push(n.as_str()),
                        Some(T::ProviderAndAudiences(pa)) => used.push(pa.provider_name.as_str()),
                        Some(T::AllowMissingOrFailed(_)) => {
                            bypass = Some((i, child));
                            continue;
                        }
                        Some(T::AllowMissing(_)) => {
                            if !matches!(
                                bypass,
                                Some((
                                    _,
                                    pb::JwtRequirement {
                                        requires_type: Some(T::AllowMissingOrFailed(_))
                                    }
                                ))
                            ) {
                                bypass = Some((i, child));
                            }
                            continue;
                        }
                        _ => {}
                    }
                    children.push(Requirement::compile(
                        child,
                        providers,
                        &[],
                        &format!("{at}[{i}]"),
                    )?);
                }
                if let Some((i, child)) = bypass {
                    let at = format!("{at}[{i}]");
                    let used = used
                        .iter()
                        .map(|n| provider_index(providers, n, &at))
                        .collect::<Result<Vec<_>, _>>()?;
                    children.push(Requirement::compile(child, providers, &used, &at)?);
                }
                Requirement::RequiresAny(children)
            }
            Some(T::RequiresAll(list)) => {
                let at = format!("{path}.requires_all.requirements");
                if list.requirements.len() < 2 {
                    return Err(ConfigError::new(
                        at,
                        "value must contain at least 2 item(s)",
                    ));
                }
                Requirement::RequiresAll(
                    list.requirements
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            Requirement::compile(c, providers, &[], &format!("{at}[{i}]"))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            Some(T::AllowMissing(_)) => Requirement::AllowMissing(extractor()),
            Some(T::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed(extractor()),
            Some(T::ExtractOnlyWithoutValidation(_)) => {
                return Err(ConfigError::unsupported(format!(
                    "{path}.extract_only_without_validation"
                )))
            }
        })
    }

    /// Checks a request.
    pub fn verify(&self, providers: &[Provider], cx: &mut Check<'_>) -> Result<(), Status> {
        match self {
            Requirement::AllowAll => Ok(()),
            Requirement::Provider {
                provider,
                audiences,
                extractor,
            } => {
                let who = Who {
                    provider: Some(*provider),
                    audiences: audiences.as_ref(),
                    allow_failed: false,
                    allow_missing: false,
                };
                authenticate(extractor, who, providers, cx)
            }
            Requirement::AllowMissing(extractor) => {
                let who = Who {
                    provider: None,
                    audiences: None,
                    allow_failed: false,
                    allow_missing: true,
                };
                authenticate(extractor, who, providers, cx)
            }
            Requirement::AllowMissingOrFailed(extractor) => {
                let who = Who {
                    provider: None,
                    audiences: None,
                    allow_failed: true,
                    allow_missing: true,
                };
                authenticate(extractor, who, providers, cx)
            }
            Requirement::RequiresAny(children) => {
                // As Envoy 1.40 (measured): a failure other than a missing token is what
                // the group reports, over the missing ones.
                let mut failure = Status::JwtMissed;
                for c in children {
                    match c.verify(providers, cx) {
                        Ok(()) => return Ok(()),
                        Err(Status::JwtMissed) => {}
                        Err(s) => failure = s,
                    }
                }
                Err(failure)
            }
            Requirement::RequiresAll(children) => {
                children.iter().try_for_each(|c| c.verify(providers, cx))
            }
        }
    }
}

/// Whose tokens an authentication checks, and what it forgives.
struct Who<'a> {
    /// `None`: a token's provider is found by its issuer.
    provider: Option<usize>,
    audiences: Option<&'a Audiences>,
    allow_failed: bool,
    allow_missing: bool,
}

/// Envoy's authenticator: the tokens from last to first; unless failures are forgiven
/// every one must be good, else the last one checked decides.
fn authenticate(
    extractor: &Extractor,
    who: Who<'_>,
    providers: &[Provider],
    cx: &mut Check<'_>,
) -> Result<(), Status> {
    extractor.sanitize(cx.headers);
    let mut tokens = extractor.extract(cx.headers, &cx.path);
    let mut status = Err(Status::JwtMissed);
    while let Some(t) = tokens.pop() {
        status = verify_token(&t, &who, providers, cx);
        if status.is_err() && !who.allow_failed && !who.allow_missing {
            break;
        }
    }
    match status {
        _ if who.allow_failed => Ok(()),
        Err(Status::JwtMissed) if who.allow_missing => Ok(()),
        s => s,
    }
}

/// One token checked; a good one leaves its marks on the request.
fn verify_token(
    t: &Token<'_>,
    who: &Who<'_>,
    providers: &[Provider],
    cx: &mut Check<'_>,
) -> Result<(), Status> {
    if who.provider.is_some() {
        // Envoy looks the token up in its provider's JWT cache, which Courier does not
        // keep (`jwt_cache_config` is refused): every lookup misses.
        cx.cache_misses += 1;
    }
    let jwt = Jwt::parse(&t.value)?;
    if !t.issuers.allows(&jwt.iss) {
        return Err(Status::JwtUnknownIssuer);
    }
    let p = match who.provider {
        Some(i) => &providers[i],
        None => providers
            .iter()
            .find(|p| p.issuer == jwt.iss)
            .or_else(|| providers.iter().find(|p| p.issuer.is_empty()))
            .ok_or(Status::JwtUnknownIssuer)?,
    };
    jwt.check_time(cx.now, p.clock_skew)?;
    if !who.audiences.unwrap_or(&p.audiences).allows(&jwt.audiences) {
        return Err(Status::JwtAudienceNotAllowed);
    }
    match &p.keys {
        KeySource::Local(jwks) => jwks.as_ref().ok_or(Status::JwksNoValidKeys)?.verify(&jwt)?,
        KeySource::Remote(r) => match (cx.remote)(r) {
            Fetched::Keys(jwks) => jwks.verify(&jwt)?,
            Fetched::Failed => return Err(Status::JwksFetchFail),
            Fetched::NotYet => {
                cx.fetch.get_or_insert_with(|| r.clone());
                return Err(Status::JwksFetchFail);
            }
        },
    }
    good_token(p, &jwt, &t.place, cx);
    Ok(())
}

/// What a good token leaves: its payload and claims in headers, and itself removed
/// unless forwarded.
fn good_token(p: &Provider, jwt: &Jwt<'_>, place: &Place, cx: &mut Check<'_>) {
    if let Some(h) = &p.forward_payload_header {
        let mut v = jwt.payload_b64.to_string();
        if p.pad_forward_payload_header {
            while !v.len().is_multiple_of(4) {
                v.push('=');
            }
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            cx.headers.append(h.clone(), v);
        }
    }
    for c in &p.claim_to_headers {
        let value = Provider::claim_value(&jwt.payload, &c.claim)
            .and_then(|v| HeaderValue::from_str(&v).ok());
        if let Some(v) = value {
            cx.headers.append(c.header.clone(), v);
        }
    }
    if !p.forward {
        match place {
            Place::Header(h) => {
                cx.headers.remove(h);
            }
            Place::Param(name) => {
                cx.path = without_param(&cx.path, name);
                cx.path_changed = true;
            }
            Place::Cookie => {}
        }
    }
}
