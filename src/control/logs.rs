//! The request log read back, filtered and paged newest first, one row by id, and
//! a filtered range exported as CSV or NDJSON. Any logged-in user may read; tenants see only
//! their services' rows.
use std::collections::{HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Actor, Error, Result};
use crate::crypto::mask;
use crate::db::entity::request_log;
use crate::db::logs::{LogCursor, LogFilter, StatusMatch};
use crate::state::AppState;

/// Rows per database read while exporting: the export never holds more than this in memory.
const EXPORT_CHUNK: u64 = 1000;

/// One request as logged. Keys are masked; cost is in currency units.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogView {
    pub id: uuid::Uuid,
    pub ts: DateTime<Utc>,
    pub service: String,
    /// For a router slug: the target slug that served the request (or was tried last).
    pub target: Option<String>,
    pub access_key_id: Option<i64>,
    pub upstream_key_id: Option<i64>,
    /// The upstream key that answered, masked (null when none was reached or it was deleted).
    pub key: Option<String>,
    /// Every upstream key tried, in order.
    pub tried: Vec<TriedKey>,
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    pub path: String,
    pub status: i32,
    pub error_kind: Option<String>,
    pub attempts: i32,
    pub latency_ms: i64,
    /// Time to first token (streamed responses).
    pub ttft_ms: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub cost: Option<i64>,
    pub streamed: bool,
    pub cancelled: bool,
    /// Token counts were estimated, not reported by the upstream.
    pub estimated: bool,
    pub client_format: Option<String>,
    pub upstream_format: Option<String>,
    /// The request body as captured (services with `capture`; cut and redacted). Only in
    /// `GET /admin/logs/{id}`, and only while the body retention keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// The answer's body as the client received it, captured the same way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TriedKey {
    pub key_id: i64,
    /// Masked (null when the key was deleted since).
    pub key: Option<String>,
}

/// `{"items": [...], "next_cursor": "..."}`
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub items: Vec<LogView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Filters of the request log; each one given narrows the rows.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Service slug.
    pub service: Option<String>,
    /// Access key id.
    #[param(value_type = Option<i64>)]
    pub access_key: Option<String>,
    /// Upstream key id.
    #[param(value_type = Option<i64>)]
    pub key: Option<String>,
    /// Model name, matching the client's or the upstream's.
    pub model: Option<String>,
    /// Model name sent upstream.
    pub upstream_model: Option<String>,
    /// Exact status (`429`) or a class (`4xx`).
    #[param(pattern = "^([1-5]xx|[1-5][0-9][0-9])$")]
    pub status: Option<String>,
    pub error_kind: Option<String>,
    /// `true` or `false`.
    #[param(value_type = Option<bool>)]
    pub streamed: Option<String>,
    /// `true` or `false`: token counts estimated rather than reported.
    #[param(value_type = Option<bool>)]
    pub estimated: Option<String>,
    /// Router target slug.
    pub target: Option<String>,
    /// Oldest time included, RFC 3339.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub from: Option<String>,
    /// Newest time, excluded, RFC 3339; not before `from`.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub to: Option<String>,
}

/// Paging of the log list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogPaging {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (default) or `ndjson`.
    #[param(value_type = Option<ExportFormat>, inline)]
    pub format: Option<String>,
}

fn bad(param: &str, why: &str) -> Error {
    Error::BadRequest(format!("{param}: {why}"))
}

fn parse_id(param: &str, v: &Option<String>) -> Result<Option<i64>> {
    v.as_deref()
        .map(|s| s.parse().map_err(|_| bad(param, "must be an integer id")))
        .transpose()
}

fn parse_bool(param: &str, v: &Option<String>) -> Result<Option<bool>> {
    v.as_deref()
        .map(|s| match s {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad(param, "must be true or false")),
        })
        .transpose()
}

fn parse_time(param: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>> {
    v.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad(param, "must be an RFC 3339 time (2026-11-22T10:00:00Z)"))
        })
        .transpose()
}

