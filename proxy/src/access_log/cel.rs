//! CEL in access logs: the `envoy.access_loggers.extension_filters.cel` filter and the
//! `%CEL(expression):Z%` command operator, evaluated against Envoy's attributes of the
//! entry (`request.*`, `response.*`, `source.*`, `destination.*`, `connection.*`,
//! `upstream.*`, `xds.*`).
//!
//! The interpreter is the cel-rust project's `cel` crate (MIT; release 0.15 of October
//! 2026; the repository published it as `cel-interpreter` up to 0.10): the maintained CEL
//! implementation in Rust, pure Rust, with a conformance-driven test suite. With its
//! default features off but `regex` (`matches`) and `chrono` (durations, timestamps) it
//! brings its ANTLR parser runtime (`antlr4rust`), `nom`, `chrono` and `chrono-tz`;
//! `regex` was already in Courier's tree. Expressions are parsed once, when the config
//! is compiled; only the entries of a logger that has a CEL filter or formatter evaluate
//! anything, and for those only the attribute groups an expression names are built (the
//! header maps only when it may read them).
//!
//! Envoy's CEL runtime is restricted (its "security-oriented defaults"), and so is this
//! one. Refused when the config is compiled, as Envoy refuses them ("failed to create an
//! expression"): comprehensions (`all`, `exists`, `map`, …), the optional syntax,
//! `string()` and the functions of the crate's larger library that Envoy's runtime lacks;
//! Envoy's regex extension (`re.*`), which the crate lacks, is refused by name. String,
//! bytes and list concatenation are evaluation errors (`+` is rewritten to a function
//! that refuses them, registered for each evaluation of an expression that adds). An
//! attribute the entry does not have (a header it lacks, `response.code` before any
//! response, `upstream.address` without an upstream) is an error as it is in Envoy,
//! `has()` of it is `false`: a filter whose expression errs, or is not a boolean, does
//! not log the entry, and a `%CEL()%` that errs prints as an absent value (`-`, JSON
//! `null`).
//!
//! Attributes Courier does not keep (dynamic metadata, filter state, the node, route and
//! cluster metadata, `xds.virtual_host_name`, TLS session details beyond the version)
//! are absent here, so expressions naming them err and their entries are not logged.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use cel::common::ast::{operators, Expr, LiteralValue};
use cel::common::types::CelString;
use cel::{Context, Env, IdedExpr, Value};
use http::HeaderMap;

use super::LogEntry;
use crate::config::ConfigError;

/// A compiled CEL expression.
#[derive(Clone)]
pub struct Expression {
    program: Arc<IdedExpr>,
    /// The attribute groups it names (`request`, `response`, …).
    roots: Vec<Root>,
    /// It adds (`+`): through [`add_without_concat`].
    adds: bool,
    /// It may read a header map (`request.headers`, `response.trailers`, or a whole
    /// attribute group): only then are the maps built.
    header_maps: bool,
}

/// Whether `e` may read a header map: names `headers` or `trailers`, or uses an
/// attribute group other than to select a field of it.
fn reads_header_maps(e: &IdedExpr) -> bool {
    let root =
        |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if Root::ALL.iter().any(|(r, _)| r == n));
    match &e.expr {
        Expr::Ident(_) => root(e),
        Expr::Select(s) => {
            s.field == "headers"
                || s.field == "trailers"
                || (!root(&s.operand) && reads_header_maps(&s.operand))
        }
        Expr::Call(c) => {
            c.target.as_deref().is_some_and(reads_header_maps)
                || c.args.iter().any(reads_header_maps)
        }
        Expr::List(l) => l.elements.iter().any(reads_header_maps),
        // Map and struct literals: assume they may.
        Expr::Map(_) | Expr::Struct(_) | Expr::Comprehension(_) => true,
        _ => false,
    }
}

/// What `+` is rewritten to, so that it is Envoy's: no string, bytes or list
/// concatenation (`enable_string_concat`, `enable_list_concat` off).
const ADD: &str = "__courier_add";

/// `a + b` for numbers, durations and timestamps; concatenation is an error, as in
/// Envoy's runtime.
fn add_without_concat(a: Value, b: Value) -> cel::ResolveResult {
    match (&a, &b) {
        (Value::String(_) | Value::Bytes(_) | Value::List(_), _) => Err(
            cel::ExecutionError::function_error("_+_", "No matching overloads found"),
        ),
        _ => a + b,
    }
}

