//! The Helm chart, the Dockerfile and docs/deploy.md: `helm/tests/test_chart.py` lints and
//! renders the chart with Helm's own engine (PyPI `helm-python-sdk`), validates every manifest
//! against the Kubernetes schemas (PyPI `kubernetes-validate`, strict), checks probes, secrets
//! and security contexts, and has this build's `keyscope serve --check-config` accept the
//! configuration every combination of values renders. `.ci/run` installs the Python packages;
//! without them this test fails and says what to install.

use std::process::Command;

#[test]
fn the_helm_chart_renders_validates_and_configures_keyscope() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/tests/test_chart.py");
    let out = Command::new("python3")
        .arg(script)
        .env("KEYSCOPE_BIN", env!("CARGO_BIN_EXE_keyscope"))
        .env("CI", "1")
        .output()
        .expect("python3 must be installed to test the Helm chart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chart tests failed (they need helm-python-sdk and kubernetes-validate: run the suite with \
         scripts/test, which installs them)\n{stdout}\n{stderr}"
    );
    // The script's own tally, so a run that found no tests cannot pass.
    let tally = stdout.lines().find(|l| l.starts_with("chart: ")).unwrap_or_default();
    let passed: usize = tally.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(passed >= 60 && tally.ends_with(" 0 failed"), "unexpected tally `{tally}`\n{stdout}\n{stderr}");
}
