//! `keyscope serve` configuration through the real binary: a bad setting is one clear line
//! naming the key, a non-zero exit before serving, and never an echo of a secret; a good
//! YAML file with env overrides starts a server that uses its configured admin token and
//! presets without printing any token.
// A test fails by panicking, with the output that shows why.
#![allow(clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::{path::Path, time::Duration};

use process::{Cli, Run, Server, ServerOptions};
use serde_json::Value;

/// A bad config must be refused well before this.
const QUICKLY: Duration = Duration::from_secs(10);

/// `keyscope serve` with `envs` (on 127.0.0.1:0 unless overridden), expected to refuse to
/// start: non-zero exit, nothing on stdout, one line on stderr naming `key`.
fn refused(args: &[&str], envs: &[(&str, &str)], key: &str) -> String {
    let mut cli = Cli::new().arg("serve").args(args).env("KEYSCOPE__SERVER__GRPC_ADDR", "127.0.0.1:0");
    for (name, value) in envs {
        cli = cli.env(name, value);
    }
    let run: Run = cli.run_within(QUICKLY);
    assert_ne!(run.code(), 0, "a bad config must not start a server\n{}", run.describe());
    assert!(run.stdout.is_empty(), "nothing on stdout (no token is made before config is valid)\n{}", run.describe());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr\n{}", run.describe());
    let line = lines[0];
    assert!(line.starts_with("error: config: "), "not a config error line: {line}");
    assert!(line.contains(key), "the error does not name `{key}`: {line}");
    line.to_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config file");
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn a_short_pepper_is_named_but_never_echoed() {
    let line = refused(&[], &[("KEYSCOPE__SECURITY__PEPPER", "zqxwvu1234")], "security.pepper");
    assert!(line.starts_with("error: config: security.pepper: "), "{line}");
    assert!(!line.contains("zqxwvu1234"), "the pepper was echoed: {line}");
}

#[test]
fn a_bad_listen_address_is_named() {
    let line = refused(&[], &[("KEYSCOPE__SERVER__GRPC_ADDR", "nope")], "server.grpc_addr");
    assert!(line.starts_with("error: config: server.grpc_addr: "), "{line}");
    refused(&[], &[("KEYSCOPE__SERVER__HTTP_ADDR", "localhost")], "server.http_addr");
}

#[test]
fn a_malformed_bootstrap_token_is_named_but_never_echoed() {
    for token in [
        "ks_notatoken_zqxwvuSecretPart",
        "ks_abcdefghijklmnopqrst_zqxwvuTsrqpoNmlkjiHgfedcbaZY",
        "plain-password-zqxwvu",
    ] {
        let line = refused(&[], &[("KEYSCOPE__BOOTSTRAP__ADMIN_TOKEN", token)], "bootstrap.admin_token");
        assert!(line.starts_with("error: config: bootstrap.admin_token: "), "{line}");
        assert!(!line.contains("zqxwvu"), "the token was echoed: {line}");
    }
    // A valid token of another prefix than the configured one is refused the same way.
    let other = Cli::new().args(["token", "new", "--prefix", "other"]).run().success().stdout.trim().to_owned();
    let line = refused(&[], &[("KEYSCOPE__BOOTSTRAP__ADMIN_TOKEN", &other)], "bootstrap.admin_token");
    let (_, secret) = other.rsplit_once('_').expect("token parts");
    assert!(!line.contains(secret), "the token was echoed: {line}");
}

#[test]
fn redis_settings_are_checked_and_never_echo_the_password() {
    refused(&[], &[("KEYSCOPE__STORE__KIND", "redis")], "store.redis.url");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = write(
        dir.path(),
        "redis.yaml",
        "store:\n  kind: redis\n  redis:\n    url: http://:hunter2zqxwvu@localhost:6379\n",
    );
    let line = refused(&["--config", &file], &[], "store.redis.url");
    assert!(!line.contains("hunter2zqxwvu"), "the Redis password was echoed: {line}");
    refused(
        &[],
        &[
            ("KEYSCOPE__STORE__KIND", "redis"),
            ("KEYSCOPE__STORE__REDIS__URL", "redis://x"),
            ("KEYSCOPE__STORE__REDIS__PREFIX", "a{b}"),
        ],
        "store.redis.prefix",
    );
    refused(&[], &[("KEYSCOPE__STORE__KIND", "mongo")], "store.kind");

    // Nothing listens on that port: the start fails with one store line, the password unseen.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let run: Run = Cli::new()
        .arg("serve")
        .env("KEYSCOPE__SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__URL", &format!("redis://:hunter2zqxwvu@127.0.0.1:{port}"))
        .run_within(QUICKLY);
    assert_ne!(run.code(), 0, "{}", run.describe());
    assert!(run.stdout.is_empty(), "no token before the store is reachable\n{}", run.describe());
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: store: "), "{}", run.describe());
    assert!(!run.stderr.contains("hunter2zqxwvu"), "the Redis password was echoed\n{}", run.describe());
}

#[test]
fn unknown_keys_in_yaml_are_named() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = write(dir.path(), "typo.yaml", "server:\n  grpc_adr: 127.0.0.1:0\n");
    let line = refused(&["--config", &file], &[], "grpc_adr");
    assert!(line.contains("server"), "the section is named too: {line}");
    let file = write(dir.path(), "top.yaml", "surprise: 1\n");
    refused(&["--config", &file], &[], "surprise");
    let file =
        write(dir.path(), "nested.yaml", "security:\n  pepper: zqxwvu-long-enough-pepper\n  peper: zqxwvu-misspelt\n");
    let line = refused(&["--config", &file], &[], "peper");
    assert!(!line.contains("zqxwvu"), "a secret was echoed: {line}");
    // An unknown variable under the prefix is named the same way.
    refused(&[], &[("KEYSCOPE__SERVER__GRPC_PORT", "50051")], "grpc_port");
}

