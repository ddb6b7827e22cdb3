//! `accept-encoding`, read as Envoy's compressor reads it.

/// How `accept-encoding` was read (Envoy's `EncodingDecision`'s counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// gzip named (or chosen for `*`): compress.
    Gzip,
    /// `*` chosen, but another encoding than gzip comes first.
    WildcardOther,
    /// `*` chosen, gzip picked for it.
    Wildcard,
    /// `identity` preferred.
    Identity,
    /// Nothing acceptable.
    NotValid,
}

/// Reads `accept-encoding` as Envoy's `chooseEncoding` does for a chain with one gzip
/// compressor (`allowed`: the response's content type is one it compresses).
pub(super) fn choose(accept_encoding: &[u8], allowed: bool, choose_first: bool) -> Decision {
    let text = String::from_utf8_lossy(accept_encoding);
    let mut gzip_allowed = allowed;
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
                    // An unparsable q-value drops its entry.
                    Err(_) => continue,
                }
            }
        }
        pairs.push((name, q));
        if q == 0.0 && name == "gzip" {
            gzip_allowed = false;
        }
    }
    if pairs.is_empty() || !gzip_allowed {
        return Decision::NotValid;
    }
    // Envoy looks a tied `*` up in its table of compressors, which adds it there; a
    // later `*` choice then takes it (it sorts before `gzip`) and compresses nothing.
    let mut star_added = false;
    let mut choice = ("identity", 0.0f32);
    for &(name, q) in &pairs {
        if name == "gzip" || name == "identity" || name == "*" {
            let tie_wins = q == choice.1 && {
                if name == "*" {
                    star_added = true;
                }
                name == "gzip" && choose_first
            };
            if q > choice.1 || tie_wins {
                choice = (name, q);
            }
        }
    }
    if choice.1 == 0.0 {
        return Decision::NotValid;
    }
    match choice.0 {
        "identity" => Decision::Identity,
        "*" if star_added => Decision::WildcardOther,
        "*" => Decision::Wildcard,
        _ => Decision::Gzip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_as_envoy_reads_it() {
        use Decision::*;
        let cases: &[(&str, bool, Decision)] = &[
            ("gzip", true, Gzip),
            ("deflate, gzip, br", true, Gzip),
            ("identity", true, Identity),
            ("*", true, Wildcard),
            ("gzip;q=0", true, NotValid),
            ("gzip;q=0, *", true, NotValid),
            ("deflate", true, NotValid),
            ("", true, NotValid),
            ("gzip;q=abc", true, NotValid),
            ("GZIP", true, NotValid),
            ("gzip;Q=0.5, identity;q=0.7", true, Identity),
            ("gzip;q=0.7, identity;q=0.5", true, Gzip),
            ("identity, gzip", true, Identity),
            ("gzip", false, NotValid),
            ("identity;q=0", true, NotValid),
            ("*;q=0.5, *;q=0.5", true, WildcardOther),
            ("gzip ; q=0.5", true, Gzip),
        ];
        for (ae, allowed, want) in cases {
            assert_eq!(choose(ae.as_bytes(), *allowed, false), *want, "{ae}");
        }
        assert_eq!(choose(b"identity, gzip", true, true), Gzip);
    }
}
