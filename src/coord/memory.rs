//! In-process coordination store for a single replica: the same semantics as the Redis scripts,
//! under one mutex (every operation is a handful of map lookups).
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{LiveState, Outcome, Pick, Report, now_ms};

#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    version: AtomicU64,
}

#[derive(Default)]
struct State {
    cursors: HashMap<i64, u64>,
    keys: HashMap<i64, LiveState>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn select_round_robin(&self, service_id: i64, key_ids: &[i64]) -> Option<Pick> {
        let n = key_ids.len();
        if n == 0 {
            return None;
        }
        let now = now_ms();
        let mut st = self.inner.state.lock();
        let c = st.cursors.entry(service_id).or_insert(0);
        *c += 1;
        let start = (*c - 1) as usize;
        for i in 0..n {
            let idx = (start + i) % n;
            match st.keys.get(&key_ids[idx]) {
                None => {
                    return Some(Pick {
                        index: idx,
                        fails: 0,
                    });
                }
                Some(s) if s.until >= 0 && s.until <= now => {
                    return Some(Pick {
                        index: idx,
                        fails: s.fails,
                    });
                }
                Some(_) => {}
            }
        }
        None
    }

    pub fn report(&self, key_id: i64, outcome: &Outcome, reason: &str) -> Report {
        let now = now_ms();
        let mut st = self.inner.state.lock();
        if *outcome == Outcome::Clear {
            st.keys.remove(&key_id);
            return Report { fails: 0, until: 0 };
        }
        let s = st.keys.entry(key_id).or_default();
        match outcome {
            Outcome::Invalid => {
                s.until = -1;
                s.reason = Some(reason.to_string());
            }
            Outcome::Cool { ms } => {
                if s.until != -1 {
                    s.until = s.until.max(now + *ms as i64);
                    s.reason = Some(reason.to_string());
                }
            }
            Outcome::Fail { threshold, ms } => {
                s.fails += 1;
                if s.until != -1 && s.fails >= *threshold {
                    s.until = now + *ms as i64;
                    s.reason = Some(reason.to_string());
                }
            }
            Outcome::Ok => s.fails = 0,
            Outcome::Clear => {}
        }
        Report {
            fails: s.fails,
            until: s.until,
        }
    }

    pub fn live_states(&self, key_ids: &[i64]) -> Vec<LiveState> {
        let st = self.inner.state.lock();
        key_ids
            .iter()
            .map(|id| st.keys.get(id).cloned().unwrap_or_default())
            .collect()
    }

    pub fn config_version(&self) -> u64 {
        self.inner.version.load(Ordering::SeqCst)
    }

    pub fn bump_config_version(&self) -> u64 {
        self.inner.version.fetch_add(1, Ordering::SeqCst) + 1
    }
}
