//! `examples/envoy/envoy.yaml` and `examples/envoy/envoy-jwt.yaml` are valid Envoy v3
//! bootstraps, checked against Envoy's own protos (PyPI `xds-protos`, installed by `.ci/run`),
//! and the check does catch a typo. The JWT example strips client-sent claim headers before
//! `jwt_authn` sets them and before keyscope (configured by `examples/envoy/keyscope-jwt.yaml`)
//! reads them.

#![allow(clippy::panic)] // tests fail by panicking

use std::process::Command;

fn check(path: &str) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/check_bootstrap.py");
    Command::new("python3")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3 must be installed to check the Envoy example")
}

fn hint(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        format!(
            "Envoy's protos are missing: run the suite with scripts/test, which installs xds-protos and pyyaml\n{stderr}"
        )
    } else {
        stderr.into_owned()
    }
}

/// Asserts that `examples/envoy/<name>` is a valid Envoy v3 bootstrap.
fn assert_valid(name: &str) {
    let out = check(&format!("{}/examples/envoy/{name}", env!("CARGO_MANIFEST_DIR")));
    assert!(out.status.success(), "{}", hint(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid Envoy v3 bootstrap"));
}

#[test]
fn the_envoy_example_is_a_valid_bootstrap() {
    assert_valid("envoy.yaml");
}

#[test]
fn a_typo_in_the_example_fails_the_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/envoy.yaml");
    let text = std::fs::read_to_string(example).expect("read the example");
    assert!(text.contains("failure_mode_allow: false"), "the example must fail closed");
    let dir = tempfile::tempdir().expect("temp dir");
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, text.replace("failure_mode_allow", "failure_mode_alow")).expect("write");
    let out = check(typo.to_str().expect("utf-8 path"));
    assert!(!out.status.success(), "a misspelt field must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("failure_mode_alow"), "{}", hint(&out));
}

/// `examples/envoy/envoy-jwt.yaml`, as a YAML document.
fn jwt_example() -> serde_yaml_ng::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/envoy-jwt.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("read the example")).expect("YAML")
}

/// The `value` at `path` (keys, or indexes into sequences), or a panic naming the path.
fn at<'a>(value: &'a serde_yaml_ng::Value, path: &[&str]) -> &'a serde_yaml_ng::Value {
    path.iter().fold(value, |v, key| {
        let next = match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(*key),
        };
        next.unwrap_or_else(|| panic!("the JWT example has no {}", path.join(".")))
    })
}

fn text(value: &serde_yaml_ng::Value) -> &str {
    value.as_str().expect("a string")
}

#[test]
fn the_jwt_example_is_a_valid_bootstrap() {
    assert_valid("envoy-jwt.yaml");
}

#[test]
fn the_jwt_example_strips_then_verifies_then_checks_the_headers_keyscope_reads() {
    let doc = jwt_example();
    let manager = ["static_resources", "listeners", "0", "filter_chains", "0", "filters", "0", "typed_config"];
    let filters = at(&doc, &[&manager[..], &["http_filters"]].concat());
    let names: Vec<&str> = filters.as_sequence().expect("filters").iter().map(|f| text(at(f, &["name"]))).collect();
    // Client-sent claim headers go first, jwt_authn sets them, then keyscope reads them.
    assert_eq!(
        names,
        [
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ]
    );
    let removed: Vec<&str> = at(&filters[0], &["typed_config", "mutations", "request_mutations"])
        .as_sequence()
        .expect("mutations")
        .iter()
        .map(|m| text(at(m, &["remove"])))
        .collect();
    let set: Vec<&str> = at(&filters[1], &["typed_config", "providers", "idp", "claim_to_headers"])
        .as_sequence()
        .expect("claim_to_headers")
        .iter()
        .map(|c| text(at(c, &["header_name"])))
        .collect();
    assert_eq!(removed, set, "every header jwt_authn sets is first removed from the client's request");
    assert_eq!(at(&filters[2], &["typed_config", "failure_mode_allow"]).as_bool(), Some(false));

    // keyscope's side of the example reads exactly those headers, and is a valid configuration.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/keyscope-jwt.yaml");
    let settings = keyscope::config::Settings::load(Some(std::path::Path::new(config))).expect("load");
    settings.validate().expect("a valid keyscope configuration");
    let headers = settings.ext_authz.principal_headers.expect("principal_headers");
    assert_eq!([headers.subject.as_str(), headers.roles.as_str()], set.as_slice());

    // Every checked route names its tenant (a principal is never checked without one).
    let routes = at(&doc, &[&manager[..], &["route_config", "virtual_hosts", "0", "routes"]].concat());
    for route in routes.as_sequence().expect("routes") {
        let extensions = at(
            route,
            &["typed_per_filter_config", "envoy.filters.http.ext_authz", "check_settings", "context_extensions"],
        );
        assert!(!text(at(extensions, &["keyscope_tenant"])).is_empty());
    }
}
