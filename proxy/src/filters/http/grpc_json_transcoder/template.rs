//! `google.api.http` path templates (`/v1/{name=shelves/*}/books/**:verb`): parsed once at
//! config time, matched against a request's path segments (grpc-httpjson-transcoding's
//! `HttpTemplate` and `PathMatcher`).

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    /// A literal segment, matched exactly.
    Literal(String),
    /// `*`: any one segment.
    Single,
    /// `**`: the rest of the path.
    Multi,
}

/// A variable of a template: the field it binds and the segments it covers.
#[derive(Debug, Clone)]
pub(super) struct Variable {
    /// The field path (`a.b.c`), split.
    pub field_path: Vec<String>,
    /// First segment covered.
    pub start: usize,
    /// One past the last segment covered (`None`: to the end, for `**`).
    pub end: Option<usize>,
}

/// A parsed template.
#[derive(Debug, Clone)]
pub(super) struct Template {
    pub segments: Vec<Segment>,
    pub variables: Vec<Variable>,
    /// The custom verb after `:`, if any.
    pub verb: Option<String>,
}

impl Template {
    /// Parses `text`; `None` when it is not a valid template.
    pub(super) fn parse(text: &str) -> Option<Template> {
        if text == "/" {
            return Some(Template {
                segments: Vec::new(),
                variables: Vec::new(),
                verb: None,
            });
        }
        let rest = text.strip_prefix('/')?;
        let mut p = Parser {
            s: rest.as_bytes(),
            i: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        p.segments_until(None)?;
        let verb = if p.peek() == Some(b':') {
            p.i += 1;
            let v = p.literal()?;
            Some(v)
        } else {
            None
        };
        if p.i != p.s.len() {
            return None;
        }
        // `**` may only be last.
        let multi = p.segments.iter().position(|s| *s == Segment::Multi);
        if multi.is_some_and(|m| m + 1 != p.segments.len()) {
            return None;
        }
        Some(Template {
            segments: p.segments,
            variables: p.variables,
            verb,
        })
    }

    /// Whether the template matches `parts` (the path's segments, its verb split off);
    /// its specificity when it does: a literal beats `*`, which beats `**`, segment by
    /// segment (as the path matcher's trie tries them).
    pub(super) fn matches(&self, parts: &[&str], verb: Option<&str>) -> Option<Vec<u8>> {
        if self.verb.as_deref() != verb {
            return None;
        }
        let mut rank = Vec::with_capacity(self.segments.len());
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Multi => {
                    rank.push(0);
                    return Some(rank);
                }
                Segment::Single => {
                    parts.get(i)?;
                    rank.push(1);
                }
                Segment::Literal(l) => {
                    if parts.get(i)? != l {
                        return None;
                    }
                    rank.push(2);
                }
            }
        }
        (parts.len() == self.segments.len()).then_some(rank)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Segments separated by `/`, up to `end` (`}`) or a verb or the end.
    fn segments_until(&mut self, end: Option<u8>) -> Option<()> {
        loop {
            self.segment(end.is_some())?;
            match self.peek() {
                Some(b'/') => self.i += 1,
                c if c == end || c == Some(b':') || c.is_none() => return Some(()),
                _ => return None,
            }
        }
    }

    fn segment(&mut self, in_variable: bool) -> Option<()> {
        match self.peek()? {
            b'*' if self.s.get(self.i + 1) == Some(&b'*') => {
                self.i += 2;
                self.segments.push(Segment::Multi);
            }
            b'*' => {
                self.i += 1;
                self.segments.push(Segment::Single);
            }
            b'{' if !in_variable => {
                self.i += 1;
                let path = self.field_path()?;
                let start = self.segments.len();
                if self.peek() == Some(b'=') {
                    self.i += 1;
                    self.segments_until(Some(b'}'))?;
                } else {
                    self.segments.push(Segment::Single);
                }
                if self.peek() != Some(b'}') {
                    return None;
                }
                self.i += 1;
                let multi = self.segments[start..].contains(&Segment::Multi);
                self.variables.push(Variable {
                    field_path: path,
                    start,
                    end: (!multi).then_some(self.segments.len()),
                });
            }
            _ => {
                let l = self.literal()?;
                self.segments.push(Segment::Literal(l));
            }
        }
        Some(())
    }

    fn literal(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if matches!(c, b'/' | b'{' | b'}' | b'=' | b'*' | b':' | b'?' | b'#') {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn field_path(&mut self) -> Option<Vec<String>> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.') {
                break;
            }
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        let path: Vec<String> = text.split('.').map(str::to_string).collect();
        path.iter().all(|p| !p.is_empty()).then_some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_match() {
        let t = Template::parse("/v1/{name=shelves/*}/books/{book}").expect("parse");
        assert_eq!(t.segments.len(), 5);
        assert_eq!(t.variables[0].field_path, vec!["name"]);
        assert_eq!((t.variables[0].start, t.variables[0].end), (1, Some(3)));
        assert!(t
            .matches(&["v1", "shelves", "a", "books", "b"], None)
            .is_some());
        assert!(t.matches(&["v1", "shelves", "a", "books"], None).is_none());
        let t = Template::parse("/v1/{a.b=**}:run").expect("parse");
        assert_eq!(t.verb.as_deref(), Some("run"));
        assert!(t.matches(&["v1", "x", "y"], Some("run")).is_some());
        assert!(t.matches(&["v1", "x", "y"], None).is_none());
        assert!(Template::parse("v1").is_none());
        assert!(Template::parse("/v1/**/x").is_none());
        assert!(Template::parse("/v1/{a").is_none());
    }
}
