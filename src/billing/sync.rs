//! Remote balance sync: a key's balance read from its upstream's billing API, in integer
//! micro-units (`crate::money`). A service's `balance_sync` settings name an adapter; each
//! adapter is one or two requests carrying the key, and a parser of the answer. What a result
//! does to the key (status, live balance) is `jobs::sync`'s business.
//!
//! Where each adapter asks (`{base}` is the service's base URL, `{origin}` its scheme, host and
//! port), and what it reads:
//!
//! | adapter          | request                                    | balance                              |
//! |------------------|--------------------------------------------|--------------------------------------|
//! | `openai_billing` | `GET {origin}/dashboard/billing/subscription` then `GET {origin}/dashboard/billing/usage?start_date=<first of this month>&end_date=<tomorrow>` (UTC) | `hard_limit_usd` − `total_usage` / 100 (usage is in cents), USD |
//! | `openrouter`     | `GET {base}/key`, then `GET {base}/credits` for a key without a limit | `data.limit_remaining`, else `data.total_credits` − `data.total_usage`, USD |
//! | `siliconflow`    | `GET {base}/user/info`                     | `data.totalBalance` (a decimal string) |
//! | `deepseek`       | `GET {origin}/user/balance`                | `balance_infos[0].total_balance` (a decimal string) and its `currency` |
//! | `moonshot`       | `GET {base}/users/me/balance`              | `data.available_balance`             |
//! | `custom`         | `method` (default GET) `{origin}{path}`    | `remaining_pointer`, else `total_pointer` − `used_pointer` (0 when absent); `currency_pointer` |
//!
//! Why origin or base: OpenAI's legacy billing paths sit outside the `/v1` segment a base URL
//! carries (OpenAI and the one-api / new-api resellers that keep this API alive serve them at the
//! root; new-api serves `/v1/dashboard/...` too), and so does DeepSeek's `/user/balance`
//! (`https://api.deepseek.com` and `.../v1` are both common base URLs). OpenRouter's, SiliconFlow's
//! and Moonshot's paths are under the version segment the base URL already has (`/api/v1`, `/v1`).
//! A custom path is absolute on the upstream's host, so it can reach anything there.
//!
//! OpenRouter's `/credits` needs a management key on today's API, while `/key` answers any key
//! with its own limit: a pool of prepaid keys has limits, so `/key` comes first.
//!
//! Requests go as the key's traffic does: the service's auth rule and extra headers, the key's
//! egress client, at most the service's `request_timeout_ms` for the whole exchange. Amounts are
//! read from their decimal text (JSON numbers through the shortest text of their double), never
//! multiplied as floats, so `"0.24"` is exactly 240000 micros. An answer whose top level carries
//! an `error` object is an error even with status 200 (one-api / new-api answer so). Errors name
//! the request and what was wrong, never the key.
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::SyncAdapter;
use crate::money::{Micros, format_units, parse_units};

/// A service's balance sync settings (`services.balance_sync`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceSync {
    pub adapter: SyncAdapter,
    /// Seconds between scheduled syncs of the service's keys, each run ±10% at random so that
    /// services set alike do not all ask at once; null: on demand only.
    #[serde(default)]
    pub interval_s: Option<u32>,
    /// In currency units: a key whose synced balance is below this (or not above zero) goes out
    /// of rotation as `exhausted`, and one at or above it comes back (default 0).
    #[serde(default, with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub min_balance: Micros,
    /// `custom` only: `GET` (default) or `POST` (sent without a body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<SyncMethod>,
    /// `custom` only: the path on the upstream's host, from `/` (a query may follow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `custom` only: JSON pointers (RFC 6901, e.g. `/data/quota/total`) to amounts in currency
    /// units, as numbers or decimal strings. `remaining_pointer` wins; otherwise the balance is
    /// total minus used (used counts 0 when it has no pointer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_pointer: Option<String>,
    /// `custom` only: JSON pointer to the amount used (with `total_pointer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_pointer: Option<String>,
    /// `custom` only: JSON pointer to the amount left; wins over total and used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_pointer: Option<String>,
    /// `custom` only: JSON pointer to the currency's code, shown with each sync result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency_pointer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum SyncMethod {
    #[default]
    Get,
    Post,
}

