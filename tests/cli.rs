//! The real `keyscope` binary end to end: `keyscope serve` in a child process and the CLI
//! driven as a newcomer would, following the README walk-through.
// A test fails by panicking, with the output that shows why.
#![allow(clippy::panic)]

#[path = "common/process.rs"]
mod process;

use process::{Cli, Run, Server};
use serde_json::Value;

/// The value of a `name  value` line of the CLI's aligned text output.
fn field(run: &Run, name: &str) -> String {
    run.stdout
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.starts_with(' ').then(|| rest.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no `{name}` line in the output:\n{}", run.describe()))
}

fn str_field<'a>(json: &'a Value, name: &str) -> &'a str {
    json.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("no string `{name}` in {json}"))
}

fn u64_field(json: &Value, name: &str) -> u64 {
    json.get(name).and_then(Value::as_u64).unwrap_or_else(|| panic!("no number `{name}` in {json}"))
}

fn strings(json: &Value, name: &str) -> Vec<String> {
    json.get(name)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array `{name}` in {json}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("`{name}` holds a non-string: {json}")).to_owned())
        .collect()
}

fn check(server: &Server, credential: &str, module: &str, action: &str) -> Run {
    server.cli_anonymous().args(["check", module, action, "--credential", credential]).run()
}

#[test]
fn readme_walk_through() {
    let server = Server::start_default();
    assert!(server.admin_token().starts_with("ks_"), "bootstrap token: {}", server.admin_token());

    // A scope, as a person would make it: human-readable output.
    let blog = server
        .cli()
        .args(["scope", "create", "--tenant", "acme", "--label", "blog", "--read", "posts"])
        .run()
        .success();
    assert_eq!(field(&blog, "label"), "blog");
    assert_eq!(field(&blog, "tenant"), "acme");
    assert_eq!(field(&blog, "mode"), "allow");
    assert_eq!(field(&blog, "read"), "posts");
    assert_eq!(field(&blog, "builtin"), "false");
    let blog_id = field(&blog, "scope");

    // The README's scope, with --json to capture its id.
    let website = server
        .cli()
        .args(["--json", "scope", "create", "--tenant", "acme", "--label", "website", "--read", "courses,course-dates"])
        .run()
        .success()
        .json();
    let scope_id = str_field(&website, "id").to_owned();
    assert_ne!(scope_id, blog_id);
    assert_eq!(str_field(&website, "label"), "website");
    assert_eq!(str_field(&website, "tenant"), "acme");
    assert_eq!(str_field(&website, "mode"), "allow");
    assert_eq!(website["builtin"], Value::Bool(false));
    assert_eq!(u64_field(&website, "version"), 1);
    // Patterns come back normalised (sorted).
    let mut read = strings(&website["rules"], "read");
    read.sort();
    assert_eq!(read, ["course-dates", "courses"]);
    assert!(strings(&website["rules"], "create").is_empty());

    // A key holding it; the token is shown once, in the create response.
    let key = server
        .cli()
        .args([
            "--json", "key", "create", "--tenant", "acme", "--scope", &scope_id, "--owner", "alice", "--meta",
            "team=web",
        ])
        .run()
        .success()
        .json();
    let key_id = str_field(&key, "id").to_owned();
    let token = str_field(&key, "token").to_owned();
    assert!(token.starts_with(&format!("ks_{key_id}_")), "token {token} for key {key_id}");
    assert_eq!(str_field(&key, "owner"), "alice");
    assert_eq!(str_field(&key, "state"), "active");
    assert_eq!(strings(&key, "scope_ids"), [scope_id.as_str()]);
    assert_eq!(key["metadata"]["team"], "web");
    assert_eq!(u64_field(&key, "version"), 1);

    // The question keyscope answers.
    let allowed = check(&server, &token, "courses", "read").success();
    assert!(allowed.stdout.starts_with("allowed (OK)"), "{}", allowed.describe());
    let denied = check(&server, &token, "courses", "update").expect_code(3);
    assert!(denied.stdout.contains("denied (NOT_GRANTED)"), "{}", denied.describe());
    let answer = server
        .cli_anonymous()
        .args(["--json", "check", "course-dates", "read", "--credential", &token])
        .run()
        .success()
        .json();
    assert_eq!(answer["allowed"], Value::Bool(true));
    assert_eq!(str_field(&answer, "reason"), "OK");
    assert_eq!(str_field(&answer, "key_id"), key_id);
    assert_eq!(str_field(&answer, "tenant"), "acme");
    assert_eq!(str_field(&answer, "owner"), "alice");
    assert_eq!(strings(&answer, "scope_ids"), [scope_id.as_str()]);
    let answer = server
        .cli_anonymous()
        .args(["--json", "check", "billing", "delete", "--credential", &token])
        .run()
        .expect_code(3)
        .json();
    assert_eq!(answer["allowed"], Value::Bool(false));
    assert_eq!(str_field(&answer, "reason"), "NOT_GRANTED");
    // The key's own tenant may be named; another one is a mismatch.
    check(&server, &token, "courses", "read").success();
    let other = server
        .cli_anonymous()
        .args(["check", "courses", "read", "--tenant", "globex", "--credential", &token])
        .run()
        .expect_code(3);
    assert!(other.stdout.contains("denied (TENANT_MISMATCH)"), "{}", other.describe());

    // Keys: list, get, update.
    let list = server.cli().args(["key", "list", "--tenant", "acme"]).run().success();
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&key_id))
        .unwrap_or_else(|| panic!("key {key_id} not listed:\n{}", list.describe()));
    assert!(row.contains("active") && row.contains(&scope_id) && row.contains("alice"), "row: {row}");
    let listed = server.cli().args(["--json", "key", "list", "--tenant", "acme", "--all"]).run().success().json();
    let keys = listed["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1, "{listed}");
    assert_eq!(str_field(&keys[0], "id"), key_id);
    assert!(keys[0].get("token").is_none(), "a listed key must not carry a token: {listed}");
    let get = server.cli().args(["key", "get", &key_id, "--tenant", "acme"]).run().success();
    assert_eq!(field(&get, "key"), key_id);
    assert_eq!(field(&get, "state"), "active");
    assert_eq!(field(&get, "owner"), "alice");
    assert_eq!(field(&get, "metadata"), "team=web");
    assert_eq!(field(&get, "version"), "1");
    assert!(!get.stdout.contains(&token), "key get must not show the token");
    let updated = server
        .cli()
        .args(["key", "update", &key_id, "--tenant", "acme", "--version", "1", "--description", "x"])
        .run()
        .success();
    assert_eq!(field(&updated, "description"), "x");
    assert_eq!(field(&updated, "version"), "2");
    let stale = server
        .cli()
        .args(["key", "update", &key_id, "--tenant", "acme", "--version", "1", "--description", "y"])
        .run()
        .expect_code(1);
    assert!(stale.stderr.contains("ABORTED"), "{}", stale.describe());

    // Disable is reversible, revoke is final.
    let disabled = server.cli().args(["key", "disable", &key_id, "--tenant", "acme"]).run().success();
    assert_eq!(field(&disabled, "state"), "disabled");
    let refused = check(&server, &token, "courses", "read").expect_code(3);
    assert!(refused.stdout.contains("denied (KEY_DISABLED)"), "{}", refused.describe());
    let enabled = server.cli().args(["key", "enable", &key_id, "--tenant", "acme"]).run().success();
    assert_eq!(field(&enabled, "state"), "active");
    check(&server, &token, "courses", "read").success();
    let revoked = server.cli().args(["key", "revoke", &key_id, "--tenant", "acme"]).run().success();
    assert_eq!(field(&revoked, "state"), "revoked");
    let refused = check(&server, &token, "courses", "read").expect_code(3);
    assert!(refused.stdout.contains("denied (KEY_REVOKED)"), "{}", refused.describe());
    let again = server.cli().args(["key", "enable", &key_id, "--tenant", "acme"]).run().expect_code(1);
    assert!(again.stderr.starts_with("error: "), "{}", again.describe());
    check(&server, &token, "courses", "read").expect_code(3);

    // Scopes: get, list, update, clone, evaluate.
    let get = server.cli().args(["scope", "get", &scope_id, "--tenant", "acme"]).run().success();
    assert_eq!(field(&get, "scope"), scope_id);
    assert_eq!(field(&get, "label"), "website");
    assert_eq!(field(&get, "read"), "course-dates, courses");
    let list = server.cli().args(["scope", "list", "--tenant", "acme", "--all"]).run().success();
    for label in ["website", "blog", "full-access", "read-only", "admin"] {
        assert!(
            list.stdout.lines().any(|l| l.split_whitespace().nth(1) == Some(label)),
            "scope {label} not listed:\n{}",
            list.describe()
        );
    }
    assert!(list.stdout.lines().any(|l| l.contains("full-access") && l.ends_with("builtin")), "{}", list.describe());
    let updated = server
        .cli()
        .args(["scope", "update", &scope_id, "--tenant", "acme", "--version", "1", "--read", "courses"])
        .run()
        .success();
    assert_eq!(field(&updated, "read"), "courses");
    assert_eq!(field(&updated, "version"), "2");
    let stale = server
        .cli()
        .args(["scope", "update", &scope_id, "--tenant", "acme", "--version", "1", "--read", "billing"])
        .run()
        .expect_code(1);
    assert!(stale.stderr.contains("ABORTED"), "{}", stale.describe());
    let copy = server
        .cli()
        .args(["--json", "scope", "clone", &scope_id, "--tenant", "acme", "--label", "copy"])
        .run()
        .success()
        .json();
    let copy_id = str_field(&copy, "id").to_owned();
    assert_ne!(copy_id, scope_id);
    assert_eq!(str_field(&copy, "label"), "copy");
    assert_eq!(strings(&copy["rules"], "read"), ["courses"]);
    let dup =
        server.cli().args(["scope", "clone", &scope_id, "--tenant", "acme", "--label", "COPY"]).run().expect_code(1);
    assert!(dup.stderr.contains("ALREADY_EXISTS"), "labels are unique case-insensitively: {}", dup.describe());

    let eval = server
        .cli()
        .args(["scope", "eval", "courses", "read", "--tenant", "acme", "--scope", &scope_id])
        .run()
        .success();
    assert!(eval.stdout.starts_with("allowed (OK)"), "{}", eval.describe());
    let eval = server
        .cli()
        .args(["scope", "eval", "course-dates", "read", "--tenant", "acme", "--scope", &scope_id])
        .run()
        .expect_code(3);
    assert!(eval.stdout.contains("denied (NOT_GRANTED)"), "the update dropped course-dates: {}", eval.describe());
    let eval = server
        .cli()
        .args(["scope", "eval", "billing", "read", "--tenant", "acme", "--mode", "deny", "--read", "billing"])
        .run()
        .expect_code(3);
    assert!(eval.stdout.contains("denied (DENIED_BY_SCOPE)"), "{}", eval.describe());
    let eval = server
        .cli()
        .args(["--json", "scope", "eval", "courses", "read", "--tenant", "acme", "--mode", "deny", "--read", "billing"])
        .run()
        .success()
        .json();
    assert_eq!(eval["allowed"], Value::Bool(true));
    assert_eq!(strings(&eval, "scope_ids"), ["inline"]);

    // Deleting a scope in use is refused unless forced; forced, its key is left with nothing.
    let bob = server
        .cli()
        .args(["--json", "key", "create", "--tenant", "acme", "--scope", &copy_id, "--owner", "bob"])
        .run()
        .success()
        .json();
    let bob_token = str_field(&bob, "token").to_owned();
    check(&server, &bob_token, "courses", "read").success();
    let refused = server.cli().args(["scope", "delete", &copy_id, "--tenant", "acme"]).run().expect_code(1);
    assert!(refused.stderr.contains("FAILED_PRECONDITION"), "{}", refused.describe());
    assert!(refused.stderr.contains("1 key(s)"), "the refusal names how many keys: {}", refused.describe());
    server.cli().args(["scope", "get", &copy_id, "--tenant", "acme"]).run().success();
    let deleted = server.cli().args(["scope", "delete", &copy_id, "--tenant", "acme", "--force"]).run().success();
    assert!(deleted.stdout.contains(&format!("deleted scope {copy_id}")), "{}", deleted.describe());
    assert!(deleted.stdout.contains(str_field(&bob, "id")), "names the detached key: {}", deleted.describe());
    let gone = server.cli().args(["scope", "get", &copy_id, "--tenant", "acme"]).run().expect_code(1);
    assert!(gone.stderr.contains("NOT_FOUND"), "{}", gone.describe());
    let refused = check(&server, &bob_token, "courses", "read").expect_code(3);
    assert!(refused.stdout.contains("denied (NO_SCOPE)"), "deleting a scope never widens: {}", refused.describe());
    let unused = server.cli().args(["scope", "delete", &blog_id, "--tenant", "acme"]).run().success();
    assert!(unused.stdout.contains(&format!("deleted scope {blog_id}")), "{}", unused.describe());

    // Builtins are locked.
    let locked =
        server.cli().args(["scope", "delete", "full-access", "--tenant", "acme", "--force"]).run().expect_code(1);
    assert!(locked.stderr.contains("FAILED_PRECONDITION"), "{}", locked.describe());

    // A fresh token is well formed but names no key.
    let fresh = Cli::new().args(["token", "new"]).run().success();
    let fresh_token = fresh.stdout.trim().to_owned();
    assert!(fresh_token.starts_with("ks_") && !fresh_token.contains(char::is_whitespace), "{}", fresh.describe());
    let unknown = check(&server, &fresh_token, "courses", "read").expect_code(3);
    assert!(unknown.stdout.contains("denied (UNKNOWN_KEY)"), "{}", unknown.describe());
    let garbage = check(&server, "not-a-token", "courses", "read").expect_code(3);
    assert!(garbage.stdout.contains("denied (MALFORMED_CREDENTIAL)"), "{}", garbage.describe());
}

