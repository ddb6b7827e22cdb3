//! The configurations real control planes send, as bootstraps written to their shapes
//! (`integration-tests/shapes/`: Envoy Gateway, an Istio sidecar, Kuma, Contour). Each
//! must pass `--mode validate` on Envoy 1.40 (when `envoy` is on PATH) — they are real
//! configurations — and on Courier, or be refused by Courier exactly where
//! [`SHAPES`] says: a refusal that moves, or one that goes away, fails the test until the
//! table (and `integration-tests/shapes/README.md`, which ranks what is left) says so.

mod http_support;

use http_support::*;

/// Each shape and the path Courier refuses it at (`None`: it passes).
const SHAPES: &[(&str, Option<&str>)] = &[
    ("envoy-gateway.yaml", None),
    ("istio-sidecar.yaml", None),
    ("kuma.yaml", None),
    ("contour.yaml", None),
];

fn shape(name: &str) -> String {
    let path = format!(
        "{}/../integration-tests/shapes/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_shape_is_a_valid_envoy_configuration() {
    for (name, _) in SHAPES {
        if let Some((code, out)) = envoy_validate(&shape(name)) {
            assert_eq!(code, Some(0), "Envoy refuses {name}: {out}");
        }
    }
}

#[test]
fn courier_takes_or_refuses_each_shape_where_recorded() {
    for (name, refused_at) in SHAPES {
        let (code, stderr) = validate(&shape(name));
        match refused_at {
            None => assert_eq!(code, Some(0), "Courier refuses {name}: {stderr}"),
            Some(at) => {
                assert_eq!(
                    code,
                    Some(1),
                    "Courier now takes {name}: update SHAPES and the README"
                );
                assert!(
                    stderr.contains(at),
                    "{name}: want the refusal at {at:?}, got {stderr}"
                );
            }
        }
    }
}

#[test]
fn every_shape_file_is_listed() {
    let dir = format!("{}/../integration-tests/shapes", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("shapes dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = SHAPES.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
}
