//! `examples/envoy/envoy.yaml` is a valid Envoy v3 bootstrap, checked against Envoy's own
//! protos (PyPI `xds-protos`, installed by `.ci/run`), and the check does catch a typo.

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
        format!("install Envoy's protos first: python3 -m pip install xds-protos pyyaml\n{stderr}")
    } else {
        stderr.into_owned()
    }
}

#[test]
fn the_envoy_example_is_a_valid_bootstrap() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/envoy.yaml");
    let out = check(example);
    assert!(out.status.success(), "{}", hint(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid Envoy v3 bootstrap"));
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
