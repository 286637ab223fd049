//! In-process coordination store for a single replica: the same semantics as the Lua scripts in
//! `lua/`, step for step, under one mutex (every operation is a handful of map lookups).
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{
    Acquire, AcquireReq, ClientLimits, DAY_MS, DAY_SECS, Fault, KeyStats, Lease, LiveCounts,
    LiveDelta, LiveState, MINUTE_MS, Observed, Policy, Released, Remaining, Report, StatClass,
    Strategy, Usage, gcra, new_lease_id, now_ms,
};

#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    version: AtomicU64,
    policy: Policy,
}

#[derive(Default)]
struct State {
    services: HashMap<i64, SvcState>,
    keys: HashMap<i64, KeyState>,
    clients: HashMap<i64, ClientState>,
    /// (service, session hash) -> (bound key id, expiry ms)
    sessions: HashMap<(i64, String), (i64, i64)>,
    /// Lock name -> (token, expiry ms).
    locks: HashMap<String, (String, i64)>,
    /// Service -> live request counts.
    live: HashMap<String, LiveSvc>,
}

/// Per second (kept two minutes) and per UTC day (kept two days): (requests, tokens).
#[derive(Default)]
struct LiveSvc {
    secs: std::collections::BTreeMap<i64, (i64, i64)>,
    days: std::collections::BTreeMap<i64, (i64, i64)>,
}

#[derive(Default)]
struct SvcState {
    rr: u64,
    backoff: i64,
    backoff_n: u32,
    /// lease member -> (key id, expiry ms)
    leases: HashMap<String, (i64, i64)>,
    /// key id -> ms of its last 429
    recent_429: HashMap<i64, i64>,
}

#[derive(Default, Clone)]
struct KeyState {
    until: i64,
    reason: Option<String>,
    fails: u32,
    cool_n: u32,
    inflight: u32,
    last: i64,
    cw: i64,
    probe: i64,
    halfopen: bool,
    /// Live balance in micro-units.
    bal: Option<i64>,
    tat_rpm: f64,
    tat_tpm: f64,
    obs: Observed,
    /// Statistics since they were last taken (`balance` and `last_used` unused here).
    stats: KeyStats,
}

/// A usable key, as evaluated for one acquire.
struct Cand {
    i: usize,
    fails: u32,
    inflight: u32,
    last: i64,
    cw: i64,
    bal: Option<i64>,
    probe: bool,
    new_krpm: Option<f64>,
    obs: Observed,
}

#[derive(Default)]
struct ClientState {
    tat_rpm: f64,
    tat_rpd: f64,
    tat_tpm: f64,
    /// Live spend in micro-units, seeded from the database on first use.
    spent: Option<i64>,
}

