//! `%START_TIME(<format>)%` and `%START_TIME_LOCAL(<format>)%`: a time in a strftime-like
//! format, as Envoy 1.40 prints it.
//!
//! Envoy formats with abseil's `FormatTime` (cctz), in UTC or the local zone, plus its own
//! sub-second specifiers, and it caches what does not change within a second:
//!
//! - `%f` is the nine-digit fraction of the second and `%1f` … `%9f` its first digits;
//!   `%s` the seconds since the epoch.
//! - `%E#f` (`#` one digit) is `#` digits of the fraction, `%E*f` the fraction without its
//!   trailing zeros (`0` when there is none); `%E#S` / `%E*S` are the seconds followed by
//!   those (after a `.`, when there are any).
//! - Everything else is formatted by cctz: `%Y %m %d %e %U %u %W %w %H %M %S %z %Z %s`,
//!   `%:z %::z %:::z`, `%ET %Ez %E*z %E4Y` and `%E#S %E#f` of several digits by cctz itself,
//!   the rest by the C library's `strftime` (C locale). That text is formatted once a
//!   second on each worker thread and reused for the rest of that second (Envoy's cache),
//!   so a multi-digit `%E10f` shows the fraction of the first request of the second.
//!
//! Specifiers are found in the format without regard to `%%` escapes (`%%f` is a `%`
//! then the fraction), as Envoy finds them. Times have microsecond precision, as Envoy's
//! clock has.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::time::SystemTime;

/// A compiled time format.
#[derive(Debug, Clone)]
pub struct TimeFormat {
    pieces: Vec<Piece>,
    local: bool,
    /// The cache key: the format and the zone.
    key: Box<str>,
}

/// A part of a time format.
#[derive(Debug, Clone)]
enum Piece {
    /// Text cctz formats (cached for the second).
    Static(String),
    /// `%f` (9) and `%1f` … `%9f`: leading digits of the nine-digit fraction.
    Digits(usize),
    /// `%s`.
    Epoch,
    /// `%E#f`: `#` digits of the fraction (none for `%E0f`).
    Fraction(usize),
    /// `%E*f`.
    FractionTrimmed,
    /// `%E#S`'s fraction: `.` and `#` digits (nothing for `%E0S`); its `%S` is static.
    SecondsFraction(usize),
    /// `%E*S`'s fraction: `.` and the trimmed digits, if any.
    SecondsFractionTrimmed,
}

/// A time broken down in its zone.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 0-based.
    yearday: u32,
    /// Seconds east of UTC.
    offset: i64,
    abbr: String,
    dst: bool,
    unix: i64,
    /// Femtoseconds of the second (cctz's precision).
    femtos: i64,
}

impl TimeFormat {
    /// Compiles `format` (`local`: in the local time zone).
    pub fn new(format: &str, local: bool) -> TimeFormat {
        TimeFormat {
            pieces: parse(format),
            local,
            key: format!("{}{format}", if local { 'L' } else { 'U' }).into(),
        }
    }

    /// `t` in this format.
    pub fn format(&self, t: SystemTime) -> String {
        /// Each format's static text, with the second it was made for.
        type Cache = HashMap<Box<str>, (i64, Vec<String>)>;
        thread_local! {
            static CACHE: RefCell<Cache> = RefCell::new(HashMap::new());
        }
        let (secs, nanos) = split(t);
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.get(&self.key).is_none_or(|(at, _)| *at != secs) {
                // As Envoy's: entries of other seconds go when one is made.
                cache.retain(|_, (at, _)| *at == secs);
                let civil = civil(secs, nanos, self.local);
                let texts = self
                    .pieces
                    .iter()
                    .filter_map(|p| match p {
                        Piece::Static(s) => Some(cctz_format(s, &civil)),
                        _ => None,
                    })
                    .collect();
                cache.insert(self.key.clone(), (secs, texts));
            }
            let statics = cache.get(&self.key).map_or(&[][..], |(_, t)| t.as_slice());
            self.render(secs, nanos, statics)
        })
    }

    /// The format with its static pieces `statics` (in order) and the time's own digits.
    fn render(&self, secs: i64, nanos: u32, statics: &[String]) -> String {
        let fraction = format!("{nanos:09}");
        let mut out = String::with_capacity(64);
        let mut next_static = statics.iter();
        for piece in &self.pieces {
            match piece {
                Piece::Static(_) => out.push_str(next_static.next().map_or("", String::as_str)),
                Piece::Digits(n) | Piece::Fraction(n) => out.push_str(&fraction[..*n]),
                Piece::Epoch => out.push_str(&secs.to_string()),
                Piece::FractionTrimmed => out.push_str(&trimmed_fraction(nanos, true)),
                Piece::SecondsFraction(0) => {}
                Piece::SecondsFraction(n) => {
                    out.push('.');
                    out.push_str(&fraction[..*n]);
                }
                Piece::SecondsFractionTrimmed => {
                    let f = trimmed_fraction(nanos, false);
                    if !f.is_empty() {
                        out.push('.');
                        out.push_str(&f);
                    }
                }
            }
        }
        out
    }
}

