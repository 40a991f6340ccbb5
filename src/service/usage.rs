//! Key usage: each key's last use and its per-day counts of allowed and denied checks.
//!
//! Checks add to a [`UsageRecorder`] in memory (one shard lock, no I/O, no allocation for a key
//! already present); [`Keyscope::flush_usage`] moves what it holds to the store, a batch per
//! tenant, on an interval and at shutdown, so no check ever writes to the store. Counts are
//! kept apart from the key records: they never change a key's version or drop a cache entry.
//!
//! Only uses of a verified key count: a malformed credential, an unknown key or a wrong secret
//! is nobody's use. Every later denial (revoked, disabled, expired, another tenant, the scopes)
//! counts as denied. Days are UTC, from the core's clock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use super::{Caller, Keyscope, ServiceError};
use crate::{
    domain::{Day, InputError, Key, KeyId, Tenant},
    store::{DailyUsage, UsageDelta},
};

/// How usage is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSettings {
    /// How often a replica moves its counts to the store.
    pub flush_interval: Duration,
    /// How many days of counts the store keeps (today included); also the longest range
    /// `GetKeyUsage` answers.
    pub retention_days: u32,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings { flush_interval: Duration::from_secs(10), retention_days: 90 }
    }
}

/// Days `GetKeyUsage` covers when no start date is given (ending on the end date).
pub const DEFAULT_USAGE_DAYS: u32 = 30;

/// Most deltas written to the store in one call.
const FLUSH_BATCH: usize = 256;

/// Shards of the recorder: checks of different keys rarely wait on one another.
const SHARDS: usize = 32;

/// One key's counts not yet flushed.
#[derive(Debug)]
struct Tally {
    tenant: Tenant,
    last_used: SystemTime,
    /// (day, allowed, denied); usually one day, two around midnight.
    days: Vec<(Day, u64, u64)>,
}

impl Tally {
    fn add(&mut self, day: Day, at: SystemTime, allowed: u64, denied: u64) {
        self.last_used = self.last_used.max(at);
        match self.days.iter_mut().rev().find(|(d, ..)| *d == day) {
            Some((_, a, d)) => {
                *a = a.saturating_add(allowed);
                *d = d.saturating_add(denied);
            }
            None => self.days.push((day, allowed, denied)),
        }
    }
}

/// Usage counted in memory until the next flush.
#[derive(Debug)]
pub struct UsageRecorder {
    shards: Box<[Mutex<HashMap<KeyId, Tally>>]>,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        UsageRecorder { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl UsageRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, id: &KeyId) -> MutexGuard<'_, HashMap<KeyId, Tally>> {
        // Key ids are random (keyscope makes them from the OS CSPRNG, and only verified keys are
        // counted), so their last byte spreads them without hashing twice per check.
        let i = usize::from(id.as_str().as_bytes().last().copied().unwrap_or(0)) % self.shards.len();
        // A panic while holding a shard leaves counts that are still consistent; go on.
        self.shards[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, tenant: &Tenant, id: &KeyId, day: Day, at: SystemTime, allowed: u64, denied: u64) {
        let mut shard = self.shard(id);
        match shard.get_mut(id) {
            Some(tally) => tally.add(day, at, allowed, denied),
            None => {
                let tally = Tally { tenant: tenant.clone(), last_used: at, days: vec![(day, allowed, denied)] };
                shard.insert(id.clone(), tally);
            }
        }
    }

    /// Counts `allowed` and `denied` checks of a key used at `at` (on `at`'s UTC day).
    pub fn record(&self, tenant: &Tenant, id: &KeyId, at: SystemTime, allowed: u64, denied: u64) {
        self.add(tenant, id, Day::of(at), at, allowed, denied);
    }

    /// Takes everything counted so far, one delta per key and day.
    pub fn drain(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        for i in 0..self.shards.len() {
            let taken = std::mem::take(&mut *self.shards[i].lock().unwrap_or_else(|p| p.into_inner()));
            for (key_id, tally) in taken {
                for (day, allowed, denied) in tally.days {
                    out.push(UsageDelta {
                        tenant: tally.tenant.clone(),
                        key_id: key_id.clone(),
                        day,
                        allowed,
                        denied,
                        last_used_at: tally.last_used,
                    });
                }
            }
        }
        out
    }

    /// Puts back deltas that could not be written, to go out with the next flush.
    pub fn merge(&self, deltas: impl IntoIterator<Item = UsageDelta>) {
        for d in deltas {
            self.add(&d.tenant, &d.key_id, d.day, d.last_used_at, d.allowed, d.denied);
        }
    }

    /// How many (key, day) counts wait for a flush.
    pub fn pending(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).values().map(|t| t.days.len()).sum::<usize>())
            .sum()
    }
}

