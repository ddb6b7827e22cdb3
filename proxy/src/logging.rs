//! The process log: `--log-level`, `--log-path` and `--log-format`, as Envoy's.
//!
//! Without `--log-format` the lines are `tracing`'s own shape. With it, Envoy's (spdlog's)
//! pattern flags render each line; the subset that means something under `tracing` is
//! supported and any other flag is refused at start-up, by name, rather than printed
//! literally:
//!
//! | flag | what |
//! |---|---|
//! | `%v` | the message with its fields (`message key=value …`); escaped as `%_` under `--log-format-escaped` |
//! | `%_` | the message with newlines and other control characters escaped (`\n`, `\t`, …) |
//! | `%j` | the message escaped for a JSON string |
//! | `%t` | the OS thread id |
//! | `%P` | the process id |
//! | `%n` | the logger: the module under `courier::` (`http`, `upstream`, …; `server` is Envoy's `main`) |
//! | `%l`, `%L` | the level (`trace` … `warning`, `error`), and its first letter (`T` … `E`) |
//! | `%Y %C %m %d %H %I %M %S %p` | local time: year, 2-digit year, month, day, 24 h and 12 h hour, minute, second, AM/PM |
//! | `%a %A %b %B` | weekday and month names, short and long |
//! | `%D`/`%x`, `%T`/`%X`, `%R`, `%r`, `%c` | `MM/DD/YY`, `HH:MM:SS`, `HH:MM`, `hh:MM:SS AM`, `Thu Aug 23 15:35:46 2014` |
//! | `%e %f %F` | the second's milliseconds, microseconds, nanoseconds |
//! | `%E` | seconds since the epoch |
//! | `%z` | the UTC offset (`+02:00`) |
//! | `%g`, `%s`, `%#`, `%@`, `%!` | the source file, its base name, the line, `file:line`, the module path |
//! | `%+` | spdlog's default pattern, `[%Y-%m-%d %H:%M:%S.%e] [%n] [%l] %v` |
//! | `%^`, `%$` | colour range: accepted, and nothing is coloured (log lines carry no escape codes) |
//! | `%%` | `%` |
//!
//! A flag may carry spdlog's padding, `%8l`, `%-8l` (left) or `%=8l` (centre). The
//! elapsed-time flags (`%o %i %u %O`) have no counterpart and are refused.
//!
//! Colour: `tracing`'s default shape is coloured only when the log goes to a terminal;
//! a pipe, a file or `--log-path` gets plain text.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Why the log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `--log-format` holds a flag Courier does not render.
    #[error("--log-format: unsupported flag '%{0}' (supported: %v %_ %j %t %P %n %l %L %Y %C %m %d %H %I %M %S %p %a %A %b %B %D %x %T %X %R %r %c %e %f %F %E %z %g %s %# %@ %! %+ %^ %$ %%)")]
    UnknownFlag(char),
    /// `--log-format` ends inside a flag.
    #[error("--log-format: a '%' at the end of the pattern names no flag")]
    TrailingPercent,
    /// `--log-path` cannot be opened for appending.
    #[error("--log-path: cannot open '{path}' for appending: {source}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The global subscriber was already set (a second initialisation).
    #[error("the log is already initialised")]
    AlreadySet,
}

/// One element of a parsed `--log-format`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flag {
    Literal(String),
    Message,
    MessageEscaped,
    MessageJson,
    Thread,
    Pid,
    Logger,
    Level,
    LevelShort,
    Year,
    Year2,
    Month,
    Day,
    Hour,
    Hour12,
    Minute,
    Second,
    AmPm,
    WeekdayShort,
    WeekdayLong,
    MonthShort,
    MonthLong,
    Millis,
    Micros,
    Nanos,
    Epoch,
    TzOffset,
    File,
    FileBase,
    Line,
    Module,
    /// `%^`/`%$`: colour ranges, rendered as nothing.
    Nothing,
}

/// spdlog's padding of one flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Right,
    Left,
    Centre,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    flag: Flag,
    pad: Option<(Align, usize)>,
}

/// A parsed `--log-format` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    pieces: Vec<Piece>,
    /// `--log-format-escaped`: `%v` escapes as `%_` does.
    escaped: bool,
}

impl LogFormat {
    /// Parses Envoy's pattern; an unsupported flag is an error naming it.
    pub fn parse(pattern: &str, escaped: bool) -> Result<LogFormat, LoggingError> {
        let mut pieces = Vec::new();
        parse_into(pattern, &mut pieces)?;
        Ok(LogFormat { pieces, escaped })
    }

