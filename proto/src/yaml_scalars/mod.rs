//! YAML scalars resolved as Envoy resolves them.
//!
//! Envoy does not read YAML into a proto directly: it loads the document with yaml-cpp and
//! turns it into JSON (`parseYamlNode` in `source/common/protobuf/yaml_utility.cc`), then
//! parses the JSON into the proto. A quoted (or block) scalar is a JSON string; a plain one
//! is, in this order:
//!
//! - `null` for `~`, `null`, `Null`, `NULL` and the empty scalar;
//! - a boolean when yaml-cpp's `convert<bool>` reads it: `y`, `yes`, `true`, `on` and `n`,
//!   `no`, `false`, `off`, in lower case, upper case or capitalized (so `off` is `false`,
//!   and a string field refuses it);
//! - an integer when yaml-cpp's `convert<int64_t>` reads it, i.e. a C++ stream with the base
//!   taken from the prefix (`0x10` is 16, `010` is 8, `+5` is 5) that consumes the whole
//!   text: a JSON number when it fits an `int32`, else the string of its decimal value;
//! - otherwise a string: Envoy 1.40 has no float step, so `1.5`, `1e3` and `.inf` are the
//!   strings `"1.5"`, `"1e3"` and `".inf"` (a `Struct` keeps them so; a numeric field parses
//!   the string, as the proto3 JSON mapping allows).
//!
//! serde_yaml_ng resolves plain scalars with the YAML 1.2 core schema instead (`yes` is a
//! string, `1.5` a float, `010` a string). Rather than re-implementing its streaming
//! deserializer, whose error paths and locations the rest of the crate relies on, [`rewrite`]
//! runs a cheap pre-pass over the same parser serde_yaml_ng uses (libyaml, through
//! `unsafe-libyaml`, which alone reports each scalar's style and span) and rewrites, in a copy
//! of the text, only the plain values whose two resolutions differ: `yes` becomes `true`,
//! `0x10` becomes `16`, `5000000000` and `1e3` become `"5000000000"` and `"1e3"`. Nothing is
//! copied when nothing differs (the common case), and lines never move: the edits are
//! recorded so that a location in the rewritten text maps back to the user's
//! ([`Rewrite::original`]). Mapping keys are left alone (yaml-cpp keys are strings), as are
//! scalars with an explicit tag. [`strings::Strict`] then makes string fields take only
//! strings, as the proto JSON parser does.

pub(crate) mod strings;

use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_sys;

use crate::error::Location;

/// A document's text with plain scalars respelled so that serde_yaml_ng resolves them as
/// Envoy does.
#[derive(Debug)]
pub(crate) struct Rewrite {
    /// The rewritten text.
    pub text: String,
    /// The edits, in text order.
    edits: Vec<Edit>,
}

/// One respelled scalar: where it starts in the original text and how much longer its new
/// spelling is.
#[derive(Debug, Clone, Copy)]
struct Edit {
    /// 1-based line.
    line: usize,
    /// 1-based column (in characters) of the scalar in the original text.
    column: usize,
    /// New length minus old length (both ASCII).
    delta: isize,
}

impl Rewrite {
    /// The location in the original text of `at`, a location in [`Rewrite::text`].
    pub fn original(&self, at: Location) -> Location {
        let mut column = at.column as isize;
        let mut shift = 0isize;
        for e in self.edits.iter().filter(|e| e.line == at.line) {
            // Where this edit's scalar starts in the rewritten text.
            if (e.column as isize + shift) < at.column as isize {
                column -= e.delta;
            }
            shift += e.delta;
        }
        Location {
            line: at.line,
            column: column.max(1) as usize,
        }
    }
}

