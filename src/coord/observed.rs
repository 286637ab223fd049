//! What the `latency` and `success_rate` strategies know of a key: the in-process store's copy of
//! the arithmetic `observe` in `release_v4.lua` and `report_v3.lua` does in Redis.
use super::Policy;

/// What the strategies know of a key from its past answers (the fields `observe` in the Lua
/// scripts keeps).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Observed {
    /// Peak-EWMA latency in ms at `lat_t` (None = never observed).
    pub lat: Option<f64>,
    pub lat_t: i64,
    pub sr_ok: f64,
    pub sr_n: f64,
    pub sr_t: i64,
}

impl Observed {
    /// One answer (`ok`) or failed attempt, `rtt` ms after it was sent when timed.
    pub fn observe(&mut self, now: i64, rtt: Option<u64>, ok: bool, p: &Policy) {
        if let Some(rtt) = rtt {
            let rtt = rtt as f64;
            self.lat = Some(match self.lat {
                Some(lat) if rtt <= lat => {
                    let w = decay(now - self.lat_t, p.latency_tau_ms);
                    lat * w + rtt * (1.0 - w)
                }
                _ => rtt,
            });
            self.lat_t = now;
        }
        let w = if self.sr_t == 0 {
            1.0
        } else {
            decay(now - self.sr_t, p.success_tau_ms)
        };
        self.sr_n = self.sr_n * w + 1.0;
        self.sr_ok = self.sr_ok * w + if ok { 1.0 } else { 0.0 };
        self.sr_t = now;
    }

    /// The latency strategy's cost: the EWMA decayed to `now`, times requests in flight + 1.
    pub fn latency_cost(&self, now: i64, inflight: u32, p: &Policy) -> f64 {
        self.lat.unwrap_or(0.0) * decay(now - self.lat_t, p.latency_tau_ms) * (inflight + 1) as f64
    }

    /// The success_rate strategy's weight factor: the Laplace-smoothed rate, squared.
    pub fn success_weight(&self) -> f64 {
        let r = (self.sr_ok + 1.0) / (self.sr_n + 2.0);
        r * r
    }
}

fn decay(elapsed_ms: i64, tau_ms: u64) -> f64 {
    (-(elapsed_ms.max(0) as f64) / tau_ms.max(1) as f64).exp()
}
