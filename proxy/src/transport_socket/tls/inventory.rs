//! The certificates live TLS contexts hold, as Envoy reports them: the admin's `/certs`
//! (`envoy.admin.v3.Certificates`: per context its trusted CA and the leaf of each of its
//! certificates) and the gauge `server.days_until_first_cert_expiring`. Contexts are
//! compiled on the main thread and register here; workers never look.

use std::cell::RefCell;
use std::sync::Weak;
use std::time::{SystemTime, UNIX_EPOCH};

use courier_proto::envoy::admin::v3::{
    subject_alternate_name::Name, Certificate, CertificateDetails, Certificates,
    SubjectAlternateName,
};
use courier_proto::google::protobuf::Timestamp;
use rustls_pki_types::CertificateDer;

/// One certificate a context holds, and where it came from (`<inline>` or the file).
#[derive(Debug, Clone)]
pub struct CertRecord {
    /// The `DataSource`'s file, or `<inline>`.
    pub path: String,
    /// The certificate.
    pub der: CertificateDer<'static>,
}

/// What one context holds.
#[derive(Debug, Clone, Default)]
pub struct ContextCerts {
    /// The first trusted CA certificate of its validation context.
    pub ca: Option<CertRecord>,
    /// The leaf of each of its certificates.
    pub chain: Vec<CertRecord>,
    /// When the first of them expires (Unix seconds), read once when the context is
    /// built: the gauge is refreshed on every admin request.
    expires: Option<i64>,
}

impl ContextCerts {
    /// The records of a built context.
    pub fn new(ca: Option<CertRecord>, chain: Vec<CertRecord>) -> ContextCerts {
        let expires = ca
            .iter()
            .chain(chain.iter())
            .filter_map(|r| {
                let (_, cert) = x509_parser::parse_x509_certificate(&r.der).ok()?;
                Some(cert.validity().not_after.timestamp())
            })
            .min();
        ContextCerts { ca, chain, expires }
    }

    /// When the first of its certificates expires (Unix seconds).
    pub fn expires(&self) -> Option<i64> {
        self.expires
    }
}

/// A compiled context that can say what it holds (its current build).
pub trait HoldsCertificates {
    /// The certificates of its current build.
    fn certificates(&self) -> ContextCerts;
    /// When the first certificate of its current build expires (Unix seconds).
    fn expires(&self) -> Option<i64>;
}

thread_local! {
    static CONTEXTS: RefCell<Vec<Weak<dyn HoldsCertificates + Send + Sync>>> =
        const { RefCell::new(Vec::new()) };
}

/// Lists `context` while something holds it.
pub fn register(context: Weak<dyn HoldsCertificates + Send + Sync>) {
    CONTEXTS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|w| w.strong_count() > 0);
        c.push(context);
    });
}

fn live() -> Vec<ContextCerts> {
    CONTEXTS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|w| w.strong_count() > 0);
        c.iter()
            .filter_map(|w| w.upgrade())
            .map(|ctx| ctx.certificates())
            .collect()
    })
}

/// `/certs`: every live context's certificates at `now`.
pub fn report(now: SystemTime) -> Certificates {
    Certificates {
        certificates: live()
            .iter()
            .map(|ctx| Certificate {
                ca_cert: ctx.ca.iter().filter_map(|r| details(r, now)).collect(),
                cert_chain: ctx.chain.iter().filter_map(|r| details(r, now)).collect(),
            })
            .collect(),
    }
}

/// `server.days_until_first_cert_expiring`: the fewest days any live context's
/// certificate has left (`u32::MAX` without any, as Envoy).
pub fn days_until_first_cert_expiring(now: SystemTime) -> u64 {
    let first = CONTEXTS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|w| w.strong_count() > 0);
        c.iter().filter_map(|w| w.upgrade()?.expires()).min()
    });
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    first.map_or(u64::from(u32::MAX), |t| days_left(t, now))
}

/// Whole days from `now` to `not_after` (0 once past), as Envoy counts them.
fn days_left(not_after: i64, now: i64) -> u64 {
    u64::try_from((not_after - now).max(0) / 86_400).unwrap_or(0)
}

fn details(record: &CertRecord, now: SystemTime) -> Option<CertificateDetails> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(&record.der).ok()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let subject_alt_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| {
                    let name = match g {
                        GeneralName::DNSName(d) => Name::Dns(d.to_string()),
                        GeneralName::URI(u) => Name::Uri(u.to_string()),
                        GeneralName::IPAddress(b) => {
                            Name::IpAddress(super::certificates::ip_string(b)?)
                        }
                        _ => return None,
                    };
                    Some(SubjectAlternateName { name: Some(name) })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(CertificateDetails {
        path: record.path.clone(),
        serial_number: serial(cert.raw_serial()),
        subject_alt_names,
        days_until_expiration: days_left(not_after, now),
        valid_from: Some(Timestamp {
            seconds: not_before,
            nanos: 0,
        }),
        expiration_time: Some(Timestamp {
            seconds: not_after,
            nanos: 0,
        }),
        ocsp_details: None,
    })
}

/// The serial number in lower-case hex without leading zero bytes, as Envoy prints it.
fn serial(raw: &[u8]) -> String {
    let trimmed = match raw.iter().position(|&b| b != 0) {
        Some(i) => &raw[i..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}
