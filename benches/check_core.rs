//! Cost of a check in the service core (no network), per credential outcome, so the cost of an
//! unknown key can be compared with that of a wrong secret in the same run; and the hit-path
//! cost of the owner ceiling (a key whose owner is a registered principal) and of a bearer
//! principal credential, next to the plain scope check, on the memory store and behind the
//! replica cache (as on Redis, all hits).
//!
//! `cargo bench --bench check_core` prints ns per check (median of 7 rounds), the ratio of
//! each outcome to a valid allowed check, and the heap allocations per check (every `alloc`,
//! `alloc_zeroed` and `realloc` of the process during the rounds, over the checks; counted by
//! the global allocator below). The key-policy cases are allowed checks that also pass a
//! source-network check, a rate limit, or present a rotated key's old secret during its grace
//! period (or its new one), next to the plain scope check.

#![allow(clippy::panic)] // tests fail by panicking
#![allow(unsafe_code)] // the counting allocator only; the library and the binary forbid unsafe code

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
    time::Instant,
};

use keyscope::{
    cache::{CacheSettings, CachedStore},
    domain::{Action, Module, Pepper, RateLimit, Reason, TokenFormat, parse_cidrs},
    service::{Bootstrap, Builtins, Keyscope, NewKey, Presented, PrincipalCredential},
    store::{MemoryStore, Store},
};

const ROUNDS: usize = 7;
const PER_ROUND: usize = 50_000;

/// The system allocator, counting the blocks it hands out (a `realloc` counts as one).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes unchanged to the system allocator; the wrapper only adds a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What a case costs: the median ns per check, and heap allocations per check over all rounds.
struct Cost {
    ns: f64,
    allocs: f64,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(run());
}

/// Median ns per call of `call` over the rounds, and allocations per call over all of them.
async fn measure<F: AsyncFnMut()>(mut call: F) -> Cost {
    let mut rounds = Vec::with_capacity(ROUNDS);
    let allocated = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            call().await;
        }
        rounds.push(start.elapsed().as_nanos() as f64 / PER_ROUND as f64);
    }
    // Taken before the sort below, which may allocate.
    let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - allocated) as f64 / (ROUNDS * PER_ROUND) as f64;
    rounds.sort_by(f64::total_cmp);
    Cost { ns: rounds[ROUNDS / 2], allocs }
}

fn new_core(store: Arc<dyn Store>, tokens: &TokenFormat) -> Keyscope {
    Keyscope::new(
        store,
        Builtins::new(&[]).expect("builtins"),
        tokens.clone(),
        Pepper::new(b"benchmark-pepper-0123456789").expect("pepper"),
    )
}

async fn run() {
    let tokens = TokenFormat::new("ks").expect("prefix");
    let core = new_core(Arc::new(MemoryStore::new()), &tokens);
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
        ("allowed", token, None, Reason::Ok),
        ("+ cidr", cidr_token, source, Reason::Ok),
        ("+ rate limit", limited_token, None, Reason::Ok),
        ("rotated, old", old_secret.expose().to_owned(), None, Reason::Ok),
        ("rotated, new", new_secret.expose().to_owned(), None, Reason::Ok),
        ("wrong secret", wrong, None, Reason::UnknownKey),
        ("unknown key", unknown, None, Reason::UnknownKey),
        ("malformed", malformed, None, Reason::MalformedCredential),
    ];
    let mut base = 0.0;
    println!("check_core: {PER_ROUND} checks x {ROUNDS} rounds, median ns/check, heap allocations/check");
    for (name, credential, source, expected) in cases {
        let presented = Presented::Token(credential);
        let first = core.check_from(&presented, None, source, &module, Action::Read, false).await.expect("check");
        // The case measures what it says: an allowed case is allowed, on every round too.
        assert_eq!(first.reason, expected, "{name}");
        let cost = measure(async || {
            let answer = core.check_from(&presented, None, source, &module, Action::Read, false).await.expect("check");
            assert_eq!(answer.reason, expected);
            black_box(answer);
        })
        .await;
        if base == 0.0 {
            base = cost.ns;
        }
        println!(
            "{name:<30}{:>9.0} ns   ratio to allowed {:.2}   {:>6.2} allocs   ({})",
            cost.ns,
            cost.ns / base,
            cost.allocs,
            first.reason
        );
    }

    // The owner ceiling and bearer principals, on the memory store and behind the replica
    // cache, each next to a plain allowed check on the same core.
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let cached: Arc<dyn Store> = Arc::new(CachedStore::new(Arc::new(MemoryStore::new()), CacheSettings::default()));
    for (store_name, store) in [("memory", memory), ("cached", cached)] {
        let core = new_core(store, &tokens);
        let Bootstrap::Created(_, admin) = core.ensure_bootstrap(None).await.expect("bootstrap") else {
            panic!("fresh store")
        };
        let admin = admin.expose().to_owned();
        let keys = core.authorize(Some(&admin), "acme", &Module::keys(), Action::Create).await.expect("admin");
        let scopes = core.authorize(Some(&admin), "acme", &Module::scopes(), Action::Update).await.expect("admin");
        let principals =
            core.authorize(Some(&admin), "acme", &Module::principals(), Action::Create).await.expect("admin");
        let read_only = "read-only".parse().expect("id");
        core.set_scope_members(&scopes, &read_only, Vec::new(), vec!["viewer".parse().expect("role")], 0)
            .await
            .expect("bind");
        let alice = "alice".parse().expect("subject");
        core.upsert_principal(&principals, alice, vec!["viewer".parse().expect("role")], true, None)
            .await
            .expect("principal");
        let plain = NewKey { scope_ids: vec![read_only.clone()], ..Default::default() };
        let owned = NewKey { owner: "alice".into(), ..plain.clone() };
        let plain = Presented::Token(core.create_key(&keys, plain).await.expect("key").1.expose().to_owned());
        let owned = Presented::Token(core.create_key(&keys, owned).await.expect("key").1.expose().to_owned());
        let bearer = PrincipalCredential::parse("principal", "bob", &["viewer".to_owned()]).expect("principal");
        let tenant = "acme".parse().expect("tenant");
        let items = [(module.clone(), Action::Read)];

        let plain_cost = measure(async || {
            let answer = core.check(&plain, None, &module, Action::Read, false).await.expect("check");
            assert!(answer.allowed());
            black_box(answer);
        })
        .await;
        let owned_cost = measure(async || {
            let answer = core.check(&owned, None, &module, Action::Read, false).await.expect("check");
            assert!(answer.allowed());
            black_box(answer);
        })
        .await;
        let bearer_cost = measure(async || {
            let answers = core.check_principal(&tenant, &bearer, &items, false).await.expect("check");
            assert!(answers[0].allowed());
            black_box(answers);
        })
        .await;
        let base = plain_cost.ns;
        for (name, cost) in
            [("plain scope check", plain_cost), ("owner-bound check", owned_cost), ("bearer principal", bearer_cost)]
        {
            println!(
                "{:<30}{:>9.0} ns   ratio to plain {:.2}      {:>6.2} allocs",
                format!("{store_name}: {name}"),
                cost.ns,
                cost.ns / base,
                cost.allocs
            );
        }
    }
}
