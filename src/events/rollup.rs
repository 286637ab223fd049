//! Request statistics (`request_stats`), the only source of `/admin/stats` history.
//!
//! Each request adds to one row per dimension it can be grouped by (service, upstream key, access
//! key, model) and per grain (minute and hour): stats group by one dimension at a time, so a row
//! per combination of all four would make "every service this week" read about as many rows as
//! the raw log. Hour and day buckets read the hourly rows.
//!
//! The log writer calls `record` inside the transaction that inserts a batch, with only the
//! events whose rows that insert reported new (`RETURNING id` under `ON CONFLICT DO NOTHING`).
//! The rows and their statistics either commit together or not at all, so a spool replay, a
//! retry after a lost commit reply or another replica writing the same event never counts it
//! twice; and because every write is an additive upsert, any number of replicas add up exactly.
use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DbErr};

use super::RequestEvent;
use crate::coord::{Coord, LiveDelta};

/// Histogram buckets per latency kind. Bucket 0 holds 0 ms; bucket i (1..=22) holds
/// [2^(i-1), 2^i) ms; the last holds everything from 2^22 ms (about 70 minutes).
pub const HIST_BUCKETS: usize = 24;

/// Longest model name kept in a stats row (longer names are cut, not refused).
const MODEL_MAX: usize = 200;

/// The row widths kept, in seconds: minutes serve `1m` buckets, hours serve `1h` and `1d`.
pub const GRAINS: [i64; 2] = [60, 3600];

/// What a stats row is grouped by (stored as one letter in `dim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    Service,
    Key,
    AccessKey,
    Model,
}

impl Dim {
    pub const ALL: [Dim; 4] = [Dim::Service, Dim::Key, Dim::AccessKey, Dim::Model];

    pub fn code(self) -> &'static str {
        match self {
            Self::Service => "s",
            Self::Key => "k",
            Self::AccessKey => "a",
            Self::Model => "m",
        }
    }
}

/// One stats row's identity. The group is `group_id` for keys and access keys (0 = none) and
/// `group_name` for models ('' = none named); the other stays 0 / ''. The service is always set,
/// so any dimension can be filtered to a set of services.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatKey {
    pub grain: i64,
    pub dim: Dim,
    pub bucket_start: i64,
    pub service: String,
    pub group_id: i64,
    pub group_name: String,
}

/// Additive counters of a set of requests. Written per minute, summed again when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub requests: i64,
    pub successes: i64,
    pub status_2xx: i64,
    pub status_4xx: i64,
    pub status_5xx: i64,
    pub status_other: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_micros: i64,
    pub latency_sum_ms: i64,
    pub ttft_sum_ms: i64,
    pub ttft_count: i64,
    pub lat: [i64; HIST_BUCKETS],
    pub ttft: [i64; HIST_BUCKETS],
}

impl Default for Counts {
    fn default() -> Self {
        Self::from_values(&[0; COLUMN_COUNT])
    }
}

/// Scalar counter columns, in the order `values` yields them.
pub const SCALARS: [&str; 14] = [
    "requests",
    "successes",
    "status_2xx",
    "status_4xx",
    "status_5xx",
    "status_other",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_micros",
    "latency_sum_ms",
    "ttft_sum_ms",
    "ttft_count",
];

pub const COLUMN_COUNT: usize = SCALARS.len() + 2 * HIST_BUCKETS;

/// Every counter column: the scalars, then `lat_b00..lat_b23`, then `ttft_b00..ttft_b23`.
pub fn columns() -> Vec<String> {
    let mut c: Vec<String> = SCALARS.iter().map(|s| s.to_string()).collect();
    for kind in ["lat", "ttft"] {
        c.extend((0..HIST_BUCKETS).map(|i| format!("{kind}_b{i:02}")));
    }
    c
}

impl Counts {
    /// The counters in `columns()` order.
    pub fn values(&self) -> Vec<i64> {
        let mut v = vec![
            self.requests,
            self.successes,
            self.status_2xx,
            self.status_4xx,
            self.status_5xx,
            self.status_other,
            self.prompt_tokens,
            self.completion_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cost_micros,
            self.latency_sum_ms,
            self.ttft_sum_ms,
            self.ttft_count,
        ];
        v.extend_from_slice(&self.lat);
        v.extend_from_slice(&self.ttft);
        v
    }

