//! Keeps admin login from hurting the proxy: password hashes (Argon2, ~19 MiB and tens of ms each)
//! run on the blocking pool behind a small semaphore instead of on the async workers, and failed
//! logins back off exponentially per username and per client address, so a guessing flood is
//! answered with cheap 429s instead of hashes.
//!
//! The failure counts live in this process: with several replicas behind a load balancer an
//! attacker gets each replica's allowance, not one in total. That is acceptable because what this
//! guards is the replica itself (its CPU, memory and proxy latency): every replica still bounds
//! its own hashing rate, and the backoff still grows per replica. Guessing resistance proper comes
//! from the password policy and Argon2, not from these counters.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::error::Problem;
use crate::config::AuthConfig;
use crate::crypto;
use crate::telemetry::metrics as m;

/// Keys remembered per kind (usernames, addresses). An address flood beyond it evicts the entries
/// that unlock soonest, so memory stays bounded (~100 bytes an entry) whatever the flood.
const MAX_TRACKED: usize = 10_000;
/// Usernames are remembered by at most this many characters (they are attacker-chosen).
const MAX_USERNAME_CHARS: usize = 128;

/// A PHC string with the same Argon2 parameters as `crypto::hash_password` (checked by a test),
/// verified when the username is unknown or disabled so that path costs what a wrong password
/// costs and timing does not reveal which usernames exist.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3xS0zLcyZr2jNGyCkqDtB4U7qBd7Y0cMPV0eP3z6V9s";

pub struct LoginGuard {
    hashing: Arc<Semaphore>,
    hashes: AtomicU64,
    base: Duration,
    max: Duration,
    strikes: Mutex<Strikes>,
}

#[derive(Default)]
struct Strikes {
    users: HashMap<String, Strike>,
    addrs: HashMap<IpAddr, Strike>,
}

#[derive(Clone, Copy)]
struct Strike {
    failures: u32,
    locked_until: Instant,
}

/// The attempt came while a backoff was running: answer 429 without hashing.
#[derive(Debug, Clone, Copy)]
pub struct Throttled {
    pub retry_after: Duration,
}

impl LoginGuard {
    pub fn new(c: &AuthConfig) -> Self {
        let base = Duration::from_millis(c.login_backoff_base_ms.max(1));
        Self {
            hashing: Arc::new(Semaphore::new(c.login_concurrency.max(1))),
            hashes: AtomicU64::new(0),
            base,
            max: Duration::from_millis(c.login_backoff_max_ms).max(base),
            strikes: Mutex::new(Strikes::default()),
        }
    }

    /// Password verifications run so far by this replica.
    pub fn hashes_run(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    /// Refuses the attempt while the username or the client address is locked.
    pub fn check(&self, username: &str, addr: Option<IpAddr>) -> Result<(), Throttled> {
        let now = Instant::now();
        let s = self.strikes.lock();
        let user = s
            .users
            .get(user_key(username).as_str())
            .map(|k| k.locked_until);
        let addr = addr
            .and_then(|a| s.addrs.get(&addr_key(a)))
            .map(|k| k.locked_until);
        let until = user.into_iter().chain(addr).max();
        match until {
            Some(t) if t > now => {
                metrics::counter!(m::LOGIN_THROTTLED_TOTAL).increment(1);
                Err(Throttled {
                    retry_after: t - now,
                })
            }
            _ => Ok(()),
        }
    }

    /// Verifies `password` against `phc` on the blocking pool, at most `login_concurrency` at a
    /// time. Attempts queued behind the limit are checked again once they get a turn, so a burst
    /// that fails together does not hash once per queued request.
    pub async fn verify(
        &self,
        username: &str,
        addr: Option<IpAddr>,
        password: String,
        phc: String,
    ) -> Result<bool, Throttled> {
        let permit = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .expect("the hashing semaphore is never closed");
        self.check(username, addr)?;
        self.hashes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::LOGIN_HASHES_TOTAL).increment(1);
        // The permit moves into the blocking task: a client that hangs up mid-hash does not free
        // a slot while its hash is still running.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            crypto::verify_password(&password, &phc)
        })
        .await
        .unwrap_or(false);
        Ok(ok)
    }

    /// Counts a failure against the username and the address and (re)starts their lockouts:
    /// base·2^(n-1), at most max.
    pub fn failed(&self, username: &str, addr: Option<IpAddr>) {
        let now = Instant::now();
        let mut s = self.strikes.lock();
        let (base, max) = (self.base, self.max);
        strike(&mut s.users, user_key(username), now, base, max);
        if let Some(a) = addr {
            strike(&mut s.addrs, addr_key(a), now, base, max);
        }
    }

    /// A right password clears the username's count (not the address's: one good login from a
    /// shared address should not wipe a guesser's record).
    pub fn succeeded(&self, username: &str) {
        self.strikes
            .lock()
            .users
            .remove(user_key(username).as_str());
    }
}