/// The longest interval the API accepts (a day).
pub const MAX_INTERVAL_S: u32 = 86_400;

impl BalanceSync {
    /// Checks settings from the API; `min_interval_s` is the configured floor
    /// (`jobs.sync_min_interval_s`). The message names the field (`balance_sync.path: ...`).
    pub fn check(&self, min_interval_s: u32) -> Result<(), String> {
        let field = |f: &str, m: &str| format!("balance_sync.{f}: {m}");
        let min = min_interval_s.max(1);
        if self
            .interval_s
            .is_some_and(|s| !(min..=MAX_INTERVAL_S).contains(&s))
        {
            return Err(field(
                "interval_s",
                &format!("must be {min} to {MAX_INTERVAL_S}, or null to sync on demand only"),
            ));
        }
        if self.min_balance < 0 {
            return Err(field("min_balance", "must not be negative"));
        }
        let pointers = [
            ("total_pointer", &self.total_pointer),
            ("used_pointer", &self.used_pointer),
            ("remaining_pointer", &self.remaining_pointer),
            ("currency_pointer", &self.currency_pointer),
        ];
        if self.adapter != SyncAdapter::Custom {
            let extra = [
                ("method", self.method.is_some()),
                ("path", self.path.is_some()),
            ]
            .into_iter()
            .chain(pointers.iter().map(|(n, p)| (*n, p.is_some())))
            .find(|(_, set)| *set);
            return match extra {
                Some((name, _)) => Err(field(
                    name,
                    &format!(
                        "only the custom adapter takes one; '{}' knows its own request",
                        self.adapter
                    ),
                )),
                None => Ok(()),
            };
        }
        match self.path.as_deref() {
            None => return Err(field("path", "required by the custom adapter")),
            Some(p) => check_path(p).map_err(|m| field("path", m))?,
        }
        for (name, p) in pointers {
            if let Some(p) = p
                && !valid_pointer(p)
            {
                return Err(field(
                    name,
                    "not a JSON pointer (empty, or `/`-separated segments with `~0` and `~1` \
                     escapes, e.g. `/data/balance`)",
                ));
            }
        }
        if self.remaining_pointer.is_none() && self.total_pointer.is_none() {
            return Err(field(
                "remaining_pointer",
                "the custom adapter needs remaining_pointer, or total_pointer (and used_pointer)",
            ));
        }
        if self.used_pointer.is_some() && self.total_pointer.is_none() {
            return Err(field("used_pointer", "needs total_pointer"));
        }
        Ok(())
    }

    /// The column's value.
    pub fn to_db(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn from_db(v: &Value) -> Result<Self, String> {
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }

    /// Whether a synced balance takes a key out: below the minimum, or nothing left at all.
    pub fn too_low(&self, balance: Micros) -> bool {
        balance <= 0 || balance < self.min_balance
    }
}

/// Serde for a settings field that can be cleared: absent = unchanged, `null` = off.
pub fn patch<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn check_path(p: &str) -> Result<(), &'static str> {
    // `//host/...` would leave the upstream's host.
    if !p.starts_with('/') || p.starts_with("//") {
        return Err("must start with a single /");
    }
    if p.contains('#') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces, control characters or #");
    }
    Ok(())
}

/// RFC 6901: empty (the whole document), or `/`-separated segments where `~` is `~0` or `~1`.
fn valid_pointer(p: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    let b = p.as_bytes();
    b[0] == b'/'
        && b.iter()
            .enumerate()
            .all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1')))
}