    /// Renders one line (without its newline) into `out`.
    fn render(&self, out: &mut String, event: &Event<'_>, fields: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Only computed if a flag needs it (localtime reads the zone).
        let mut tm: Option<LocalTime> = None;
        let mut scratch = String::new();
        for piece in &self.pieces {
            let target: &mut String = if piece.pad.is_some() {
                scratch.clear();
                &mut scratch
            } else {
                out
            };
            let meta = event.metadata();
            let mut time = || *tm.get_or_insert_with(|| LocalTime::of(now.as_secs()));
            // Writing to a String cannot fail.
            let _ = match &piece.flag {
                Flag::Literal(s) => target.write_str(s),
                Flag::Message if self.escaped => escape_control(target, fields),
                Flag::Message => target.write_str(fields),
                Flag::MessageEscaped => escape_control(target, fields),
                Flag::MessageJson => escape_json(target, fields),
                Flag::Thread => write!(target, "{}", thread_id()),
                Flag::Pid => write!(target, "{}", std::process::id()),
                Flag::Logger => target.write_str(logger_name(meta.target())),
                Flag::Level => target.write_str(level_name(*meta.level())),
                Flag::LevelShort => {
                    target.write_str(&level_name(*meta.level())[..1].to_uppercase())
                }
                Flag::Year => write!(target, "{}", time().year),
                Flag::Year2 => write!(target, "{:02}", time().year.rem_euclid(100)),
                Flag::Month => write!(target, "{:02}", time().month),
                Flag::Day => write!(target, "{:02}", time().day),
                Flag::Hour => write!(target, "{:02}", time().hour),
                Flag::Hour12 => write!(target, "{:02}", hour12(time().hour)),
                Flag::Minute => write!(target, "{:02}", time().minute),
                Flag::Second => write!(target, "{:02}", time().second),
                Flag::AmPm => target.write_str(if time().hour < 12 { "AM" } else { "PM" }),
                Flag::WeekdayShort => target.write_str(&WEEKDAYS[time().weekday][..3]),
                Flag::WeekdayLong => target.write_str(WEEKDAYS[time().weekday]),
                Flag::MonthShort => target.write_str(&MONTHS[time().month_index()][..3]),
                Flag::MonthLong => target.write_str(MONTHS[time().month_index()]),
                Flag::Millis => write!(target, "{:03}", now.subsec_millis()),
                Flag::Micros => write!(target, "{:06}", now.subsec_micros()),
                Flag::Nanos => write!(target, "{:09}", now.subsec_nanos()),
                Flag::Epoch => write!(target, "{}", now.as_secs()),
                Flag::TzOffset => {
                    let off = time().utc_offset_s;
                    let sign = if off < 0 { '-' } else { '+' };
                    let off = off.unsigned_abs();
                    write!(target, "{sign}{:02}:{:02}", off / 3600, off % 3600 / 60)
                }
                Flag::File => target.write_str(meta.file().unwrap_or("")),
                Flag::FileBase => {
                    let file = meta.file().unwrap_or("");
                    target.write_str(file.rsplit('/').next().unwrap_or(file))
                }
                Flag::Line => match meta.line() {
                    Some(l) => write!(target, "{l}"),
                    None => Ok(()),
                },
                Flag::Module => target.write_str(meta.module_path().unwrap_or("")),
                Flag::Nothing => Ok(()),
            };
            if let Some((align, width)) = piece.pad {
                pad(out, &scratch, align, width);
            }
        }
    }
}