fn strike<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Strike>,
    key: K,
    now: Instant,
    base: Duration,
    max: Duration,
) {
    if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
        // Forgotten: quiet for a whole max lockout after the last one ended.
        map.retain(|_, s| s.locked_until + max > now);
        if map.len() >= MAX_TRACKED {
            // Still full of live entries: drop the one that unlocks soonest, the least useful.
            // A linear scan, but entries are only added after a hash, so at hashing rate.
            let soonest = map
                .iter()
                .min_by_key(|(_, s)| s.locked_until)
                .map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                map.remove(&k);
            }
        }
    }
    let e = map.entry(key).or_insert(Strike {
        failures: 0,
        locked_until: now,
    });
    if e.locked_until + max <= now {
        e.failures = 0;
    }
    e.failures = e.failures.saturating_add(1);
    let lock = base
        .saturating_mul(1u32 << (e.failures - 1).min(30))
        .min(max);
    e.locked_until = now + lock;
}

fn user_key(username: &str) -> String {
    username.trim().chars().take(MAX_USERNAME_CHARS).collect()
}

/// One host usually holds a whole IPv6 /64; counting per address would give it 2^64 allowances.
fn addr_key(a: IpAddr) -> IpAddr {
    match a.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let secs = self.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let status = StatusCode::TOO_MANY_REQUESTS;
        let p = Problem {
            kind: "https://keygate.dev/problems/too-many-requests".into(),
            title: status
                .canonical_reason()
                .unwrap_or("Too Many Requests")
                .into(),
            status: status.as_u16(),
            detail: format!("too many failed logins; try again in {secs} s"),
        };
        let mut resp = (status, axum::Json(p)).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHash;

    fn guard(base_ms: u64, max_ms: u64) -> LoginGuard {
        let mut c = crate::Config::defaults().auth;
        c.login_backoff_base_ms = base_ms;
        c.login_backoff_max_ms = max_ms;
        LoginGuard::new(&c)
    }

    #[test]
    fn dummy_hash_has_the_parameters_of_a_real_one() {
        let real = crypto::hash_password("some password").unwrap();
        let real = PasswordHash::new(&real).unwrap();
        let dummy = PasswordHash::new(DUMMY_HASH).expect("the dummy hash parses");
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(
            dummy.hash.map(|h| h.len()),
            real.hash.map(|h| h.len()),
            "same output length"
        );
    }

    #[test]
    fn lockout_doubles_per_failure_up_to_the_cap() {
        let g = guard(100, 350);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut last = Duration::ZERO;
        for want in [100, 200, 350, 350] {
            g.failed("alice", None);
            let t = g.check("alice", Some(ip)).unwrap_err().retry_after;
            assert!(t <= Duration::from_millis(want) && t > Duration::from_millis(want - 20));
            assert!(t >= last.min(Duration::from_millis(340)));
            last = t;
        }
        g.succeeded("alice");
        assert!(g.check("alice", Some(ip)).is_ok());
    }

    #[test]
    fn an_address_is_locked_whatever_username_it_tries() {
        let g = guard(1_000, 10_000);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        g.failed("a", Some(ip));
        assert!(g.check("b", Some(same_64)).is_err());
        assert!(
            g.check("b", Some("2001:db8:0:1::1".parse().unwrap()))
                .is_ok()
        );
        g.succeeded("a");
        assert!(
            g.check("a", Some(ip)).is_err(),
            "success clears the username only"
        );
    }

    #[test]
    fn an_address_flood_stays_bounded() {
        let g = guard(1_000, 10_000);
        for i in 0..(MAX_TRACKED as u32 + 500) {
            g.failed("x", Some(IpAddr::V4(i.into())));
        }
        assert!(g.strikes.lock().addrs.len() <= MAX_TRACKED);
    }
}
