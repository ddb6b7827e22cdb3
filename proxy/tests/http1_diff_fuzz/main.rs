//! Differential fuzzing of HTTP/1.1 against Envoy 1.40 (`envoy` on PATH; skipped without
//! it). Courier and Envoy run the same bootstrap, each in front of a recording upstream;
//! every case — a client's request(s), or an upstream's response — goes through both, and
//! the fuzzer reports where Courier forwards or passes on what Envoy refuses, refuses what
//! Envoy forwards, or where the upstream (or the client) sees a different request line,
//! authority, fields, framing or body.
//!
//! Every run replays `regressions.txt` (each disagreement found so far, now fixed or listed
//! in [`known_difference`]) and then random cases for `COURIER_DIFF_FUZZ_SECONDS` (60 by
//! default), from a fixed seed unless `COURIER_DIFF_FUZZ_SEED` names one (`random`: a new
//! one, printed so that the run can be repeated). Disagreements are printed by class and
//! written, one case per line, to `http1-diff-fuzz-found.txt` in Cargo's test temporary
//! folder, ready to be added to `regressions.txt`.
//!
//! A longer run: `COURIER_DIFF_FUZZ_SECONDS=1800 COURIER_DIFF_FUZZ_SEED=random cargo test
//! -p courier --test http1_diff_fuzz -- --nocapture`. `COURIER_DIFF_FUZZ_PROBE=<file>`
//! shows what both proxies do with the cases in a file (a line each, as in
//! `regressions.txt`).

#[path = "../http_support/mod.rs"]
mod http_support;

mod case;
mod generate;
mod message;
mod observe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use case::{Case, Side};
use http_support::{all_to, bootstrap, cluster, Courier};
use message::{Framing, Message};
use observe::{exchange, ClientSaw, Recorder};

/// A proxy with its recording upstream.
struct Proxy {
    process: Courier,
    listener: SocketAddr,
    recorder: Recorder,
}

impl Proxy {
    fn start(envoy: bool) -> Option<Proxy> {
        let recorder = Recorder::start(envoy);
        let config = bootstrap(
            &all_to("up"),
            "          use_remote_address: true\n",
            &cluster("up", &[recorder.addr], ""),
        );
        let process = if envoy {
            Courier::start_envoy(&config)?
        } else {
            Courier::start(&config)
        };
        Some(Proxy {
            listener: process.listener,
            process,
            recorder,
        })
    }

    fn observe(&self, case: &Case) -> Observation {
        self.recorder.reset(match case.side {
            Side::Request => None,
            Side::Response { .. } => Some(case.bytes.clone()),
        });
        let errors_before = self.process.stat(PROTOCOL_ERRORS);
        let client = exchange(self.listener, &case.client_bytes(), &case.client_heads());
        let upstream = self.recorder.settle();
        let protocol_errors = self.process.stat(PROTOCOL_ERRORS) - errors_before;
        Observation {
            client,
            upstream,
            protocol_errors,
        }
    }
}

/// What one proxy did with a case.
#[derive(Debug)]
struct Observation {
    client: ClientSaw,
    /// The requests forwarded whole; `None` when one was still half-way at the deadline.
    upstream: Option<Vec<Message>>,
    /// How many downstream connections the case made count as protocol errors.
    protocol_errors: u64,
}

/// The counter Envoy adds a refused request head to.
const PROTOCOL_ERRORS: &str = "http.ingress.downstream_cx_protocol_error";

/// Fields whose values differ between any two runs (ids, timings), left out of comparisons.
const VOLATILE: &[&str] = &[
    "x-request-id",
    "x-envoy-expected-rq-timeout-ms",
    "date",
    "x-envoy-upstream-service-time",
    "server",
];

/// A message as compared: start line, fields sorted by name (values of one name in order),
/// framing, body, trailers.
fn canonical(m: &Message) -> String {
    let mut fields: Vec<&(String, String)> = m
        .headers
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    let framing = match m.framing {
        Framing::Length(n) => format!("length {n}"),
        Framing::Chunked => "chunked".into(),
        Framing::None => "none".into(),
        Framing::UntilClose => "until close".into(),
    };
    format!(
        "{} | {:?} | {framing} | {:?} | trailers {:?}",
        m.start,
        fields,
        String::from_utf8_lossy(&m.body),
        m.trailers
    )
}

fn statuses(c: &ClientSaw) -> Vec<u16> {
    c.responses.iter().map(Message::status).collect()
}