#[test]
fn key_pair_credentials_are_checked_like_tokens() {
    let server = Server::start_default();
    let key = server
        .cli()
        .args(["--json", "key", "create", "--tenant", "acme", "--scope", "read-only", "--owner", "carol"])
        .run()
        .success()
        .json();
    let key_id = str_field(&key, "id");
    let token = str_field(&key, "token");
    let (_, secret) = token.rsplit_once('_').expect("token parts");
    let pair = server
        .cli_anonymous()
        .args(["check", "courses", "read", "--key-id", key_id, "--secret", secret])
        .run()
        .success();
    assert!(pair.stdout.starts_with("allowed (OK)"), "{}", pair.describe());
    let pair = server
        .cli_anonymous()
        .args(["check", "courses", "delete", "--key-id", key_id, "--secret", secret])
        .run()
        .expect_code(3);
    assert!(pair.stdout.contains("denied (NOT_GRANTED)"), "{}", pair.describe());
    // read-only grants no reserved module.
    let admin = server
        .cli_anonymous()
        .args(["check", "keyscope.keys", "read", "--key-id", key_id, "--secret", secret])
        .run()
        .expect_code(3);
    assert!(admin.stdout.contains("denied (NOT_GRANTED)"), "{}", admin.describe());
    // Used as an admin token, it is not allowed to administer.
    let forbidden = server.cli_with_token(token).args(["key", "list"]).run().expect_code(1);
    assert!(forbidden.stderr.contains("PERMISSION_DENIED"), "{}", forbidden.describe());
}

