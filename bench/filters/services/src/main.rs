//! The filter benchmark's helpers (`bench/filters/run.sh`):
//!
//! - `filter-services jwt DIR` writes an RSA-2048 key's JWKS (`DIR/jwks.json`) and an RS256
//!   token signed with it (`DIR/token`), for the `jwt_authn` configuration;
//! - `filter-services serve AUTHZ_PORT RLS_PORT` serves, on 127.0.0.1, the external
//!   authorization service (`envoy.service.auth.v3.Authorization`) and the rate limit
//!   service (`envoy.service.ratelimit.v3.RateLimitService`) both proxies call.
//!
//! The services answer as cheaply as tonic lets them, so that what is measured is the
//! proxy's side of the call. Their only decisions are what the script's checks need: a
//! path under `/deny` is denied (403), a descriptor entry whose value starts with `over`
//! is over the limit (429); everything else is allowed.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair};
use base64::Engine;
use courier_proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use courier_proto::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use courier_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use courier_proto::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use courier_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use courier_proto::google::rpc::Status;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["jwt", dir] => jwt(dir),
        ["serve", authz, rls] => serve(authz, rls),
        _ => bail!("usage: filter-services jwt DIR | serve AUTHZ_PORT RLS_PORT"),
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A fresh key's JWKS and a token it signed, valid for a year.
fn jwt(dir: &str) -> anyhow::Result<()> {
    let key = RsaKeyPair::generate(KeySize::Rsa2048).context("generating the RSA key")?;
    let (n, e) = rsa_components(key.public_key().as_ref()).context("reading the public key")?;
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"bench","alg":"RS256","use":"sig","n":"{}","e":"{}"}}]}}"#,
        b64(n),
        b64(e)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let header = r#"{"alg":"RS256","typ":"JWT","kid":"bench"}"#;
    let payload = format!(
        r#"{{"iss":"https://bench.courier","sub":"bench-user","aud":"bench","iat":{now},"exp":{}}}"#,
        now + 365 * 86400
    );
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signed.as_bytes(),
        &mut sig,
    )
    .context("signing the token")?;
    std::fs::write(format!("{dir}/jwks.json"), jwks)?;
    std::fs::write(format!("{dir}/token"), format!("{signed}.{}", b64(&sig)))?;
    Ok(())
}

/// `n` and `e` of a PKCS#1 `RSAPublicKey` (`SEQUENCE { INTEGER, INTEGER }`), without their
/// sign bytes.
fn rsa_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    // The content range of the DER element at `at`.
    fn element(der: &[u8], at: usize) -> Option<(usize, usize)> {
        let first = *der.get(at + 1)? as usize;
        let (len, start) = if first < 0x80 {
            (first, at + 2)
        } else {
            let n = first & 0x7f;
            let len = der
                .get(at + 2..at + 2 + n)?
                .iter()
                .fold(0, |l, b| l << 8 | *b as usize);
            (len, at + 2 + n)
        };
        (start + len <= der.len()).then_some((start, start + len))
    }
    let (seq, _) = element(der, 0)?;
    let (n0, n1) = element(der, seq)?;
    let (e0, e1) = element(der, n1)?;
    let unsigned = |b: &'_ [u8]| -> usize { b.iter().take_while(|x| **x == 0).count() };
    Some((
        &der[n0 + unsigned(&der[n0..n1])..n1],
        &der[e0 + unsigned(&der[e0..e1])..e1],
    ))
}

struct Authz;

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let path = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| h.path.as_str())
            .unwrap_or_default();
        // PERMISSION_DENIED without an HTTP response: the proxy answers 403.
        let code = if path.starts_with("/deny") { 7 } else { 0 };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status {
                code,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

struct Rls;

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let over = request
            .get_ref()
            .descriptors
            .iter()
            .flat_map(|d| &d.entries)
            .any(|e| e.value.starts_with("over"));
        let code = if over { Code::OverLimit } else { Code::Ok };
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: code as i32,
            ..Default::default()
        }))
    }
}

fn serve(authz: &str, rls: &str) -> anyhow::Result<()> {
    let addr = |port: &str| -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?)))
    };
    let (authz, rls) = (addr(authz)?, addr(rls)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let a = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Authz))
            .serve(authz);
        let r = tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(Rls))
            .serve(rls);
        tokio::try_join!(a, r)?;
        anyhow::Ok(())
    })
}