#[test]
fn broken_yaml_and_wrong_types_do_not_echo_secrets() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = write(dir.path(), "broken.yaml", "security:\n  pepper: \"zqxwvu-unterminated\n  x: [\n");
    let line = refused(&["--config", &file], &[], "broken.yaml");
    assert!(!line.contains("zqxwvu"), "a secret was echoed: {line}");
    let file = write(dir.path(), "type.yaml", "security:\n  pepper: [zqxwvu, more]\n");
    let line = refused(&["--config", &file], &[], "security.pepper");
    assert!(!line.contains("zqxwvu"), "a secret was echoed: {line}");
    refused(&[], &[("KEYSCOPE__LIMITS__MAX_KEYS_PER_TENANT", "0")], "limits.max_keys_per_tenant");
    refused(&[], &[("KEYSCOPE__LIMITS__MAX_KEYS_PER_TENANT", "many")], "limits.max_keys_per_tenant");
    refused(&[], &[("KEYSCOPE__LOG__FORMAT", "xml")], "log.format");
    refused(&[], &[("KEYSCOPE__SECURITY__TOKEN_PREFIX", "Not-OK")], "security.token_prefix");
    let file =
        write(dir.path(), "preset.yaml", "presets:\n  - {id: scp_mine, mode: allow, rules: {read: [reports]}}\n");
    refused(&["--config", &file], &[], "presets[0].id");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let line = refused(&["--config", "/no/such/file"], &[], "--config");
    assert!(line.contains("/no/such/file"), "{line}");
}

/// A configured token's key id, from the JSON `token new` output.
fn new_token(prefix: &str) -> (String, String) {
    let made = Cli::new().args(["--json", "token", "new", "--prefix", prefix]).run().success().json();
    let field = |name: &str| {
        made.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("no `{name}` in {made}")).to_owned()
    };
    (field("key_id"), field("token"))
}