#[test]
fn the_environment_can_carry_server_and_token() {
    let server = Server::start_default();
    let listed = Cli::new()
        .env("KEYSCOPE_SERVER", &server.url())
        .env("KEYSCOPE_TOKEN", server.admin_token())
        .args(["--json", "scope", "list", "--tenant", "acme"])
        .run()
        .success()
        .json();
    let labels: Vec<&str> =
        listed["scopes"].as_array().expect("scopes array").iter().map(|s| str_field(s, "label")).collect();
    for builtin in ["full-access", "read-only", "admin"] {
        assert!(labels.contains(&builtin), "{builtin} missing from {labels:?}");
    }
    // `check` uses the token as its credential by default: the bootstrap key holds `admin`.
    let own = Cli::new()
        .env("KEYSCOPE_SERVER", &server.url())
        .env("KEYSCOPE_TOKEN", server.admin_token())
        .args(["check", "keyscope.scopes", "create"])
        .run()
        .success();
    assert!(own.stdout.starts_with("allowed (OK)"), "{}", own.describe());
}

#[test]
fn errors_are_one_clear_line_and_exit_1() {
    let server = Server::start_default();

    // Nothing listening: a port that was free a moment ago.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = free.local_addr().expect("local addr").port();
    drop(free);
    let nothing = Cli::new()
        .args(["--server", &format!("http://127.0.0.1:{port}"), "--token", server.admin_token(), "key", "list"])
        .run()
        .expect_code(1);
    assert!(nothing.stderr.starts_with("error: cannot reach keyscope"), "{}", nothing.describe());
    assert!(nothing.stdout.is_empty(), "{}", nothing.describe());
    assert!(!nothing.stderr.contains(server.admin_token()), "an error must not echo the token: {}", nothing.describe());
    let nothing = Cli::new()
        .args(["--server", &format!("http://127.0.0.1:{port}"), "check", "courses", "read", "--credential", "x"])
        .run()
        .expect_code(1);
    assert!(nothing.stderr.contains("cannot reach keyscope"), "{}", nothing.describe());

    // Not an address at all.
    let bad = Cli::new()
        .args(["--server", "not a url", "--token", server.admin_token(), "scope", "list"])
        .run()
        .expect_code(1);
    assert!(bad.stderr.contains("cannot reach keyscope"), "{}", bad.describe());

    // Wrong or missing admin token.
    let fresh = Cli::new().args(["--json", "token", "new"]).run().success().json();
    let stranger = str_field(&fresh, "token");
    assert!(stranger.starts_with(&format!("ks_{}_", str_field(&fresh, "key_id"))), "{fresh}");
    for token in [stranger, "garbage"] {
        let denied = server.cli_with_token(token).args(["key", "list", "--tenant", "acme"]).run().expect_code(1);
        assert!(denied.stderr.starts_with("error: UNAUTHENTICATED"), "{}", denied.describe());
        assert!(!denied.stderr.contains(token), "an error must not echo the token: {}", denied.describe());
        assert_eq!(denied.stderr.lines().count(), 1, "one line: {}", denied.describe());
    }
    let anonymous = server.cli_anonymous().args(["scope", "list"]).run().expect_code(1);
    assert!(anonymous.stderr.contains("UNAUTHENTICATED"), "{}", anonymous.describe());

    // Unknown ids.
    let missing =
        server.cli().args(["key", "get", str_field(&fresh, "key_id"), "--tenant", "acme"]).run().expect_code(1);
    assert!(missing.stderr.starts_with("error: NOT_FOUND"), "{}", missing.describe());
    let missing = server.cli().args(["scope", "get", "scp_doesnotexist", "--tenant", "acme"]).run().expect_code(1);
    assert!(missing.stderr.starts_with("error: NOT_FOUND"), "{}", missing.describe());

    // A key needs a scope of its own tenant that exists.
    let bad_scope =
        server.cli().args(["key", "create", "--tenant", "acme", "--scope", "no-such-scope"]).run().expect_code(1);
    assert!(bad_scope.stderr.starts_with("error: INVALID_ARGUMENT: scope_ids[0]"), "{}", bad_scope.describe());
    let bad_tenant = server
        .cli()
        .args(["scope", "create", "--tenant", "Not_A_Tenant", "--label", "x", "--read", "a"])
        .run()
        .expect_code(1);
    assert!(
        bad_tenant.stderr.contains("INVALID_ARGUMENT") && bad_tenant.stderr.contains("tenant"),
        "{}",
        bad_tenant.describe()
    );

    // --json errors are JSON too.
    let json_error = server.cli_with_token("garbage").args(["--json", "key", "list"]).run().expect_code(1);
    let parsed: Value = serde_json::from_str(json_error.stderr.trim())
        .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {}", json_error.describe()));
    assert!(str_field(&parsed, "error").contains("UNAUTHENTICATED"), "{parsed}");
    assert!(json_error.stdout.is_empty(), "{}", json_error.describe());
}