/// Drained deltas not yet written; whatever is left when it is dropped (a failed write, or a
/// flush cancelled midway) goes back into the recorder, so nothing is lost.
struct Unwritten<'a> {
    recorder: &'a UsageRecorder,
    deltas: Vec<UsageDelta>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        self.recorder.merge(self.deltas.drain(..));
    }
}

/// A key's usage over a range of days, as `GetKeyUsage` answers it.
#[derive(Debug, Clone)]
pub struct KeyUsage {
    /// The key (with its `last_used_at`).
    pub key: Arc<Key>,
    /// One entry per day of the range, oldest first; days without checks are zero.
    pub days: Vec<DailyUsage>,
}

impl Keyscope {
    /// Replaces the usage settings.
    pub fn with_usage(mut self, settings: UsageSettings) -> Self {
        self.usage_settings = settings;
        self
    }

    /// The usage settings.
    pub fn usage_settings(&self) -> UsageSettings {
        self.usage_settings
    }

    /// Counts a use of a verified key now.
    pub(super) fn note_use(&self, tenant: &Tenant, id: &KeyId, allowed: u64, denied: u64) {
        self.usage.record(tenant, id, self.clock.now(), allowed, denied);
    }

    /// (key, day) counts not yet flushed to the store.
    pub fn pending_usage(&self) -> usize {
        self.usage.pending()
    }

    /// Moves the usage counted so far to the store, one tenant per call, and returns how many
    /// (key, day) counts were written. On a store error, what was not written goes back to be
    /// flushed next time, and the error is returned.
    pub async fn flush_usage(&self) -> Result<usize, ServiceError> {
        let mut pending = Unwritten { recorder: &self.usage, deltas: self.usage.drain() };
        // Grouped by tenant, taken from the end.
        pending.deltas.sort_unstable_by(|a, b| b.tenant.cmp(&a.tenant));
        let retention = self.usage_settings.retention_days;
        let mut written = 0;
        while let Some(last) = pending.deltas.last() {
            let tenant = last.tenant.clone();
            let n = pending.deltas.iter().rev().take(FLUSH_BATCH).take_while(|d| d.tenant == tenant).count();
            let split = pending.deltas.len() - n;
            self.store.record_usage(&pending.deltas[split..], retention).await?;
            pending.deltas.truncate(split);
            written += n;
        }
        Ok(written)
    }

    /// A key of the caller's tenant and its daily counts from `start` to `end` (inclusive; no
    /// end: today; no start: [`DEFAULT_USAGE_DAYS`] days up to the end). The range may span at
    /// most `retention_days` days. Counts not yet flushed (at most one flush interval's worth)
    /// are not included.
    pub async fn key_usage(
        &self,
        caller: &Caller,
        id: &KeyId,
        start: Option<Day>,
        end: Option<Day>,
    ) -> Result<KeyUsage, ServiceError> {
        let retention = self.usage_settings.retention_days;
        let end = end.unwrap_or_else(|| Day::of(self.clock.now()));
        let start = start.unwrap_or_else(|| end.minus(DEFAULT_USAGE_DAYS.min(retention).saturating_sub(1)));
        if start > end {
            return Err(InputError::invalid("start_date", format!("{start} is after end_date {end}")).into());
        }
        let span = end.span_from(start);
        if span > retention {
            return Err(InputError::invalid(
                "start_date",
                format!("the range spans {span} days; at most {retention} (usage.retention_days) are kept"),
            )
            .into());
        }
        let key = self.get_key(caller, id).await?;
        let recorded = self.store.key_usage(&caller.tenant, id, start, end).await?;
        let days = start
            .through(end)
            .map(|day| {
                recorded.iter().find(|u| u.day == day).copied().unwrap_or(DailyUsage { day, allowed: 0, denied: 0 })
            })
            .collect();
        Ok(KeyUsage { key, days })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::{
        domain::{Pepper, ScopeId, TokenFormat},
        service::Builtins,
        store::{MemoryStore, Store, StoreError},
    };

    fn tenant(t: &str) -> Tenant {
        t.parse().expect("tenant")
    }

    fn key_id(n: usize) -> KeyId {
        format!("k{n:019}").parse().expect("key id")
    }

    fn at(day: &str, secs: u64) -> SystemTime {
        day.parse::<Day>().expect("day").start() + Duration::from_secs(secs)
    }

    fn sorted(mut deltas: Vec<UsageDelta>) -> Vec<UsageDelta> {
        deltas.sort_by(|a, b| (&a.key_id, a.day).cmp(&(&b.key_id, b.day)));
        deltas
    }

    #[test]
    fn counts_add_up_per_key_and_day_across_shards() {
        let r = UsageRecorder::new();
        let acme = tenant("acme");
        for n in 0..100 {
            r.record(&acme, &key_id(n), at("2024-05-01", 10), 1, 0);
            r.record(&acme, &key_id(n), at("2024-05-01", 20), 2, 3);
        }
        r.record(&acme, &key_id(7), at("2024-05-02", 5), 0, 1);
        assert_eq!(r.pending(), 101);
        let busy = r.shards.iter().filter(|s| !s.lock().expect("shard").is_empty()).count();
        assert!(busy > 1, "100 keys spread over several shards, not {busy}");
        let deltas = sorted(r.drain());
        assert_eq!(deltas.len(), 101);
        assert_eq!(r.pending(), 0, "a drain empties the recorder");
        let seven: Vec<&UsageDelta> = deltas.iter().filter(|d| d.key_id == key_id(7)).collect();
        assert_eq!(seven.len(), 2);
        assert_eq!((seven[0].allowed, seven[0].denied), (3, 3));
        assert_eq!((seven[1].allowed, seven[1].denied), (0, 1));
        assert_eq!(seven[0].last_used_at, at("2024-05-02", 5), "the key's latest use rides on each delta");
        let total: u64 = deltas.iter().map(|d| d.allowed + d.denied).sum();
        assert_eq!(total, 100 * 6 + 1);
    }

    #[test]
    fn merged_back_deltas_join_new_counts() {
        let r = UsageRecorder::new();
        let acme = tenant("acme");
        r.record(&acme, &key_id(1), at("2024-05-01", 10), 4, 1);
        let drained = r.drain();
        r.record(&acme, &key_id(1), at("2024-05-01", 5), 1, 0);
        r.merge(drained);
        let deltas = r.drain();
        assert_eq!(deltas.len(), 1);
        assert_eq!((deltas[0].allowed, deltas[0].denied), (5, 1));
        assert_eq!(deltas[0].last_used_at, at("2024-05-01", 10), "the later use wins");
    }

    /// A memory store whose usage writes fail once `writes_left` runs out.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryStore,
        writes_left: AtomicI64,
    }