/// Rewrites each `_+_` of `e` to [`ADD`]; whether there was one.
fn guard_adds(e: &mut IdedExpr) -> bool {
    let mut found = false;
    match &mut e.expr {
        Expr::Call(c) => {
            if c.func_name == operators::ADD && c.target.is_none() && c.args.len() == 2 {
                c.func_name = ADD.to_string();
                found = true;
            }
            if let Some(t) = c.target.as_deref_mut() {
                found |= guard_adds(t);
            }
            for a in &mut c.args {
                found |= guard_adds(a);
            }
        }
        Expr::List(l) => {
            for a in &mut l.elements {
                found |= guard_adds(a);
            }
        }
        Expr::Select(s) => found |= guard_adds(&mut s.operand),
        _ => {}
    }
    found
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expression")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// An attribute group, a top-level name of Envoy's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Request,
    Response,
    Connection,
    Upstream,
    Source,
    Destination,
    Xds,
}

impl Root {
    const ALL: [(&'static str, Root); 7] = [
        ("request", Root::Request),
        ("response", Root::Response),
        ("connection", Root::Connection),
        ("upstream", Root::Upstream),
        ("source", Root::Source),
        ("destination", Root::Destination),
        ("xds", Root::Xds),
    ];
}

/// The standard environment every expression runs in (built once, shared).
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    // Without the optional syntax (`a.?b`), which Envoy's parser refuses.
    ENV.get_or_init(|| Arc::new(Env::stdlib().with_optional_support(false)))
}

/// The functions Envoy 1.40's runtime has (cel-cpp's built-ins, but `string()`, and its
/// regex extension), by the name a call uses; operators aside.
const ENVOY_FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "bytes",
    "bool",
    "dyn",
    "type",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// The namespaces of the `cel` crate's extensions (`math.greatest`, …), which Envoy's
/// runtime lacks but for `re`.
const NAMESPACES: &[&str] = &[
    "re", "math", "optional", "base64", "cel", "strings", "sets", "lists",
];

/// The first function `e` calls that Envoy's runtime does not have (its last name, as
/// Envoy's error names it): Envoy refuses such an expression when it loads the config,
/// where the `cel` crate, whose standard library and extensions are larger, would run it.
/// Envoy's regex extension (`re.extract`, `re.capture`, `re.captureN`), which the `cel`
/// crate lacks, comes back as `re.<name>`.
fn unknown_function(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Call(c) => {
            // Inner calls first, as Envoy names them.
            if let Some(inner) = c
                .target
                .as_deref()
                .and_then(unknown_function)
                .or_else(|| c.args.iter().find_map(unknown_function))
            {
                return Some(inner);
            }
            let name = c.func_name.as_str();
            let operator = name == ADD
                || !name
                    .chars()
                    .all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '.');
            if !operator {
                let namespace = match c.target.as_deref().map(|t| &t.expr) {
                    Some(Expr::Ident(ns)) if NAMESPACES.contains(&ns.as_str()) => Some(ns.as_str()),
                    _ => name.rsplit_once('.').map(|(ns, _)| ns),
                };
                let last = name.rsplit('.').next().unwrap_or(name);
                match namespace {
                    Some("re") if matches!(last, "extract" | "capture" | "captureN") => {
                        return Some(format!("re.{last}"))
                    }
                    Some(_) => return Some(last.to_string()),
                    None if !ENVOY_FUNCTIONS.contains(&last) => return Some(last.to_string()),
                    None => {}
                }
            }
            None
        }
        Expr::List(l) => l.elements.iter().find_map(unknown_function),
        Expr::Select(s) => unknown_function(&s.operand),
        Expr::Map(m) => m.entries.iter().find_map(|entry| match &entry.expr {
            cel::common::ast::EntryExpr::MapEntry(me) => {
                unknown_function(&me.key).or_else(|| unknown_function(&me.value))
            }
            cel::common::ast::EntryExpr::StructField(sf) => unknown_function(&sf.value),
        }),
        _ => None,
    }
}

