//! No token, secret or pepper is ever logged: the real binary runs with `RUST_LOG=trace`
//! (h2, hyper, tonic and tower internals included) and JSON logs, serves a realistic mix
//! of admin calls and checks, and everything it wrote is searched for every credential.
// A test fails by panicking, with the output that shows why.
#![allow(clippy::panic)]

#[path = "common/process.rs"]
mod process;

use keyscope::{
    domain::{KeyId, TokenFormat},
    grpc::pb::{self, batch_check_request, checker_client::CheckerClient},
};
use process::{Cli, Run, ServerOptions};
use serde_json::Value;

const PEPPER: &str = "pepper-Qz7Wx3Vb9Lk2Mn5Rt8Yp";

/// Everything that must never appear in a log: the whole text and the secret parts.
struct Forbidden(Vec<(String, String)>);

impl Forbidden {
    fn new() -> Self {
        Forbidden(vec![("pepper".into(), PEPPER.into())])
    }

    /// A keyscope token: the whole token, its last part (secret + checksum, 28 characters)
    /// and the secret alone (22 characters).
    fn token(&mut self, what: &str, token: &str) {
        let (_, tail) = token.rsplit_once('_').unwrap_or_else(|| panic!("{what}: not a token: {token}"));
        assert_eq!(tail.len(), 28, "{what}: unexpected token shape {token}");
        self.0.push((format!("{what} (token)"), token.to_owned()));
        self.0.push((format!("{what} (secret and checksum)"), tail.to_owned()));
        self.0.push((format!("{what} (secret)"), tail[..22].to_owned()));
    }

    /// Any other presented credential text.
    fn text(&mut self, what: &str, text: &str) {
        self.0.push((what.to_owned(), text.to_owned()));
    }

    /// Every forbidden text found in `haystack`, with the line it is on.
    fn leaks(&self, haystack: &[String]) -> Vec<String> {
        let mut found = Vec::new();
        for (what, needle) in &self.0 {
            for line in haystack.iter().filter(|l| l.contains(needle.as_str())) {
                found.push(format!("{what} in: {line}"));
            }
        }
        found
    }
}

fn json(run: Run) -> Value {
    run.json()
}

fn text<'a>(value: &'a Value, name: &str) -> &'a str {
    value.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("no `{name}` in {value}"))
}

/// A well-formed token for `key_id` whose secret is not the key's.
fn wrong_secret_for(key_id: &str) -> String {
    let id: KeyId = key_id.parse().expect("a key id");
    let (_, token) = TokenFormat::new("ks").expect("prefix").issue(&id).expect("random");
    token.expose().to_owned()
}

fn batch_check(addr: &str, token: &str) -> Vec<pb::CheckResponse> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut client = CheckerClient::connect(format!("http://{addr}")).await.expect("connect");
        let items =
            [("courses", pb::Action::Read), ("courses", pb::Action::Delete), ("billing.invoices", pb::Action::Read)]
                .into_iter()
                .map(|(module, action)| pb::CheckItem { module: module.into(), action: action.into() })
                .collect();
        let request = pb::BatchCheckRequest {
            credential: Some(batch_check_request::Credential::Token(token.into())),
            tenant: "acme".into(),
            items,
            explain: true,
            source_address: Default::default(),
        };
        client.batch_check(request).await.expect("batch check").into_inner().results
    })
}