#[test]
fn usage_errors_exit_2() {
    // clap: a missing required argument.
    let missing = Cli::new().args(["key", "create", "--tenant", "acme"]).run().expect_code(2);
    assert!(missing.stderr.contains("--scope"), "{}", missing.describe());
    // An unknown subcommand.
    Cli::new().args(["frobnicate"]).run().expect_code(2);
    // Flags that cannot go together.
    Cli::new()
        .args(["check", "courses", "read", "--credential", "x", "--key-id", "k", "--secret", "s"])
        .run()
        .expect_code(2);
    // A bad token prefix, found by keyscope rather than clap, is a usage error as well.
    let prefix = Cli::new().args(["token", "new", "--prefix", "NOT OK"]).run().expect_code(2);
    assert!(prefix.stderr.contains("--prefix"), "{}", prefix.describe());
}

#[test]
fn usage_errors_found_after_connecting_exit_2() {
    let server = Server::start_default();
    let action = server.cli().args(["check", "courses", "frobnicate"]).run().expect_code(2);
    assert!(action.stderr.contains("action"), "{}", action.describe());
    let nothing = server.cli().args(["key", "update", "kid", "--version", "1"]).run().expect_code(2);
    assert!(nothing.stderr.contains("nothing to change"), "{}", nothing.describe());
    let meta = server
        .cli()
        .args(["key", "create", "--tenant", "acme", "--scope", "read-only", "--meta", "novalue"])
        .run()
        .expect_code(2);
    assert!(meta.stderr.contains("KEY=VALUE"), "{}", meta.describe());
}