fn parse_into(pattern: &str, pieces: &mut Vec<Piece>) -> Result<(), LoggingError> {
    let mut literal = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        let align = match chars.peek() {
            Some('-') => Some(Align::Left),
            Some('=') => Some(Align::Centre),
            _ => None,
        };
        if align.is_some() {
            chars.next();
        }
        let mut width = 0usize;
        let mut has_width = false;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            width = width.saturating_mul(10).saturating_add(d as usize);
            has_width = true;
            chars.next();
        }
        // spdlog's truncation mark (`%8!l`): the width is a maximum too. Courier pads only.
        if has_width && chars.peek() == Some(&'!') {
            chars.next();
        }
        let Some(f) = chars.next() else {
            return Err(LoggingError::TrailingPercent);
        };
        let flag = match f {
            '%' => {
                literal.push('%');
                continue;
            }
            '+' => {
                if !literal.is_empty() {
                    pieces.push(Piece {
                        flag: Flag::Literal(std::mem::take(&mut literal)),
                        pad: None,
                    });
                }
                parse_into("[%Y-%m-%d %H:%M:%S.%e] [%n] [%l] %v", pieces)?;
                continue;
            }
            'v' => Flag::Message,
            '_' => Flag::MessageEscaped,
            'j' => Flag::MessageJson,
            't' => Flag::Thread,
            'P' => Flag::Pid,
            'n' => Flag::Logger,
            'l' => Flag::Level,
            'L' => Flag::LevelShort,
            'Y' => Flag::Year,
            'C' => Flag::Year2,
            'm' => Flag::Month,
            'd' => Flag::Day,
            'H' => Flag::Hour,
            'I' => Flag::Hour12,
            'M' => Flag::Minute,
            'S' => Flag::Second,
            'p' => Flag::AmPm,
            'a' => Flag::WeekdayShort,
            'A' => Flag::WeekdayLong,
            'b' | 'h' => Flag::MonthShort,
            'B' => Flag::MonthLong,
            'e' => Flag::Millis,
            'f' => Flag::Micros,
            'F' => Flag::Nanos,
            'E' => Flag::Epoch,
            'z' => Flag::TzOffset,
            'g' => Flag::File,
            's' => Flag::FileBase,
            '#' => Flag::Line,
            '!' => Flag::Module,
            '^' | '$' => Flag::Nothing,
            // Composite flags: their expansion, as spdlog defines them.
            'D' | 'x' | 'T' | 'X' | 'R' | 'r' | 'c' | '@' => {
                let expansion = match f {
                    'D' | 'x' => "%m/%d/%C",
                    'T' | 'X' => "%H:%M:%S",
                    'R' => "%H:%M",
                    'r' => "%I:%M:%S %p",
                    'c' => "%a %b %d %H:%M:%S %Y",
                    _ => "%g:%#",
                };
                let mut sub = Vec::new();
                parse_into(expansion, &mut sub)?;
                if !literal.is_empty() {
                    pieces.push(Piece {
                        flag: Flag::Literal(std::mem::take(&mut literal)),
                        pad: None,
                    });
                }
                // Padding applies to the whole expansion only approximately (to its
                // last element); spdlog users pad single flags in practice.
                pieces.extend(sub);
                continue;
            }
            other => return Err(LoggingError::UnknownFlag(other)),
        };
        if !literal.is_empty() {
            pieces.push(Piece {
                flag: Flag::Literal(std::mem::take(&mut literal)),
                pad: None,
            });
        }
        let pad = has_width.then_some((align.unwrap_or(Align::Right), width));
        pieces.push(Piece { flag, pad });
    }
    if !literal.is_empty() {
        pieces.push(Piece {
            flag: Flag::Literal(literal),
            pad: None,
        });
    }
    Ok(())
}

fn pad(out: &mut String, s: &str, align: Align, width: usize) {
    let len = s.chars().count();
    let fill = width.saturating_sub(len);
    let (before, after) = match align {
        Align::Right => (fill, 0),
        Align::Left => (0, fill),
        Align::Centre => (fill / 2, fill - fill / 2),
    };
    out.extend(std::iter::repeat_n(' ', before));
    out.push_str(s);
    out.extend(std::iter::repeat_n(' ', after));
}

fn hour12(hour: u32) -> u32 {
    match hour % 12 {
        0 => 12,
        h => h,
    }
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Envoy's level names.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// The logger name: the module under the crate (`courier::http::…` → `http`), the main
/// thread's modules as Envoy's `main`; another crate's target as it is.
fn logger_name(target: &str) -> &str {
    let Some(rest) = target.strip_prefix("courier::") else {
        return target;
    };
    match rest.split("::").next().unwrap_or(rest) {
        "server" => "main",
        first => first,
    }
}

/// Newlines and other control characters as escapes, as Envoy's `%_`.
fn escape_control(out: &mut String, s: &str) -> std::fmt::Result {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => write!(out, "\\x{:02x}", u32::from(c))?,
            c => out.push(c),
        }
    }
    Ok(())
}

/// The inside of a JSON string, as Envoy's `%j`.
fn escape_json(out: &mut String, s: &str) -> std::fmt::Result {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => write!(out, "\\u{:04x}", u32::from(c))?,
            c => out.push(c),
        }
    }
    Ok(())
}