/// What a sync read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub balance_micros: Micros,
    /// ISO code when the upstream says (or the adapter knows) it.
    pub currency: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the key is not a valid header value")]
    Header,
    #[error("egress: {0}")]
    Egress(String),
    #[error("the base URL has no origin")]
    BaseUrl,
    #[error("no answer from the billing API within {ms} ms")]
    Timeout { ms: u128 },
    #[error("cannot connect for {path}")]
    Connect { path: String },
    #[error("{path} request failed")]
    Request { path: String },
    #[error("{path} answered {status}{detail}")]
    Status {
        path: String,
        status: u16,
        /// `: <the upstream's message>`, the key masked out, or empty.
        detail: String,
    },
    #[error("{path} answered an error: {message}")]
    Upstream { path: String, message: String },
    #[error("{path} did not answer JSON")]
    NotJson { path: String },
    #[error("{adapter} answer: {what}")]
    Answer { adapter: &'static str, what: String },
}

impl SyncError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Header | Self::Egress(_) | Self::BaseUrl => "setup",
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } | Self::Request { .. } => "connect",
            Self::Status { .. } | Self::Upstream { .. } => "refused",
            Self::NotJson { .. } | Self::Answer { .. } => "answer",
        }
    }
}

/// One key's way to its upstream's billing API.
pub struct Call<'a> {
    pub client: &'a reqwest::Client,
    /// The SSRF guard, for URLs with a literal address (names meet it in the client's resolver).
    pub guard: &'a crate::egress::Guard,
    /// Without a trailing slash.
    pub base_url: &'a str,
    /// The key's auth header and the service's extra headers.
    pub headers: HeaderMap,
    /// For the whole sync of the key.
    pub timeout: Duration,
    /// Masked out of any upstream message an error repeats.
    pub secret: &'a str,
}

/// Reads the key's balance with the service's adapter.
pub async fn read(s: &BalanceSync, call: &Call<'_>) -> Result<Reading, SyncError> {
    tokio::time::timeout(call.timeout, read_within(s, call))
        .await
        .unwrap_or(Err(SyncError::Timeout {
            ms: call.timeout.as_millis(),
        }))
}

async fn read_within(s: &BalanceSync, call: &Call<'_>) -> Result<Reading, SyncError> {
    let base = call.base_url;
    let origin = url::Url::parse(base)
        .ok()
        .map(|u| u.origin())
        .filter(|o| o.is_tuple())
        .ok_or(SyncError::BaseUrl)?
        .ascii_serialization();
    let answer = |adapter: SyncAdapter| {
        move |what: String| SyncError::Answer {
            adapter: adapter.as_str(),
            what,
        }
    };
    let get = Method::GET;
    match s.adapter {
        SyncAdapter::OpenaiBilling => {
            let sub = call
                .json(&get, &format!("{origin}/dashboard/billing/subscription"))
                .await?;
            let (start, end) = usage_window(chrono::Utc::now().date_naive());
            let usage = call
                .json(
                    &get,
                    &format!("{origin}/dashboard/billing/usage?start_date={start}&end_date={end}"),
                )
                .await?;
            openai_billing(&sub, &usage).map_err(answer(s.adapter))
        }
        SyncAdapter::Openrouter => {
            let key = call.json(&get, &format!("{base}/key")).await?;
            match openrouter_key(&key).map_err(answer(s.adapter))? {
                Some(r) => Ok(r),
                None => {
                    let credits = call.json(&get, &format!("{base}/credits")).await?;
                    openrouter_credits(&credits).map_err(answer(s.adapter))
                }
            }
        }
        SyncAdapter::Siliconflow => {
            siliconflow(&call.json(&get, &format!("{base}/user/info")).await?)
                .map_err(answer(s.adapter))
        }
        SyncAdapter::Deepseek => {
            deepseek(&call.json(&get, &format!("{origin}/user/balance")).await?)
                .map_err(answer(s.adapter))
        }
        SyncAdapter::Moonshot => {
            moonshot(&call.json(&get, &format!("{base}/users/me/balance")).await?)
                .map_err(answer(s.adapter))
        }
        SyncAdapter::Custom => {
            let method = match s.method.unwrap_or_default() {
                SyncMethod::Get => Method::GET,
                SyncMethod::Post => Method::POST,
            };
            let path = s.path.as_deref().unwrap_or("/");
            custom(&call.json(&method, &format!("{origin}{path}")).await?, s)
                .map_err(answer(s.adapter))
        }
    }
}

