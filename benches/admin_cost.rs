//! The cost of keeping the admin invariants (no escalation, no widening), on the memory store
//! and on a real `redis-server` started on a free port:
//! - a forced delete of a scope held by many keys (`KEYSCOPE_BENCH_HOLDERS`, default 100,000),
//!   which judges every holder (once per distinct scope set), then takes the scope from them in
//!   writes of at most `DETACH_BATCH` keys;
//! - one `CreateKey` and one `SetScopeMembers` in a small tenant (median of 200).
//!
//! On Redis it also reports the slowest single command Redis ran during the delete (from
//! `SLOWLOG`, which logs every command of 0.1 ms or more), which is how long that delete
//! blocked every other client at once, and how many scripts it ran and for how long on
//! average (`INFO commandstats`).
//!
//! `cargo bench --bench admin_cost`

#![allow(clippy::panic)] // a benchmark fails by panicking

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use keyscope::{
    domain::{Action, Module, Pepper, Rules, ScopeMode, TokenFormat},
    service::{Bootstrap, Builtins, Caller, Keyscope, NewKey, ScopeDraft, ServiceError},
    store::{MemoryStore, RedisOptions, RedisStore, Store, StoreError},
};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run());
}

fn holders() -> usize {
    std::env::var("KEYSCOPE_BENCH_HOLDERS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

struct Redis(Child, u16);

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let redis = Redis(child, port);
        for _ in 0..100 {
            if redis.cli(&["PING"]).is_some_and(|r| r.trim() == "PONG") {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &self.1.to_string()]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn core_on(store: Arc<dyn Store>) -> (Arc<Keyscope>, String) {
    let core = Keyscope::new(
        store,
        Builtins::new(&[]).expect("builtins"),
        TokenFormat::new("ks").expect("prefix"),
        Pepper::new(b"benchmark-pepper-0123456789").expect("pepper"),
    )
    .with_quotas(keyscope::service::Quotas { max_keys_per_tenant: 1_000_000, max_scopes_per_tenant: 1_000 });
    let Bootstrap::Created(_, admin) = core.ensure_bootstrap(None).await.expect("bootstrap") else {
        panic!("fresh store")
    };
    (Arc::new(core), admin.expose().to_owned())
}

async fn caller(core: &Keyscope, token: &str, module: Module, action: Action) -> Caller {
    core.authorize(Some(token), "acme", &module, action).await.expect("admin")
}

fn rules(patterns: &[&str]) -> Rules {
    Rules::parse([patterns; 4]).expect("rules")
}

async fn scope(core: &Keyscope, token: &str, label: &str, mode: ScopeMode, patterns: &[&str]) -> String {
    let caller = caller(core, token, Module::scopes(), Action::Create).await;
    let draft =
        ScopeDraft { label: label.parse().expect("label"), description: String::new(), mode, rules: rules(patterns) };
    core.create_scope(&caller, draft).await.expect("scope").id.to_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure(name: &str, store: Arc<dyn Store>, redis: Option<&Redis>) {
    let (core, admin) = core_on(store).await;
    // A small tenant first: the cost of one judged admin call.
    let courses = scope(&core, &admin, "courses", ScopeMode::Allow, &["courses"]).await;
    let no_billing = scope(&core, &admin, "no-billing", ScopeMode::Deny, &["billing"]).await;
    let keys = caller(&core, &admin, Module::keys(), Action::Create).await;
    let mut creates = Vec::new();
    for _ in 0..200 {
        let new = NewKey { scope_ids: vec![courses.parse().expect("id")], ..NewKey::default() };
        let start = Instant::now();
        core.create_key(&keys, new).await.expect("key");
        creates.push(start.elapsed());
    }
    let scopes = caller(&core, &admin, Module::scopes(), Action::Update).await;
    let mut binds = Vec::new();
    for i in 0..200u64 {
        let start = Instant::now();
        core.set_scope_members(
            &scopes,
            &courses.parse().expect("id"),
            vec!["alice".parse().expect("s")],
            Vec::new(),
            i,
        )
        .await
        .expect("bind");
        binds.push(start.elapsed());
    }
    println!(
        "{name}: CreateKey {:.3} ms, SetScopeMembers {:.3} ms (median of 200, small tenant)",
        median(creates).as_secs_f64() * 1e3,
        median(binds).as_secs_f64() * 1e3
    );

    // Many keys holding an allow and a deny scope; deleting the deny scope narrows them.
    let n = holders();
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per_task = n.div_ceil(2);
    for t in 0..2 {
        let (core, keys, ids) = (core.clone(), keys.clone(), vec![courses.clone(), no_billing.clone()]);
        tasks.push(tokio::spawn(async move {
            let mut aborted = 0;
            for _ in 0..per_task.min(n.saturating_sub(t * per_task)) {
                let new =
                    NewKey { scope_ids: ids.iter().map(|s| s.parse().expect("id")).collect(), ..NewKey::default() };
                // Two writers in a tight loop in one tenant: one may lose the race every time it
                // is judged again and get ABORTED, which a client retries.
                while let Err(e) = core.create_key(&keys, new.clone()).await {
                    assert!(matches!(e, ServiceError::Store(StoreError::AccessChanged)), "key: {e:?}");
                    aborted += 1;
                }
            }
            aborted
        }));
    }
    let mut aborted = 0;
    for task in tasks {
        aborted += task.await.expect("task");
    }
    println!(
        "{name}: {n} keys holding the scope made in {:.1} s ({aborted} creations ABORTED and retried)",
        start.elapsed().as_secs_f64()
    );
    if let Some(redis) = redis {
        // Reads of one key take a few µs: logging only what takes 0.1 ms or more keeps every
        // command that could be the slowest.
        redis.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "100"]);
        redis.cli(&["CONFIG", "SET", "slowlog-max-len", "100000"]);
        redis.cli(&["SLOWLOG", "RESET"]);
        redis.cli(&["CONFIG", "RESETSTAT"]);
    }
    let deleter = caller(&core, &admin, Module::scopes(), Action::Delete).await;
    let start = Instant::now();
    let detached = core.delete_scope(&deleter, &no_billing.parse().expect("id"), true, None).await.expect("delete");
    let took = start.elapsed();
    assert_eq!(detached.len(), n);
    println!("{name}: forced delete of a scope held by {n} keys: {:.0} ms", took.as_secs_f64() * 1e3);
    if let Some(redis) = redis {
        let log = redis.cli(&["--json", "SLOWLOG", "GET", "100000"]).unwrap_or_default();
        // Each entry: [id, unix time, duration in µs, [command and arguments], client, name].
        let entries: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap_or_default();
        // The slowest of each command, and how many of it took 0.1 ms or more.
        let mut by_command: std::collections::BTreeMap<String, (u64, usize)> = Default::default();
        for e in &entries {
            let command = e.get(3).and_then(|c| c.get(0)).and_then(|c| c.as_str()).unwrap_or("?");
            let took = e.get(2).and_then(|d| d.as_u64()).unwrap_or(0);
            let seen = by_command.entry(command.to_owned()).or_default();
            *seen = (seen.0.max(took), seen.1 + 1);
        }
        let slowest = by_command.values().map(|(took, _)| *took).max().unwrap_or(0);
        for (command, (took, count)) in &by_command {
            println!(
                "{name}: {command}: {count} of 0.1 ms or more during the delete, slowest {:.2} ms",
                *took as f64 / 1e3
            );
        }
        println!("{name}: slowest single Redis command during the delete: {:.1} ms", slowest as f64 / 1e3);
        // `cmdstat_evalsha:calls=N,usec=U,usec_per_call=P,...`
        let stats = redis.cli(&["INFO", "commandstats"]).unwrap_or_default();
        if let Some(line) = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:")) {
            println!("{name}: scripts during the delete: {}", line.trim());
        }
    }
}

async fn run() {
    measure("memory", Arc::new(MemoryStore::new()), None).await;
    let redis = Redis::start();
    let options =
        RedisOptions { prefix: "bench".into(), ..RedisOptions::new(format!("redis://127.0.0.1:{}", redis.1)) };
    // Generous timeouts: the machine is shared, and a stall is not what this measures.
    let options =
        RedisOptions { admin_timeout: Duration::from_secs(60), check_timeout: Duration::from_secs(60), ..options };
    let store = RedisStore::connect(options).await.expect("connect");
    measure("redis", Arc::new(store), Some(&redis)).await;
}