fn parse_status(v: &Option<String>) -> Result<Option<StatusMatch>> {
    let Some(s) = v.as_deref() else {
        return Ok(None);
    };
    let why = "must be a status (429) or a class (1xx to 5xx)";
    if let Some(k) = s.strip_suffix("xx") {
        return match k.as_bytes() {
            [d @ b'1'..=b'5'] => Ok(Some(StatusMatch::Class(i32::from(d - b'0')))),
            _ => Err(bad("status", why)),
        };
    }
    match s.parse::<i32>() {
        Ok(n @ 100..=599) => Ok(Some(StatusMatch::Exact(n))),
        _ => Err(bad("status", why)),
    }
}

impl LogQuery {
    fn filter(&self, user: &Actor) -> Result<LogFilter> {
        let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let f = LogFilter {
            tenant: user.tenant_scope(),
            service: text(&self.service),
            access_key_id: parse_id("access_key", &self.access_key)?,
            upstream_key_id: parse_id("key", &self.key)?,
            model: text(&self.model),
            upstream_model: text(&self.upstream_model),
            status: parse_status(&self.status)?,
            error_kind: text(&self.error_kind),
            streamed: parse_bool("streamed", &self.streamed)?,
            estimated: parse_bool("estimated", &self.estimated)?,
            target: text(&self.target),
            from: parse_time("from", &self.from)?,
            to: parse_time("to", &self.to)?,
        };
        if let (Some(from), Some(to)) = (f.from, f.to)
            && from > to
        {
            return Err(bad("from", "must not be after to"));
        }
        Ok(f)
    }
}

impl LogPaging {
    fn limit(&self) -> Result<u64> {
        match self.limit.as_deref().map(str::parse::<u64>) {
            None => Ok(50),
            Some(Ok(n @ 1..=500)) => Ok(n),
            Some(_) => Err(bad("limit", "must be between 1 and 500")),
        }
    }

    fn cursor(&self) -> Result<Option<LogCursor>> {
        self.cursor.as_deref().map(decode_cursor).transpose()
    }
}

/// The cursor is opaque to clients: base64 of the last row's exact timestamp and id.
fn encode_cursor(r: &request_log::Model) -> String {
    let ts = r.ts.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    URL_SAFE_NO_PAD.encode(format!("{ts}|{}", r.id))
}

fn decode_cursor(c: &str) -> Result<LogCursor> {
    let invalid = || bad("cursor", "not a cursor from this API");
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let (ts, id) = text.split_once('|').ok_or_else(invalid)?;
    Ok(LogCursor {
        ts: DateTime::parse_from_rfc3339(ts)
            .map_err(|_| invalid())?
            .with_timezone(&Utc),
        id: id.parse().map_err(|_| invalid())?,
    })
}