/// The calling thread's kernel id (what Envoy's `%t` prints).
fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    i64::from(unsafe { libc::gettid() })
}

/// Broken-down local time.
#[derive(Debug, Clone, Copy)]
struct LocalTime {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    weekday: usize,
    utc_offset_s: i64,
}

impl LocalTime {
    fn of(epoch_s: u64) -> LocalTime {
        let t = libc::time_t::try_from(epoch_s).unwrap_or(libc::time_t::MAX);
        // SAFETY: `tm` is plain data that localtime_r fills in (the reentrant variant: no
        // shared static buffer); both pointers are valid for the call.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
        if !ok {
            return LocalTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 4,
                utc_offset_s: 0,
            };
        }
        let num = |v: libc::c_int| u32::try_from(v).unwrap_or(0);
        LocalTime {
            year: tm.tm_year + 1900,
            month: num(tm.tm_mon + 1),
            day: num(tm.tm_mday),
            hour: num(tm.tm_hour),
            minute: num(tm.tm_min),
            second: num(tm.tm_sec),
            weekday: usize::try_from(tm.tm_wday).unwrap_or(0) % 7,
            utc_offset_s: tm.tm_gmtoff,
        }
    }

    fn month_index(&self) -> usize {
        (self.month.saturating_sub(1) as usize).min(11)
    }
}

/// A `tracing` event formatter rendering a [`LogFormat`].
struct PatternFormatter(LogFormat);

impl<S, N> FormatEvent<S, N> for PatternFormatter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // Logging is off the data path: two small strings per line are fine.
        let mut fields = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut fields), event)?;
        let mut line = String::with_capacity(fields.len() + 64);
        self.0.render(&mut line, event, &fields);
        line.push('\n');
        writer.write_str(&line)
    }
}

/// Where and how the process logs.
#[derive(Debug)]
pub struct LogSetup<'a> {
    /// The `tracing` filter for `--log-level` (`COURIER_LOG` overrides it).
    pub filter: &'a str,
    /// `--log-path`.
    pub path: Option<&'a Path>,
    /// `--log-format`.
    pub format: Option<LogFormat>,
}

/// Installs the process's subscriber. Log lines go to `--log-path` (appended to) or to
/// stderr; `tracing`'s default shape is coloured only on a terminal. The filter can be
/// changed later, per logger ([`set_levels`], the admin's `/logging`).
pub fn init(setup: LogSetup<'_>) -> Result<(), LoggingError> {
    let from_env = std::env::var("COURIER_LOG").ok();
    let filter = from_env
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(setup.filter));
    if let Ok(mut levels) = LEVELS.lock() {
        levels.base = setup.filter.to_string();
    }
    let file = match setup.path {
        Some(path) => Some(Arc::new(open_append(path)?)),
        None => None,
    };
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    // Four combinations of writer and format, each a different subscriber type; each
    // keeps a way to swap its filter.
    macro_rules! install {
        ($b:expr) => {{
            let b = $b.with_filter_reloading();
            let handle = b.reload_handle();
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            b.try_init()
        }};
    }
    let installed = match (file, setup.format) {
        (Some(file), Some(format)) => {
            install!(builder
                .with_writer(file)
                .event_format(PatternFormatter(format)))
        }
        (Some(file), None) => install!(builder.with_writer(file)),
        (None, Some(format)) => install!(builder
            .with_writer(std::io::stderr)
            .event_format(PatternFormatter(format))),
        (None, None) => install!(builder.with_writer(std::io::stderr)),
    };
    installed.map_err(|_| LoggingError::AlreadySet)
}

/// Swaps the installed subscriber's filter.
type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static RELOAD: std::sync::OnceLock<Reload> = std::sync::OnceLock::new();

/// The loggers `/logging` names (Courier's modules; `main` is the server's), as `%n`
/// prints them.
pub const LOGGERS: &[&str] = &[
    "admin",
    "bootstrap",
    "config",
    "extensions",
    "filters",
    "http",
    "layered_runtime",
    "listener",
    "main",
    "overload",
    "protocol",
    "stats",
    "transport_socket",
    "upstream",
    "worker",
    "xds",
];

/// The level set for each logger that differs from the base (`--log-level`).
#[derive(Default)]
struct Levels {
    base: String,
    per_logger: std::collections::BTreeMap<&'static str, &'static str>,
}