    /// The inverse of `values` (missing trailing values read as 0).
    pub fn from_values(v: &[i64]) -> Self {
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        let hist = |from: usize| std::array::from_fn(|i| at(from + i));
        Self {
            requests: at(0),
            successes: at(1),
            status_2xx: at(2),
            status_4xx: at(3),
            status_5xx: at(4),
            status_other: at(5),
            prompt_tokens: at(6),
            completion_tokens: at(7),
            cache_read_tokens: at(8),
            cache_write_tokens: at(9),
            cost_micros: at(10),
            latency_sum_ms: at(11),
            ttft_sum_ms: at(12),
            ttft_count: at(13),
            lat: hist(SCALARS.len()),
            ttft: hist(SCALARS.len() + HIST_BUCKETS),
        }
    }

    pub fn add(&mut self, other: &Counts) {
        // Field by field rather than through `values`: the log writer adds every batch's groups
        // into their rows, and two vectors per addition were most of that work.
        let add = |a: &mut i64, b: i64| *a = a.saturating_add(b);
        add(&mut self.requests, other.requests);
        add(&mut self.successes, other.successes);
        add(&mut self.status_2xx, other.status_2xx);
        add(&mut self.status_4xx, other.status_4xx);
        add(&mut self.status_5xx, other.status_5xx);
        add(&mut self.status_other, other.status_other);
        add(&mut self.prompt_tokens, other.prompt_tokens);
        add(&mut self.completion_tokens, other.completion_tokens);
        add(&mut self.cache_read_tokens, other.cache_read_tokens);
        add(&mut self.cache_write_tokens, other.cache_write_tokens);
        add(&mut self.cost_micros, other.cost_micros);
        add(&mut self.latency_sum_ms, other.latency_sum_ms);
        add(&mut self.ttft_sum_ms, other.ttft_sum_ms);
        add(&mut self.ttft_count, other.ttft_count);
        for (a, b) in self.lat.iter_mut().zip(other.lat) {
            add(a, b);
        }
        for (a, b) in self.ttft.iter_mut().zip(other.ttft) {
            add(a, b);
        }
    }

    fn count(&mut self, ev: &RequestEvent) {
        let n = |v: u64| v.min(i64::MAX as u64) as i64;
        self.requests += 1;
        if (200..400).contains(&ev.status) {
            self.successes += 1;
        }
        match ev.status {
            200..=299 => self.status_2xx += 1,
            400..=499 => self.status_4xx += 1,
            500..=599 => self.status_5xx += 1,
            _ => self.status_other += 1,
        }
        self.prompt_tokens = self.prompt_tokens.saturating_add(n(ev.tokens.prompt));
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(n(ev.tokens.completion));
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(n(ev.tokens.cache_read));
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(n(ev.tokens.cache_write));
        self.cost_micros = self.cost_micros.saturating_add(ev.cost_micros.unwrap_or(0));
        self.latency_sum_ms = self.latency_sum_ms.saturating_add(n(ev.latency_ms));
        self.lat[bucket_of(ev.latency_ms)] += 1;
        if let Some(t) = ev.ttft_ms {
            self.ttft_sum_ms = self.ttft_sum_ms.saturating_add(n(t));
            self.ttft_count += 1;
            self.ttft[bucket_of(t)] += 1;
        }
    }

    /// Successful requests over all requests (None when there were none).
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.successes as f64 / self.requests as f64)
    }
}

pub fn bucket_of(ms: u64) -> usize {
    ((u64::BITS - ms.leading_zeros()) as usize).min(HIST_BUCKETS - 1)
}

/// The `q` quantile (0..=1) of a histogram in ms, interpolated linearly inside its bucket: exact
/// to within the bucket's width (a factor of two).
pub fn quantile(hist: &[i64; HIST_BUCKETS], q: f64) -> Option<f64> {
    let total: i64 = hist.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut below = 0.0;
    for (i, &c) in hist.iter().enumerate() {
        let c = c as f64;
        if c > 0.0 && below + c >= rank {
            let (lo, hi) = match i {
                0 => (0.0, 1.0),
                _ => ((1u64 << (i - 1)) as f64, (1u64 << i) as f64),
            };
            return Some(lo + (hi - lo) * ((rank - below) / c));
        }
        below += c;
    }
    None
}