/// A request line as Courier forwards it: `<`, `>` and a backtick in the path, and `"`,
/// `<` and `>` in the query, percent-encoded (a documented difference: Envoy forwards them
/// raw, the `http` crate's URI refuses them).
fn escaped_as_courier(start: &str) -> String {
    let mut out = String::with_capacity(start.len());
    let mut in_query = false;
    for c in start.chars() {
        in_query |= c == '?';
        match c {
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            '`' if !in_query => out.push_str("%60"),
            '"' if in_query => out.push_str("%22"),
            c => out.push(c),
        }
    }
    out
}

/// How Courier's handling of a case compares with Envoy's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    /// Courier forwards or passes on what Envoy refuses.
    Looser(String),
    /// Courier refuses what Envoy forwards or passes on.
    Stricter(String),
    /// Both forward or refuse, differently.
    Differs(String),
    /// Both refuse a request, with different statuses: reported, not a failure (the order
    /// in which a request's several faults are found differs between the two codecs).
    Reply(String),
}

fn compare(case: &Case, e: &Observation, c: &Observation) -> Option<Verdict> {
    let (Some(eu), Some(cu)) = (&e.upstream, &c.upstream) else {
        return (e.upstream.is_some() != c.upstream.is_some()).then(|| {
            Verdict::Differs(format!(
                "a request stays half-forwarded by {}",
                if e.upstream.is_none() {
                    "Envoy"
                } else {
                    "Courier"
                }
            ))
        });
    };
    let (es, cs) = (statuses(&e.client), statuses(&c.client));
    if case.side == Side::Request {
        if cu.len() > eu.len() {
            return Some(Verdict::Looser(format!(
                "Courier forwarded {} request(s), Envoy {} (Envoy answered {es:?})",
                cu.len(),
                eu.len()
            )));
        }
        if cu.len() < eu.len() {
            return Some(Verdict::Stricter(format!(
                "Courier forwarded {} request(s), Envoy {} (Courier answered {cs:?})",
                cu.len(),
                eu.len()
            )));
        }
        for (em, cm) in eu.iter().zip(cu) {
            let mut em = em.clone();
            em.start = escaped_as_courier(&em.start);
            let (ec, cc) = (canonical(&em), canonical(cm));
            if ec != cc {
                return Some(Verdict::Differs(format!(
                    "upstream saw\n    Envoy:   {ec}\n    Courier: {cc}"
                )));
            }
        }
    }
    let refused = |s: &[u16]| s.last().is_none_or(|&x| x == 502 || x == 503);
    if case.side == Side::Request && es != cs {
        // The same requests forwarded, and the answers differ only where both refuse one
        // (Envoy may also send `100 Continue` before a fault Courier finds first).
        let finals = |s: &[u16]| s.iter().copied().filter(|&x| x != 100).collect::<Vec<_>>();
        let (ef, cf) = (finals(&es), finals(&cs));
        // A missing answer is a refusal too (the connection closed without one).
        let both_refuse = (0..ef.len().max(cf.len())).all(|i| {
            let (e, c) = (
                ef.get(i).copied().unwrap_or(400),
                cf.get(i).copied().unwrap_or(400),
            );
            e == c || (e >= 400 && c >= 400)
        });
        if both_refuse {
            return Some(Verdict::Reply(format!(
                "Envoy answered {es:?}, Courier {cs:?}"
            )));
        }
    }
    if es != cs {
        return Some(if refused(&es) && !refused(&cs) {
            Verdict::Looser(format!("Envoy answered {es:?}, Courier {cs:?}"))
        } else if refused(&cs) && !refused(&es) {
            Verdict::Stricter(format!("Envoy answered {es:?}, Courier {cs:?}"))
        } else {
            Verdict::Differs(format!("Envoy answered {es:?}, Courier {cs:?}"))
        });
    }
    if matches!(case.side, Side::Response { .. }) {
        for (em, cm) in e.client.responses.iter().zip(&c.client.responses) {
            let (ec, cc) = (canonical(em), canonical(cm));
            if ec != cc {
                return Some(Verdict::Differs(format!(
                    "client saw\n    Envoy:   {ec}\n    Courier: {cc}"
                )));
            }
        }
    }
    if e.protocol_errors != c.protocol_errors {
        return Some(Verdict::Differs(format!(
            "{PROTOCOL_ERRORS}: Envoy +{}, Courier +{}",
            e.protocol_errors, c.protocol_errors
        )));
    }
    if e.client.stalled != c.client.stalled {
        return Some(Verdict::Differs(format!(
            "stalled: Envoy {}, Courier {}",
            e.client.stalled, c.client.stalled
        )));
    }
    None
}