static LEVELS: std::sync::Mutex<Levels> = std::sync::Mutex::new(Levels {
    base: String::new(),
    per_logger: std::collections::BTreeMap::new(),
});

/// Why `/logging` refused a change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LevelError {
    /// Not one of [`LOGGERS`].
    #[error("unknown logger name")]
    UnknownLogger,
    /// Not one of Envoy's level names.
    #[error("unknown logger level")]
    UnknownLevel,
}

/// Envoy's level name (`-l`, `/logging`) as a `tracing` one.
pub fn tracing_level(envoy: &str) -> Result<&'static str, LevelError> {
    Ok(match envoy {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return Err(LevelError::UnknownLevel),
    })
}

/// Envoy's name for a `tracing` level.
fn envoy_level(tracing: &str) -> &'static str {
    match tracing {
        "trace" => "trace",
        "debug" => "debug",
        "warn" => "warning",
        "error" => "error",
        "off" => "off",
        _ => "info",
    }
}

/// Sets levels: `None` for every logger, else the named one; then swaps the filter.
pub fn set_levels(changes: &[(Option<&str>, &str)]) -> Result<(), LevelError> {
    let mut levels = LEVELS.lock().map_err(|_| LevelError::UnknownLogger)?;
    let mut next_base = levels.base.clone();
    let mut next = levels.per_logger.clone();
    for (logger, level) in changes {
        let level = tracing_level(level)?;
        match logger {
            None => {
                next_base = level.to_string();
                next.clear();
            }
            Some(name) => {
                let known = LOGGERS
                    .iter()
                    .find(|l| **l == *name)
                    .ok_or(LevelError::UnknownLogger)?;
                next.insert(known, level);
            }
        }
    }
    levels.base = next_base;
    levels.per_logger = next;
    let mut directives = vec![levels.base.clone()];
    for (logger, level) in &levels.per_logger {
        let module = if *logger == "main" { "server" } else { logger };
        directives.push(format!("courier::{module}={level}"));
    }
    if let (Some(reload), Ok(filter)) = (RELOAD.get(), EnvFilter::try_new(directives.join(","))) {
        if let Err(e) = reload(filter) {
            tracing::warn!(error = %e, "cannot change the log levels");
        }
    }
    Ok(())
}

/// `active loggers:` and each logger's level, as Envoy's `/logging` prints them.
pub fn levels_text() -> String {
    let levels = LEVELS.lock().ok();
    let mut out = String::from("active loggers:\n");
    for logger in LOGGERS {
        let level = levels
            .as_ref()
            .and_then(|l| l.per_logger.get(logger).copied().or(Some(l.base.as_str())))
            .unwrap_or("info");
        out.push_str(&format!("  {logger}: {}\n", envoy_level(level)));
    }
    out
}

fn open_append(path: &Path) -> Result<File, LoggingError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LoggingError::Open {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_default_format_parses() {
        let f = LogFormat::parse("[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v", false)
            .expect("Envoy's default format");
        assert!(f.pieces.iter().any(|p| p.flag == Flag::Message));
        assert!(f.pieces.iter().any(|p| p.flag == Flag::Thread));
    }

    #[test]
    fn unknown_flags_are_refused_by_name() {
        let e = LogFormat::parse("%Y %k", false).expect_err("refused");
        assert!(e.to_string().contains("'%k'"), "{e}");
        assert!(matches!(
            LogFormat::parse("abc %", false),
            Err(LoggingError::TrailingPercent)
        ));
        assert!(matches!(
            LogFormat::parse("%o", false),
            Err(LoggingError::UnknownFlag('o'))
        ));
    }

    #[test]
    fn padding_and_escapes() {
        let mut out = String::new();
        pad(&mut out, "info", Align::Left, 7);
        pad(&mut out, "x", Align::Right, 3);
        pad(&mut out, "ab", Align::Centre, 6);
        assert_eq!(out, "info     x  ab  ");
        let mut out = String::new();
        escape_control(&mut out, "a\nb\tc").expect("string");
        assert_eq!(out, "a\\nb\\tc");
        let mut out = String::new();
        escape_json(&mut out, "say \"hi\"\n").expect("string");
        assert_eq!(out, "say \\\"hi\\\"\\n");
        assert_eq!(logger_name("courier::server::instance"), "main");
        assert_eq!(logger_name("courier::http::codec"), "http");
        assert_eq!(logger_name("h2::proto"), "h2::proto");
    }
}