impl MemoryStore {
    pub fn new(policy: Policy) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                ..Default::default()
            }),
        }
    }

    pub fn acquire(&self, req: &AcquireReq<'_>) -> Acquire {
        if req.keys.is_empty() {
            return Acquire::NoKey;
        }
        let now = now_ms();
        let nowf = now as f64;
        let mut guard = self.inner.state.lock();
        let st = &mut *guard;
        let svc = st.services.entry(req.service_id).or_default();
        if svc.backoff > now {
            return Acquire::ServiceBackoff {
                retry_after_ms: (svc.backoff - now) as u64,
            };
        }
        // Expired leases (a request that died without releasing) give their slot back.
        let expired: Vec<String> = svc
            .leases
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(m, _)| m.clone())
            .collect();
        for m in expired {
            if let Some((kid, _)) = svc.leases.remove(&m)
                && let Some(k) = st.keys.get_mut(&kid)
            {
                k.inflight = k.inflight.saturating_sub(1);
            }
        }

        let mut rem = Remaining::default();
        let (mut new_rpm, mut new_rpd) = (None, None);
        if let Some(c) = req.client {
            let cl = st.clients.entry(c.access_key_id).or_default();
            let mut worst = 0u64;
            if let Some(l) = c.rpm {
                let (ok, tat, ra, r) = gcra(cl.tat_rpm, nowf, MINUTE_MS, l, 1.0);
                new_rpm = Some(tat);
                rem.rpm = Some(r);
                if !ok {
                    worst = worst.max(ra);
                }
            }
            if let Some(l) = c.rpd {
                let (ok, tat, ra, r) = gcra(cl.tat_rpd, nowf, DAY_MS, l, 1.0);
                new_rpd = Some(tat);
                rem.rpd = Some(r);
                if !ok {
                    worst = worst.max(ra);
                }
            }
            if let Some(l) = c.tpm {
                let (ok, _, ra, r) = gcra(cl.tat_tpm, nowf, MINUTE_MS, l, 0.0);
                rem.tpm = Some(r);
                if !ok {
                    worst = worst.max(ra);
                }
            }
            if worst > 0 {
                return Acquire::ClientLimited {
                    retry_after_ms: worst,
                    remaining: rem,
                };
            }
            if let Some(budget) = c.budget {
                // As the script: what was spent plus this request's reserve must fit.
                let spent = *cl.spent.get_or_insert(c.spent);
                if spent + req.reserve > budget || spent >= budget {
                    return Acquire::OverBudget { spent };
                }
            }
        }

        let cap = req.cap.unwrap_or(0);
        let price = req.price.unwrap_or(0);
        let strategy = req.strategy;
        let mut at_cap = false;
        // Evaluates key i: a candidate when it is usable now (same rules as acquire_v4.lua).
        let mut eval = |keys: &HashMap<i64, KeyState>, i: usize| -> Option<Cand> {
            let spec = &req.keys[i];
            if req.excluded.contains(&spec.id) {
                return None;
            }
            let k = keys.get(&spec.id);
            let until = k.map_or(0, |k| k.until);
            if !(until == 0 || (until > 0 && until <= now)) {
                return None;
            }
            let mut probe = false;
            if k.is_some_and(|k| k.halfopen) {
                if k.is_some_and(|k| k.probe > now) {
                    return None;
                }
                probe = true;
            }
            let mut new_krpm = None;
            if let Some(l) = spec.rpm {
                let (ok, tat, _, _) = gcra(k.map_or(0.0, |k| k.tat_rpm), nowf, MINUTE_MS, l, 1.0);
                if !ok {
                    return None;
                }
                new_krpm = Some(tat);
            }
            if let Some(l) = spec.tpm
                && !gcra(k.map_or(0.0, |k| k.tat_tpm), nowf, MINUTE_MS, l, 0.0).0
            {
                return None;
            }
            let bal = k.and_then(|k| k.bal).or(spec.balance);
            if strategy == Strategy::Balance && price > 0 && bal.is_some_and(|b| b < price) {
                return None;
            }
            let inflight = k.map_or(0, |k| k.inflight);
            if cap > 0 && inflight >= cap {
                at_cap = true;
                return None;
            }
            Some(Cand {
                i,
                fails: k.map_or(0, |k| k.fails),
                inflight,
                last: k.map_or(0, |k| k.last),
                cw: k.map_or(0, |k| k.cw),
                bal,
                probe,
                new_krpm,
                obs: k.map(|k| k.obs).unwrap_or_default(),
            })
        };

        let n = req.keys.len();
        let policy = &self.inner.policy;
        let rnd = rand::random::<u32>() as u64;
        // First usable key scanning from `start` (0-based), as `first_from` in the script.
        let first_from = |eval: &mut dyn FnMut(&HashMap<i64, KeyState>, usize) -> Option<Cand>,
                          keys: &HashMap<i64, KeyState>,
                          start: usize| {
            (0..n).map(|j| (start + j) % n).find_map(|i| eval(keys, i))
        };
        let found: Option<Cand> = if let Some(sess) = req.session {
            let slot = (req.service_id, sess.id.clone());
            let bound = st
                .sessions
                .get(&slot)
                .filter(|(_, exp)| *exp > now)
                .and_then(|(kid, _)| req.keys.iter().position(|k| k.id == *kid));
            let found = match bound {
                Some(at) => eval(&st.keys, at).or_else(|| first_from(&mut eval, &st.keys, at + 1)),
                None => first_from(&mut eval, &st.keys, (sess.start % n as u64) as usize),
            };
            if let Some(c) = &found {
                if st.sessions.len() >= 4096 {
                    st.sessions.retain(|_, (_, exp)| *exp > now);
                }
                st.sessions
                    .insert(slot, (req.keys[c.i].id, now + sess.ttl_ms as i64));
            }
            found
        } else if strategy == Strategy::RoundRobin {
            // First usable key from the cursor, which then moves just past it.
            let start = st.services.entry(req.service_id).or_default().rr as usize % n;
            let found = first_from(&mut eval, &st.keys, start);
            if let Some(c) = &found {
                st.services.entry(req.service_id).or_default().rr = ((c.i + 1) % n) as u64;
            }
            found
        } else {
            let mut cands: Vec<Cand> = (0..n).filter_map(|i| eval(&st.keys, i)).collect();
            if cands.is_empty() {
                None
            } else {
                let best = match strategy {
                    Strategy::Weighted => {
                        let mut total = 0i64;
                        for c in cands.iter_mut() {
                            let w = req.keys[c.i].weight.max(1) as i64;
                            c.cw += w;
                            total += w;
                        }
                        let mut best = 0usize;
                        for (j, c) in cands.iter().enumerate() {
                            if c.cw > cands[best].cw {
                                best = j;
                            }
                        }
                        cands[best].cw -= total;
                        for c in &cands {
                            st.keys.entry(req.keys[c.i].id).or_default().cw = c.cw;
                        }
                        best
                    }
                    Strategy::Random => rnd as usize % cands.len(),
                    Strategy::LeastUsed => {
                        let mut best = 0usize;
                        for (j, c) in cands.iter().enumerate() {
                            let b = &cands[best];
                            if c.inflight < b.inflight
                                || (c.inflight == b.inflight && c.last < b.last)
                            {
                                best = j;
                            }
                        }
                        best
                    }
                    Strategy::Latency => {
                        // Power of two choices, as the script.
                        let m = cands.len();
                        if m == 1 {
                            0
                        } else {
                            let a = rnd as usize % m;
                            let b = (a + 1 + (rnd as usize / m) % (m - 1)) % m;
                            let cost = |c: &Cand| c.obs.latency_cost(now, c.inflight, policy);
                            if cost(&cands[b]) < cost(&cands[a]) {
                                b
                            } else {
                                a
                            }
                        }
                    }
                    Strategy::SuccessRate => {
                        let ws: Vec<f64> = cands
                            .iter()
                            .map(|c| req.keys[c.i].weight.max(1) as f64 * c.obs.success_weight())
                            .collect();
                        let mut x = rnd as f64 / 4_294_967_296.0 * ws.iter().sum::<f64>();
                        let mut best = cands.len() - 1;
                        for (j, w) in ws.iter().enumerate() {
                            x -= w;
                            if x < 0.0 {
                                best = j;
                                break;
                            }
                        }
                        best
                    }
                    Strategy::Cost => {
                        // The lowest cost factor; ties in round-robin order from the cursor.
                        let cheapest = cands
                            .iter()
                            .map(|c| req.keys[c.i].cost_ppm)
                            .min()
                            .unwrap_or_default();
                        let svc = st.services.entry(req.service_id).or_default();
                        let start = svc.rr as usize % n;
                        let best = (0..n)
                            .map(|j| (start + j) % n)
                            .find_map(|i| {
                                cands
                                    .iter()
                                    .position(|c| c.i == i && req.keys[i].cost_ppm == cheapest)
                            })
                            .unwrap_or(0);
                        svc.rr = ((cands[best].i + 1) % n) as u64;
                        best
                    }
                    Strategy::Balance | Strategy::RoundRobin => {
                        let mut best = 0usize;
                        for (j, c) in cands.iter().enumerate() {
                            if c.bal.unwrap_or(-1) > cands[best].bal.unwrap_or(-1) {
                                best = j;
                            }
                        }
                        best
                    }
                };
                Some(cands.swap_remove(best))
            }
        };
        let c = match found {
            Some(c) => c,
            None if at_cap => return Acquire::AtCapacity,
            None => return Acquire::NoKey,
        };

        if let Some(c) = req.client {
            let cl = st.clients.entry(c.access_key_id).or_default();
            if let Some(t) = new_rpm {
                cl.tat_rpm = t;
            }
            if let Some(t) = new_rpd {
                cl.tat_rpd = t;
            }
            if c.budget.is_some() && req.reserve > 0 {
                *cl.spent.get_or_insert(c.spent) += req.reserve;
            }
        }
        let spec = &req.keys[c.i];
        let lease_id = new_lease_id();
        let member = format!("{}:{lease_id}", spec.id);
        let k = st.keys.entry(spec.id).or_default();
        if let Some(t) = c.new_krpm {
            k.tat_rpm = t;
        }
        k.inflight += 1;
        k.last = now;
        if c.probe {
            k.probe = now + self.inner.policy.probe_lock_ms as i64;
        }
        st.services
            .entry(req.service_id)
            .or_default()
            .leases
            .insert(member.clone(), (spec.id, now + req.lease_ttl_ms as i64));
        Acquire::Granted {
            index: c.i,
            lease: Lease {
                service_id: req.service_id,
                key_id: spec.id,
                member,
            },
            fails: c.fails,
            probe: c.probe,
            remaining: rem,
        }
    }

    fn drop_lease(st: &mut State, lease: &Lease) {
        let removed = st
            .services
            .get_mut(&lease.service_id)
            .and_then(|s| s.leases.remove(&lease.member))
            .is_some();
        if removed && let Some(k) = st.keys.get_mut(&lease.key_id) {
            k.inflight = k.inflight.saturating_sub(1);
        }
    }

    pub fn release(&self, lease: &Lease, u: &Usage) -> Released {
        let now = now_ms();
        let mut guard = self.inner.state.lock();
        let st = &mut *guard;
        Self::drop_lease(st, lease);
        let k = st.keys.entry(lease.key_id).or_default();
        let mut out = Released::default();
        if let Some(l) = u.latency_ms {
            // The key answered: a good answer for its success rate, whatever the status.
            k.obs.observe(now, Some(l), true, &self.inner.policy);
            k.stats.requests += 1;
            if u.success {
                k.stats.successes += 1;
            } else {
                k.stats.failures_4xx += 1;
                if u.status != 0 {
                    *k.stats.failures_by_status.entry(u.status).or_insert(0) += 1;
                }
            }
        }
        k.stats.tokens += u.tokens as i64;
        k.stats.cost += u.cost.max(0);
        if u.success {
            k.fails = 0;
            k.cool_n = 0;
            k.halfopen = false;
            k.probe = 0;
            if k.until > 0 && k.until <= now {
                k.until = 0;
            }
        }
        if u.tokens > 0
            && let Some(l) = u.key_tpm
        {
            k.tat_tpm = k.tat_tpm.max(now as f64) + u.tokens as f64 * (MINUTE_MS / l as f64);
        }
        if u.cost > 0
            && let Some(db) = u.key_balance
        {
            // Integer micros, as HINCRBY in release_v4.lua: a debit is exact.
            let bal = k.bal.unwrap_or(db).saturating_sub(u.cost);
            k.bal = Some(bal);
            if bal <= 0 && k.until != -1 {
                k.until = -1;
                k.reason = Some("exhausted".into());
                out.exhausted = true;
            }
        }
        if let Some(c) = u.client
            && c.budget.is_some()
        {
            let cl = st.clients.entry(c.access_key_id).or_default();
            *cl.spent.get_or_insert(c.spent) += u.cost - u.reserved;
        }
        if u.tokens > 0
            && let Some(c) = u.client
            && let Some(l) = c.tpm
        {
            let cl = st.clients.entry(c.access_key_id).or_default();
            cl.tat_tpm = cl.tat_tpm.max(now as f64) + u.tokens as f64 * (MINUTE_MS / l as f64);
        }
        out
    }

    pub fn settle(&self, client: &ClientLimits, delta: i64) {
        if client.budget.is_none() {
            return;
        }
        let mut st = self.inner.state.lock();
        let cl = st.clients.entry(client.access_key_id).or_default();
        *cl.spent.get_or_insert(client.spent) += delta;
    }

    pub fn take_stats(&self, key_ids: &[i64]) -> Vec<KeyStats> {
        let mut st = self.inner.state.lock();
        key_ids
            .iter()
            .map(|id| match st.keys.get_mut(id) {
                Some(k) => KeyStats {
                    balance: k.bal,
                    last_used: k.last,
                    ..std::mem::take(&mut k.stats)
                },
                None => KeyStats::default(),
            })
            .collect()
    }

    pub fn spent(&self, access_key_ids: &[i64]) -> Vec<Option<i64>> {
        let st = self.inner.state.lock();
        access_key_ids
            .iter()
            .map(|id| st.clients.get(id).and_then(|c| c.spent))
            .collect()
    }

    pub fn renew(&self, lease: &Lease, ttl_ms: u64) {
        let mut st = self.inner.state.lock();
        if let Some(l) = st
            .services
            .get_mut(&lease.service_id)
            .and_then(|s| s.leases.get_mut(&lease.member))
        {
            l.1 = now_ms() + ttl_ms as i64;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &self,
        service_id: i64,
        key_id: i64,
        lease: Option<&Lease>,
        fault: Fault,
        n_keys: usize,
        took_ms: Option<u64>,
        class: Option<StatClass>,
    ) -> Report {
        let now = now_ms();
        let p = self.inner.policy;
        let mut guard = self.inner.state.lock();
        let st = &mut *guard;
        if let Some(l) = lease {
            Self::drop_lease(st, l);
        }
        if fault == Fault::Clear {
            let inflight = st.keys.get(&key_id).map(|k| k.inflight).unwrap_or(0);
            st.keys.insert(
                key_id,
                KeyState {
                    inflight,
                    ..Default::default()
                },
            );
            return Report {
                fails: 0,
                until: 0,
                service_backoff_until: None,
            };
        }
        let k = st.keys.entry(key_id).or_default();
        k.obs.observe(now, took_ms, false, &p);
        if let Some(class) = class {
            k.stats.requests += 1;
            match class {
                StatClass::Client(_) => k.stats.failures_4xx += 1,
                StatClass::Server(_) => k.stats.failures_5xx += 1,
                StatClass::Network => k.stats.failures_network += 1,
            }
            *k.stats
                .failures_by_status
                .entry(class.status())
                .or_insert(0) += 1;
        }
        let report = |k: &KeyState, b: Option<i64>| Report {
            fails: k.fails,
            until: k.until,
            service_backoff_until: b,
        };
        match fault {
            Fault::Invalid | Fault::Exhausted => {
                k.until = -1;
                k.reason = Some(
                    if fault == Fault::Invalid {
                        "invalid"
                    } else {
                        "exhausted"
                    }
                    .into(),
                );
                report(k, None)
            }
            _ if k.until == -1 => report(k, None),
            Fault::RateLimited { retry_after_ms } => {
                // 0 means no hint, as in the script.
                let retry_after_ms = retry_after_ms.filter(|ms| *ms > 0);
                let svc = st.services.entry(service_id).or_default();
                svc.recent_429.insert(key_id, now);
                let window = p.upstream_wide_window_ms as i64;
                svc.recent_429.retain(|_, t| *t > now - window);
                let hit = svc.recent_429.len();
                if n_keys >= 2 && hit * 100 >= p.upstream_wide_percent as usize * n_keys {
                    // The backoff grows while upstream-wide limits keep coming; a quiet window resets it.
                    if svc.backoff < now - window {
                        svc.backoff_n = 0;
                    }
                    svc.backoff_n += 1;
                    let dur = retry_after_ms.unwrap_or_else(|| backoff(&p, svc.backoff_n));
                    svc.backoff = now + dur as i64;
                    svc.recent_429.clear();
                    let b = svc.backoff;
                    let k = st.keys.entry(key_id).or_default();
                    return report(k, Some(b));
                }
                let k = st.keys.entry(key_id).or_default();
                k.cool_n += 1;
                let dur = retry_after_ms.unwrap_or_else(|| backoff(&p, k.cool_n));
                k.until = k.until.max(now + dur as i64);
                k.reason = Some("cooling".into());
                report(k, None)
            }
            Fault::Failure => {
                k.fails += 1;
                if k.halfopen || k.fails >= p.failure_threshold {
                    k.until = now + p.recovery_ms as i64;
                    k.reason = Some("failing".into());
                    k.halfopen = true;
                    k.probe = 0;
                }
                report(k, None)
            }
            Fault::Clear => unreachable!("handled above"),
        }
    }

    pub fn live_states(&self, key_ids: &[i64]) -> Vec<LiveState> {
        let st = self.inner.state.lock();
        key_ids
            .iter()
            .map(|id| {
                st.keys
                    .get(id)
                    .map(|k| LiveState {
                        until: k.until,
                        fails: k.fails,
                        reason: k.reason.clone(),
                        inflight: k.inflight,
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    pub fn add_live(&self, deltas: &[LiveDelta]) {
        let mut st = self.inner.state.lock();
        for d in deltas {
            let svc = st.live.entry(d.service.clone()).or_default();
            let s = svc.secs.entry(d.sec).or_default();
            s.0 += d.requests;
            s.1 += d.tokens;
            let day = svc.days.entry(d.sec.div_euclid(DAY_SECS)).or_default();
            day.0 += d.requests;
            day.1 += d.tokens;
            // The same lifetimes as the Redis keys' EXPIRE.
            svc.secs = svc.secs.split_off(&(d.sec - 120));
            svc.days = svc.days.split_off(&(d.sec.div_euclid(DAY_SECS) - 1));
        }
    }

    pub fn live(&self, services: &[String], now: i64) -> LiveCounts {
        let st = self.inner.state.lock();
        let mut out = LiveCounts::default();
        for svc in services.iter().filter_map(|s| st.live.get(s)) {
            for (_, (r, t)) in svc.secs.range(now - 59..=now) {
                out.rpm += r;
                out.tpm += t;
            }
            if let Some((r, t)) = svc.days.get(&now.div_euclid(DAY_SECS)) {
                out.rpd += r;
                out.tpd += t;
            }
        }
        out
    }

    pub fn set_balance(&self, key_id: i64, balance: Option<i64>) {
        self.inner.state.lock().keys.entry(key_id).or_default().bal = balance;
    }

    pub fn try_lock(&self, name: &str, token: &str, ttl_ms: u64) -> bool {
        let now = now_ms();
        let mut st = self.inner.state.lock();
        if st.locks.get(name).is_some_and(|(_, exp)| *exp > now) {
            return false;
        }
        st.locks
            .insert(name.to_string(), (token.to_string(), now + ttl_ms as i64));
        true
    }

    pub fn unlock(&self, name: &str, token: &str) -> bool {
        let now = now_ms();
        let mut st = self.inner.state.lock();
        match st.locks.get(name) {
            Some((t, exp)) if t == token => {
                let held = *exp > now;
                st.locks.remove(name);
                held
            }
            _ => false,
        }
    }

    pub fn config_version(&self) -> u64 {
        self.inner.version.load(Ordering::SeqCst)
    }

    pub fn bump_config_version(&self) -> u64 {
        self.inner.version.fetch_add(1, Ordering::SeqCst) + 1
    }
}

fn backoff(p: &Policy, step: u32) -> u64 {
    let exp = step.saturating_sub(1).min(40);
    p.backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(p.backoff_max_ms)
}