/// Whether `e` has a comprehension (a macro Envoy's runtime refuses).
fn has_comprehension(e: &IdedExpr) -> bool {
    match &e.expr {
        Expr::Comprehension(_) => true,
        Expr::Call(c) => {
            c.target.as_deref().is_some_and(has_comprehension)
                || c.args.iter().any(has_comprehension)
        }
        Expr::List(l) => l.elements.iter().any(has_comprehension),
        Expr::Map(m) => m.entries.iter().any(|entry| match &entry.expr {
            cel::common::ast::EntryExpr::MapEntry(me) => {
                has_comprehension(&me.key) || has_comprehension(&me.value)
            }
            cel::common::ast::EntryExpr::StructField(sf) => has_comprehension(&sf.value),
        }),
        Expr::Select(s) => has_comprehension(&s.operand),
        Expr::Struct(s) => s.entries.iter().any(|entry| match &entry.expr {
            cel::common::ast::EntryExpr::MapEntry(me) => {
                has_comprehension(&me.key) || has_comprehension(&me.value)
            }
            cel::common::ast::EntryExpr::StructField(sf) => has_comprehension(&sf.value),
        }),
        _ => false,
    }
}

/// Whether `e` is a header map attribute (`request.headers`, `response.trailers`, …).
fn is_header_map(e: &IdedExpr) -> bool {
    matches!(&e.expr, Expr::Select(s) if s.field == "headers" || s.field == "trailers")
}

/// Lowercases the literal names looked up in a header map (`request.headers['X-A']`,
/// `'X-A' in request.headers`), as Envoy lowercases a name before it looks it up.
fn lowercase_header_keys(e: &mut IdedExpr) {
    let lower = |arg: &mut IdedExpr| {
        if let Expr::Literal(LiteralValue::String(s)) = &mut arg.expr {
            if s.bytes().any(|b| b.is_ascii_uppercase()) {
                *s = CelString::from(s.to_ascii_lowercase());
            }
        }
    };
    match &mut e.expr {
        Expr::Call(c) => {
            if c.args.len() == 2 {
                if c.func_name == operators::INDEX && is_header_map(&c.args[0]) {
                    lower(&mut c.args[1]);
                } else if c.func_name == operators::IN && is_header_map(&c.args[1]) {
                    lower(&mut c.args[0]);
                }
            }
            if let Some(t) = c.target.as_deref_mut() {
                lowercase_header_keys(t);
            }
            c.args.iter_mut().for_each(lowercase_header_keys);
        }
        Expr::List(l) => l.elements.iter_mut().for_each(lowercase_header_keys),
        Expr::Select(s) => lowercase_header_keys(&mut s.operand),
        _ => {}
    }
}

impl Expression {
    /// Parses `source` as Envoy does when the config is loaded; errors in Envoy's words.
    pub fn compile(source: &str) -> Result<Expression, String> {
        Expression::compile_as(source, "filter expression")
    }

    /// [`Expression::compile`], a parse error naming the expression as `what` (Envoy's
    /// filter says `filter expression`, its formatter `expression`).
    pub fn compile_as(source: &str, what: &str) -> Result<Expression, String> {
        let mut program = env().parser().parse(source).map_err(|e| {
            format!(
                "Not able to parse {what}: INVALID_ARGUMENT: {}",
                e.to_string().trim()
            )
        })?;
        lowercase_header_keys(&mut program);
        let adds = guard_adds(&mut program);
        let header_maps = reads_header_maps(&program);
        if has_comprehension(&program) {
            return Err(
                "failed to create an expression: Comprehension support is disabled".to_string(),
            );
        }
        if let Some(name) = unknown_function(&program) {
            if let Some(f) = name.strip_prefix("re.") {
                return Err(format!(
                    "re.{f}: Envoy's regex extension functions are not supported by Courier"
                ));
            }
            return Err(format!(
                "failed to create an expression: No overload found in reference resolve step for {name}"
            ));
        }
        let refs = program.references();
        let roots = Root::ALL
            .iter()
            .filter(|(name, _)| refs.has_variable(name))
            .map(|(_, r)| *r)
            .collect();
        Ok(Expression {
            program: Arc::new(program),
            roots,
            adds,
            header_maps,
        })
    }

    /// The value for entry `e`, `None` when the evaluation errs.
    pub fn evaluate(&self, e: &LogEntry<'_>) -> Option<Value> {
        let mut ctx = Context::with_env(Arc::clone(env()));
        if self.adds {
            ctx.add_function(ADD, add_without_concat).ok()?;
        }
        for root in &self.roots {
            let (name, value) = match root {
                Root::Request => ("request", request(e, self.header_maps)),
                Root::Response => ("response", response(e, self.header_maps)),
                Root::Connection => ("connection", connection(e)),
                Root::Upstream => ("upstream", upstream(e)),
                Root::Source => ("source", peer(Some(e.remote))),
                Root::Destination => ("destination", peer(e.local)),
                Root::Xds => ("xds", xds(e)),
            };
            ctx.add_variable_from_value(name, value);
        }
        Value::resolve(&self.program, &ctx).ok()
    }

