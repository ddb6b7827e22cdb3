//! Where a request comes from: Envoy's "downstream remote address", read from
//! `x-forwarded-for` or from the connection manager's `original_ip_detection_extensions`.
//!
//! Without extensions the connection manager reads `x-forwarded-for` by
//! `use_remote_address` and `xff_num_trusted_hops` ([`crate::http::conn_manager::xff`],
//! which RBAC's `remote_ip` and [`crate::http::conn_manager::internal_address`] read
//! through too). With
//! them (Envoy refuses them beside `use_remote_address` or `xff_num_trusted_hops`), each
//! extension is asked in order until one finds an address or rejects the request:
//!
//! - `envoy.extensions.http.original_ip_detection.xff.v3.XffConfig`: the address
//!   `xff_num_trusted_hops` entries from `x-forwarded-for`'s end; with `xff_trusted_cidrs`,
//!   when the peer is in them, the last entry outside them (the first entry when all are
//!   inside; none when an entry on the way is not an address). The address is trusted
//!   (tested for internal-ness) when `x-forwarded-for` has one entry. Unless
//!   `skip_xff_append` (default true), the extension then appends the peer (the machine's
//!   own address for a loopback peer) whether or not it found an address: measured against
//!   Envoy 1.40, the address is read before the append.
//! - `envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig`:
//!   the first value of `header_name`, trusted when
//!   `allow_extension_to_set_address_as_trusted`; when it is absent or not an address,
//!   `reject_with_status` (a code below 400 or above 511 is 403) answers the request with
//!   an empty body (`rejecting_because_detection_failed`).
//!
//! The address found is what RBAC's `remote_ip`, internal-ness (with
//! `internal_address_config`) and the access log's `%DOWNSTREAM_REMOTE_ADDRESS%` (port 0,
//! as Envoy) see; without one, the peer.

use std::net::IpAddr;

use courier_proto::envoy::config::core::v3::TypedExtensionConfig;
use courier_proto::envoy::extensions::http::original_ip_detection::custom_header::v3::CustomHeaderConfig;
use courier_proto::envoy::extensions::http::original_ip_detection::xff::v3::XffConfig;
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};

use crate::config::ConfigError;
use crate::http::conn_manager::internal_address::Cidr;
use crate::http::conn_manager::xff::{append_peer, parse_entry, with_xff, xff_address};

const XFF_TYPE: &str = "envoy.extensions.http.original_ip_detection.xff.v3.XffConfig";
const CUSTOM_HEADER_TYPE: &str =
    "envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig";

/// One compiled extension.
#[derive(Debug)]
enum Detector {
    /// `XffConfig`.
    Xff {
        hops: u32,
        trusted_cidrs: Box<[Cidr]>,
        append: bool,
    },
    /// `CustomHeaderConfig`.
    CustomHeader {
        name: HeaderName,
        trusted: bool,
        reject: Option<StatusCode>,
    },
}

/// What the extensions found of a request's origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detected {
    /// The client's address, when an extension found it (else the peer is).
    pub address: Option<IpAddr>,
    /// It may be tested for internal-ness.
    pub trusted: bool,
}

/// The compiled `original_ip_detection_extensions` (at least one).
#[derive(Debug)]
pub struct OriginalIpDetection {
    detectors: Box<[Detector]>,
}