#[test]
fn a_yaml_file_with_env_overrides_configures_token_prefix_and_presets() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let (admin_id, admin_token) = new_token("acme");
    let yaml = format!(
        "server:\n  grpc_addr: 127.0.0.1:50051\n\
         security:\n  token_prefix: acme\n  pepper: config-test-pepper-zqxwvu-0123\n\
         bootstrap:\n  admin_token: {admin_token}\n\
         presets:\n  - {{id: reporting, label: reporting, mode: allow, rules: {{read: [reports.*]}}}}\n\
         log:\n  format: text\n"
    );
    let file = write(dir.path(), "keyscope.yaml", &yaml);
    // The environment overrides the file: a free port, JSON logs.
    let server = ServerOptions::default()
        .args(["--config", &file])
        .env("KEYSCOPE__LOG__FORMAT", "json")
        .expect_token(false)
        .start();
    assert_ne!(server.addr, "127.0.0.1:50051", "KEYSCOPE__SERVER__GRPC_ADDR must override the file");
    assert!(
        server.stderr_lines().iter().any(|l| l.contains("bootstrap.admin_token") && l.contains(&admin_id)),
        "the configured admin key is announced by id: {:?}",
        server.stderr_lines()
    );

    // The configured token is the system admin.
    let preset = server
        .cli_with_token(&admin_token)
        .args(["--json", "scope", "get", "reporting", "--tenant", "acme"])
        .run()
        .success()
        .json();
    assert_eq!(preset["builtin"], Value::Bool(true), "{preset}");
    assert_eq!(preset["label"], "reporting");
    assert_eq!(preset["rules"]["read"], serde_json::json!(["reports.*"]));
    let version = preset["version"].as_u64().expect("version").to_string();
    let locked = server
        .cli_with_token(&admin_token)
        .args(["scope", "update", "reporting", "--tenant", "acme", "--version", &version, "--read", "everything"])
        .run()
        .expect_code(1);
    assert!(locked.stderr.contains("FAILED_PRECONDITION"), "{}", locked.describe());
    let locked = server
        .cli_with_token(&admin_token)
        .args(["scope", "delete", "reporting", "--tenant", "acme", "--force"])
        .run()
        .expect_code(1);
    assert!(locked.stderr.contains("FAILED_PRECONDITION"), "{}", locked.describe());
    let listed = server.cli_with_token(&admin_token).args(["scope", "list", "--tenant", "globex"]).run().success();
    assert!(
        listed.stdout.lines().any(|l| l.starts_with("reporting") && l.ends_with("builtin")),
        "presets exist in every tenant: {}",
        listed.describe()
    );

    // Keys get the configured prefix, and the preset decides.
    let key = server
        .cli_with_token(&admin_token)
        .args(["--json", "key", "create", "--tenant", "acme", "--scope", "reporting", "--owner", "reports-bot"])
        .run()
        .success()
        .json();
    let token = key.get("token").and_then(Value::as_str).expect("token").to_owned();
    assert!(token.starts_with("acme_"), "{token}");
    let check = |module: &str, credential: &str| {
        server.cli_anonymous().args(["check", module, "read", "--credential", credential]).run()
    };
    let allowed = check("reports.daily", &token).success();
    assert!(allowed.stdout.contains("allowed (OK)"), "{}", allowed.describe());
    let denied = check("reports", &token).expect_code(3);
    assert!(
        denied.stdout.contains("denied (NOT_GRANTED)"),
        "`reports.*` does not match `reports`: {}",
        denied.describe()
    );
    // A `ks_` token is not a token of this deployment.
    let (_, foreign) = new_token("ks");
    let malformed = check("reports.daily", &foreign).expect_code(3);
    assert!(malformed.stdout.contains("MALFORMED_CREDENTIAL"), "{}", malformed.describe());

    let captured = server.stop();
    assert!(captured.stdout.is_empty(), "a configured token is never printed; stdout: {:?}", captured.stdout);
    let (_, secret) = admin_token.rsplit_once('_').expect("token parts");
    assert!(!captured.all().contains(secret), "the configured token leaked into the output");
    assert!(!captured.all().contains("config-test-pepper-zqxwvu-0123"), "the pepper leaked into the output");
}