/// The deliberate differences (integration-tests/DIFFERENCES.md), by what marks their
/// cases; `None` when a disagreement is not one of them.
fn known_difference(case: &Case, verdict: &Verdict) -> Option<&'static str> {
    let bytes = &case.bytes;
    // A CR that does not end a line (anywhere: a pipelined request's head counts too).
    let lone_cr = bytes.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n');
    match (case.side, verdict) {
        // RFC 9112 §2.3: a major version other than 1 is not HTTP/1; Courier reads only
        // 1.0 and 1.1 responses (Envoy passes `HTTP/1.2` and `HTTP/2.0` ones on, or closes).
        (Side::Response { .. }, Verdict::Stricter(_) | Verdict::Differs(_))
            if !(bytes.starts_with(b"HTTP/1.1 ") || bytes.starts_with(b"HTTP/1.0 ")) =>
        {
            Some("upstream status line with another HTTP version")
        }
        // RFC 9110 §15: a status code is three digits (Envoy reads `0200` as 200 and
        // drops a two-digit one with the connection).
        (Side::Response { .. }, Verdict::Stricter(_) | Verdict::Differs(_))
            if !bytes.get(9..13).is_some_and(|s| {
                s[..3].iter().all(u8::is_ascii_digit) && matches!(s[3], b' ' | b'\r')
            }) =>
        {
            Some("upstream status code not three digits")
        }
        // An unsolicited `101` (the request asked for no upgrade): Courier answers 502,
        // Envoy passes it on and the client is left with a switched connection.
        (Side::Response { .. }, Verdict::Stricter(_)) if bytes.get(9..12) == Some(b"101") => {
            Some("unsolicited 101 from the upstream")
        }
        // RFC 9112 §2.2: a bare CR in a head is invalid; Courier refuses it (httparse),
        // Envoy drops it from the value. Never an excuse for forwarding more.
        (_, Verdict::Stricter(_) | Verdict::Differs(_)) if lone_cr => {
            Some("bare CR in a message head")
        }
        // RFC 9112 §5.2: a server may refuse an obs-fold; Courier does (`400`, a
        // request-smuggling route, counted as a protocol error), Envoy unfolds it. From an
        // upstream, Courier's `502` against Envoy's unfolding.
        (_, Verdict::Stricter(_) | Verdict::Differs(_) | Verdict::Reply(_))
            if bytes.windows(3).any(|w| w == b"\r\n " || w == b"\r\n\t") =>
        {
            Some("obs-fold")
        }
        // A `Connection` nominating `content-length`: Envoy removes the length and sends
        // the body chunked, Courier keeps it (the body's framing is not the client's to
        // strip); the upstream gets the same body either way.
        (Side::Request, Verdict::Differs(d))
            if d.starts_with("upstream saw") && nominates_content_length(bytes) =>
        {
            Some("connection nominating content-length")
        }
        // RFC 9112 §3: one space between the request line's parts; Courier refuses a tab
        // or a second space there (`400`), Envoy takes them as one separator.
        (Side::Request, Verdict::Stricter(_) | Verdict::Differs(_))
            if request_line_whitespace(bytes) =>
        {
            Some("extra whitespace in a request line")
        }
        _ => None,
    }
}

/// Whether a `Connection` line in `bytes` names `content-length`.
fn nominates_content_length(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'\n').any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with(b"connection:") && line.windows(14).any(|w| w == b"content-length")
    })
}

/// Whether any request line in `bytes` holds a tab or two spaces in a row.
fn request_line_whitespace(bytes: &[u8]) -> bool {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| {
            line.windows(6)
                .any(|w| w.starts_with(b" HTTP/") || w.starts_with(b"\tHTTP/"))
        })
        .any(|line| line.contains(&b'\t') || line.windows(2).any(|w| w == b"  "))
}

/// The class a verdict is counted under: its kind and first line, numbers and quoted
/// text left out so that one cause counts once.
fn class(v: &Verdict) -> String {
    let (kind, text) = match v {
        Verdict::Looser(t) => ("looser", t),
        Verdict::Stricter(t) => ("stricter", t),
        Verdict::Differs(t) => ("differs", t),
        Verdict::Reply(t) => ("reply", t),
    };
    let first = text.lines().next().unwrap_or("");
    // Counts vary within one cause; the statuses tell causes apart.
    let shape: String = first
        .split(' ')
        .map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                "N"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!("{kind}: {shape}")
}