impl OriginalIpDetection {
    /// Compiles the extensions (`None` when there are none), refusing them beside
    /// `use_remote_address` or `xff_num_trusted_hops` as Envoy does.
    pub fn compile(
        extensions: &[TypedExtensionConfig],
        use_remote_address: bool,
        xff_num_trusted_hops: u32,
    ) -> Result<Option<OriginalIpDetection>, ConfigError> {
        const PATH: &str = "original_ip_detection_extensions";
        if extensions.is_empty() {
            return Ok(None);
        }
        if use_remote_address {
            return Err(ConfigError::new(
                PATH,
                "Original IP detection extensions and use_remote_address may not be mixed",
            ));
        }
        if xff_num_trusted_hops > 0 {
            return Err(ConfigError::new(
                PATH,
                "Original IP detection extensions and xff_num_trusted_hops may not be mixed",
            ));
        }
        let detectors = extensions
            .iter()
            .enumerate()
            .map(|(i, e)| Detector::compile(e, &format!("{PATH}[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Some(OriginalIpDetection { detectors }))
    }

    /// Asks each extension in turn about a request from `peer` (this machine being
    /// `local_address`): what the first that finds an address found, or the status it
    /// rejects the request with. May append to `x-forwarded-for`.
    pub fn detect(
        &self,
        peer: IpAddr,
        local_address: IpAddr,
        headers: &mut HeaderMap,
    ) -> Result<Detected, StatusCode> {
        for d in self.detectors.iter() {
            match d {
                Detector::Xff {
                    hops,
                    trusted_cidrs,
                    append,
                } => {
                    let found = if trusted_cidrs.is_empty() {
                        xff_address(headers, *hops)
                    } else if trusted_cidrs.iter().any(|c| c.contains(peer)) {
                        last_untrusted(headers, trusted_cidrs)
                    } else {
                        None
                    };
                    if *append {
                        append_peer(headers, peer, local_address);
                    }
                    if let Some((address, trusted)) = found {
                        return Ok(Detected {
                            address: Some(address),
                            trusted,
                        });
                    }
                }
                Detector::CustomHeader {
                    name,
                    trusted,
                    reject,
                } => {
                    let found = headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<IpAddr>().ok());
                    match (found, reject) {
                        (Some(address), _) => {
                            return Ok(Detected {
                                address: Some(address),
                                trusted: *trusted,
                            })
                        }
                        (None, Some(status)) => return Err(*status),
                        (None, None) => {}
                    }
                }
            }
        }
        Ok(Detected::default())
    }
}

/// The last `x-forwarded-for` entry outside `trusted` (the first entry when all are
/// inside), and whether it is the header's only entry; `None` when an entry on the way is
/// not an address (Envoy's `getLastNonTrustedAddressFromXFF`).
fn last_untrusted(headers: &HeaderMap, trusted: &[Cidr]) -> Option<(IpAddr, bool)> {
    with_xff(headers, |xff| {
        let single = !xff.contains(',');
        let mut last = None;
        for entry in xff.rsplit(',') {
            let address = parse_entry(entry)?;
            if !trusted.iter().any(|c| c.contains(address)) {
                return Some((address, single));
            }
            last = Some(address);
        }
        last.map(|a| (a, single))
    })
}

impl Detector {
    /// One extension, by its config's type.
    fn compile(e: &TypedExtensionConfig, path: &str) -> Result<Detector, ConfigError> {
        let Some(any) = &e.typed_config else {
            return Err(ConfigError::new(
                format!("{path}.typed_config"),
                "value is required",
            ));
        };
        let at = format!("{path}.typed_config");
        match courier_proto::type_url::message_name(&any.type_url) {
            XFF_TYPE => {
                let c: XffConfig = courier_proto::unpack_any(any)
                    .map_err(|err| ConfigError::new(&at, err.to_string()))?;
                if c.xff_trusted_cidrs.is_some() && c.xff_num_trusted_hops > 0 {
                    return Err(ConfigError::new(
                        at,
                        "Cannot set both xff_num_trusted_hops and xff_trusted_cidrs",
                    ));
                }
                let trusted_cidrs = c
                    .xff_trusted_cidrs
                    .iter()
                    .flat_map(|t| t.cidrs.iter())
                    .enumerate()
                    .map(|(i, r)| Cidr::compile(r, &format!("{at}.xff_trusted_cidrs.cidrs[{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok(Detector::Xff {
                    hops: c.xff_num_trusted_hops,
                    trusted_cidrs,
                    append: !c.skip_xff_append.as_ref().is_none_or(|b| b.value),
                })
            }
            CUSTOM_HEADER_TYPE => {
                let c: CustomHeaderConfig = courier_proto::unpack_any(any)
                    .map_err(|err| ConfigError::new(&at, err.to_string()))?;
                let name = HeaderName::from_bytes(c.header_name.as_bytes())
                    .ok()
                    .filter(|_| !c.header_name.is_empty())
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("{at}.header_name"),
                            "value does not match regex pattern for HTTP header names",
                        )
                    })?;
                let reject = match c.reject_with_status.as_ref().map(|s| s.code) {
                    None => None,
                    Some(code) => {
                        courier_proto::envoy::r#type::v3::StatusCode::try_from(code)
                            .ok()
                            .filter(|_| code != 0)
                            .ok_or_else(|| {
                                ConfigError::new(
                                    format!("{at}.reject_with_status.code"),
                                    "value must be one of the defined enum values",
                                )
                            })?;
                        Some(
                            u16::try_from(code)
                                .ok()
                                .filter(|c| (400..=511).contains(c))
                                .and_then(|c| StatusCode::from_u16(c).ok())
                                .unwrap_or(StatusCode::FORBIDDEN),
                        )
                    }
                };
                Ok(Detector::CustomHeader {
                    name,
                    trusted: c.allow_extension_to_set_address_as_trusted,
                    reject,
                })
            }
            other => Err(ConfigError::new(
                at,
                format!(
                    "Didn't find a registered implementation for '{}' with type URL: '{other}'",
                    e.name
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_str(xff).expect("value"),
        );
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn trusted_cidrs_skip_trusted_entries() {
        let ten = [Cidr::new(ip("10.0.0.0"), 8).expect("cidr")];
        let last = |x: &str| last_untrusted(&headers(x), &ten);
        assert_eq!(last("1.1.1.1,10.0.0.5"), Some((ip("1.1.1.1"), false)));
        assert_eq!(last("10.0.0.1,10.0.0.2"), Some((ip("10.0.0.1"), false)));
        assert_eq!(last("10.0.0.1"), Some((ip("10.0.0.1"), true)));
        assert_eq!(last("bogus,10.0.0.1"), None);
        assert_eq!(last("1.1.1.1,bogus"), None);
    }
}