/// The text with its plain scalars respelled as described in the module docs; `None` when no
/// scalar needs it, or when libyaml cannot parse the text (serde_yaml_ng then reports the
/// syntax error itself).
pub(crate) fn rewrite(text: &str) -> Option<Rewrite> {
    let spans = plain_values(text)?;
    let mut out = String::new();
    let mut edits = Vec::new();
    let mut copied = 0;
    for span in spans {
        let Some(original) = text.get(span.start..span.end) else {
            continue;
        };
        let Some(spelling) = respell(original) else {
            continue;
        };
        if out.is_empty() {
            out.reserve(text.len() + 64);
        }
        out.push_str(&text[copied..span.start]);
        out.push_str(&spelling);
        copied = span.end;
        edits.push(Edit {
            line: span.line,
            column: span.column,
            delta: spelling.len() as isize - original.len() as isize,
        });
    }
    if edits.is_empty() {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(Rewrite { text: out, edits })
}

/// How serde_yaml_ng must see the plain scalar `s` to resolve it as Envoy does; `None` when
/// it already does.
fn respell(s: &str) -> Option<String> {
    if let Some(b) = yaml_cpp_bool(s) {
        let canonical = if b { "true" } else { "false" };
        return (s != canonical && !matches!(s, "True" | "TRUE" | "False" | "FALSE"))
            .then(|| canonical.to_string());
    }
    if is_null(s) {
        return None;
    }
    if let Some(n) = yaml_cpp_int(s) {
        let decimal = n.to_string();
        return if i32::try_from(n).is_ok() {
            (decimal != s).then_some(decimal)
        } else {
            Some(format!("\"{decimal}\""))
        };
    }
    // A string to Envoy; quote it if serde_yaml_ng would read anything else.
    serde_non_string(s).then(|| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// yaml-cpp's null scalars (the empty one aside, which has no text to respell).
fn is_null(s: &str) -> bool {
    matches!(s, "~" | "null" | "Null" | "NULL")
}

/// yaml-cpp's `convert<bool>`: the YAML 1.1 booleans in lower case, upper case or
/// capitalized.
pub(crate) fn yaml_cpp_bool(s: &str) -> Option<bool> {
    let flexible = s.bytes().all(|b| b.is_ascii_lowercase())
        || s.bytes().all(|b| b.is_ascii_uppercase())
        || (s.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
            && s.bytes().skip(1).all(|b| b.is_ascii_lowercase()));
    if !flexible {
        return None;
    }
    match s.to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "on" => Some(true),
        "n" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// yaml-cpp's `convert<int64_t>` as Envoy 1.40 builds it: a stream extraction with the base
/// taken from the prefix (`0x`/`0X` hex, `0` octal, else decimal) after an optional sign,
/// which must consume the whole text and fit an `int64`.
pub(crate) fn yaml_cpp_int(s: &str) -> Option<i64> {
    let (negative, unsigned) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        (16, hex)
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (8, &unsigned[1..])
    } else {
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Whether serde_yaml_ng could read the plain scalar `s` as something other than a string
/// (a null, boolean, integer or float). Errs towards yes: quoting a scalar it would read as a
/// string anyway changes nothing.
fn serde_non_string(s: &str) -> bool {
    if is_null(s) || matches!(s, "true" | "True" | "TRUE" | "false" | "False" | "FALSE") {
        return true;
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let Some(first) = unsigned.chars().next() else {
        return false;
    };
    if !(first.is_ascii_digit() || first == '.') {
        return false;
    }
    if matches!(
        unsigned,
        ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN"
    ) {
        return true;
    }
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unsigned.strip_prefix(prefix) {
            return !rest.is_empty()
                && rest
                    .trim_start_matches('+')
                    .chars()
                    .all(|c| c.is_digit(radix));
        }
    }
    unsigned.parse::<f64>().is_ok()
}

/// A plain, untagged scalar in value position (not a mapping key).
struct Span {
    /// Byte offsets in the text.
    start: usize,
    end: usize,
    /// 1-based line and column (characters) of its start.
    line: usize,
    column: usize,
}

/// What the pre-pass tracks of each open collection.
enum Open {
    Sequence,
    /// A mapping; `true` while its next node is a key.
    Mapping(bool),
}

/// The plain, untagged scalars of `text` that are not mapping keys, in text order; `None` if
/// libyaml fails on the text.
fn plain_values(text: &str) -> Option<Vec<Span>> {
    let mut parser = Parser::new(text)?;
    let mut spans = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    // After a node ends: a mapping's next node flips between key and value.
    fn node_done(open: &mut [Open]) {
        if let Some(Open::Mapping(key)) = open.last_mut() {
            *key = !*key;
        }
    }
    loop {
        let event = parser.next()?;
        match event {
            Event::StreamEnd => break,
            Event::Scalar(scalar) => {
                let is_key = matches!(open.last(), Some(Open::Mapping(true)));
                if scalar.plain && !scalar.tagged && !is_key {
                    spans.push(scalar.span);
                }
                node_done(&mut open);
            }
            Event::Alias => node_done(&mut open),
            Event::SequenceStart => open.push(Open::Sequence),
            Event::MappingStart => open.push(Open::Mapping(true)),
            Event::CollectionEnd => {
                open.pop();
                node_done(&mut open);
            }
            Event::Other => {}
        }
    }
    Some(spans)
}

/// The events of the pre-pass.
enum Event {
    StreamEnd,
    Scalar(ScalarEvent),
    Alias,
    SequenceStart,
    MappingStart,
    CollectionEnd,
    /// Stream and document starts and ends.
    Other,
}

struct ScalarEvent {
    plain: bool,
    tagged: bool,
    span: Span,
}

/// A libyaml parser over a borrowed text. `unsafe-libyaml` is a C translation: the parser
/// is used only through the calls below, which own and free everything they allocate.
struct Parser<'a> {
    sys: Box<MaybeUninit<unsafe_sys::yaml_parser_t>>,
    _text: &'a str,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Option<Parser<'a>> {
        let mut sys = Box::new(MaybeUninit::<unsafe_sys::yaml_parser_t>::uninit());
        // SAFETY: initialize fills the parser (boxed, so it does not move); on failure
        // nothing was allocated. The input outlives the parser (`'a`).
        unsafe {
            if unsafe_sys::yaml_parser_initialize(sys.as_mut_ptr()).fail {
                return None;
            }
            unsafe_sys::yaml_parser_set_encoding(sys.as_mut_ptr(), unsafe_sys::YAML_UTF8_ENCODING);
            unsafe_sys::yaml_parser_set_input_string(
                sys.as_mut_ptr(),
                text.as_ptr(),
                text.len() as u64,
            );
        }
        Some(Parser { sys, _text: text })
    }

    fn next(&mut self) -> Option<Event> {
        let mut event = MaybeUninit::<unsafe_sys::yaml_event_t>::uninit();
        // SAFETY: the parser was initialized in `new`; a successful parse fills `event`,
        // which is read, then freed once.
        unsafe {
            let parser = self.sys.as_mut_ptr();
            if unsafe_sys::yaml_parser_parse(parser, event.as_mut_ptr()).fail {
                return None;
            }
            let e = event.as_mut_ptr();
            let out = match (*e).type_ {
                unsafe_sys::YAML_STREAM_END_EVENT => Event::StreamEnd,
                unsafe_sys::YAML_SCALAR_EVENT => {
                    let start = (*e).start_mark;
                    let end = (*e).end_mark;
                    Event::Scalar(ScalarEvent {
                        plain: (*e).data.scalar.style == unsafe_sys::YAML_PLAIN_SCALAR_STYLE,
                        tagged: !(*e).data.scalar.tag.is_null(),
                        span: Span {
                            start: start.index as usize,
                            end: end.index as usize,
                            line: start.line as usize + 1,
                            column: start.column as usize + 1,
                        },
                    })
                }
                unsafe_sys::YAML_ALIAS_EVENT => Event::Alias,
                unsafe_sys::YAML_SEQUENCE_START_EVENT => Event::SequenceStart,
                unsafe_sys::YAML_MAPPING_START_EVENT => Event::MappingStart,
                unsafe_sys::YAML_SEQUENCE_END_EVENT | unsafe_sys::YAML_MAPPING_END_EVENT => {
                    Event::CollectionEnd
                }
                _ => Event::Other,
            };
            unsafe_sys::yaml_event_delete(e);
            Some(out)
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, freed once here.
        unsafe { unsafe_sys::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(text: &str) -> String {
        rewrite(text)
            .map(|r| r.text)
            .unwrap_or_else(|| text.to_string())
    }

    #[test]
    fn booleans_as_yaml_cpp_reads_them() {
        for (s, b) in [
            ("y", true),
            ("Yes", true),
            ("ON", true),
            ("n", false),
            ("Off", false),
        ] {
            assert_eq!(yaml_cpp_bool(s), Some(b), "{s}");
        }
        for s in ["yEs", "oN", "tRUE", "1", "yess"] {
            assert_eq!(yaml_cpp_bool(s), None, "{s}");
        }
    }

    #[test]
    fn integers_as_yaml_cpp_reads_them() {
        let cases = [
            ("10", Some(10)),
            ("+5", Some(5)),
            ("-7", Some(-7)),
            ("0x10", Some(16)),
            ("0X1f", Some(31)),
            ("010", Some(8)),
            ("0", Some(0)),
            ("-0x10", Some(-16)),
            ("08", None),
            ("0o17", None),
            ("1_000", None),
            ("1e3", None),
            ("0x", None),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
        ];
        for (s, want) in cases {
            assert_eq!(yaml_cpp_int(s), want, "{s}");
        }
    }

    #[test]
    fn only_plain_values_are_respelled() {
        assert_eq!(
            rewritten("a: yes\nb: 'yes'\nyes: no\nc: [on, \"off\", 0x10, 010, 1.5]\n"),
            "a: true\nb: 'yes'\nyes: false\nc: [true, \"off\", 16, 8, \"1.5\"]\n"
        );
        assert_eq!(
            rewritten("a: 5000000000\nb: .inf\nc: 1.2.3.4\nd: ~\ne: !!str yes\nf: |\n  on\n"),
            "a: \"5000000000\"\nb: \".inf\"\nc: 1.2.3.4\nd: ~\ne: !!str yes\nf: |\n  on\n"
        );
        assert!(rewrite("a: true\nb: 10\nc: x\nd: 127.0.0.1\n").is_none());
    }

    #[test]
    fn locations_map_back_to_the_original() {
        let r = rewrite("a: {b: y, c: 0x10, d: x}\n").expect("rewritten");
        assert_eq!(r.text, "a: {b: true, c: 16, d: x}\n");
        let at = |line, column| Location { line, column };
        // `true` starts where `y` did; `16` is 3 to the right of `0x10`; `x` 1 to the right.
        assert_eq!(r.original(at(1, 8)), at(1, 8));
        assert_eq!(r.original(at(1, 17)), at(1, 14));
        assert_eq!(r.original(at(1, 24)), at(1, 23));
        assert_eq!(r.original(at(2, 1)), at(2, 1));
    }
}