struct Findings {
    by_class: BTreeMap<String, (usize, Vec<String>)>,
    cases: Vec<String>,
    known: BTreeMap<&'static str, usize>,
    /// Requests both refuse with different statuses, by class.
    replies: BTreeMap<String, usize>,
    run: usize,
}

impl Findings {
    fn check(&mut self, envoy: &Proxy, courier: &Proxy, case: &Case) {
        self.run += 1;
        let e = envoy.observe(case);
        let c = courier.observe(case);
        let Some(v) = compare(case, &e, &c) else {
            return;
        };
        if let Some(name) = known_difference(case, &v) {
            *self.known.entry(name).or_default() += 1;
            return;
        }
        if let Verdict::Reply(_) = v {
            *self.replies.entry(class(&v)).or_default() += 1;
            return;
        }
        let entry = self.by_class.entry(class(&v)).or_default();
        entry.0 += 1;
        if entry.1.len() < 3 {
            entry.1.push(format!("{case}\n  {v:?}"));
        }
        self.cases.push(case.to_string());
    }
}

/// Prints what each proxy does with the cases in file `path` (a line each, as in
/// `regressions.txt`): a tool for looking at one behaviour, run on demand.
fn probe(envoy: &Proxy, courier: &Proxy, path: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let case = Case::from_line(line).unwrap_or_else(|e| panic!("{path}: {e}"));
        let e = envoy.observe(&case);
        let c = courier.observe(&case);
        match compare(&case, &e, &c) {
            None => eprintln!("same: {case}"),
            Some(v) => {
                eprintln!("DIFFERENT: {case}\n  {v:?}");
                for (name, o) in [("Envoy", e), ("Courier", c)] {
                    let client: Vec<String> = o.client.responses.iter().map(canonical).collect();
                    let upstream: Option<Vec<String>> =
                        o.upstream.map(|u| u.iter().map(canonical).collect());
                    eprintln!("  {name}: client {client:?}\n    upstream {upstream:?}");
                }
            }
        }
    }
}

/// The seed of the test command's run.
const DEFAULT_SEED: u64 = 19;

fn budget() -> Duration {
    let secs = std::env::var("COURIER_DIFF_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

#[test]
fn http1_matches_envoy_under_fuzzing() {
    let Some(envoy) = Proxy::start(true) else {
        eprintln!("envoy not on PATH: skipped");
        return;
    };
    let courier = Proxy::start(false).expect("courier starts");
    let mut findings = Findings {
        by_class: BTreeMap::new(),
        cases: Vec::new(),
        known: BTreeMap::new(),
        replies: BTreeMap::new(),
        run: 0,
    };
    if let Ok(path) = std::env::var("COURIER_DIFF_FUZZ_PROBE") {
        probe(&envoy, &courier, &path);
        return;
    }
    let regressions = include_str!("regressions.txt");
    for line in regressions
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let case = Case::from_line(line).unwrap_or_else(|e| panic!("regressions.txt: {e}"));
        findings.check(&envoy, &courier, &case);
    }
    let replayed = findings.run;
    // The test command runs a fixed sequence (the same cases on every machine, as many
    // as the budget allows), so that it fails only on a change in behaviour; a longer run
    // on demand takes a seed of its own (`COURIER_DIFF_FUZZ_SEED=random`).
    let seed = match std::env::var("COURIER_DIFF_FUZZ_SEED").ok().as_deref() {
        None => DEFAULT_SEED,
        Some("random") => fastrand::u64(..),
        Some(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("COURIER_DIFF_FUZZ_SEED={s}: {e}")),
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let end = Instant::now() + budget();
    while Instant::now() < end {
        let case = if rng.u8(0..5) < 3 {
            generate::request(&mut rng)
        } else {
            generate::response(&mut rng)
        };
        findings.check(&envoy, &courier, &case);
    }
    eprintln!(
        "http1 differential fuzzing (seed {seed}): {replayed} regression cases and {} random ones; known differences: {:?}",
        findings.run - replayed,
        findings.known
    );
    for (class, count) in &findings.replies {
        eprintln!("{count} × {class} (both refuse; not a failure)");
    }
    for (class, (count, examples)) in &findings.by_class {
        eprintln!("{count} × {class}");
        for e in examples {
            eprintln!("  {e}");
        }
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("http1-diff-fuzz-found.txt");
    let _ = std::fs::write(&out, findings.cases.join("\n"));
    assert!(
        findings.by_class.is_empty(),
        "{} disagreement(s) with Envoy in {} classes (cases in {})",
        findings.cases.len(),
        findings.by_class.len(),
        out.display()
    );
}