fn tried_ids(r: &request_log::Model) -> Vec<i64> {
    r.tried
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Masks the upstream keys the rows name, reading each key once.
async fn masked_keys(
    state: &AppState,
    rows: &[request_log::Model],
) -> Result<HashMap<i64, String>> {
    let ids: HashSet<i64> = rows
        .iter()
        .flat_map(|r| r.upstream_key_id.into_iter().chain(tried_ids(r)))
        .collect();
    let ids: Vec<i64> = ids.into_iter().collect();
    Ok(crate::db::keys::secrets_by_ids(&state.db, &ids)
        .await?
        .into_iter()
        .map(|(id, secret)| {
            let shown = state
                .cipher
                .decrypt(&secret)
                .map(|s| mask(&s))
                .unwrap_or_else(|_| "(undecryptable)".into());
            (id, shown)
        })
        .collect())
}

async fn views(state: &AppState, rows: Vec<request_log::Model>) -> Result<Vec<LogView>> {
    let keys = masked_keys(state, &rows).await?;
    Ok(rows.into_iter().map(|r| view(r, &keys)).collect())
}

fn view(r: request_log::Model, keys: &HashMap<i64, String>) -> LogView {
    let tried = tried_ids(&r)
        .into_iter()
        .map(|key_id| TriedKey {
            key_id,
            key: keys.get(&key_id).cloned(),
        })
        .collect();
    LogView {
        key: r.upstream_key_id.and_then(|k| keys.get(&k).cloned()),
        tried,
        id: r.id,
        ts: r.ts,
        service: r.service,
        target: r.target,
        access_key_id: r.access_key_id,
        upstream_key_id: r.upstream_key_id,
        model: r.model,
        upstream_model: r.upstream_model,
        path: r.path,
        status: r.status,
        error_kind: r.error_kind,
        attempts: r.attempts,
        latency_ms: r.latency_ms,
        ttft_ms: r.ttft_ms,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cache_read_tokens: r.cache_read_tokens,
        cache_write_tokens: r.cache_write_tokens,
        cost: r.cost_micros,
        streamed: r.streamed,
        cancelled: r.cancelled,
        estimated: r.estimated,
        client_format: r.client_format,
        upstream_format: r.upstream_format,
        request_body: None,
        response_body: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ExportFormat {
    Csv,
    Ndjson,
}

impl ExportFormat {
    pub fn parse(v: Option<&str>) -> Result<Self> {
        match v {
            None | Some("csv") => Ok(Self::Csv),
            Some("ndjson") => Ok(Self::Ndjson),
            Some(_) => Err(bad("format", "must be csv or ndjson")),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Ndjson => "ndjson",
        }
    }
}

const CSV_HEADER: [&str; 26] = [
    "id",
    "ts",
    "service",
    "target",
    "access_key_id",
    "upstream_key_id",
    "key",
    "tried",
    "model",
    "upstream_model",
    "path",
    "status",
    "error_kind",
    "attempts",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
    "streamed",
    "cancelled",
    "estimated",
    "client_format",
    "upstream_format",
];

fn csv_record(v: &LogView) -> [String; 26] {
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let num = |o: Option<i64>| o.map(|n| n.to_string()).unwrap_or_default();
    let tried: Vec<String> = v.tried.iter().map(|t| t.key_id.to_string()).collect();
    [
        v.id.to_string(),
        v.ts.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        v.service.clone(),
        opt(&v.target),
        num(v.access_key_id),
        num(v.upstream_key_id),
        opt(&v.key),
        tried.join(";"),
        opt(&v.model),
        opt(&v.upstream_model),
        v.path.clone(),
        v.status.to_string(),
        opt(&v.error_kind),
        v.attempts.to_string(),
        v.latency_ms.to_string(),
        num(v.ttft_ms),
        num(v.prompt_tokens),
        num(v.completion_tokens),
        num(v.cache_read_tokens),
        num(v.cache_write_tokens),
        v.cost.map(crate::money::format_units).unwrap_or_default(),
        v.streamed.to_string(),
        v.cancelled.to_string(),
        v.estimated.to_string(),
        opt(&v.client_format),
        opt(&v.upstream_format),
    ]
}

/// One chunk of export output: the views in `format`, the CSV header first when `header`.
fn encode(format: ExportFormat, views: &[LogView], header: bool) -> anyhow::Result<Bytes> {
    match format {
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            if header {
                w.write_record(CSV_HEADER)?;
            }
            for v in views {
                w.write_record(csv_record(v))?;
            }
            Ok(w.into_inner()
                .map_err(|e| anyhow::anyhow!("csv: {e}"))?
                .into())
        }
        ExportFormat::Ndjson => {
            let mut out = Vec::new();
            for v in views {
                serde_json::to_writer(&mut out, v)?;
                out.push(b'\n');
            }
            Ok(out.into())
        }
    }
}

/// Where an export stands between two chunks.
pub struct Export {
    state: AppState,
    filter: LogFilter,
    format: ExportFormat,
    after: Option<LogCursor>,
    started: bool,
    done: bool,
}

impl Export {
    pub fn format(&self) -> ExportFormat {
        self.format
    }

    pub fn new(state: AppState, filter: LogFilter, format: ExportFormat) -> Self {
        Self {
            state,
            filter,
            format,
            after: None,
            started: false,
            done: false,
        }
    }

    /// The next chunk of output, or None at the end. A failed read ends the body early (the
    /// status line is already sent); the client sees a truncated transfer, the cause is logged.
    pub async fn next(&mut self) -> Option<std::result::Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let out = self.read_chunk().await;
        if let Err(e) = &out {
            tracing::error!(error = ?e, "log export failed mid-stream");
            self.done = true;
        }
        Some(out.map_err(std::io::Error::other))
    }

    async fn read_chunk(&mut self) -> anyhow::Result<Bytes> {
        let rows =
            crate::db::logs::page(&self.state.db, &self.filter, self.after, EXPORT_CHUNK).await?;
        self.done = (rows.len() as u64) < EXPORT_CHUNK;
        self.after = rows.last().map(|r| LogCursor { ts: r.ts, id: r.id });
        let views = views(&self.state, rows)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let header = !self.started;
        self.started = true;
        encode(self.format, &views, header)
    }
}

/// One page of the filtered log, newest first.
pub async fn list(
    state: &AppState,
    user: &Actor,
    q: LogQuery,
    paging: LogPaging,
) -> Result<LogPage> {
    let filter = q.filter(user)?;
    let limit = paging.limit()?;
    let rows = crate::db::logs::page(&state.db, &filter, paging.cursor()?, limit).await?;
    let next_cursor = (rows.len() as u64 == limit)
        .then(|| rows.last().map(encode_cursor))
        .flatten();
    Ok(LogPage {
        items: views(state, rows).await?,
        next_cursor,
    })
}

/// One row by id, with its captured bodies if any.
pub async fn get(state: &AppState, user: &Actor, id: &str) -> Result<LogView> {
    let not_found = || Error::NotFound(format!("log '{id}' not found"));
    let uuid = id.parse().map_err(|_| not_found())?;
    let row = crate::db::logs::by_id(&state.db, user.tenant_scope(), uuid)
        .await?
        .ok_or_else(not_found)?;
    let mut v = views(state, vec![row]).await?.remove(0);
    if let Some(b) = crate::db::logs::bodies(&state.db, uuid).await? {
        v.request_body = b.request;
        v.response_body = b.response;
    }
    Ok(v)
}

/// An export of the filtered log: its format and the chunks to stream.
pub fn export(state: &AppState, user: &Actor, q: LogQuery, format: Option<&str>) -> Result<Export> {
    let format = ExportFormat::parse(format)?;
    let filter = q.filter(user)?;
    Ok(Export::new(state.clone(), filter, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_the_exact_timestamp_and_id() {
        let ts = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = uuid::Uuid::now_v7();
        let row = request_log::Model {
            id,
            ts,
            service: "s".into(),
            access_key_id: None,
            upstream_key_id: None,
            model: None,
            path: "/".into(),
            status: 200,
            attempts: 1,
            latency_ms: 1,
            ttft_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            cache_read_tokens: None,
            cache_write_tokens: None,
            cost_micros: None,
            error_kind: None,
            upstream_model: None,
            streamed: false,
            cancelled: false,
            estimated: false,
            client_format: None,
            upstream_format: None,
            tried: None,
            target: None,
        };
        assert_eq!(
            decode_cursor(&encode_cursor(&row)).unwrap(),
            LogCursor { ts, id }
        );
        assert!(decode_cursor("not-a-cursor").is_err());
    }

    #[test]
    fn status_accepts_an_exact_code_or_a_class_and_refuses_the_rest() {
        let p = |s: &str| parse_status(&Some(s.to_string()));
        assert_eq!(p("429").unwrap(), Some(StatusMatch::Exact(429)));
        assert_eq!(p("4xx").unwrap(), Some(StatusMatch::Class(4)));
        for bad in ["6xx", "+4xx", "42", "abc", "xx", "1000"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