/// The largest billing answer read (they are a few hundred bytes).
const MAX_ANSWER: usize = 1 << 20;

impl Call<'_> {
    async fn json(&self, method: &Method, url: &str) -> Result<Value, SyncError> {
        let url = self
            .guard
            .url(url)
            .map_err(|e| SyncError::Egress(e.to_string()))?;
        let path = url.path().to_string();
        let resp = self
            .client
            .request(method.clone(), url)
            .headers(self.headers.clone())
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(|e| {
                if let Some(r) = crate::egress::ssrf::refusal(&e) {
                    SyncError::Egress(format!("upstream address refused: {r}"))
                } else if e.is_connect() {
                    SyncError::Connect { path: path.clone() }
                } else {
                    SyncError::Request { path: path.clone() }
                }
            })?;
        let status = resp.status();
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|_| SyncError::Request { path: path.clone() })?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER {
                return Err(SyncError::NotJson { path });
            }
        }
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let message = parsed
            .as_ref()
            .and_then(error_message)
            .map(|m| self.redact(&m));
        if !status.is_success() {
            return Err(SyncError::Status {
                path,
                status: status.as_u16(),
                detail: message.map(|m| format!(": {m}")).unwrap_or_default(),
            });
        }
        if let Some(message) = message {
            return Err(SyncError::Upstream { path, message });
        }
        parsed.ok_or(SyncError::NotJson { path })
    }

    /// The upstream's message with the key masked, short enough for a column and a log line.
    fn redact(&self, message: &str) -> String {
        let shown = if self.secret.is_empty() {
            message.to_string()
        } else {
            message.replace(self.secret, &crate::crypto::mask(self.secret))
        };
        shown.chars().take(200).collect()
    }
}

/// An error an answer carries: `{"error": {"message": ...}}` (OpenAI and its resellers, whatever
/// the status) or `{"error": "..."}`. A null, false or empty `error` is no error.
fn error_message(v: &Value) -> Option<String> {
    match v.get("error")? {
        Value::Object(o) => Some(
            o.get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string(),
        ),
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// OpenAI's usage window: its hard limit is monthly, so the month so far (the end is exclusive).
fn usage_window(today: chrono::NaiveDate) -> (String, String) {
    use chrono::Datelike;
    let start = today.with_day(1).unwrap_or(today);
    let end = today.succ_opt().unwrap_or(today);
    (
        start.format("%Y-%m-%d").to_string(),
        end.format("%Y-%m-%d").to_string(),
    )
}

/// The decimal text of an amount: a JSON number (its shortest text, never an exponent) or a
/// string holding one.
fn decimal_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            // Rust prints a double's shortest round-trip digits without an exponent.
            (_, _, Some(f)) => f.to_string(),
            _ => return None,
        }),
        Value::String(s) => {
            let t = s.trim();
            let plain = t
                .trim_start_matches(['-', '+'])
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.');
            if plain {
                Some(t.to_string())
            } else {
                // `"1e3"` and the like.
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f.to_string())
            }
        }
        _ => None,
    }
}

/// The amount at `pointer`, in currency units.
fn units_at(doc: &Value, pointer: &str) -> Result<Micros, String> {
    let v = doc
        .pointer(pointer)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("no amount at {}", shown(pointer)))?;
    let text = decimal_text(v).ok_or_else(|| format!("{} is not an amount", shown(pointer)))?;
    parse_units(&text).map_err(|e| format!("{}: {e}", shown(pointer)))
}

/// The amount at `pointer`, in cents: the decimal point moves two places in the text, so nothing
/// is rounded before `parse_units`.
fn cents_at(doc: &Value, pointer: &str) -> Result<Micros, String> {
    let v = doc
        .pointer(pointer)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("no amount at {}", shown(pointer)))?;
    let text = decimal_text(v)
        .and_then(|t| cents_to_units(&t))
        .ok_or_else(|| format!("{} is not an amount", shown(pointer)))?;
    parse_units(&text).map_err(|e| format!("{}: {e}", shown(pointer)))
}