/// Sums a batch of events per grain, dimension, bucket and group; a BTreeMap so every writer
/// upserts rows in the same order (two replicas' transactions then cannot deadlock on each other's
/// rows).
///
/// The events are first summed per minute and combination of service, key, access key and model,
/// with keys borrowed from the events: a batch holds few such combinations (one per key used in
/// the bench's 4,000-event batches), so each event costs one hash lookup and no allocation, and
/// only the combinations are spread over the eight rows they add to.
pub fn aggregate<'a>(
    events: impl IntoIterator<Item = &'a RequestEvent>,
) -> BTreeMap<StatKey, Counts> {
    type Combo<'e> = (i64, &'e str, Option<i64>, Option<i64>, Option<&'e str>);
    // foldhash, not SipHash: the keys are the gateway's own events, and hashing them was most of
    // this loop's time.
    let mut combos: foldhash::HashMap<Combo<'a>, Counts> = foldhash::HashMap::default();
    for ev in events {
        let minute = ev.ts.timestamp().div_euclid(60) * 60;
        let combo = (
            minute,
            ev.service.as_str(),
            ev.upstream_key_id,
            ev.access_key_id,
            ev.model.as_deref(),
        );
        combos.entry(combo).or_default().count(ev);
    }
    let mut out: BTreeMap<StatKey, Counts> = BTreeMap::new();
    for ((minute, service, key, access_key, model), counts) in combos {
        let model: String = model.unwrap_or("").chars().take(MODEL_MAX).collect();
        for grain in GRAINS {
            for dim in Dim::ALL {
                let (group_id, group_name) = match dim {
                    Dim::Service => (0, String::new()),
                    Dim::Key => (key.unwrap_or(0), String::new()),
                    Dim::AccessKey => (access_key.unwrap_or(0), String::new()),
                    Dim::Model => (0, model.clone()),
                };
                let key = StatKey {
                    grain,
                    dim,
                    // Hours start on a minute, so the minute's hour is the event's.
                    bucket_start: minute.div_euclid(grain) * grain,
                    service: service.to_owned(),
                    group_id,
                    group_name,
                };
                out.entry(key).or_default().add(&counts);
            }
        }
    }
    out
}

/// Adds the events to the statistics, on the connection (the batch's transaction) given.
pub async fn record<'a, C: ConnectionTrait>(
    db: &C,
    events: impl IntoIterator<Item = &'a RequestEvent>,
) -> Result<(), DbErr> {
    crate::db::rollups::add(db, &aggregate(events)).await
}

