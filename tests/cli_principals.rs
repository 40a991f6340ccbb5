//! The real `keyscope` binary end to end for principals: `principal` and `scope members`
//! commands, and `check --subject --roles --tenant`.
// A test fails by panicking, with the output that shows why.
#![allow(clippy::panic)]

#[path = "common/process.rs"]
mod process;

use process::{Cli, Server};
use serde_json::Value;

fn str_field<'a>(json: &'a Value, name: &str) -> &'a str {
    json.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("no string `{name}` in {json}"))
}

#[test]
fn principals_and_members_from_the_command_line() {
    let server = Server::start_default();
    let cli = || server.cli();
    let scope = cli()
        .args(["--json", "scope", "create", "--tenant", "acme", "--label", "courses", "--read", "courses"])
        .run()
        .success()
        .json();
    let scope_id = str_field(&scope, "id").to_owned();

    // Register, read back, list.
    let alice = cli()
        .args(["--json", "principal", "upsert", "alice", "--tenant", "acme", "--roles", "teacher,guest"])
        .run()
        .success()
        .json();
    assert_eq!(alice["roles"], serde_json::json!(["guest", "teacher"]));
    assert_eq!(alice["enabled"], Value::Bool(true));
    let text = cli().args(["principal", "get", "alice", "--tenant", "acme"]).run().success();
    assert!(text.stdout.contains("roles    guest,teacher"), "{}", text.describe());
    let list = cli().args(["principal", "list", "--tenant", "acme"]).run().success();
    assert!(list.stdout.lines().any(|l| l.starts_with("alice")), "{}", list.describe());

    // Bind the scope to a role; check the bearer principal, then a key it owns.
    let members = cli()
        .args(["--json", "scope", "members", "set", &scope_id, "--tenant", "acme", "--roles", "teacher"])
        .run()
        .success()
        .json();
    assert_eq!(members["version"], 1);
    let got = cli().args(["--json", "scope", "members", "get", &scope_id, "--tenant", "acme"]).run().success().json();
    assert_eq!(got["roles"], serde_json::json!(["teacher"]));
    let allowed = cli()
        .args(["--json", "check", "courses", "read", "--subject", "bob", "--roles", "teacher", "--tenant", "acme"])
        .run()
        .success()
        .json();
    assert_eq!(str_field(&allowed, "reason"), "OK");
    let denied = cli()
        .args(["check", "courses", "update", "--subject", "bob", "--roles", "teacher", "--tenant", "acme"])
        .run()
        .expect_code(3);
    assert!(denied.stdout.contains("NOT_GRANTED"), "{}", denied.describe());
    // --subject needs --tenant.
    Cli::new().args(["check", "courses", "read", "--subject", "bob"]).run().expect_code(2);
    // A bearer principal has no source address to check.
    let both = Cli::new()
        .args(["check", "courses", "read", "--subject", "bob", "--tenant", "acme", "--source", "10.0.0.1"])
        .run()
        .expect_code(2);
    assert!(both.stderr.contains("--source"), "{}", both.describe());

    let key = cli()
        .args(["--json", "key", "create", "--tenant", "acme", "--scope", "full-access", "--owner", "alice"])
        .run()
        .success()
        .json();
    let token = str_field(&key, "token").to_owned();
    let owner_allows = cli().args(["check", "courses", "read", "--credential", &token]).run().success();
    assert!(owner_allows.stdout.contains("allowed"), "{}", owner_allows.describe());
    let owner_denies = cli().args(["check", "courses", "delete", "--credential", &token]).run().expect_code(3);
    assert!(owner_denies.stdout.contains("OWNER_DENIED"), "{}", owner_denies.describe());

    // Demote, disable, enable, delete.
    cli().args(["principal", "roles", "alice", "--tenant", "acme", "--version", "1"]).run().success();
    let demoted = cli().args(["check", "courses", "read", "--credential", &token]).run().expect_code(3);
    assert!(demoted.stdout.contains("OWNER_DENIED"), "{}", demoted.describe());
    cli().args(["principal", "disable", "alice", "--tenant", "acme"]).run().success();
    let disabled = cli().args(["check", "courses", "read", "--credential", &token]).run().expect_code(3);
    assert!(disabled.stdout.contains("OWNER_DISABLED"), "{}", disabled.describe());
    cli().args(["principal", "enable", "alice", "--tenant", "acme"]).run().success();
    let stale = cli().args(["principal", "roles", "alice", "--tenant", "acme", "--version", "1"]).run().expect_code(1);
    assert!(stale.stderr.contains("alice"), "{}", stale.describe());
    cli().args(["principal", "delete", "alice", "--tenant", "acme"]).run().success();
    let gone = cli().args(["principal", "get", "alice", "--tenant", "acme"]).run().expect_code(1);
    assert!(gone.stderr.contains("no principal"), "{}", gone.describe());
    let bad = cli().args(["principal", "upsert", "x", "--tenant", "acme", "--roles", "Bad"]).run().expect_code(1);
    assert!(bad.stderr.contains("roles[0]"), "{}", bad.describe());
}