    #[async_trait]
    impl Store for Flaky {
        async fn credential(&self, id: &KeyId) -> Result<Option<Arc<crate::store::Credential>>, StoreError> {
            self.inner.credential(id).await
        }
        async fn get_key(&self, t: &Tenant, id: &KeyId) -> Result<Option<Arc<Key>>, StoreError> {
            self.inner.get_key(t, id).await
        }
        async fn list_keys(&self, t: &Tenant, q: &crate::store::KeyQuery) -> Result<Vec<Arc<Key>>, StoreError> {
            self.inner.list_keys(t, q).await
        }
        async fn put_key(&self, w: crate::store::KeyWrite<'_>, max: usize) -> Result<(), StoreError> {
            self.inner.put_key(w, max).await
        }
        async fn get_scope(&self, t: &Tenant, id: &ScopeId) -> Result<Option<Arc<crate::domain::Scope>>, StoreError> {
            self.inner.get_scope(t, id).await
        }
        async fn get_scopes(&self, t: &Tenant, ids: &[ScopeId]) -> Result<Vec<Arc<crate::domain::Scope>>, StoreError> {
            self.inner.get_scopes(t, ids).await
        }
        async fn list_scopes(
            &self,
            t: &Tenant,
            after: Option<&ScopeId>,
            limit: usize,
        ) -> Result<Vec<Arc<crate::domain::Scope>>, StoreError> {
            self.inner.list_scopes(t, after, limit).await
        }
        async fn put_scope(
            &self,
            s: &crate::domain::Scope,
            v: Option<u64>,
            r: &[String],
            max: usize,
            a: crate::store::AuditWrite<'_>,
        ) -> Result<(), StoreError> {
            self.inner.put_scope(s, v, r, max, a).await
        }
        async fn scope_holders(&self, t: &Tenant, id: &ScopeId) -> Result<Vec<Arc<Key>>, StoreError> {
            self.inner.scope_holders(t, id).await
        }
        async fn detach_scope(&self, d: crate::store::ScopeDetach<'_>) -> Result<u64, StoreError> {
            self.inner.detach_scope(d).await
        }
        async fn delete_scope(&self, d: crate::store::ScopeDelete<'_>) -> Result<(), StoreError> {
            self.inner.delete_scope(d).await
        }
        async fn claim_bootstrap(&self, k: &Key, a: crate::store::AuditWrite<'_>) -> Result<Option<KeyId>, StoreError> {
            self.inner.claim_bootstrap(k, a).await
        }
        async fn release_bootstrap(&self, k: &Key, a: crate::store::AuditWrite<'_>) -> Result<bool, StoreError> {
            self.inner.release_bootstrap(k, a).await
        }
        async fn record_usage(&self, batch: &[UsageDelta], retention: u32) -> Result<(), StoreError> {
            if self.writes_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
                return Err(StoreError::Unavailable("down for the test".into()));
            }
            self.inner.record_usage(batch, retention).await
        }
        async fn key_usage(&self, t: &Tenant, id: &KeyId, a: Day, b: Day) -> Result<Vec<DailyUsage>, StoreError> {
            self.inner.key_usage(t, id, a, b).await
        }
        async fn list_audit(
            &self,
            t: &Tenant,
            q: &crate::store::AuditQuery,
        ) -> Result<crate::store::AuditPage, StoreError> {
            self.inner.list_audit(t, q).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn access_version(&self, t: &Tenant) -> Result<u64, StoreError> {
            self.inner.access_version(t).await
        }
        async fn get_tenant_policy(&self, t: &Tenant) -> Result<Option<crate::domain::TenantPolicy>, StoreError> {
            self.inner.get_tenant_policy(t).await
        }
        async fn put_tenant_policy(
            &self,
            p: &crate::domain::TenantPolicy,
            v: u64,
            a: crate::store::AuditWrite<'_>,
        ) -> Result<(), StoreError> {
            self.inner.put_tenant_policy(p, v, a).await
        }
        async fn get_principal(
            &self,
            t: &Tenant,
            s: &crate::domain::Subject,
        ) -> Result<Option<Arc<crate::domain::Principal>>, StoreError> {
            self.inner.get_principal(t, s).await
        }
        async fn list_principals(
            &self,
            t: &Tenant,
            after: Option<&crate::domain::Subject>,
            limit: usize,
        ) -> Result<Vec<Arc<crate::domain::Principal>>, StoreError> {
            self.inner.list_principals(t, after, limit).await
        }
        async fn put_principal(
            &self,
            p: &crate::domain::Principal,
            v: Option<u64>,
            a: crate::store::AuditWrite<'_>,
        ) -> Result<(), StoreError> {
            self.inner.put_principal(p, v, a).await
        }
        async fn delete_principal(
            &self,
            t: &Tenant,
            s: &crate::domain::Subject,
            v: Option<u64>,
            a: crate::store::AuditWrite<'_>,
        ) -> Result<(), StoreError> {
            self.inner.delete_principal(t, s, v, a).await
        }
        async fn get_members(&self, t: &Tenant, id: &ScopeId) -> Result<crate::domain::Members, StoreError> {
            self.inner.get_members(t, id).await
        }
        async fn set_members(
            &self,
            t: &Tenant,
            id: &ScopeId,
            m: &crate::domain::Members,
            v: u64,
            stored: bool,
            a: crate::store::AuditWrite<'_>,
        ) -> Result<(), StoreError> {
            self.inner.set_members(t, id, m, v, stored, a).await
        }
        async fn principal_grants(
            &self,
            t: &Tenant,
            s: &crate::domain::Subject,
            r: &[crate::domain::Role],
        ) -> Result<Arc<crate::store::PrincipalGrants>, StoreError> {
            self.inner.principal_grants(t, s, r).await
        }
    }

