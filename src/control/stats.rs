//! Request statistics (`GET /admin/stats`, `keygate admin stats`). History comes from the per-dimension minute and hour
//! rows of `request_stats` (never the raw log), grouped and bucketed in SQL; live figures come from the
//! coordination store, summed over every replica.
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::services::find as find_service;
use super::{Actor, Error, Result};
use crate::crypto::mask;
use crate::db::{
    self,
    rollups::{Filter, Group, GroupBy},
};
use crate::events::rollup::{Counts, quantile};
use crate::state::AppState;

/// Buckets one answer may span.
const MAX_POINTS: i64 = 1440;
/// Grouped rows one answer may read (buckets times groups).
const MAX_ROWS: u64 = 50_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Only this service (slug); default: every service you can see.
    pub service: Option<String>,
    /// `service` (default), `key` (upstream key), `access_key` or `model`.
    #[param(value_type = Option<GroupByName>, inline)]
    pub group_by: Option<String>,
    /// Start of the range: RFC 3339 or unix seconds (default: 60 buckets before `to`).
    #[param(value_type = Option<TimeParam>, inline)]
    pub from: Option<String>,
    /// End of the range, exclusive: RFC 3339 or unix seconds (default: now).
    #[param(value_type = Option<TimeParam>, inline)]
    pub to: Option<String>,
    /// Bucket width of the series: `1m` (default), `1h` or `1d`. A range holds at most 1440.
    #[param(value_type = Option<BucketName>, inline)]
    pub bucket: Option<String>,
}

/// The closed sets and shapes of the query above, for the document (the handler parses the
/// strings itself, to name the parameter in its problem).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum GroupByName {
    Service,
    Key,
    AccessKey,
    Model,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
enum BucketName {
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum TimeParam {
    Rfc3339(DateTime<Utc>),
    /// Within ±253402300799 (the years RFC 3339 can write).
    UnixSeconds(i64),
}

/// What a group is (only the fields of the `group_by` dimension are present).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct GroupLabel {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Upstream key id (0 = requests that reached no key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<i64>,
    /// The upstream key, masked (absent when the key is gone or none was used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Access key id (0 = requests without one, e.g. a global proxy key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<i64>,
    /// The access key's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    /// The model the client asked for ('' = none named).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Figures of a set of requests. Percentiles come from log-scale histograms (buckets a factor of
/// two wide, interpolated inside), so they are estimates; everything else is exact.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Figures {
    pub requests: i64,
    /// Requests answered with a 2xx or 3xx status.
    pub successes: i64,
    /// `successes / requests` (null when there were no requests).
    pub success_rate: Option<f64>,
    pub status_2xx: i64,
    pub status_4xx: i64,
    pub status_5xx: i64,
    /// Any other status (e.g. 1xx, 3xx).
    pub status_other: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    /// In currency units (exact to 0.000001).
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub cost: i64,
    pub latency_avg_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Time to first token, median, over requests that had one.
    pub ttft_p50_ms: Option<f64>,
}

impl From<&Counts> for Figures {
    fn from(c: &Counts) -> Self {
        Self {
            requests: c.requests,
            successes: c.successes,
            success_rate: c.success_rate(),
            status_2xx: c.status_2xx,
            status_4xx: c.status_4xx,
            status_5xx: c.status_5xx,
            status_other: c.status_other,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            cache_read_tokens: c.cache_read_tokens,
            cache_write_tokens: c.cache_write_tokens,
            cost: c.cost_micros,
            latency_avg_ms: (c.requests > 0).then(|| c.latency_sum_ms as f64 / c.requests as f64),
            latency_p50_ms: quantile(&c.lat, 0.50),
            latency_p95_ms: quantile(&c.lat, 0.95),
            latency_p99_ms: quantile(&c.lat, 0.99),
            ttft_p50_ms: quantile(&c.ttft, 0.50),
        }
    }
}

/// One row of the table: a group over the whole range.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupTotals {
    #[serde(flatten)]
    pub group: GroupLabel,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Point {
    /// Start of the bucket.
    pub t: DateTime<Utc>,
    #[serde(flatten)]
    pub figures: Figures,
}

/// One line of the chart: a group's buckets, oldest first (buckets without requests are left
/// out).
#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub group: GroupLabel,
    pub points: Vec<Point>,
}

/// Live figures of the services in scope, across every replica. `rpm`/`tpm`: requests and
/// tokens (prompt + completion) that ended in the last 60 seconds; `rpd`/`tpd`: since 00:00 UTC.
/// Counted as the log writer takes each batch, so they trail traffic by up to a batch (~200 ms).
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    pub rpm: i64,
    pub rpd: i64,
    pub tpm: i64,
    pub tpd: i64,
    /// Requests holding a key right now.
    pub in_flight: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsResponse {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: String,
    pub group_by: String,
    /// Per group over the range, most requests first.
    pub totals: Vec<GroupTotals>,
    /// Per group per bucket, in the order of `totals`.
    pub series: Vec<Series>,
    pub live: Live,
}