/// Seconds since the epoch and the nanoseconds of the second, at microsecond precision.
fn split(t: SystemTime) -> (i64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_micros() * 1000,
        ),
        Err(e) => {
            let d = e.duration();
            let micros = d.subsec_micros();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if micros == 0 {
                (secs, 0)
            } else {
                (secs - 1, (1_000_000 - micros) * 1000)
            }
        }
    }
}

/// The fraction's digits without trailing zeros (`zero`: `0` when none are left).
fn trimmed_fraction(nanos: u32, zero: bool) -> String {
    let digits = format!("{nanos:09}");
    let trimmed = digits.trim_end_matches('0');
    if trimmed.is_empty() && zero {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Splits a format into static text and the specifiers Envoy formats itself.
fn parse(format: &str) -> Vec<Piece> {
    let b = format.as_bytes();
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    let mut lit_start = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        let at = |k: usize| b.get(i + k).copied();
        let found: Option<(usize, Piece, &str)> = match (at(1), at(2), at(3)) {
            (Some(b'f'), _, _) => Some((2, Piece::Digits(9), "")),
            (Some(d @ b'1'..=b'9'), Some(b'f'), _) => {
                Some((3, Piece::Digits(usize::from(d - b'0')), ""))
            }
            (Some(b's'), _, _) => Some((2, Piece::Epoch, "")),
            (Some(b'E'), Some(d @ b'0'..=b'9'), Some(b'f')) => {
                Some((4, Piece::Fraction(usize::from(d - b'0')), ""))
            }
            (Some(b'E'), Some(b'*'), Some(b'f')) => Some((4, Piece::FractionTrimmed, "")),
            (Some(b'E'), Some(d @ b'0'..=b'9'), Some(b'S')) => {
                Some((4, Piece::SecondsFraction(usize::from(d - b'0')), "%S"))
            }
            (Some(b'E'), Some(b'*'), Some(b'S')) => Some((4, Piece::SecondsFractionTrimmed, "%S")),
            _ => None,
        };
        let Some((len, piece, static_part)) = found else {
            i += 1;
            continue;
        };
        text.push_str(&format[lit_start..i]);
        text.push_str(static_part);
        if !text.is_empty() {
            pieces.push(Piece::Static(std::mem::take(&mut text)));
        }
        pieces.push(piece);
        i += len;
        lit_start = i;
    }
    text.push_str(&format[lit_start..]);
    if !text.is_empty() {
        pieces.push(Piece::Static(text));
    }
    pieces
}

/// `secs` (and `nanos` into it) broken down in UTC or the local zone.
fn civil(secs: i64, nanos: u32, local: bool) -> Civil {
    let femtos = i64::from(nanos) * 1_000_000;
    if local {
        if let Some(c) = local_civil(secs, femtos) {
            return c;
        }
    }
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let yearday = days - days_from_civil(year, 1, 1);
    Civil {
        year,
        month,
        day,
        hour: (sod / 3600) as u32,
        minute: ((sod / 60) % 60) as u32,
        second: (sod % 60) as u32,
        // 1970-01-01 was a Thursday.
        weekday: (days + 4).rem_euclid(7) as u32,
        yearday: yearday as u32,
        offset: 0,
        abbr: "UTC".to_string(),
        dst: false,
        unix: secs,
        femtos,
    }
}

/// The local zone's breakdown (the C library's, which reads `TZ` as abseil does).
fn local_civil(secs: i64, femtos: i64) -> Option<Civil> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: `tm` is plain data; localtime_r writes it and reads only `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return None;
    }
    let abbr = if tm.tm_zone.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null tm_zone is a NUL-terminated string the C library keeps.
        unsafe { std::ffi::CStr::from_ptr(tm.tm_zone) }
            .to_string_lossy()
            .into_owned()
    };
    Some(Civil {
        year: i64::from(tm.tm_year) + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        minute: tm.tm_min as u32,
        second: tm.tm_sec as u32,
        weekday: tm.tm_wday as u32,
        yearday: tm.tm_yday as u32,
        // `c_long`: 32 bits on some targets.
        #[allow(clippy::useless_conversion)]
        offset: i64::from(tm.tm_gmtoff),
        abbr,
        dst: tm.tm_isdst > 0,
        unix: secs,
        femtos,
    })
}

/// (year, month, day) of a day count from 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if month <= 2 { y + 1 } else { y }, month, day)
}

/// The day count from 1970-01-01 of a civil date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A UTC offset as cctz writes it: `+hhmm` (`sep` empty), `+hh:mm`, with seconds under
/// `*` modes.
fn offset_text(offset: i64, mode: &str) -> String {
    let m = mode.as_bytes();
    let mut sign = '+';
    let mut off = offset;
    if off < 0 {
        off = -off;
        sign = '-';
    }
    let seconds = off % 60;
    let minutes = (off / 60) % 60;
    let hours = off / 3600;
    let sep = m.first().map(|&c| c as char);
    let ext = sep.is_some() && m.get(1) == Some(&b'*');
    let ccc = ext && m.get(2) == Some(&b':');
    let mut tail = String::new();
    if ext && (!ccc || seconds != 0) {
        tail = format!("{}{seconds:02}", sep.unwrap_or(':'));
    } else if hours == 0 && minutes == 0 {
        sign = '+';
    }
    let mut mid = String::new();
    if !ccc || minutes != 0 || seconds != 0 {
        mid = match sep {
            Some(s) => format!("{s}{minutes:02}"),
            None => format!("{minutes:02}"),
        };
    }
    format!("{sign}{hours:02}{mid}{tail}")
}

/// cctz's `format()`: the specifiers it handles itself, the rest through `strftime`.
fn cctz_format(format: &str, c: &Civil) -> String {
    let b = format.as_bytes();
    let end = b.len();
    let mut result = String::with_capacity(format.len() + 16);
    let mut pending = 0usize;
    let mut cur = 0usize;
    let flush = |result: &mut String, from: usize, to: usize| {
        if to > from {
            format_tm(result, &format[from..to], c);
        }
    };
    while cur != end {
        let mut start = cur;
        while cur != end && b[cur] != b'%' {
            cur += 1;
        }
        if cur != start && pending == start {
            result.push_str(&format[pending..cur]);
            pending = cur;
            start = cur;
        }
        let percent = cur;
        while cur != end && b[cur] == b'%' {
            cur += 1;
        }
        if cur != start && pending == start {
            let escaped = (cur - pending) / 2;
            for _ in 0..escaped {
                result.push('%');
            }
            pending += escaped * 2;
            if pending != cur && cur == end {
                result.push('%');
                pending += 1;
            }
        }
        if cur == end || (cur - percent).is_multiple_of(2) {
            continue;
        }
        let spec = b[cur];
        if b"YmdeUuWwHMSzZs%".contains(&spec) {
            flush(&mut result, pending, cur - 1);
            match spec {
                b'Y' => result.push_str(&c.year.to_string()),
                b'm' => result.push_str(&format!("{:02}", c.month)),
                b'd' => result.push_str(&format!("{:02}", c.day % 100)),
                b'e' => result.push_str(&format!("{:2}", c.day % 100)),
                b'U' => result.push_str(&format!("{:02}", (c.yearday + 7 - c.weekday) / 7)),
                b'u' => result.push_str(&(if c.weekday == 0 { 7 } else { c.weekday }).to_string()),
                b'W' => {
                    result.push_str(&format!("{:02}", (c.yearday + 7 - (c.weekday + 6) % 7) / 7))
                }
                b'w' => result.push_str(&c.weekday.to_string()),
                b'H' => result.push_str(&format!("{:02}", c.hour)),
                b'M' => result.push_str(&format!("{:02}", c.minute)),
                b'S' => result.push_str(&format!("{:02}", c.second)),
                b'z' => result.push_str(&offset_text(c.offset, "")),
                b'Z' => result.push_str(&c.abbr),
                b's' => result.push_str(&c.unix.to_string()),
                _ => result.push('%'),
            }
            cur += 1;
            pending = cur;
            continue;
        }
        if spec == b':' && cur + 1 != end {
            let colons = b[cur..].iter().take_while(|&&x| x == b':').count().min(3);
            if b.get(cur + colons) == Some(&b'z') {
                flush(&mut result, pending, cur - 1);
                let mode = [":", ":*", ":*:"][colons - 1];
                result.push_str(&offset_text(c.offset, mode));
                cur += colons + 1;
                pending = cur;
                continue;
            }
        }
        if spec != b'E' {
            continue;
        }
        cur += 1;
        if cur == end {
            continue;
        }
        match b[cur] {
            b'T' => {
                flush(&mut result, pending, cur - 2);
                result.push('T');
                cur += 1;
                pending = cur;
            }
            b'z' => {
                flush(&mut result, pending, cur - 2);
                result.push_str(&offset_text(c.offset, ":"));
                cur += 1;
                pending = cur;
            }
            b'*' if b.get(cur + 1) == Some(&b'z') => {
                flush(&mut result, pending, cur - 2);
                result.push_str(&offset_text(c.offset, ":*"));
                cur += 2;
                pending = cur;
            }
            b'*' if matches!(b.get(cur + 1), Some(b'S' | b'f')) => {
                flush(&mut result, pending, cur - 2);
                let digits = format!("{:015}", c.femtos);
                let trimmed = digits.trim_end_matches('0');
                if b[cur + 1] == b'S' {
                    result.push_str(&format!("{:02}", c.second));
                    if !trimmed.is_empty() {
                        result.push('.');
                        result.push_str(trimmed);
                    }
                } else if trimmed.is_empty() {
                    result.push('0');
                } else {
                    result.push_str(trimmed);
                }
                cur += 2;
                pending = cur;
            }
            b'4' if b.get(cur + 1) == Some(&b'Y') => {
                flush(&mut result, pending, cur - 2);
                result.push_str(&year_width(c.year, 4));
                cur += 2;
                pending = cur;
            }
            d if d.is_ascii_digit() => {
                let digits = b[cur..].iter().take_while(|x| x.is_ascii_digit()).count();
                let n: Option<usize> = format[cur..cur + digits]
                    .parse()
                    .ok()
                    .filter(|n| *n <= 1024);
                let np = cur + digits;
                if let (Some(n), Some(&kind @ (b'S' | b'f'))) = (n, b.get(np)) {
                    flush(&mut result, pending, cur - 2);
                    let mut text = String::new();
                    if kind == b'S' {
                        text.push_str(&format!("{:02}", c.second));
                    }
                    if n > 0 {
                        let n = n.min(18);
                        let v: i128 = if n > 15 {
                            i128::from(c.femtos) * 10i128.pow((n - 15) as u32)
                        } else {
                            i128::from(c.femtos) / 10i128.pow((15 - n) as u32)
                        };
                        if kind == b'S' {
                            text.push('.');
                        }
                        text.push_str(&format!("{v:0n$}"));
                    }
                    result.push_str(&text);
                    cur = np + 1;
                    pending = cur;
                }
            }
            _ => {}
        }
    }
    flush(&mut result, pending, end);
    result
}

/// A year zero-padded to `width` characters, its sign included (cctz's `Format64`).
fn year_width(year: i64, width: usize) -> String {
    if year < 0 {
        format!("-{:0w$}", -year, w = width.saturating_sub(1))
    } else {
        format!("{year:0width$}")
    }
}

/// cctz's `FormatTM`: `fmt` through the C library's `strftime` (C locale), with a buffer
/// grown from twice the format's length up to sixteen times; nothing when it never fits
/// (or the result is empty).
fn format_tm(out: &mut String, fmt: &str, c: &Civil) {
    let Ok(cfmt) = CString::new(fmt) else {
        return;
    };
    // SAFETY: `tm` is plain data (pointers null), filled as cctz's `ToTM` fills it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_sec = c.second as i32;
    tm.tm_min = c.minute as i32;
    tm.tm_hour = c.hour as i32;
    tm.tm_mday = c.day as i32;
    tm.tm_mon = c.month as i32 - 1;
    tm.tm_year = i32::try_from(c.year - 1900).unwrap_or(i32::MAX);
    tm.tm_wday = c.weekday as i32;
    tm.tm_yday = c.yearday as i32;
    tm.tm_isdst = i32::from(c.dst);
    let mut size = fmt.len() * 2;
    while size < fmt.len() * 32 {
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has `size` writable bytes; `cfmt` and `tm` are valid.
        let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), size, cfmt.as_ptr(), &tm) };
        if n > 0 {
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
            return;
        }
        size *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 2026-12-06T10:20:09.210101Z, a Sunday.
    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(1_796_552_409, 210_101_123)
    }

    fn fmt(f: &str) -> String {
        TimeFormat::new(f, false).format(at())
    }

    #[test]
    fn formats_as_envoy_1_40() {
        // Outputs Envoy 1.40 printed for the same formats.
        assert_eq!(
            fmt("%s.%3f|%f|%1f|%9f"),
            "1796552409.210|210101000|2|210101000"
        );
        assert_eq!(
            fmt("%Y-%m-%dT%H:%M:%S%z %Z|%E3S|%E*S|%Ez|%c|%x|%X|%D|%T|%e|%j"),
            "2026-12-06T10:20:09+0000 UTC|09.210|09.210101|+00:00|Sun Dec  6 10:20:09 2026|12/06/26|10:20:09|12/06/26|10:20:09| 6|340"
        );
        assert_eq!(
            fmt("%a %A %b %B|%p|%I|%U %W %V %G %g|%u %w|%y %C|%h|%r|%R|%%|%-d|%E4Y|%Ey|%+|%q|%%f|%0f|%k|%l|%P|%s"),
            "Sun Sunday Dec December|AM|10|49 48 49 2026 26|7 0|26 20|Dec|10:20:09 AM|10:20|%|6|2026|26|%+|%q|%210101000|%0f|10|10|am|1796552409"
        );
        assert_eq!(
            fmt("%%s|%%%f|%%%%f|%10f|%E3f|%E*f|%E6f|%E0S|%E12S|%Ez|%E*z|%:z|%::z|%ET|%Od|%_H|%^a|%#b|%5Y|%-j|%E|%O|x%"),
            "%1796552409|%210101000|%%210101000|      %10f|210|210101|210101|09|09.210101000000|+00:00|+00:00:00|+00:00|+00:00:00|T|06|10|SUN|DEC|02026|340|%E|%O|x%"
        );
        assert_eq!(
            fmt("%%E3S|%%%E3S|%E*Sx|%E10S|%E|%|%Z|%z|a%%b|%10Y|%Q|%-e|%O"),
            "%S.210|%09.210|09.210101x|09.2101010000|%E|%|UTC|+0000|a%b|0000002026|%Q|6|%O"
        );
        assert_eq!(
            fmt("%E0f|%E1f|%E9f|%E%s|%E5%s"),
            "|2|210101000|%E1796552409|%E51796552409"
        );
        assert_eq!(fmt("%"), "%");
        assert_eq!(fmt("x%%"), "x%");
        assert_eq!(fmt("%%%%"), "%%");
    }

    #[test]
    fn trims_fractions_as_envoy() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_796_552_502, 601_960_000);
        let f = TimeFormat::new("%9f|%E*f|%E*S|%E1S|%E9S", false);
        assert_eq!(f.format(t), "601960000|60196|42.60196|42.6|42.601960000");
        let whole = SystemTime::UNIX_EPOCH + Duration::new(1_796_552_502, 0);
        assert_eq!(
            TimeFormat::new("%E*f|%E*S|%E3S", false).format(whole),
            "0|42|42.000"
        );
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 59, 60, 365, 10_957, 20_793, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