    fn core(store: Arc<dyn Store>) -> Keyscope {
        Keyscope::new(
            store,
            Builtins::new(&[]).expect("builtins"),
            TokenFormat::new("ks").expect("prefix"),
            Pepper::new(b"unit-test-pepper-0123").expect("pepper"),
        )
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_every_count_for_the_next_one() {
        let flaky = Arc::new(Flaky::default());
        let core = core(flaky.clone());
        let day: Day = "2024-05-01".parse().expect("day");
        for n in 0..600 {
            let t = if n % 2 == 0 { tenant("acme") } else { tenant("globex") };
            core.usage.record(&t, &key_id(n), day.start(), 2, 1);
        }
        // The first batch (256 of one tenant) is written, the second fails.
        flaky.writes_left.store(1, Ordering::SeqCst);
        assert!(matches!(core.flush_usage().await, Err(ServiceError::Store(StoreError::Unavailable(_)))));
        assert_eq!(core.pending_usage(), 600 - 256, "what was not written is kept, nothing more");
        flaky.writes_left.store(i64::MAX, Ordering::SeqCst);
        assert_eq!(core.flush_usage().await.expect("flush"), 600 - 256);
        assert_eq!(core.pending_usage(), 0);
        for n in [0, 1, 599] {
            let t = if n % 2 == 0 { tenant("acme") } else { tenant("globex") };
            let got = flaky.inner.key_usage(&t, &key_id(n), day, day).await.expect("usage");
            assert_eq!(got, vec![DailyUsage { day, allowed: 2, denied: 1 }], "key {n} counted once");
        }
    }
}
