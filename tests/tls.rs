//! TLS end to end, with certificates the tests make: the real binary serves gRPC over TLS and
//! mutual TLS (refusing clients without a trusted certificate), picks up renewed certificate
//! files without a restart, and reaches Redis over TLS with a client certificate. The CLI talks
//! to it over TLS too.
// Tests fail by panicking.
#![allow(clippy::panic)]

#[path = "common/certs.rs"]
mod certs;
#[path = "common/process.rs"]
mod process;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/scrape.rs"]
mod scrape;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use certs::{Ca, Leaf};
use process::{Cli, Server, ServerOptions};
use redis_server::{RedisCluster, RedisServer, fresh_prefix};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

fn port(server: &Server) -> u16 {
    server.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the bound port")
}

/// A health check over a fresh connection to `https://localhost:<port>` trusting `ca`, with a
/// client certificate if given: `Ok` when it was answered SERVING, else what went wrong.
async fn health_over_tls(port: u16, ca: &str, client: Option<&Leaf>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some(leaf) = client {
        tls = tls.identity(leaf.identity());
    }
    let endpoint = Endpoint::from_shared(format!("https://localhost:{port}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    health(endpoint).await
}

async fn health(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|s| format!("health: {s:?}"))?;
    match answer.into_inner().status {
        s if s == ServingStatus::Serving as i32 => Ok(()),
        other => Err(format!("health status {other}")),
    }
}

async fn health_in_plaintext(port: u16) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    health(endpoint).await
}

fn tls_server(cert: &Path, key: &Path) -> ServerOptions {
    ServerOptions::default()
        .env("KEYSCOPE__SERVER__TLS__CERT_FILE", &cert.display().to_string())
        .env("KEYSCOPE__SERVER__TLS__KEY_FILE", &key.display().to_string())
}

/// The CLI aimed at a TLS server, trusting `ca_file`.
fn cli_over_tls(server: &Server, ca_file: &Path) -> Cli {
    Cli::new().args([
        "--server",
        &format!("https://localhost:{}", port(server)),
        "--tls-ca-file",
        &ca_file.display().to_string(),
    ])
}

/// Creates a scope reading `courses` and a key holding it through `cli` (with the admin
/// token); returns the key's token.
fn key_reading_courses(cli: impl Fn() -> Cli) -> String {
    let scope = cli()
        .args(["--json", "scope", "create", "--tenant", "acme", "--label", "reader", "--read", "courses"])
        .run()
        .success()
        .json();
    let scope_id = scope["id"].as_str().expect("scope id").to_owned();
    let key = cli().args(["--json", "key", "create", "--tenant", "acme", "--scope", &scope_id]).run().success().json();
    key["token"].as_str().expect("token").to_owned()
}

