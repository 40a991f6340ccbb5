//! Real `redis-server` processes for tests, each on a free port on 127.0.0.1, owned by the test:
//! they can be stopped, paused (SIGSTOP), resumed and restarted, and die with their guard.
//! A machine without `redis-server` fails these tests loudly; `.ci/run` installs it.
#![allow(dead_code, missing_docs, clippy::panic)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use keyscope::store::{RedisOptions, RedisStore};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("addr").port()
}

fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cli(port: u16, tls: &[String], args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(tls)
        .args(args)
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One redis-server process.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// For a TLS-only server: the `redis-cli` TLS arguments (empty: plain TCP).
    cli_tls: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            cli_tls: Vec::new(),
            child: None,
        };
        server.spawn();
        server
    }

    /// Starts a server that speaks only TLS, with its certificate and key, trusting `ca` for
    /// client certificates; `clients_need_certs` is Redis's `tls-auth-clients`. `cli_cert` is
    /// the client certificate and key `redis-cli` uses to see that it is up.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        clients_need_certs: bool,
        cli_cert: (&std::path::Path, &std::path::Path),
        extra: &[&str],
    ) -> RedisServer {
        let path = |p: &std::path::Path| p.display().to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut args = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path(cert),
            "--tls-key-file".to_owned(),
            path(key),
            "--tls-ca-cert-file".to_owned(),
            path(ca),
            "--tls-auth-clients".to_owned(),
            if clients_need_certs { "yes" } else { "no" }.to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let cli_tls = vec![
            "--tls".to_owned(),
            "--cacert".to_owned(),
            path(ca),
            "--cert".to_owned(),
            path(cli_cert.0),
            "--key".to_owned(),
            path(cli_cert.1),
        ];
        let mut server = RedisServer { port, dir, extra: args, cli_tls, child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // Later arguments win: a TLS server's `--port 0` turns plain TCP off.
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it, e.g. `apt-get install redis-server`")
            });
        self.child = Some(child);
        let (port, tls) = (self.port, self.cli_tls.clone());
        wait_until("redis-server to answer PING", Duration::from_secs(10), || {
            // A server with a password answers NOAUTH: it is up all the same.
            cli(port, &tls, &["PING"]).is_some_and(|r| r == "PONG" || r.contains("NOAUTH"))
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([signal, &pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} {pid}");
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server; its data is gone (no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, &self.cli_tls, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server ignores SIGKILL until it is continued.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.stop();
    }
}

/// A local Redis Cluster of three masters, made with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

const CLUSTER_ARGS: [&str; 4] = ["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"];

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::create((0..3).map(|_| RedisServer::start_with(&CLUSTER_ARGS)).collect())
    }

    /// Three masters that speak only TLS (clients and the cluster bus), as
    /// [`RedisServer::start_tls`] with `extra` arguments.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        cli_cert: (&std::path::Path, &std::path::Path),
        extra: &[&str],
    ) -> RedisCluster {
        let mut args: Vec<&str> = CLUSTER_ARGS.to_vec();
        args.extend(["--tls-cluster", "yes"]);
        args.extend(extra);
        Self::create((0..3).map(|_| RedisServer::start_tls(cert, key, ca, true, cli_cert, &args)).collect())
    }

    fn create(nodes: Vec<RedisServer>) -> RedisCluster {
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut auth: Vec<String> = nodes[0].cli_tls.clone();
        if let Some(i) = nodes[0].extra.iter().position(|a| a == "--requirepass") {
            auth.extend(["-a".to_owned(), nodes[0].extra[i + 1].clone(), "--no-auth-warning".to_owned()]);
        }
        // Bounded: `--cluster create` waits for ever for nodes that cannot join.
        let out = Command::new("timeout")
            .args(["60", "redis-cli"])
            .args(&auth)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        for node in &nodes {
            wait_until("the cluster to be ok", Duration::from_secs(30), || {
                cli(node.port, &auth, &["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok"))
            });
        }
        RedisCluster { nodes }
    }

    /// Seed URLs, comma-separated, as `store.redis.url` takes them.
    pub fn url(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }
}

static PREFIXES: AtomicUsize = AtomicUsize::new(0);

/// A prefix no other store of this test process uses.
pub fn fresh_prefix() -> String {
    format!("test{}", PREFIXES.fetch_add(1, Ordering::Relaxed))
}

pub fn options(url: String, cluster: bool) -> RedisOptions {
    RedisOptions {
        cluster,
        prefix: fresh_prefix(),
        check_timeout: Duration::from_millis(500),
        admin_timeout: Duration::from_secs(2),
        ..RedisOptions::new(url)
    }
}

/// A store on `url` under a fresh prefix.
pub async fn store(url: String, cluster: bool) -> RedisStore {
    RedisStore::connect(options(url, cluster)).await.expect("connect to the test redis")
}

/// The path of the test's data directory, for diagnostics.
pub fn dir_of(server: &RedisServer) -> PathBuf {
    server.dir.path().to_path_buf()
}

/// Two tests of one scenario, an `async fn(&TestServer)`: `$memory` on the memory store and
/// `$redis` on a `redis-server` of its own. The test file declares `mod common` and
/// `mod redis_server`.
#[macro_export]
macro_rules! on_memory_and_redis {
    ($scenario:ident: $memory:ident, $redis:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $memory() {
            let server = $crate::common::TestServer::start().await;
            $scenario(&server).await;
            server.stop().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            let redis = $crate::redis_server::RedisServer::start();
            let prefix = $crate::redis_server::fresh_prefix();
            let settings = keyscope::cache::CacheSettings::default();
            let server = $crate::common::TestServer::start_on_redis(&redis.url(), &prefix, settings, None).await;
            $scenario(&server).await;
            server.stop().await;
        }
    };
}
