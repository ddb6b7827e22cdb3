//! `accept-encoding`, read as Envoy's compressor filters read it: one choice per response
//! among the compressors the request's chain registered.

/// A compressor filter that takes part in the choice: one that runs for the request and
/// compresses the response's content type.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    /// Its `content-encoding`.
    pub encoding: &'static str,
    /// `choose_first`: it wins a tie of q-values.
    pub choose_first: bool,
}

/// How `accept-encoding` was read (Envoy's `EncodingDecision`): the counter each filter
/// adds to, and the encoding chosen, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// A compressor named: the filter of that encoding compresses, the others are
    /// overshadowed.
    Compressor(&'static str),
    /// `*` chosen: the first registered compressor still allowed compresses.
    Wildcard(&'static str),
    /// `identity` preferred.
    Identity,
    /// Nothing acceptable.
    NotValid,
}

impl Decision {
    /// Whether a filter of `encoding` compresses.
    pub(super) fn picks(&self, encoding: &str) -> bool {
        match self {
            Decision::Compressor(e) | Decision::Wildcard(e) => *e == encoding,
            Decision::Identity | Decision::NotValid => false,
        }
    }
}

/// Reads `accept-encoding` as Envoy's `chooseEncoding` does, `candidates` in the order
/// their filters were registered (the chain's). Of several filters of one encoding the
/// first counts. A `q=0` takes its encoding out; an unparsable q-value drops its entry;
/// the highest q-value wins, the first of equals unless a later one is a compressor with
/// `choose_first`; `*` picks the first registered compressor left.
pub(super) fn choose(
    accept_encoding: &[u8],
    candidates: impl Iterator<Item = Candidate>,
) -> Decision {
    let mut allowed: Vec<Candidate> = Vec::with_capacity(3);
    for c in candidates {
        if !allowed.iter().any(|a| a.encoding == c.encoding) {
            allowed.push(c);
        }
    }
    let text = String::from_utf8_lossy(accept_encoding);
    let mut pairs: Vec<(&str, f32)> = Vec::new();
    for token in text.split(',').filter(|t| !t.is_empty()) {
        let (name, params) = match token.split_once(';') {
            Some((n, p)) => (n.trim(), Some(p)),
            None => (token.trim(), None),
        };
        let mut q = 1.0f32;
        if let Some((k, v)) = params.and_then(|p| p.split_once('=')) {
            if k.trim().eq_ignore_ascii_case("q") {
                match v.trim().parse::<f32>() {
                    Ok(v) => q = v,
                    Err(_) => continue,
                }
            }
        }
        pairs.push((name, q));
        if q == 0.0 {
            allowed.retain(|a| a.encoding != name);
        }
    }
    if pairs.is_empty() || allowed.is_empty() {
        return Decision::NotValid;
    }
    let compressor = |name: &str| allowed.iter().find(|a| a.encoding == name);
    let mut choice = ("identity", 0.0f32);
    for &(name, q) in &pairs {
        let known = || compressor(name).is_some() || name == "identity" || name == "*";
        let first_on_tie = || compressor(name).is_some_and(|c| c.choose_first);
        if (q > choice.1 && known()) || (q == choice.1 && first_on_tie()) {
            choice = (name, q);
        }
    }
    if choice.1 == 0.0 {
        return Decision::NotValid;
    }
    match choice.0 {
        "identity" => Decision::Identity,
        "*" => Decision::Wildcard(allowed[0].encoding),
        name => match compressor(name) {
            Some(c) => Decision::Compressor(c.encoding),
            None => Decision::NotValid,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(choose_first: bool) -> Candidate {
        Candidate {
            encoding: "gzip",
            choose_first,
        }
    }

    #[test]
    fn accept_encoding_is_read_as_envoy_reads_it() {
        use Decision::*;
        // (accept-encoding, whether gzip compresses the content type, decision)
        let cases: &[(&str, bool, Decision)] = &[
            ("gzip", true, Compressor("gzip")),
            ("deflate, gzip, br", true, Compressor("gzip")),
            ("identity", true, Identity),
            ("*", true, Wildcard("gzip")),
            ("gzip;q=0", true, NotValid),
            ("gzip;q=0, *", true, NotValid),
            ("deflate", true, NotValid),
            ("", true, NotValid),
            ("gzip;q=abc", true, NotValid),
            ("GZIP", true, NotValid),
            ("gzip;Q=0.5, identity;q=0.7", true, Identity),
            ("gzip;q=0.7, identity;q=0.5", true, Compressor("gzip")),
            ("identity, gzip", true, Identity),
            ("gzip", false, NotValid),
            ("identity;q=0", true, NotValid),
            // Measured with Envoy 1.40: a tied `*` is an ordinary wildcard.
            ("*;q=0.5, *;q=0.5", true, Wildcard("gzip")),
            ("gzip ; q=0.5", true, Compressor("gzip")),
        ];
        for (ae, allowed, want) in cases {
            let c = allowed.then_some(gzip(false));
            assert_eq!(choose(ae.as_bytes(), c.into_iter()), *want, "{ae}");
        }
        assert_eq!(
            choose(b"identity, gzip", [gzip(true)].into_iter()),
            Compressor("gzip")
        );
    }

    #[test]
    fn several_compressors_negotiate_as_in_envoy() {
        use Decision::*;
        let chain = |first: &str| {
            ["gzip", "br", "zstd"].map(|e| Candidate {
                encoding: e,
                choose_first: e == first,
            })
        };
        // (accept-encoding, the compressor with choose_first, decision), measured with
        // Envoy 1.40 (a chain of gzip, brotli, zstd filters).
        let cases: &[(&str, &str, Decision)] = &[
            ("br", "", Compressor("br")),
            ("*", "", Wildcard("gzip")),
            ("gzip, br", "", Compressor("gzip")),
            ("br, gzip", "", Compressor("br")),
            ("br, gzip", "gzip", Compressor("gzip")),
            (
                "gzip;q=0.5, br;q=0.5, zstd;q=0.5",
                "zstd",
                Compressor("zstd"),
            ),
            ("gzip;q=0, *", "", Wildcard("br")),
            ("*;q=0.5, br;q=0.5", "", Wildcard("gzip")),
            ("*;q=0.5, br;q=0.5", "br", Compressor("br")),
            ("gzip;q=0.5, *;q=0.5", "br", Compressor("gzip")),
            ("*, zstd", "zstd", Compressor("zstd")),
            ("identity;q=0.5, gzip;q=0.5", "", Identity),
            ("identity;q=0.5, gzip;q=0.5", "gzip", Compressor("gzip")),
            ("identity;q=0.5, *;q=0.5", "gzip", Identity),
            ("zstd;q=0.1, *;q=0.2", "", Wildcard("gzip")),
            ("abc, gzip;q=1", "", Compressor("gzip")),
        ];
        for (ae, first, want) in cases {
            assert_eq!(
                choose(ae.as_bytes(), chain(first).into_iter()),
                *want,
                "{ae} ({first})"
            );
        }
        // Of two filters of one encoding the first registered counts.
        let twice = [gzip(false), gzip(true)];
        assert_eq!(choose(b"br, gzip", twice.into_iter()), Compressor("gzip"));
    }
}