fn serving_line_says(server: &Server, tls: &str) -> bool {
    server.stderr_lines().iter().any(|l| l.contains(process::SERVING) && l.contains(&format!("\"tls\":\"{tls}\"")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_api_and_refuses_plaintext_and_untrusted_servers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("keyscope test CA");
    let ca_file = certs::write(dir.path(), "ca.crt", &ca.pem);
    let (cert, key) = ca.server().write(dir.path(), "server");
    let server = tls_server(&cert, &key).start();
    assert!(serving_line_says(&server, "on"), "{:?}", server.stderr_lines());
    let port = port(&server);

    health_over_tls(port, &ca.pem, None).await.expect("a client trusting the CA is served");
    let plaintext = health_in_plaintext(port).await;
    assert!(plaintext.is_err(), "a plaintext client must not be served: {plaintext:?}");
    let other_ca = Ca::new("some other CA");
    let untrusted = health_over_tls(port, &other_ca.pem, None).await;
    assert!(untrusted.is_err(), "a client that does not trust the server's CA must fail: {untrusted:?}");

    // The CLI over TLS: admin calls and checks.
    let admin = server.admin_token().to_owned();
    let token = key_reading_courses(|| cli_over_tls(&server, &ca_file).args(["--token", &admin]));
    let allowed = cli_over_tls(&server, &ca_file).args(["check", "courses", "read", "--credential", &token]).run();
    assert!(allowed.success().stdout.starts_with("allowed (OK)"));
    let denied = cli_over_tls(&server, &ca_file).args(["check", "courses", "update", "--credential", &token]).run();
    assert!(denied.expect_code(3).stdout.contains("denied"));
    // Without the CA the CLI does not trust the server (the system's CAs did not sign it).
    let refused = Cli::new()
        .args(["--server", &format!("https://localhost:{port}"), "check", "courses", "read", "--credential", &token])
        .run()
        .expect_code(1);
    assert!(refused.stderr.contains("cannot reach keyscope"), "{}", refused.describe());
    // TLS flags with a plaintext server URL are a usage error.
    let usage = Cli::new()
        .args(["--server", &format!("http://127.0.0.1:{port}"), "--tls-ca-file", &ca_file.display().to_string()])
        .args(["check", "courses", "read", "--credential", &token])
        .run();
    assert_eq!(usage.code(), 2, "{}", usage.describe());
    assert!(usage.stderr.contains("https://"), "{}", usage.describe());
    let output = server.stop();
    assert!(!output.all().contains(&token), "a token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server_ca_file = certs::write(dir.path(), "server-ca.crt", &server_ca.pem);
    let client_ca_file = certs::write(dir.path(), "client-ca.crt", &client_ca.pem);
    let (cert, key) = server_ca.server().write(dir.path(), "server");
    let trusted = client_ca.client("payments-service");
    let (client_cert, client_key) = trusted.write(dir.path(), "client");
    let rogue = Ca::new("rogue CA").client("payments-service");
    // A certificate the server's CA signed is not a client certificate the client CA signed.
    let wrong_ca = server_ca.client("payments-service");

    let server = tls_server(&cert, &key)
        .env("KEYSCOPE__SERVER__TLS__CLIENT_CA_FILE", &client_ca_file.display().to_string())
        .env("KEYSCOPE__SERVER__TLS__CLIENT_AUTH", "required")
        .start();
    assert!(serving_line_says(&server, "on, client certificates required"), "{:?}", server.stderr_lines());
    let port = port(&server);
    health_over_tls(port, &server_ca.pem, Some(&trusted)).await.expect("a client with a trusted certificate");
    for (what, client) in
        [("no certificate", None), ("a rogue CA's", Some(&rogue)), ("the server CA's", Some(&wrong_ca))]
    {
        let refused = health_over_tls(port, &server_ca.pem, client).await;
        assert!(refused.is_err(), "a client with {what} must be refused: {refused:?}");
    }
    let metrics = scrape::metrics(&server.http_addr).await;
    let failures = scrape::count(&metrics, "keyscope_tls_handshake_failures_total", &[]);
    assert!(failures >= 3.0, "three refused handshakes, counted {failures}");

    // The CLI with its client certificate; without one it is refused.
    let admin = server.admin_token().to_owned();
    let with_cert = || {
        cli_over_tls(&server, &server_ca_file).args([
            "--tls-cert-file",
            &client_cert.display().to_string(),
            "--tls-key-file",
            &client_key.display().to_string(),
            "--token",
            &admin,
        ])
    };
    let token = key_reading_courses(with_cert);
    let allowed = with_cert().args(["check", "courses", "read", "--credential", &token]).run();
    assert!(allowed.success().stdout.starts_with("allowed (OK)"));
    let refused =
        cli_over_tls(&server, &server_ca_file).args(["check", "courses", "read", "--credential", &token]).run();
    assert_eq!(refused.code(), 1, "{}", refused.describe());
    drop(server);

    // Optional: a client without a certificate is served, one with an untrusted one is not.
    let server = tls_server(&cert, &key)
        .env("KEYSCOPE__SERVER__TLS__CLIENT_CA_FILE", &client_ca_file.display().to_string())
        .env("KEYSCOPE__SERVER__TLS__CLIENT_AUTH", "optional")
        .start();
    let port = self::port(&server);
    health_over_tls(port, &server_ca.pem, None).await.expect("optional: no certificate is fine");
    health_over_tls(port, &server_ca.pem, Some(&trusted)).await.expect("optional: a trusted certificate");
    let refused = health_over_tls(port, &server_ca.pem, Some(&rogue)).await;
    assert!(refused.is_err(), "optional: an untrusted certificate must be refused: {refused:?}");
}

/// Polls `probe` every 100 ms until it returns true, for at most `limit`.
async fn eventually(limit: Duration, mut probe: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_used_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first_ca = Ca::new("first CA");
    let (cert, key) = first_ca.server().write(dir.path(), "server");
    let server = tls_server(&cert, &key).env("KEYSCOPE__SERVER__TLS__RELOAD_INTERVAL_MS", "1000").start();
    let port = port(&server);
    health_over_tls(port, &first_ca.pem, None).await.expect("served with the first certificate");

    // Renewal, the way a mounted Secret changes: new files, signed by a new CA.
    let second_ca = Ca::new("second CA");
    let renewed = second_ca.server();
    renewed.write(dir.path(), "server");
    let taken =
        eventually(Duration::from_secs(15), async || health_over_tls(port, &second_ca.pem, None).await.is_ok()).await;
    assert!(taken, "the renewed certificate was not served within 15 s; log: {:?}", server.stderr_lines());
    let old = health_over_tls(port, &first_ca.pem, None).await;
    assert!(old.is_err(), "new connections must get the renewed certificate: {old:?}");

    // A broken file is not taken: the last good certificate stays, and it is reported once.
    certs::write(dir.path(), "server.crt", "not a certificate\n");
    let warned = eventually(Duration::from_secs(15), async || {
        server.stderr_lines().iter().any(|l| l.contains("TLS files not reloaded") && l.contains("server.tls.cert_file"))
    })
    .await;
    assert!(warned, "no warning about the broken file: {:?}", server.stderr_lines());
    health_over_tls(port, &second_ca.pem, None).await.expect("still served with the last good certificate");
    let metrics = scrape::metrics(&server.http_addr).await;
    assert_eq!(scrape::count(&metrics, "keyscope_tls_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(scrape::count(&metrics, "keyscope_tls_reloads_total", &[("result", "error")]), 1.0);
}

#[test]
fn bad_tls_settings_stop_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let other_key = ca.server().write(dir.path(), "other").1;
    let missing = dir.path().join("missing.crt");
    let not_pem = certs::write(dir.path(), "not.pem", "hello\n");
    let path = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("KEYSCOPE__SERVER__TLS__CERT_FILE", path(&cert))], "server.tls.key_file"),
        (
            vec![("KEYSCOPE__SERVER__TLS__CERT_FILE", path(&missing)), ("KEYSCOPE__SERVER__TLS__KEY_FILE", path(&key))],
            "server.tls.cert_file: cannot read",
        ),
        (
            vec![("KEYSCOPE__SERVER__TLS__CERT_FILE", path(&not_pem)), ("KEYSCOPE__SERVER__TLS__KEY_FILE", path(&key))],
            "server.tls.cert_file",
        ),
        (
            vec![
                ("KEYSCOPE__SERVER__TLS__CERT_FILE", path(&cert)),
                ("KEYSCOPE__SERVER__TLS__KEY_FILE", path(&not_pem)),
            ],
            "server.tls.key_file",
        ),
        (
            vec![
                ("KEYSCOPE__SERVER__TLS__CERT_FILE", path(&cert)),
                ("KEYSCOPE__SERVER__TLS__KEY_FILE", path(&other_key)),
            ],
            "server.tls.key_file: does not match",
        ),
        (
            vec![
                ("KEYSCOPE__SERVER__TLS__CERT_FILE", path(&cert)),
                ("KEYSCOPE__SERVER__TLS__KEY_FILE", path(&key)),
                ("KEYSCOPE__SERVER__TLS__CLIENT_AUTH", "required".into()),
            ],
            "server.tls.client_ca_file",
        ),
        (
            vec![
                ("KEYSCOPE__SERVER__TLS__CERT_FILE", path(&cert)),
                ("KEYSCOPE__SERVER__TLS__KEY_FILE", path(&key)),
                ("KEYSCOPE__SERVER__TLS__CLIENT_AUTH", "sometimes".into()),
            ],
            "client_auth",
        ),
        (vec![("KEYSCOPE__SERVER__TLS__CLIENT_AUTH", "required".into())], "server.tls.cert_file"),
        (
            vec![
                ("KEYSCOPE__STORE__KIND", "redis".into()),
                ("KEYSCOPE__STORE__REDIS__URL", "redis://127.0.0.1:1".into()),
                ("KEYSCOPE__STORE__REDIS__TLS__CA_FILE", path(&cert)),
            ],
            "rediss://",
        ),
        (
            vec![
                ("KEYSCOPE__STORE__KIND", "redis".into()),
                ("KEYSCOPE__STORE__REDIS__URL", "rediss://127.0.0.1:1".into()),
                ("KEYSCOPE__STORE__REDIS__TLS__CERT_FILE", path(&cert)),
            ],
            "store.redis.tls.key_file",
        ),
        (
            vec![
                ("KEYSCOPE__TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4317".into()),
                ("KEYSCOPE__TELEMETRY__OTLP_CA_FILE", path(&cert)),
            ],
            "telemetry.otlp_ca_file",
        ),
    ];
    for (envs, expected) in cases {
        let mut cmd = process::command();
        cmd.arg("serve")
            .env("KEYSCOPE__SERVER__GRPC_ADDR", "127.0.0.1:0")
            .env("KEYSCOPE__SERVER__HTTP_ADDR", "127.0.0.1:0");
        for (name, value) in &envs {
            cmd.env(name, value);
        }
        let out = cmd.output().expect("run keyscope serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{envs:?} must stop the start: {stderr}");
        assert!(stderr.contains(expected), "{envs:?}: expected `{expected}` in: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "a key's contents were printed: {stderr}");
    }
}

/// A CA, a Redis node's certificate (made by `node`) and keyscope's client certificate, as
/// files in a temporary directory.
struct RedisPki {
    dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
    node: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
}

impl RedisPki {
    fn new(node: fn(&Ca) -> Leaf) -> RedisPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("redis CA");
        let ca_file = certs::write(dir.path(), "ca.crt", &ca.pem);
        let node = node(&ca).write(dir.path(), "node");
        let client = ca.client("keyscope").write(dir.path(), "client");
        RedisPki { dir, ca_file, node, client }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_client_certificate_and_a_separate_password() {
    let RedisPki { dir, ca_file, node: (redis_cert, redis_key), client: (client_cert, client_key) } =
        RedisPki::new(Ca::server);
    let password = "redis-password-that-must-not-leak";
    let redis = RedisServer::start_tls(
        &redis_cert,
        &redis_key,
        &ca_file,
        true,
        (&client_cert, &client_key),
        &["--requirepass", password],
    );
    let url = format!("rediss://localhost:{}", redis.port);
    let prefix = fresh_prefix();
    let path = |p: &Path| p.display().to_string();
    let on_redis = |options: ServerOptions| {
        options
            .env("KEYSCOPE__STORE__KIND", "redis")
            .env("KEYSCOPE__STORE__REDIS__URL", &url)
            .env("KEYSCOPE__STORE__REDIS__PREFIX", &prefix)
            .env("KEYSCOPE__STORE__REDIS__PASSWORD", password)
            .env("KEYSCOPE__STORE__REDIS__TLS__CA_FILE", &path(&ca_file))
    };
    let with_cert = |options: ServerOptions| {
        on_redis(options)
            .env("KEYSCOPE__STORE__REDIS__TLS__CERT_FILE", &path(&client_cert))
            .env("KEYSCOPE__STORE__REDIS__TLS__KEY_FILE", &path(&client_key))
    };
    let first = with_cert(ServerOptions::default()).start();
    // A second replica: the schema and bootstrap key are found, and it follows the change
    // feed (subscribed over TLS too) to drop a revoked key from its cache.
    let second = with_cert(ServerOptions::default().expect_token(false)).start();
    let admin = first.admin_token().to_owned();
    let token = key_reading_courses(|| first.cli_with_token(&admin));
    let check =
        |server: &Server| server.cli_anonymous().args(["check", "courses", "read", "--credential", &token]).run();
    assert!(check(&second).success().stdout.starts_with("allowed (OK)"));
    let key_id = token.split('_').nth(1).expect("key id in the token").to_owned();
    first.cli_with_token(&admin).args(["key", "revoke", &key_id, "--tenant", "acme"]).run().success();
    let start = Instant::now();
    loop {
        let run = check(&second);
        if run.code() == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the revocation did not reach the second replica: {}",
            run.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let keys = redis.cli(&["-a", password, "--no-auth-warning", "EXISTS", &format!("{prefix}:schema")]);
    assert_eq!(keys.as_deref(), Some("1"), "keyscope wrote its schema over TLS");
    for server in [first, second] {
        let output = server.stop();
        assert!(!output.all().contains(password), "the Redis password was logged");
    }

    // Without a client certificate, or trusting another CA, Redis refuses it: the start fails
    // naming the store, and the password is not printed.
    let other_ca = certs::write(dir.path(), "other-ca.crt", &Ca::new("other").pem);
    let cases = [
        ("no client certificate", on_redis(ServerOptions::default())),
        (
            "an untrusted Redis",
            with_cert(ServerOptions::default()).env("KEYSCOPE__STORE__REDIS__TLS__CA_FILE", &path(&other_ca)),
        ),
    ];
    for (what, options) in cases {
        let out = options.run_to_exit(Duration::from_secs(30));
        assert_eq!(out.0, Some(1), "{what}: keyscope must not start: {}", out.1);
        assert!(out.1.contains("store: "), "{what}: {}", out.1);
        assert!(!out.1.contains(password), "{what}: the password was printed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls_with_a_client_certificate() {
    let RedisPki { dir: _dir, ca_file, node: (node_cert, node_key), client: (client_cert, client_key) } =
        RedisPki::new(Ca::peer);
    let password = "cluster-password-that-must-not-leak";
    let cluster = RedisCluster::start_tls(
        &node_cert,
        &node_key,
        &ca_file,
        (&client_cert, &client_key),
        &["--requirepass", password, "--masterauth", password],
    );
    let seeds: Vec<String> = cluster.nodes.iter().map(|n| format!("rediss://127.0.0.1:{}", n.port)).collect();
    let path = |p: &Path| p.display().to_string();
    let server = ServerOptions::default()
        .env("KEYSCOPE__STORE__KIND", "redis")
        .env("KEYSCOPE__STORE__REDIS__CLUSTER", "true")
        .env("KEYSCOPE__STORE__REDIS__URL", &seeds.join(","))
        .env("KEYSCOPE__STORE__REDIS__PREFIX", &fresh_prefix())
        .env("KEYSCOPE__STORE__REDIS__PASSWORD", password)
        .env("KEYSCOPE__STORE__REDIS__TLS__CA_FILE", &path(&ca_file))
        .env("KEYSCOPE__STORE__REDIS__TLS__CERT_FILE", &path(&client_cert))
        .env("KEYSCOPE__STORE__REDIS__TLS__KEY_FILE", &path(&client_key))
        .start();
    let admin = server.admin_token().to_owned();
    // Tenants hash to different slots, so these writes land on different masters.
    for tenant in ["acme", "globex", "initech", "umbrella"] {
        let scope = server
            .cli_with_token(&admin)
            .args(["--json", "scope", "create", "--tenant", tenant, "--label", "reader", "--read", "courses"])
            .run()
            .success()
            .json();
        let scope_id = scope["id"].as_str().expect("scope id").to_owned();
        let key = server
            .cli_with_token(&admin)
            .args(["--json", "key", "create", "--tenant", tenant, "--scope", &scope_id])
            .run()
            .success()
            .json();
        let token = key["token"].as_str().expect("token");
        let run = server.cli_anonymous().args(["check", "courses", "read", "--credential", token]).run();
        assert!(run.success().stdout.starts_with("allowed (OK)"));
    }
    let output = server.stop();
    assert!(!output.all().contains(password), "the Redis password was logged");
}