/// Totals and series per group over a range, and live figures across replicas.
pub async fn get(state: &AppState, user: &Actor, q: &StatsQuery) -> Result<StatsResponse> {
    let p = Params::parse(q, Utc::now().timestamp())?;
    // The services in scope: one named (and visible), the tenant's, or all (None).
    let services: Option<Vec<String>> = match (&q.service, user.tenant_scope()) {
        (Some(slug), _) => Some(vec![find_service(state, user, slug).await?.slug]),
        (None, Some(t)) => Some(db::services::slugs_of_tenant(&state.db, t).await?),
        (None, None) => None,
    };
    let filter = Filter {
        services: services.as_deref(),
        group_by: p.group_by,
        from: p.from,
        to: p.to,
        bucket: p.bucket,
    };
    let rows = db::rollups::grouped(&state.db, &filter, MAX_ROWS + 1).await?;
    if rows.len() as u64 > MAX_ROWS {
        return Err(Error::BadRequest(format!(
            "from/to: more than {MAX_ROWS} buckets times groups; narrow the range, use a wider bucket or filter by service"
        )));
    }
    let labels = labels(state, p.group_by, &rows).await?;
    let (totals, series) = shape(rows, &labels);
    let live_services = match services {
        Some(s) => s,
        None => db::services::all(&state.db)
            .await?
            .into_iter()
            .map(|s| s.slug)
            .collect(),
    };
    let live = live(state, &live_services).await?;
    Ok(StatsResponse {
        from: ts(p.from),
        to: ts(p.to),
        bucket: p.bucket_name.to_string(),
        group_by: p.group_by_name.to_string(),
        totals,
        series,
        live,
    })
}

fn ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// The query, checked: every bad value is a 400 naming its parameter.
#[derive(Debug, PartialEq)]
struct Params {
    group_by: GroupBy,
    group_by_name: &'static str,
    bucket: i64,
    bucket_name: &'static str,
    /// Bucket-aligned unix seconds; `to` exclusive.
    from: i64,
    to: i64,
}

impl Params {
    fn parse(q: &StatsQuery, now: i64) -> Result<Self> {
        let bad = |m: String| Error::BadRequest(m);
        let (group_by, group_by_name) = match q.group_by.as_deref().unwrap_or("service") {
            "service" => (GroupBy::Service, "service"),
            "key" => (GroupBy::Key, "key"),
            "access_key" => (GroupBy::AccessKey, "access_key"),
            "model" => (GroupBy::Model, "model"),
            other => {
                return Err(bad(format!(
                    "group_by: '{other}' is not one of service, key, access_key, model"
                )));
            }
        };
        let (bucket, bucket_name) = match q.bucket.as_deref().unwrap_or("1m") {
            "1m" => (60, "1m"),
            "1h" => (3600, "1h"),
            "1d" => (86_400, "1d"),
            other => return Err(bad(format!("bucket: '{other}' is not one of 1m, 1h, 1d"))),
        };
        let to = match &q.to {
            Some(v) => time("to", v)?,
            None => now,
        };
        // `to` rounds up to the end of its bucket, `from` down to its start.
        let to = to.div_euclid(bucket) * bucket + if to % bucket == 0 { 0 } else { bucket };
        let from = match &q.from {
            Some(v) => time("from", v)?.div_euclid(bucket) * bucket,
            None => to - 60 * bucket,
        };
        if from >= to {
            return Err(bad("from: must be before to".into()));
        }
        let points = (to - from) / bucket;
        if points > MAX_POINTS {
            return Err(bad(format!(
                "from: the range spans {points} buckets of {bucket_name}; at most {MAX_POINTS} (use a wider bucket)"
            )));
        }
        Ok(Self {
            group_by,
            group_by_name,
            bucket,
            bucket_name,
            from,
            to,
        })
    }
}

/// Unix seconds as far as RFC 3339 reaches (year 9999) either way: the bucket arithmetic then
/// cannot overflow.
const MAX_UNIX: i64 = 253_402_300_799;

/// RFC 3339 or unix seconds.
fn time(name: &str, v: &str) -> Result<i64> {
    if let Ok(s) = v.parse::<i64>() {
        if !(-MAX_UNIX..=MAX_UNIX).contains(&s) {
            return Err(Error::BadRequest(format!(
                "{name}: unix seconds must be within ±{MAX_UNIX}"
            )));
        }
        return Ok(s);
    }
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp())
        .map_err(|_| {
            Error::BadRequest(format!(
                "{name}: '{v}' is neither an RFC 3339 time nor unix seconds"
            ))
        })
}