#[test]
fn the_command_line_grammar_is_consistent() {
    // clap checks the grammar only when a command is parsed in a debug build; this checks
    // every subcommand at once (e.g. a `--version` argument beside clap's own flag).
    use clap::CommandFactory;
    keyscope::cli::Cli::command().debug_assert();
    // `--version` is an argument of the versioned commands, and the top level's own flag.
    Cli::new().args(["--version"]).run().success();
    let help = Cli::new().args(["key", "update", "--help"]).run().success();
    assert!(help.stdout.contains("--version <VERSION>"), "{}", help.describe());
}

/// `key usage` and `key list --unused-since`, text and JSON. The server flushes usage every
/// 100 ms; the test polls `key usage` (with a deadline) until the flush has landed.
#[test]
fn key_usage_and_unused_since_commands() {
    let server = process::ServerOptions::default().env("KEYSCOPE__USAGE__FLUSH_INTERVAL_MS", "100").start();
    let scope = server
        .cli()
        .args(["--json", "scope", "create", "--tenant", "acme", "--label", "r", "--read", "courses"])
        .run()
        .success()
        .json();
    let scope_id = str_field(&scope, "id").to_owned();
    let create = || {
        server.cli().args(["--json", "key", "create", "--tenant", "acme", "--scope", &scope_id]).run().success().json()
    };
    let (used, idle) = (create(), create());
    let (used_id, idle_id) = (str_field(&used, "id").to_owned(), str_field(&idle, "id").to_owned());
    check(&server, str_field(&used, "token"), "courses", "read").success();
    check(&server, str_field(&used, "token"), "courses", "delete").expect_code(3);

    let usage = || server.cli().args(["--json", "key", "usage", &used_id, "--tenant", "acme"]).run().success().json();
    let start = std::time::Instant::now();
    let json = loop {
        let json = usage();
        let days = json["days"].as_array().cloned().unwrap_or_default();
        // Both checks counted: a flush may fall between them.
        if days.last().is_some_and(|d| u64_field(d, "allowed") + u64_field(d, "denied") >= 2) {
            break json;
        }
        assert!(start.elapsed() < process::DEADLINE, "no usage flushed: {json}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let days = json["days"].as_array().cloned().unwrap_or_default();
    assert_eq!(days.len(), 30);
    let today = days.last().cloned().unwrap_or_default();
    assert_eq!((u64_field(&today, "allowed"), u64_field(&today, "denied")), (1, 1));
    assert_eq!(str_field(&json, "key_id"), used_id);
    assert!(json["last_used_at"].is_string(), "{json}");

    let date = str_field(&today, "date").to_owned();
    let text = server.cli().args(["key", "usage", &used_id, "--tenant", "acme", "--start", &date]).run().success();
    assert!(text.stdout.lines().any(|l| l.split_whitespace().eq([date.as_str(), "1", "1"])), "{}", text.stdout);
    assert!(text.stdout.lines().any(|l| l.split_whitespace().eq(["total", "1", "1"])), "{}", text.stdout);
    assert_ne!(field(&text, "last used"), "never");

    let list = |since: &str| {
        let run = server.cli().args(["--json", "key", "list", "--tenant", "acme", "--unused-since", since]).run();
        let json = run.success().json();
        let mut ids: Vec<String> = json["keys"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|k| str_field(k, "id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    let mut both = vec![used_id.clone(), idle_id.clone()];
    both.sort();
    assert_eq!(list("9999-12-31"), both, "used before that date, or never");
    assert_eq!(list("2000-01-01T00:00:00Z"), vec![idle_id], "only the never-used key");

    let bad = server.cli().args(["key", "list", "--unused-since", "someday"]).run().expect_code(2);
    assert!(bad.stderr.contains("--unused-since"), "{}", bad.stderr);
    let bad = server.cli().args(["key", "usage", &used_id, "--tenant", "acme", "--start", "2024-13-01"]).run();
    let bad = bad.expect_code(1);
    assert!(bad.stderr.contains("INVALID_ARGUMENT") && bad.stderr.contains("start_date"), "{}", bad.stderr);
}

#[test]
fn audit_lists_admin_changes_newest_first_with_filters() {
    let server = Server::start_default();
    let scope = server
        .cli()
        .args(["--json", "scope", "create", "--tenant", "acme", "--label", "blog", "--read", "posts"])
        .run()
        .success()
        .json();
    let scope_id = str_field(&scope, "id").to_owned();
    let key =
        server.cli().args(["--json", "key", "create", "--tenant", "acme", "--scope", &scope_id]).run().success().json();
    let key_id = str_field(&key, "id").to_owned();
    let token = str_field(&key, "token").to_owned();
    server.cli().args(["key", "disable", &key_id, "--tenant", "acme"]).run().success();

    let all = server.cli().args(["--json", "audit", "--tenant", "acme"]).run().success().json();
    let events = all["events"].as_array().unwrap_or_else(|| panic!("no events: {all}"));
    let ops: Vec<&str> = events.iter().map(|e| str_field(e, "operation")).collect();
    assert_eq!(ops, ["disable_key", "create_key", "create_scope"]);
    assert_eq!(str_field(&events[0], "target_id"), key_id);
    assert_eq!(str_field(&events[0], "target_type"), "key");
    assert_eq!(str_field(&events[0], "actor_key_id"), server.admin_token().split('_').nth(1).unwrap_or(""));
    assert_eq!(events[0]["details"]["state"], "disabled");
    assert!(!all.to_string().contains(&token), "no token in the audit log");

    // --limit follows pages up to that many; the filters pass through.
    let one = server.cli().args(["--json", "audit", "--tenant", "acme", "--limit", "1"]).run().success().json();
    assert_eq!(one["events"].as_array().map(Vec::len), Some(1));
    assert!(!str_field(&one, "next_page_token").is_empty());
    let target =
        server.cli().args(["--json", "audit", "--tenant", "acme", "--target", &scope_id]).run().success().json();
    assert_eq!(target["events"].as_array().map(Vec::len), Some(1));
    let recent = server.cli().args(["--json", "audit", "--tenant", "acme", "--since", "1h"]).run().success().json();
    assert_eq!(recent["events"].as_array().map(Vec::len), Some(3));
    let old = server
        .cli()
        .args(["--json", "audit", "--tenant", "acme", "--until", "2000-01-01T00:00:00Z"])
        .run()
        .success()
        .json();
    assert_eq!(old["events"].as_array().map(Vec::len), Some(0));
    let system = server.cli().args(["audit", "--tenant", "system", "--actor", "keyscope"]).run().success();
    assert!(system.stdout.starts_with("TIME"), "{}", system.describe());
    assert!(system.stdout.contains("create_key") && system.stdout.contains("keyscope"), "{}", system.describe());

    let bad = server.cli().args(["audit", "--since", "yesterday-ish"]).run().expect_code(2);
    assert!(bad.stderr.contains("--since"), "{}", bad.describe());
    let bad = server.cli().args(["audit", "--actor", "nobody"]).run().expect_code(1);
    assert!(bad.stderr.contains("actor_key_id"), "{}", bad.describe());
}

/// Issue 7: `key rotate`, source networks and rate limits on `key create`/`update`, `check
/// --source`, and `tenant policy get|set`.
#[test]
fn rotation_sources_rate_limits_and_tenant_policy_commands() {
    let server = Server::start_default();
    let key = server
        .cli()
        .args(["--json", "key", "create", "--tenant", "acme", "--scope", "read-only"])
        .args(["--allow-cidr", "10.0.0.0/8,2001:db8::/32", "--rate", "1000", "--burst", "50"])
        .run()
        .success()
        .json();
    let id = str_field(&key, "id").to_owned();
    let old = str_field(&key, "token").to_owned();
    assert_eq!(strings(&key, "allowed_cidrs"), ["10.0.0.0/8", "2001:db8::/32"]);
    assert_eq!(u64_field(&key["rate_limit"], "burst"), 50);
    let from = |token: &str, source: &str| {
        server.cli_anonymous().args(["check", "courses", "read", "--credential", token, "--source", source]).run()
    };
    from(&old, "10.1.2.3").success();
    let outside = from(&old, "192.0.2.1").expect_code(3);
    assert!(outside.stdout.contains("denied (SOURCE_NOT_ALLOWED)"), "{}", outside.describe());
    let bad = from(&old, "not-an-ip").expect_code(1);
    assert!(bad.stderr.contains("source_address"), "{}", bad.describe());

    // Rotation with a grace period: both tokens work; the new one is printed once.
    let rotated = server.cli().args(["key", "rotate", &id, "--tenant", "acme", "--grace", "1h"]).run().success();
    let new = field(&rotated, "token");
    assert_ne!(new, old);
    assert!(!field(&rotated, "old secret").is_empty(), "{}", rotated.describe());
    from(&old, "10.1.2.3").success();
    from(&new, "10.1.2.3").success();
    // Zero grace (the default): the previous token dies at once.
    let again = server.cli().args(["--json", "key", "rotate", &id, "--tenant", "acme"]).run().success().json();
    assert_eq!(u64_field(&again, "version"), 3);
    let dead = from(&new, "10.1.2.3").expect_code(3);
    assert!(dead.stdout.contains("UNKNOWN_KEY"), "{}", dead.describe());
    let bad_grace =
        server.cli().args(["key", "rotate", &id, "--tenant", "acme", "--grace", "31d"]).run().expect_code(1);
    assert!(bad_grace.stderr.contains("grace"), "{}", bad_grace.describe());

    // Clearing networks and the rate limit.
    let cleared = server
        .cli()
        .args([
            "--json",
            "key",
            "update",
            &id,
            "--tenant",
            "acme",
            "--version",
            "3",
            "--clear-cidrs",
            "--no-rate-limit",
        ])
        .run()
        .success()
        .json();
    assert!(strings(&cleared, "allowed_cidrs").is_empty());
    assert_eq!(cleared["rate_limit"], Value::Null);

    // Tenant policy.
    let none = server.cli().args(["--json", "tenant", "policy", "get", "--tenant", "acme"]).run().success().json();
    assert_eq!((none["max_key_lifetime"].clone(), u64_field(&none, "version")), (Value::Null, 0));
    let set =
        server.cli().args(["tenant", "policy", "set", "--tenant", "acme", "--max-key-lifetime", "90d"]).run().success();
    assert_eq!(field(&set, "max key lifetime"), "90d");
    let refused = server.cli().args(["key", "create", "--tenant", "acme", "--scope", "read-only"]).run().expect_code(1);
    assert!(refused.stderr.contains("expires_at"), "{}", refused.describe());
    let fits = server
        .cli()
        .args(["--json", "key", "create", "--tenant", "acme", "--scope", "read-only", "--expires-in", "30d"])
        .run()
        .success()
        .json();
    // The keys the new maximum would refuse: the one made before it, with no expiry.
    let outliving =
        server.cli().args(["--json", "key", "list", "--tenant", "acme", "--outliving", "90d"]).run().success().json();
    let ids: Vec<&str> = outliving["keys"].as_array().expect("keys").iter().map(|k| str_field(k, "id")).collect();
    assert!(ids.contains(&id.as_str()) && !ids.contains(&str_field(&fits, "id")), "{outliving}");
    let lifted =
        server.cli().args(["--json", "tenant", "policy", "set", "--tenant", "acme", "--no-max-key-lifetime"]).run();
    assert_eq!(u64_field(&lifted.success().json(), "version"), 2);
    Cli::new().args(["tenant", "policy", "set"]).run().expect_code(2);
}
