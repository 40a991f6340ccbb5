//! Cost of a check in the service core (no network), per credential outcome, so the cost of an
//! unknown key can be compared with that of a wrong secret in the same run.
//!
//! `cargo bench --bench check_core` prints ns per check (median of 7 rounds) and the ratio of
//! each outcome to a valid allowed check. The key-policy cases (issue 7) are allowed checks
//! that also pass a source-network check, a rate limit, or present a rotated key's old secret
//! during its grace period (or its new one), next to the plain scope check.

#![allow(clippy::panic)] // tests fail by panicking

use std::{hint::black_box, net::IpAddr, sync::Arc, time::Duration, time::Instant};

use keyscope::{
    domain::{Action, Module, Pepper, RateLimit, TokenFormat, parse_cidrs},
    service::{Bootstrap, Builtins, Keyscope, NewKey, Presented},
    store::MemoryStore,
};

const ROUNDS: usize = 7;
const PER_ROUND: usize = 50_000;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let tokens = TokenFormat::new("ks").expect("prefix");
    let core = Keyscope::new(
        Arc::new(MemoryStore::new()),
        Builtins::new(&[]).expect("builtins"),
        tokens.clone(),
        Pepper::new(b"benchmark-pepper-0123456789").expect("pepper"),
    );
    let Bootstrap::Created(_, admin) = core.ensure_bootstrap(None).await.expect("bootstrap") else {
        panic!("fresh store")
    };
    let caller = core.authorize(Some(admin.expose()), "acme", &Module::keys(), Action::Create).await.expect("admin");
    let new = NewKey { scope_ids: vec!["read-only".parse().expect("id")], ..Default::default() };
    let (_, token) = core.create_key(&caller, new).await.expect("key");
    let token = token.expose().to_owned();
    let (id, tail) = token.rsplit_once('_').expect("token shape");
    let wrong = tokens.issue(&id[3..].parse().expect("id")).expect("random").1.expose().to_owned();
    let unknown = tokens.issue(&tokens.new_key_id().expect("random")).expect("random").1.expose().to_owned();
    let malformed = format!("{id}_{}", "x".repeat(tail.len()));
    let module: Module = "courses".parse().expect("module");

    // Key-policy cases: four source networks (the source matches the last), a rate limit that
    // never runs out in the run, a rotated key with a grace period.
    let cidrs: Vec<String> =
        ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32", "10.0.0.0/8"].map(String::from).to_vec();
    let networks = NewKey {
        scope_ids: vec!["read-only".parse().expect("id")],
        allowed_cidrs: parse_cidrs("allowed_cidrs", &cidrs).expect("cidrs"),
        ..Default::default()
    };
    let cidr_token = core.create_key(&caller, networks).await.expect("key").1.expose().to_owned();
    let limited = NewKey {
        scope_ids: vec!["read-only".parse().expect("id")],
        rate_limit: Some(RateLimit::new("rate_limit", 1_000_000.0, 1_000_000).expect("limit")),
        ..Default::default()
    };
    let limited_token = core.create_key(&caller, limited).await.expect("key").1.expose().to_owned();
    let plain = NewKey { scope_ids: vec!["read-only".parse().expect("id")], ..Default::default() };
    let (rotated, old_secret) = core.create_key(&caller, plain).await.expect("key");
    let (_, new_secret) = core.rotate_key(&caller, &rotated.id, Duration::from_secs(3600), None).await.expect("rotate");
    let source: Option<IpAddr> = Some("10.1.2.3".parse().expect("ip"));

    let cases = [
        ("allowed", token, None),
        ("+ cidr", cidr_token, source),
        ("+ rate limit", limited_token, None),
        ("rotated, old", old_secret.expose().to_owned(), None),
        ("rotated, new", new_secret.expose().to_owned(), None),
        ("wrong secret", wrong, None),
        ("unknown key", unknown, None),
        ("malformed", malformed, None),
    ];
    let mut base = 0.0;
    println!("check_core: {PER_ROUND} checks x {ROUNDS} rounds, median ns/check");
    for (name, credential, source) in cases {
        let presented = Presented::Token(credential);
        let first = core.check_from(&presented, None, source, &module, Action::Read, false).await.expect("check");
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for _ in 0..PER_ROUND {
                let answer =
                    core.check_from(&presented, None, source, &module, Action::Read, false).await.expect("check");
                black_box(answer);
            }
            rounds.push(start.elapsed().as_nanos() as f64 / PER_ROUND as f64);
        }
        rounds.sort_by(f64::total_cmp);
        let median = rounds[ROUNDS / 2];
        if base == 0.0 {
            base = median;
        }
        println!("{name:<14}{median:>9.0} ns   ratio to allowed {:.2}   ({})", median / base, first.reason);
    }
}