/// What each group value shows: masked upstream keys, access key names.
async fn labels(
    state: &AppState,
    by: GroupBy,
    rows: &[db::rollups::Row],
) -> Result<HashMap<Group, GroupLabel>> {
    let ids: Vec<i64> = {
        let mut ids: Vec<i64> = rows
            .iter()
            .filter_map(|r| match r.group {
                Group::Id(id) if id > 0 => Some(id),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let mut names: HashMap<i64, String> = HashMap::new();
    match by {
        GroupBy::Key => {
            for (id, secret) in db::keys::secrets_by_ids(&state.db, &ids).await? {
                let masked = state
                    .cipher
                    .decrypt(&secret)
                    .map(|s| mask(&s))
                    .unwrap_or_else(|_| "(undecryptable)".into());
                names.insert(id, masked);
            }
        }
        GroupBy::AccessKey => {
            for id in &ids {
                if let Some(a) = db::access_keys::by_id(&state.db, *id).await? {
                    names.insert(a.id, a.name);
                }
            }
        }
        GroupBy::Service | GroupBy::Model => {}
    }
    Ok(rows
        .iter()
        .map(|r| {
            let mut l = GroupLabel::default();
            match (&r.group, by) {
                (Group::Name(n), GroupBy::Service) => l.service = Some(n.clone()),
                (Group::Name(n), _) => l.model = Some(n.clone()),
                (Group::Id(id), GroupBy::Key) => {
                    l.key_id = Some(*id);
                    l.key = names.get(id).cloned();
                }
                (Group::Id(id), _) => {
                    l.access_key_id = Some(*id);
                    l.access_key = names.get(id).cloned();
                }
            }
            (r.group.clone(), l)
        })
        .collect())
}

/// Rows (bucket, group) -> totals per group and a series per group, busiest group first.
fn shape(
    rows: Vec<db::rollups::Row>,
    labels: &HashMap<Group, GroupLabel>,
) -> (Vec<GroupTotals>, Vec<Series>) {
    let mut by_group: BTreeMap<Group, (Counts, Vec<Point>)> = BTreeMap::new();
    for r in rows {
        let e = by_group.entry(r.group).or_default();
        e.0.add(&r.counts);
        e.1.push(Point {
            t: ts(r.t),
            figures: Figures::from(&r.counts),
        });
    }
    let mut groups: Vec<_> = by_group.into_iter().collect();
    groups.sort_by(|a, b| b.1.0.requests.cmp(&a.1.0.requests).then(a.0.cmp(&b.0)));
    groups
        .into_iter()
        .map(|(g, (counts, points))| {
            let label = labels.get(&g).cloned().unwrap_or_default();
            (
                GroupTotals {
                    group: label.clone(),
                    figures: Figures::from(&counts),
                },
                Series {
                    group: label,
                    points,
                },
            )
        })
        .unzip()
}

async fn live(state: &AppState, services: &[String]) -> Result<Live> {
    let c = state.coord.live(services, Utc::now().timestamp()).await?;
    let key_ids: Vec<crate::coord::KeyRef> = {
        let snap = state.snapshot.load();
        services
            .iter()
            .filter_map(|s| snap.services.get(s))
            .flat_map(|s| s.keys.iter().map(|k| crate::coord::KeyRef::new(s.id, k.id)))
            .collect()
    };
    let in_flight = state
        .coord
        .live_states(&key_ids)
        .await?
        .iter()
        .map(|l| l.inflight as u64)
        .sum();
    Ok(Live {
        rpm: c.rpm,
        rpd: c.rpd,
        tpm: c.tpm,
        tpd: c.tpd,
        in_flight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: Option<&str>, to: Option<&str>, bucket: Option<&str>) -> StatsQuery {
        StatsQuery {
            service: None,
            group_by: None,
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            bucket: bucket.map(str::to_string),
        }
    }

    #[test]
    fn ranges_align_to_buckets_and_default_to_sixty_of_them() {
        let p = Params::parse(&q(None, None, Some("1h")), 10_000).unwrap();
        assert_eq!((p.from, p.to), (10_800 - 60 * 3600, 10_800));
        let p = Params::parse(&q(Some("61"), Some("1970-01-01T00:03:00Z"), None), 0).unwrap();
        assert_eq!((p.from, p.to, p.bucket), (60, 180, 60));
    }

    #[test]
    fn too_many_buckets_and_bad_values_name_their_parameter() {
        let err = |q: StatsQuery| match Params::parse(&q, 1_000_000) {
            Err(Error::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(q(Some("0"), Some("100000"), Some("1m"))).starts_with("from:"));
        assert!(err(q(None, None, Some("5m"))).starts_with("bucket:"));
        assert!(err(q(Some("yesterday"), None, None)).starts_with("from:"));
        assert!(err(q(Some("500"), Some("100"), None)).starts_with("from:"));
        let mut g = q(None, None, None);
        g.group_by = Some("tenant".into());
        assert!(err(g).starts_with("group_by:"));
    }
}
