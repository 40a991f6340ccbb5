//! The config loader (`Settings::from_yaml_str`, then `Settings::validate`): never panics on
//! any YAML text, and no configured secret (pepper, Redis password, bootstrap token) shows in
//! an error or in Debug output.
//!
//! File paths (TLS certificates and keys) are cleared before validating, so a run reads no
//! file; reading them is covered by the TLS tests.
#![no_main]

use keyscope::config::Settings;
use libfuzzer_sys::fuzz_target;

/// Stands in for a configured secret: no message or constant holds it (and the input must
/// not either, see below).
fn marker(len: usize) -> String {
    "~sEcReT~mArKeR".chars().cycle().take(len).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else { return };
    let mut settings = match Settings::from_yaml_str(yaml) {
        Ok(s) => s,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    settings.server.tls.cert_file = None;
    settings.server.tls.key_file = None;
    settings.server.tls.client_ca_file = None;
    settings.store.redis.tls = Default::default();
    settings.telemetry.otlp_ca_file = None;

    // Secrets whose validation depends on their length only are replaced by markers of the
    // same length (long enough that a check could show them); the bootstrap token is checked
    // as given, when the input names it once.
    let mut secrets = Vec::new();
    if let Some(p) = &settings.security.pepper {
        let m = marker(p.expose().len());
        if m.len() >= 8 && !yaml.contains(&m) {
            settings.security.pepper = Some(serde_value(&m));
            secrets.push(m);
        }
    }
    if let Some(p) = &settings.store.redis.password {
        let m = marker(p.expose().len());
        if m.len() >= 8 && !yaml.contains(&m) {
            settings.store.redis.password = Some(serde_value(&m));
            secrets.push(m);
        }
    }
    if let Some(t) = &settings.bootstrap.admin_token {
        let t = t.expose();
        if t.len() >= 24 && yaml.matches(t).count() == 1 {
            secrets.push(t.to_owned());
        }
    }

    let shown = format!("{settings:?}");
    let result = settings.validate();
    let error = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
    for s in &secrets {
        assert!(!shown.contains(s.as_str()), "a secret in Debug output");
        assert!(!error.contains(s.as_str()), "a secret in a config error: {error}");
    }
});

/// A `SecretString` holding `text` (it has no public constructor; it deserialises from a string).
fn serde_value(text: &str) -> keyscope::config::SecretString {
    let yaml = format!("security:\n  pepper: \"{text}\"\n");
    Settings::from_yaml_str(&yaml).ok().and_then(|s| s.security.pepper).expect("a quoted string is a pepper")
}