#[test]
fn a_created_bootstrap_token_goes_to_token_file_only() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let token_file = dir.path().join("admin.token");
    let yaml = format!("bootstrap:\n  token_file: {}\n", token_file.display());
    let file = write(dir.path(), "keyscope.yaml", &yaml);
    let server = ServerOptions::default().args(["--config", &file]).expect_token(false).start();

    // Written before the server logs that it serves.
    let written = std::fs::read_to_string(&token_file).expect("the token file exists once serving");
    assert!(written.ends_with('\n') && written.lines().count() == 1, "one line: {written:?}");
    let token = written.trim().to_owned();
    assert!(token.starts_with("ks_"), "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file must be private, got {mode:o}");
    }
    let listed = server.cli_with_token(&token).args(["scope", "list", "--tenant", "acme"]).run().success();
    assert!(listed.stdout.contains("full-access"), "{}", listed.describe());
    let key_id = token.split('_').nth(1).expect("key id");
    assert!(
        server.stderr_lines().iter().any(|l| l.contains("token_file") && l.contains(key_id)),
        "the log says where the token went: {:?}",
        server.stderr_lines()
    );

    let captured = server.stop();
    assert!(captured.stdout.is_empty(), "the token goes to the file, not stdout: {:?}", captured.stdout);
    let (_, secret) = token.rsplit_once('_').expect("token parts");
    assert!(!captured.all().contains(secret), "the token leaked into the output");
}

#[cfg(unix)]
#[test]
fn an_existing_token_file_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::TempDir::new().expect("temp dir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "old contents that are much longer than any token, to check truncation\n")
        .expect("pre-create");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let server = ServerOptions::default()
        .env("KEYSCOPE__BOOTSTRAP__TOKEN_FILE", token_file.to_str().expect("utf-8 path"))
        .expect_token(false)
        .start();
    let written = std::fs::read_to_string(&token_file).expect("token file");
    assert_eq!(written.lines().count(), 1, "the old contents are replaced: {written:?}");
    let mode = std::fs::metadata(&token_file).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a token must never sit in a world-readable file, got {mode:o}");
    server.cli_with_token(written.trim()).args(["key", "list", "--tenant", "acme"]).run().success();
    assert!(server.stop().stdout.is_empty());
}

#[test]
fn the_default_server_prints_its_token_once() {
    // The counterpart of the cases above: with nothing configured the token is printed.
    let server = Server::start_default();
    let token = server.admin_token().to_owned();
    let captured = server.stop();
    assert_eq!(captured.stdout.len(), 3, "{:?}", captured.stdout);
    assert_eq!(captured.stdout[2], token);
    assert_eq!(captured.stdout.iter().filter(|l| l.contains(&token)).count(), 1, "printed once");
    assert!(!captured.stderr.iter().any(|l| l.contains(&token)), "never logged");
}

#[test]
fn check_config_validates_without_serving() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let good = write(
        dir.path(),
        "good.yaml",
        "server:\n  grpc_addr: 0.0.0.0:50051\nstore:\n  kind: redis\n  redis:\n    url: redis://redis.invalid:6379\nlog:\n  format: json\n",
    );
    // Valid settings: `config: ok`, exit 0, nothing started (Redis is not even looked up).
    let run = Cli::new()
        .args(["serve", "--check-config", "--config", &good])
        .env("KEYSCOPE__STORE__REDIS__PASSWORD", "pw-from-a-secret")
        .env("KEYSCOPE__SECURITY__PEPPER", "a-pepper-long-enough-for-keys")
        .run_within(QUICKLY);
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_eq!(run.stdout.trim(), "config: ok", "{}", run.describe());
    assert!(!run.stdout.contains("pw-from-a-secret") && !run.stderr.contains("pw-from-a-secret"));
    // Invalid: the same one line as a start would print, exit 1.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "server:\n  tls:\n    cert_file: /no/such/tls.crt\n    key_file: /no/such/tls.key\n",
    );
    let line = refused(&["--check-config", "--config", &bad], &[], "server.tls.cert_file");
    assert!(line.contains("cannot read `/no/such/tls.crt`"), "{line}");
}