    /// Whether the filter logs `e`: the expression is `true` (an error or another value
    /// does not).
    pub fn passes(&self, e: &LogEntry<'_>) -> bool {
        matches!(self.evaluate(e), Some(Value::Bool(true)))
    }

    /// The value for `e` printed as Envoy prints it, `None` when the evaluation errs.
    pub fn render(&self, e: &LogEntry<'_>) -> Option<String> {
        self.evaluate(e).map(|v| print(&v))
    }
}

/// Compiles a filter's or formatter's expression, its error at `path`.
pub fn compile_at(source: &str, path: &str) -> Result<Expression, ConfigError> {
    Expression::compile(source).map_err(|m| ConfigError::new(path, m))
}

/// A map of attribute name to value.
type Attrs = HashMap<String, Value>;

fn put(m: &mut Attrs, k: &str, v: impl Into<Value>) {
    m.insert(k.to_string(), v.into());
}

/// A header map as CEL sees it: a name to its values joined by `,` (as Envoy's
/// `getAllOfHeaderAsString`).
fn headers(map: Option<&HeaderMap>, pseudo: &[(&str, &str)]) -> Value {
    let mut m: Attrs = HashMap::new();
    for (k, v) in pseudo {
        put(&mut m, k, *v);
    }
    if let Some(map) = map {
        for name in map.keys() {
            let joined = map
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect::<Vec<_>>()
                .join(",");
            put(&mut m, name.as_str(), joined);
        }
    }
    Value::from(m)
}