#[test]
fn no_token_secret_or_pepper_is_ever_logged() {
    let server = ServerOptions::default().env("RUST_LOG", "trace").env("KEYSCOPE__SECURITY__PEPPER", PEPPER).start();
    let mut forbidden = Forbidden::new();
    forbidden.token("bootstrap token", server.admin_token());
    let mut key_ids = Vec::new();

    // Scope administration.
    let website = json(
        server
            .cli()
            .args([
                "--json",
                "scope",
                "create",
                "--tenant",
                "acme",
                "--label",
                "website",
                "--read",
                "courses,course-dates",
            ])
            .run()
            .success(),
    );
    let scope_id = text(&website, "id").to_owned();
    let no_billing = json(
        server
            .cli()
            .args([
                "--json",
                "scope",
                "create",
                "--tenant",
                "acme",
                "--label",
                "no-billing",
                "--mode",
                "deny",
                "--read",
                "billing.*",
            ])
            .run()
            .success(),
    );
    let deny_id = text(&no_billing, "id").to_owned();
    server.cli().args(["scope", "list", "--tenant", "acme", "--all"]).run().success();
    server
        .cli()
        .args([
            "scope",
            "update",
            &scope_id,
            "--tenant",
            "acme",
            "--version",
            "1",
            "--read",
            "courses,course-dates,posts",
        ])
        .run()
        .success();
    server
        .cli()
        .args(["scope", "eval", "billing.invoices", "read", "--tenant", "acme", "--scope", &deny_id])
        .run()
        .expect_code(3);

    // Keys: their tokens come back in the responses.
    let mut create_key = |owner: &str, scopes: &str| {
        let key = json(
            server
                .cli()
                .args([
                    "--json", "key", "create", "--tenant", "acme", "--scope", scopes, "--owner", owner, "--meta",
                    "team=web",
                ])
                .run()
                .success(),
        );
        let (id, token) = (text(&key, "id").to_owned(), text(&key, "token").to_owned());
        forbidden.token(&format!("token of key {id}"), &token);
        key_ids.push(id.clone());
        (id, token)
    };
    let (alice, alice_token) = create_key("alice", &format!("{scope_id},{deny_id}"));
    let (bob, bob_token) = create_key("bob", "read-only");
    let (carol, carol_token) = create_key("carol", &scope_id);

    // Checks: whole tokens, key pairs, wrong secrets, garbage, another tenant.
    let check = |args: &[&str]| server.cli_anonymous().arg("check").args(args).run();
    check(&["courses", "read", "--credential", &alice_token]).success();
    // The deny-mode scope grants everything it does not list.
    check(&["courses", "delete", "--credential", &alice_token]).success();
    check(&["keyscope.keys", "read", "--credential", &alice_token]).expect_code(3);
    check(&["billing.invoices", "read", "--credential", &alice_token]).expect_code(3);
    check(&["courses", "read", "--credential", &alice_token, "--tenant", "globex"]).expect_code(3);
    let (_, bob_tail) = bob_token.rsplit_once('_').expect("token parts");
    check(&["courses", "read", "--key-id", &bob, "--secret", bob_tail]).success();
    check(&["courses", "update", "--key-id", &bob, "--secret", bob_tail]).expect_code(3);
    let wrong = wrong_secret_for(&carol);
    forbidden.token("a wrong secret for carol's key", &wrong);
    let refused = check(&["courses", "read", "--credential", &wrong]).expect_code(3);
    assert!(refused.stdout.contains("UNKNOWN_KEY"), "{}", refused.describe());
    let (_, wrong_tail) = wrong.rsplit_once('_').expect("token parts");
    check(&["courses", "read", "--key-id", &carol, "--secret", wrong_tail]).expect_code(3);
    let garbage = "ks_thisIsNotAToken_butItCouldBeSomebodysTypoedSecret";
    forbidden.text("a garbage credential", garbage);
    forbidden.text("a garbage credential's tail", "butItCouldBeSomebodysTypoedSecret");
    check(&["courses", "read", "--credential", garbage]).expect_code(3);
    let stranger = Cli::new().args(["token", "new"]).run().success().stdout.trim().to_owned();
    forbidden.token("a well-formed unknown token", &stranger);
    check(&["courses", "read", "--credential", &stranger]).expect_code(3);
    let answers = batch_check(&server.addr, &carol_token);
    assert_eq!(answers.iter().map(|a| a.allowed).collect::<Vec<_>>(), [true, false, false]);

    // Admin calls with a bad bearer, and with a key that is not an admin.
    server.cli_with_token(&stranger).args(["key", "list", "--tenant", "acme"]).run().expect_code(1);
    server.cli_with_token(garbage).args(["scope", "list"]).run().expect_code(1);
    server.cli_with_token(&bob_token).args(["key", "list"]).run().expect_code(1);

    // Key lifecycle.
    server.cli().args(["key", "get", &alice, "--tenant", "acme"]).run().success();
    server.cli().args(["key", "list", "--tenant", "acme", "--all"]).run().success();
    server
        .cli()
        .args(["key", "update", &alice, "--tenant", "acme", "--version", "1", "--description", "web site"])
        .run()
        .success();
    server.cli().args(["key", "disable", &carol, "--tenant", "acme"]).run().success();
    check(&["courses", "read", "--credential", &carol_token]).expect_code(3);
    server.cli().args(["key", "enable", &carol, "--tenant", "acme"]).run().success();
    server.cli().args(["key", "revoke", &carol, "--tenant", "acme"]).run().success();
    check(&["courses", "read", "--credential", &carol_token]).expect_code(3);
    server.cli().args(["scope", "delete", &deny_id, "--tenant", "acme"]).run().expect_code(1);

    // Rotation (the new token comes back once), source networks and a rate limit.
    let rotated =
        json(server.cli().args(["--json", "key", "rotate", &bob, "--tenant", "acme", "--grace", "1h"]).run().success());
    let rotated_token = text(&rotated, "token").to_owned();
    forbidden.token("bob's rotated token", &rotated_token);
    check(&["courses", "read", "--credential", &bob_token]).success();
    check(&["courses", "read", "--credential", &rotated_token]).success();
    server
        .cli()
        .args(["key", "update", &bob, "--tenant", "acme", "--version", "2", "--allow-cidr", "10.0.0.0/8"])
        .args(["--rate", "0.001", "--burst", "1"])
        .run()
        .success();
    check(&["courses", "read", "--credential", &rotated_token, "--source", "192.0.2.1"]).expect_code(3);
    check(&["courses", "read", "--credential", &rotated_token, "--source", "10.0.0.1"]).success();
    check(&["courses", "read", "--credential", &rotated_token, "--source", "10.0.0.1"]).expect_code(3);

    // A token pasted where a subject or a metadata key goes is never logged whole, and the
    // errors that name it show only its key id.
    let pasted = Cli::new().args(["token", "new"]).run().success().stdout.trim().to_owned();
    forbidden.token("a token used as a subject and a metadata key", &pasted);
    let (_, pasted_tail) = pasted.rsplit_once('_').expect("token parts");
    let principal = |verb: &str| server.cli().args(["principal", verb, &pasted, "--tenant", "acme"]).run();
    let missing = principal("get").expect_code(1);
    assert!(!missing.stderr.contains(pasted_tail), "the subject was echoed: {}", missing.describe());
    principal("upsert").success();
    principal("get").success();
    principal("delete").success();
    let gone = principal("delete").expect_code(1);
    assert!(!gone.stderr.contains(pasted_tail), "the subject was echoed: {}", gone.describe());
    let metadata = format!("{pasted}={}", "x".repeat(600));
    let refused =
        server.cli().args(["key", "create", "--tenant", "acme", "--scope", "read-only", "--meta", &metadata]).run();
    let refused = refused.expect_code(1);
    assert!(refused.stderr.contains("metadata["), "the field is not named: {}", refused.describe());
    assert!(!refused.stderr.contains(pasted_tail), "the metadata key was echoed: {}", refused.describe());

    let captured = server.stop();

    // stdout holds the banner (with the bootstrap token, on purpose) and nothing after it.
    assert_eq!(captured.stdout.len(), 3, "stdout after the banner: {:?}", captured.stdout);
    // The matcher finds what it looks for: the banner's token is one of its needles.
    assert_eq!(forbidden.leaks(&captured.stdout[2..]).len(), 3, "the search must see the banner's token");
    let after_banner = &captured.stdout[3..];
    let mut leaks = forbidden.leaks(after_banner);
    leaks.extend(forbidden.leaks(&captured.stderr));
    assert!(leaks.is_empty(), "{} secret(s) were logged:\n{}", leaks.len(), leaks.join("\n"));

    // The capture is meaningful: trace-level internals, the key ids, the check spans.
    let lines: Vec<Value> = captured
        .stderr
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(lines.len() > 100, "suspiciously few log lines at trace: {}", lines.len());
    assert!(lines.iter().any(|l| l["level"] == "TRACE"), "no TRACE line: RUST_LOG=trace was not honoured");
    // The transport's own trace output (h2 decodes every header, the bearer included) is
    // part of what was searched. Should logging ever cap these targets on purpose, point
    // this at what remains of the transport's output instead.
    assert!(
        lines.iter().any(|l| l["target"].as_str().is_some_and(|t| t.starts_with("h2::hpack"))),
        "no h2 header-decoding trace in the capture"
    );
    for id in &key_ids {
        assert!(captured.stderr.iter().any(|l| l.contains(id.as_str())), "key id {id} never logged");
    }
    let check_reasons: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.get("span"))
        .filter(|s| s["name"] == "check")
        .filter_map(|s| s.get("reason").and_then(Value::as_str))
        .collect();
    for reason in [
        "OK",
        "NOT_GRANTED",
        "DENIED_BY_SCOPE",
        "TENANT_MISMATCH",
        "UNKNOWN_KEY",
        "MALFORMED_CREDENTIAL",
        "KEY_DISABLED",
        "KEY_REVOKED",
        "SOURCE_NOT_ALLOWED",
        "RATE_LIMITED",
    ] {
        assert!(check_reasons.contains(&reason), "no check span with reason {reason}; seen: {check_reasons:?}");
    }
    assert!(
        lines.iter().filter_map(|l| l.get("span")).any(|s| s["name"] == "batch_check" && s.get("credential").is_some()),
        "no batch_check span with the credential outcome"
    );
    assert!(captured.stderr.iter().any(|l| l.contains("key created")), "no `key created` event");
}
