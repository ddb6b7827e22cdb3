//! Fuzzes the basic auth filter's parsers: a request's `Basic` credential (Envoy's base64
//! without padding, split at the first `:`) checked against users, and htpasswd texts (an
//! input starting with `#!htpasswd\n`: what `users` or a per-route config holds). Nothing
//! may panic; a credential read back from its own encoding is the same credential, and a
//! user's name never holds the `:` that ends it.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use courier::filters::http::basic_auth::credentials;
use courier::filters::http::basic_auth::htpasswd::Users;
use libfuzzer_sys::fuzz_target;

/// Two users whose password is `pw`.
fn users() -> &'static Users {
    static U: OnceLock<Users> = OnceLock::new();
    U.get_or_init(|| {
        Users::parse(b"alice:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=\n# a comment\nbob:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=\n")
            .expect("users")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#!htpasswd\n") {
        if let Ok(parsed) = Users::parse(text) {
            assert!(parsed.len() <= text.split(|&b| b == b'\n').count());
            let _ = parsed.check(b"alice", b"pw");
        }
        return;
    }
    let Ok(cred) = credentials::parse(data) else {
        return;
    };
    assert!(!cred.name().contains(&b':'), "{cred:?}");
    let mut again = b"Basic ".to_vec();
    let mut joined = cred.name().to_vec();
    joined.push(b':');
    joined.extend_from_slice(cred.password());
    again.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(&joined)
            .as_bytes(),
    );
    assert_eq!(credentials::parse(&again).as_ref(), Ok(&cred));
    let _ = users().check(cred.name(), cred.password());
});