fn duration(d: Duration) -> Value {
    Value::Duration(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

fn request(e: &LogEntry<'_>, header_maps: bool) -> Value {
    let mut m: Attrs = HashMap::new();
    // The pseudo-headers Courier keeps apart, where Envoy's map has them.
    let pseudo: &[(&str, &str)] = if e.method.is_empty() {
        &[]
    } else {
        &[
            (":method", e.method),
            (":path", e.path),
            (":authority", e.authority),
        ]
    };
    if !e.method.is_empty() {
        put(&mut m, "method", e.method);
        put(&mut m, "path", e.path);
        let (url_path, query) = match e.path.split_once('?') {
            Some((p, q)) => (p, q.split('#').next().unwrap_or("")),
            None => (e.path, ""),
        };
        put(&mut m, "url_path", url_path);
        put(&mut m, "query", query);
        put(&mut m, "host", e.authority);
        put(
            &mut m,
            "scheme",
            if e.tls.is_some() { "https" } else { "http" },
        );
        for (attr, header) in [
            ("referer", "referer"),
            ("id", "x-request-id"),
            ("useragent", "user-agent"),
        ] {
            if let Some(v) = e.request.get(header).and_then(|v| v.to_str().ok()) {
                put(&mut m, attr, v);
            }
        }
        match e.request.get(http::header::CONTENT_LENGTH) {
            Some(v) => {
                if let Some(n) = v.to_str().ok().and_then(|s| s.parse::<i64>().ok()) {
                    put(&mut m, "size", n);
                }
            }
            None => put(&mut m, "size", e.bytes_received as i64),
        }
    }
    if header_maps {
        m.insert("headers".to_string(), headers(Some(e.request), pseudo));
    }
    if !e.protocol.is_empty() {
        put(&mut m, "protocol", e.protocol);
    }
    let since_epoch = e
        .start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if let Some(t) =
        chrono::DateTime::from_timestamp(since_epoch.as_secs() as i64, since_epoch.subsec_nanos())
    {
        m.insert("time".to_string(), Value::Timestamp(t.fixed_offset()));
    }
    if let Some(d) = e.timing.request_rx {
        m.insert("duration".to_string(), duration(d));
    }
    Value::from(m)
}

/// Envoy's legacy response flags bitmask (`response.flags`): bit `i` for the `i`th flag
/// of Envoy's list.
fn flags_mask(flags: &str) -> i64 {
    if flags == "-" {
        return 0;
    }
    flags
        .split(',')
        .filter_map(|f| super::RESPONSE_FLAGS.iter().position(|k| *k == f))
        .filter(|&i| i < 63)
        .fold(0i64, |acc, i| acc | (1i64 << i))
}

fn response(e: &LogEntry<'_>, header_maps: bool) -> Value {
    let mut m: Attrs = HashMap::new();
    if e.status != 0 {
        put(&mut m, "code", i64::from(e.status));
    }
    if e.details == super::CLEARED_DETAILS {
        put(&mut m, "code_details", "");
    } else if !e.details.is_empty() {
        put(&mut m, "code_details", e.details);
    }
    put(&mut m, "flags", flags_mask(e.flags));
    // Envoy's `getGrpcStatus` without user-defined codes (above 16: `-1`).
    if let Some(s) = super::grpc_status(e, false) {
        put(&mut m, "grpc_status", s);
    }
    put(&mut m, "size", e.bytes_sent as i64);
    if header_maps {
        m.insert("headers".to_string(), headers(e.response, &[]));
        m.insert("trailers".to_string(), headers(e.trailers, &[]));
    }
    Value::from(m)
}

fn connection(e: &LogEntry<'_>) -> Value {
    let mut m: Attrs = HashMap::new();
    put(&mut m, "mtls", e.tls.is_some_and(|t| t.peer.is_some()));
    put(
        &mut m,
        "requested_server_name",
        e.requested_server_name.unwrap_or(""),
    );
    if let Some(id) = e.connection_id {
        m.insert("id".to_string(), Value::UInt(id));
    }
    if let Some(t) = e.tls {
        put(&mut m, "tls_version", t.version.to_string());
    }
    Value::from(m)
}

fn upstream(e: &LogEntry<'_>) -> Value {
    let mut m: Attrs = HashMap::new();
    if let Some(a) = e.upstream_host {
        put(&mut m, "address", a.to_string());
        put(&mut m, "port", i64::from(a.port()));
    }
    if let Some(a) = e.upstream_local {
        put(&mut m, "local_address", a.to_string());
    }
    if e.upstream_host.is_some() || e.transport_failure.is_some() {
        put(
            &mut m,
            "transport_failure_reason",
            e.transport_failure.unwrap_or(""),
        );
    }
    m.insert(
        "request_attempt_count".to_string(),
        Value::UInt(u64::from(e.attempts.unwrap_or(0))),
    );
    Value::from(m)
}

fn peer(addr: Option<std::net::SocketAddr>) -> Value {
    let mut m: Attrs = HashMap::new();
    if let Some(a) = addr {
        put(&mut m, "address", a.to_string());
        put(&mut m, "port", i64::from(a.port()));
    }
    Value::from(m)
}

fn xds(e: &LogEntry<'_>) -> Value {
    let mut m: Attrs = HashMap::new();
    if !e.route_name.is_empty() {
        put(&mut m, "route_name", e.route_name);
    }
    if let Some(c) = e.upstream_cluster {
        put(&mut m, "cluster_name", c);
    }
    Value::from(m)
}

/// A value as Envoy's `Expr::print` prints it.
pub fn print(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::UInt(n) => n.to_string(),
        Value::Float(f) => six_digits(*f),
        Value::String(s) => s.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Duration(d) => format_duration(*d),
        Value::Timestamp(t) => format_time(t),
        Value::Null => "NULL".to_string(),
        Value::Map(_) => "CelMap value".to_string(),
        Value::List(_) => "CelList value".to_string(),
        other => format!("{} value", other.type_of()),
    }
}

/// A double as abseil's `StrCat` writes it: `%g` with six significant digits.
fn six_digits(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{f:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        trim(&format!("{f:.decimals$}"))
    }
}

/// A duration as abseil's `FormatDuration`: `1h2m3.5s`, `3.563ms`, `148.741us`, `0`.
fn format_duration(d: chrono::Duration) -> String {
    let mut out = String::new();
    let mut nanos = d.num_nanoseconds().map_or(i128::from(i64::MAX), i128::from);
    if nanos == 0 {
        return "0".to_string();
    }
    if nanos < 0 {
        out.push('-');
        nanos = -nanos;
    }
    let unit = |out: &mut String, value: i128, per: i128, suffix: &str| {
        let whole = value / per;
        let frac = value % per;
        out.push_str(&whole.to_string());
        if frac != 0 {
            let width = per.to_string().len() - 1;
            let digits = format!("{frac:0width$}");
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
        out.push_str(suffix);
    };
    const SEC: i128 = 1_000_000_000;
    if nanos < SEC {
        if nanos < 1_000 {
            unit(&mut out, nanos, 1, "ns");
        } else if nanos < 1_000_000 {
            unit(&mut out, nanos, 1_000, "us");
        } else {
            unit(&mut out, nanos, 1_000_000, "ms");
        }
        return out;
    }
    let hours = nanos / (3600 * SEC);
    nanos %= 3600 * SEC;
    let minutes = nanos / (60 * SEC);
    nanos %= 60 * SEC;
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if nanos > 0 {
        unit(&mut out, nanos, SEC, "s");
    }
    out
}

/// A timestamp as abseil's `FormatTime` in UTC: `2026-12-06T19:36:59.38711+00:00`.
fn format_time(t: &chrono::DateTime<chrono::FixedOffset>) -> String {
    let utc = t.with_timezone(&chrono::Utc);
    let mut out = utc.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = utc.timestamp_subsec_nanos();
    if nanos != 0 {
        let digits = format!("{nanos:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push_str("+00:00");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_print_as_envoy_prints_them() {
        for (f, want) in [
            (1.5, "1.5"),
            (2.0, "2"),
            (1e20, "1e+20"),
            (0.1, "0.1"),
            (123456789.0, "1.23457e+08"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-3.25, "-3.25"),
        ] {
            assert_eq!(six_digits(f), want, "{f}");
        }
        for (ns, want) in [
            (3_563_000, "3.563ms"),
            (44_085_162, "44.085162ms"),
            (148_741, "148.741us"),
            (12, "12ns"),
            (3_723_500_000_000, "1h2m3.5s"),
            (60_000_000_000, "1m"),
            (0, "0"),
        ] {
            assert_eq!(
                format_duration(chrono::Duration::nanoseconds(ns)),
                want,
                "{ns}"
            );
        }
    }

    #[test]
    fn header_maps_are_built_only_when_read() {
        let reads = |src: &str| Expression::compile(src).expect("compiles").header_maps;
        assert!(!reads("request.path == '/' && response.code == 200"));
        assert!(!reads(
            "has(request.path) && xds.route_name.startsWith('r')"
        ));
        assert!(reads("request.headers['x'] == 'y'"));
        assert!(reads("'x' in response.trailers"));
        assert!(reads("request == {}"));
        assert!(reads("request['headers']['x'] == 'y'"));
    }

    #[test]
    fn addition_is_envoy_s() {
        let eval = |src: &str| {
            let expr = Expression::compile(src).expect("compiles");
            let headers = HeaderMap::new();
            expr.evaluate(&LogEntry::connection(&headers))
        };
        assert_eq!(eval("1 + 2 == 3"), Some(Value::Bool(true)));
        assert_eq!(eval("1u + 2u"), Some(Value::UInt(3)));
        assert_eq!(
            eval("duration('1s') + duration('2s') == duration('3s')"),
            Some(Value::Bool(true))
        );
        assert_eq!(eval("'a' + 'b'"), None);
        assert_eq!(eval("[1] + [2]"), None);
        assert_eq!(eval("b'a' + b'b'"), None);
        // `||` absorbs the error, as Envoy's does.
        assert_eq!(eval("'a' + 'b' == 'ab' || true"), Some(Value::Bool(true)));
    }

    #[test]
    fn expressions_envoy_refuses_are_refused() {
        for ok in [
            "response.code >= 400",
            "bool('true') && size('a') == 1 && 'a'.size() == 1 && int('1') == 1",
            "request.time.getHours('UTC') >= 0 && type(1) == int && dyn(1) == 1",
            "timestamp('2020-01-01T00:00:00Z') < request.time && duration('1s') > duration('0s')",
            "matches('abc', 'a.c') && 'x'.startsWith('x') && 1 + 2 == 3 && -(1) < 0",
            "{'a': 1}.size() == 1 && 1 in [1] && !false && (true ? 1 : 2) == 1",
        ] {
            assert!(
                Expression::compile(ok).is_ok(),
                "{ok}: {:?}",
                Expression::compile(ok).err()
            );
        }
        for (expr, want) in [
            ("response.code >=", "Not able to parse filter expression"),
            (
                "[1, 2].exists(x, x == 1)",
                "Comprehension support is disabled",
            ),
            ("string(response.code) == '200'", "No overload found"),
            ("'A'.lowerAscii() == 'a'", "resolve step for lowerAscii"),
            ("math.greatest(1, 2) == 2", "resolve step for greatest"),
            ("optional.of(1).hasValue()", "resolve step for of"),
            ("abs(-1) == 1", "resolve step for abs"),
            (
                "re.capture(request.path, '/(a)') == 'a'",
                "re.capture: Envoy's regex extension functions are not supported by Courier",
            ),
            (
                "request.?path.hasValue()",
                "Not able to parse filter expression",
            ),
        ] {
            let err = Expression::compile(expr).err().unwrap_or_default();
            assert!(err.contains(want), "{expr}: {err}");
        }
    }
}