/// `"1234.5"` (cents) -> `"12.345"` (units).
fn cents_to_units(t: &str) -> Option<String> {
    let (sign, body) = match t.strip_prefix('-') {
        Some(b) => ("-", b),
        None => ("", t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let int = format!("{int:0>3}");
    let (whole, cents) = int.split_at(int.len() - 2);
    Some(format!("{sign}{whole}.{cents}{frac}"))
}

/// A pointer as an error shows it: `data.totalBalance` reads better than `/data/totalBalance`.
fn shown(pointer: &str) -> String {
    let s = pointer.trim_start_matches('/').replace('/', ".");
    if s.is_empty() { "the answer".into() } else { s }
}

fn usd(balance_micros: Micros) -> Reading {
    Reading {
        balance_micros,
        currency: Some("USD".into()),
    }
}

fn difference(total: Micros, used: Micros) -> Result<Micros, String> {
    total.checked_sub(used).ok_or_else(|| {
        format!(
            "{} minus {} overflows",
            format_units(total),
            format_units(used)
        )
    })
}

/// `hard_limit_usd` of the subscription minus `total_usage` (cents) of the usage answer.
pub fn openai_billing(subscription: &Value, usage: &Value) -> Result<Reading, String> {
    let limit = units_at(subscription, "/hard_limit_usd")?;
    let used = cents_at(usage, "/total_usage")?;
    difference(limit, used).map(usd)
}

/// `data.limit_remaining` of `/key`; None when the key has no limit (the account's credits
/// are its balance then).
pub fn openrouter_key(key: &Value) -> Result<Option<Reading>, String> {
    let data = key
        .get("data")
        .ok_or_else(|| "no data object".to_string())?;
    match data.get("limit_remaining") {
        None | Some(Value::Null) => Ok(None),
        Some(_) => units_at(key, "/data/limit_remaining").map(|b| Some(usd(b))),
    }
}

/// `data.total_credits` minus `data.total_usage` of `/credits`.
pub fn openrouter_credits(credits: &Value) -> Result<Reading, String> {
    let total = units_at(credits, "/data/total_credits")?;
    let used = units_at(credits, "/data/total_usage")?;
    difference(total, used).map(usd)
}

/// `data.totalBalance` of `/user/info` (gift and charged balance together).
pub fn siliconflow(info: &Value) -> Result<Reading, String> {
    Ok(Reading {
        balance_micros: units_at(info, "/data/totalBalance")?,
        currency: None,
    })
}

/// The first entry of `balance_infos` (an account has one per currency it was charged in).
pub fn deepseek(balance: &Value) -> Result<Reading, String> {
    Ok(Reading {
        balance_micros: units_at(balance, "/balance_infos/0/total_balance")?,
        currency: balance
            .pointer("/balance_infos/0/currency")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// `data.available_balance` (cash and vouchers; the currency follows the platform, CNY on
/// `.cn`, USD on `.ai`, and the answer does not say).
pub fn moonshot(balance: &Value) -> Result<Reading, String> {
    Ok(Reading {
        balance_micros: units_at(balance, "/data/available_balance")?,
        currency: None,
    })
}

/// The configured pointers: remaining wins; else total minus used (0 without a pointer).
pub fn custom(answer: &Value, s: &BalanceSync) -> Result<Reading, String> {
    let balance_micros = match (&s.remaining_pointer, &s.total_pointer) {
        (Some(r), _) => units_at(answer, r)?,
        (None, Some(t)) => {
            let used = match &s.used_pointer {
                Some(u) => units_at(answer, u)?,
                None => 0,
            };
            difference(units_at(answer, t)?, used)?
        }
        (None, None) => return Err("no remaining_pointer or total_pointer is set".into()),
    };
    let currency = match &s.currency_pointer {
        Some(p) => answer
            .pointer(p)
            .and_then(Value::as_str)
            .map(|c| c.trim().chars().take(16).collect()),
        None => None,
    };
    Ok(Reading {
        balance_micros,
        currency,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(v: Value) -> BalanceSync {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn openai_billing_subtracts_usage_in_cents_from_the_hard_limit() {
        let sub = json!({"object": "billing_subscription", "has_payment_method": true,
            "soft_limit_usd": 100.0, "hard_limit_usd": 120.5, "system_hard_limit_usd": 120.5,
            "access_until": 0});
        let usage = json!({"object": "list", "total_usage": 1234.5678});
        let r = openai_billing(&sub, &usage).unwrap();
        // 120.5 - 12.345678
        assert_eq!(r.balance_micros, 108_154_322);
        assert_eq!(r.currency.as_deref(), Some("USD"));
        let r = openai_billing(&json!({"hard_limit_usd": 5}), &json!({"total_usage": 0})).unwrap();
        assert_eq!(r.balance_micros, 5_000_000);
        let e = openai_billing(&json!({}), &usage).unwrap_err();
        assert!(e.contains("hard_limit_usd"), "{e}");
        let e = openai_billing(&sub, &json!({"total_usage": "lots"})).unwrap_err();
        assert!(e.contains("total_usage"), "{e}");
    }

    #[test]
    fn cents_move_the_decimal_point_without_rounding() {
        assert_eq!(cents_to_units("1234.5").as_deref(), Some("12.345"));
        assert_eq!(cents_to_units("7").as_deref(), Some("0.07"));
        assert_eq!(cents_to_units("-12").as_deref(), Some("-0.12"));
        assert_eq!(cents_to_units(".5").as_deref(), Some("0.005"));
        assert_eq!(cents_to_units("1e3"), None);
        assert_eq!(cents_at(&json!({"c": 0.01}), "/c"), Ok(100));
        assert_eq!(cents_at(&json!({"c": "1e3"}), "/c"), Ok(10_000_000));
    }

    #[test]
    fn openrouter_reads_the_key_limit_or_falls_back_to_credits() {
        let key = json!({"data": {"label": "sk-or-v1-au7...890", "limit": 100,
            "limit_remaining": 74.5, "usage": 25.5, "is_free_tier": false}});
        assert_eq!(openrouter_key(&key).unwrap(), Some(usd(74_500_000)));
        let unlimited = json!({"data": {"limit": null, "limit_remaining": null, "usage": 3}});
        assert_eq!(openrouter_key(&unlimited).unwrap(), None);
        assert!(openrouter_key(&json!({})).is_err());
        let credits = json!({"data": {"total_credits": 100.5, "total_usage": 25.75}});
        assert_eq!(openrouter_credits(&credits).unwrap(), usd(74_750_000));
    }

    #[test]
    fn siliconflow_reads_the_total_balance_string() {
        let info = json!({"code": 20000, "message": "OK", "status": true, "data": {
            "id": "u1", "balance": "0.88", "chargeBalance": "88.00", "totalBalance": "88.88",
            "status": "normal"}});
        assert_eq!(siliconflow(&info).unwrap().balance_micros, 88_880_000);
        let e = siliconflow(&json!({"code": 30001, "data": null})).unwrap_err();
        assert!(e.contains("data.totalBalance"), "{e}");
    }

    #[test]
    fn deepseek_reads_the_first_balance_and_its_currency() {
        let b = json!({"is_available": true, "balance_infos": [
            {"currency": "CNY", "total_balance": "110.00", "granted_balance": "10.00",
             "topped_up_balance": "100.00"}]});
        let r = deepseek(&b).unwrap();
        assert_eq!(r.balance_micros, 110_000_000);
        assert_eq!(r.currency.as_deref(), Some("CNY"));
        assert!(deepseek(&json!({"is_available": false, "balance_infos": []})).is_err());
    }

    #[test]
    fn moonshot_reads_the_available_balance() {
        let b = json!({"code": 0, "data": {"available_balance": 49.58894,
            "voucher_balance": 46.58893, "cash_balance": 3.00001}, "scode": "0x0", "status": true});
        assert_eq!(moonshot(&b).unwrap().balance_micros, 49_588_940);
    }

    #[test]
    fn custom_pointers_prefer_remaining_then_total_minus_used() {
        let answer = json!({"wallet": {"total": "10", "used": 2.25, "left": "7.75"},
            "unit": "CNY"});
        let mut s = settings(json!({"adapter": "custom", "path": "/wallet",
            "total_pointer": "/wallet/total", "used_pointer": "/wallet/used",
            "currency_pointer": "/unit"}));
        let r = custom(&answer, &s).unwrap();
        assert_eq!(r.balance_micros, 7_750_000);
        assert_eq!(r.currency.as_deref(), Some("CNY"));
        s.remaining_pointer = Some("/wallet/left".into());
        s.total_pointer = Some("/wallet/missing".into());
        assert_eq!(custom(&answer, &s).unwrap().balance_micros, 7_750_000);
        s.remaining_pointer = Some("/wallet/nope".into());
        let e = custom(&answer, &s).unwrap_err();
        assert!(e.contains("wallet.nope"), "{e}");
    }

    #[test]
    fn settings_are_checked_field_by_field() {
        let ok = settings(json!({"adapter": "custom", "path": "/api/balance?unit=usd",
            "remaining_pointer": "/data/a~1b", "interval_s": 300, "min_balance": 1.5}));
        assert_eq!(ok.check(60), Ok(()));
        assert_eq!(ok.min_balance, 1_500_000);
        for (v, field) in [
            (
                json!({"adapter": "deepseek", "interval_s": 30}),
                "interval_s",
            ),
            (json!({"adapter": "deepseek", "path": "/x"}), "path"),
            (
                json!({"adapter": "moonshot", "remaining_pointer": "/x"}),
                "remaining_pointer",
            ),
            (
                json!({"adapter": "custom", "remaining_pointer": "/x"}),
                "path",
            ),
            (
                json!({"adapter": "custom", "path": "balance", "remaining_pointer": "/x"}),
                "path",
            ),
            (
                json!({"adapter": "custom", "path": "//evil/x", "remaining_pointer": "/x"}),
                "path",
            ),
            (
                json!({"adapter": "custom", "path": "/x"}),
                "remaining_pointer",
            ),
            (
                json!({"adapter": "custom", "path": "/x", "remaining_pointer": "data"}),
                "remaining_pointer",
            ),
            (
                json!({"adapter": "custom", "path": "/x", "remaining_pointer": "/a~2"}),
                "remaining_pointer",
            ),
            (
                json!({"adapter": "custom", "path": "/x", "remaining_pointer": "/a", "used_pointer": "/u"}),
                "used_pointer",
            ),
        ] {
            let e = settings(v.clone()).check(60).unwrap_err();
            assert!(e.starts_with(&format!("balance_sync.{field}:")), "{v}: {e}");
        }
        let e = serde_json::from_value::<BalanceSync>(json!({"adapter": "paypal"})).unwrap_err();
        assert!(e.to_string().contains("openai_billing"), "{e}");
        assert_eq!(BalanceSync::from_db(&ok.to_db()), Ok(ok));
    }

    #[test]
    fn a_balance_below_the_minimum_or_at_zero_is_too_low() {
        let s = settings(json!({"adapter": "deepseek", "min_balance": 1}));
        assert!(s.too_low(999_999));
        assert!(!s.too_low(1_000_000));
        let s = settings(json!({"adapter": "deepseek"}));
        assert!(s.too_low(0) && s.too_low(-1) && !s.too_low(1));
    }

    #[test]
    fn an_error_object_is_an_error_whatever_the_status() {
        assert_eq!(
            error_message(&json!({"error": {"message": "quota lookup failed", "type": "x"}})),
            Some("quota lookup failed".into())
        );
        assert_eq!(error_message(&json!({"error": null, "data": 1})), None);
        assert_eq!(error_message(&json!({"error": ""})), None);
        assert_eq!(error_message(&json!([1])), None);
    }

    #[test]
    fn openai_usage_covers_the_month_so_far() {
        let d = chrono::NaiveDate::from_ymd_opt(2026, 2, 28).unwrap();
        assert_eq!(
            usage_window(d),
            ("2026-02-01".to_string(), "2026-03-01".to_string())
        );
    }
}