/// Adds a batch to the services' live figures in the coordination store, in the background: a
/// slow or absent store must not hold up the log writer. Counted as events arrive (not as rows
/// land), so a database outage does not stop the live figures.
pub fn count_live(coord: &Coord, events: &[RequestEvent]) {
    let mut by: BTreeMap<(&str, i64), (i64, i64)> = BTreeMap::new();
    for ev in events {
        let e = by.entry((&ev.service, ev.ts.timestamp())).or_default();
        e.0 += 1;
        e.1 =
            e.1.saturating_add(ev.tokens.total().min(i64::MAX as u64) as i64);
    }
    let deltas: Vec<LiveDelta> = by
        .into_iter()
        .map(|((service, sec), (requests, tokens))| LiveDelta {
            service: service.to_string(),
            sec,
            requests,
            tokens,
        })
        .collect();
    let coord = coord.clone();
    tokio::spawn(async move {
        if let Err(e) = coord.add_live(&deltas).await {
            metrics::counter!(crate::telemetry::metrics::COORD_ERRORS_TOTAL, "kind" => e.kind())
                .increment(1);
            tracing::warn!(error = %e, "could not add to the live request counts");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_double_in_width() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 2);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(4), 3);
        assert_eq!(bucket_of(1000), 10);
        assert_eq!(bucket_of(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn quantiles_fall_inside_the_bucket_holding_their_rank() {
        let mut h = [0i64; HIST_BUCKETS];
        h[bucket_of(10)] = 90; // [8, 16)
        h[bucket_of(1000)] = 10; // [512, 1024)
        let p50 = quantile(&h, 0.5).unwrap();
        assert!((8.0..16.0).contains(&p50), "{p50}");
        let p95 = quantile(&h, 0.95).unwrap();
        assert!((512.0..1024.0).contains(&p95), "{p95}");
        assert_eq!(quantile(&[0; HIST_BUCKETS], 0.5), None);
    }

    /// One event of a batch, varied by `n` in minute, service, keys, model and status.
    fn event(n: i64) -> RequestEvent {
        use chrono::TimeZone;
        RequestEvent {
            id: uuid::Uuid::now_v7(),
            // Minutes 0-4 of two hours, some seconds in.
            ts: chrono::Utc
                .timestamp_opt(1_700_000_000 + (n % 5) * 60 + (n % 2) * 3600 + n % 37, 0)
                .unwrap(),
            service: format!("svc-{}", n % 3),
            access_key_id: (n % 4 != 0).then_some(n % 2),
            upstream_key_id: (n % 6 != 0).then_some(10 + n % 7),
            tried: vec![],
            model: (n % 5 != 0).then(|| format!("model-{}", n % 2)),
            upstream_model: None,
            path: "v1/chat/completions".into(),
            status: [200, 429, 500, 201][(n % 4) as usize],
            attempts: 1,
            latency_ms: (n * 13) as u64,
            ttft_ms: (n % 3 == 0).then_some(n as u64),
            tokens: crate::events::Tokens {
                prompt: n as u64,
                completion: 2 * n as u64,
                cache_read: (n % 3) as u64,
                cache_write: 1,
            },
            cost_micros: Some(n * 100),
            error_kind: None,
            streamed: false,
            cancelled: false,
            estimated: false,
            client_format: "openai",
            upstream_format: "openai",
            target: None,
            bodies: None,
        }
    }

    #[test]
    fn a_batch_adds_up_to_the_same_rows_as_its_events_one_by_one() {
        let events: Vec<RequestEvent> = (0..500).map(event).collect();
        let mut one_by_one: BTreeMap<StatKey, Counts> = BTreeMap::new();
        for ev in &events {
            for (k, c) in aggregate([ev]) {
                one_by_one.entry(k).or_default().add(&c);
            }
        }
        let batch = aggregate(&events);
        assert_eq!(batch, one_by_one);
        // Every event is in exactly one row per grain and dimension.
        for grain in GRAINS {
            for dim in Dim::ALL {
                let n: i64 = batch
                    .iter()
                    .filter(|(k, _)| k.grain == grain && k.dim == dim)
                    .map(|(_, c)| c.requests)
                    .sum();
                assert_eq!(n, 500, "grain {grain}, dim {dim:?}");
            }
        }
        // A single event's rows: eight, each counting it once, bucketed by its own minute and hour.
        let single = aggregate([&events[7]]);
        assert_eq!(single.len(), 8);
        let ts = events[7].ts.timestamp();
        for (k, c) in &single {
            assert_eq!(k.bucket_start, ts - ts.rem_euclid(k.grain));
            assert_eq!(c.requests, 1);
            assert_eq!(c.prompt_tokens, 7);
        }
    }

    #[test]
    fn adding_counts_adds_every_column_and_saturates() {
        let a = Counts::from_values(&(1..=COLUMN_COUNT as i64).collect::<Vec<_>>());
        let b = Counts::from_values(
            &(0..COLUMN_COUNT as i64)
                .map(|i| 100 * i)
                .collect::<Vec<_>>(),
        );
        let mut sum = a.clone();
        sum.add(&b);
        let expected: Vec<i64> = a
            .values()
            .iter()
            .zip(b.values())
            .map(|(x, y)| x + y)
            .collect();
        assert_eq!(sum.values(), expected);
        let mut full = Counts::from_values(&[i64::MAX; COLUMN_COUNT]);
        full.add(&a);
        assert_eq!(full.values(), vec![i64::MAX; COLUMN_COUNT]);
    }

    #[test]
    fn counts_survive_the_column_round_trip() {
        let mut c = Counts {
            requests: 3,
            cost_micros: 7,
            ..Counts::default()
        };
        c.lat[5] = 2;
        c.ttft[23] = 1;
        assert_eq!(Counts::from_values(&c.values()), c);
        assert_eq!(columns().len(), c.values().len());
    }
}
