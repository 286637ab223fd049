//! Upstream keys of a service: adding and importing (validated, deduplicated by keyed
//! fingerprint, encrypted), listing with live state, changing, testing and syncing them.
//! Secrets go in once and come out masked only; every write is audited.
use sea_orm::ActiveValue::Set;
use sea_orm::ConnectionTrait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::audit::{self, Change, Target};
use super::import::{self, ParsedKey};
use super::services::find as find_service;
use super::{Actor, Error, List, Page, Result, Role};
use crate::coord::{Fault, LiveState, now_ms};
use crate::crypto::mask;
use crate::db::{
    self,
    entity::{service, upstream_key},
};
use crate::domain::KeyStatus;
use crate::egress;
use crate::jobs::sync::KeySync;
use crate::jobs::validate::{self, KeyTest};
use crate::jobs::{self, Candidate};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: i64,
    /// Masked (`sk-ab...wxyz`); the full key is never returned.
    pub key: String,
    pub label: Option<String>,
    pub weight: i32,
    /// Relative price of this key (1 = list price); the `cost` strategy picks the lowest.
    pub cost_factor: f64,
    /// Live across replicas.
    pub status: KeyStatus,
    /// When a cooling key returns to rotation (RFC 3339).
    pub cooling_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Balance recorded for the key, in currency units (exact to 0.000001).
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub balance: Option<i64>,
    /// When the balance was last synced from the upstream's billing API (the attempt's time).
    pub balance_synced_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why that sync could not read the balance (null when it did; the balance is then kept).
    pub sync_error: Option<String>,
    /// Requests per minute this key accepts (unset = unlimited).
    pub rpm: Option<i32>,
    /// Tokens per minute this key accepts (unset = unlimited).
    pub tpm: Option<i32>,
    /// Requests holding a lease on this key right now, across replicas.
    pub in_flight: u32,
    pub consecutive_failures: u32,
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: Option<String>,
    /// When the key was last tested (`POST .../keys/{id}/test`, or the scheduled validation).
    pub validated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What that test found wrong (null when the key answered).
    pub validation_error: Option<String>,
    /// This key's own outbound proxy (overrides the service's), credentials masked.
    pub egress_proxy: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Upstream requests made with this key (every attempt), as last flushed to the database.
    pub requests: i64,
    /// Of those, the ones the upstream answered with success.
    pub successes: i64,
    /// `successes / requests` (null before the first request).
    pub success_rate: Option<f64>,
    /// Failed attempts by class.
    pub failures: KeyFailures,
    /// Failed attempts by the HTTP status the upstream answered (`"429": 3`); `"0"` counts
    /// attempts that got no answer.
    pub failures_by_status: std::collections::BTreeMap<String, i64>,
    /// Prompt plus completion tokens of this key's requests.
    pub tokens: i64,
    /// What this key's requests cost, in currency units (exact to 0.000001).
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub cost: i64,
}

/// A key's failed attempts: the upstream answered 4xx or 5xx, or never answered (connect error,
/// timeout).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyFailures {
    #[serde(rename = "4xx")]
    pub client: i64,
    #[serde(rename = "5xx")]
    pub server: i64,
    pub network: i64,
}

fn view(
    state: &AppState,
    k: upstream_key::Model,
    live: &LiveState,
    codes: Option<&std::collections::BTreeMap<u16, i64>>,
    now: i64,
) -> KeyView {
    let masked = state
        .cipher
        .decrypt(&k.secret)
        .map(|s| mask(&s))
        .unwrap_or_else(|_| "(undecryptable)".into());
    let status = live.key_status(&k.status, now);
    let cooling_until = (live.until > now)
        .then(|| chrono::DateTime::from_timestamp_millis(live.until))
        .flatten();
    KeyView {
        id: k.id,
        key: masked,
        label: k.label,
        weight: k.weight,
        cost_factor: k.cost_factor,
        status,
        cooling_until,
        balance: k.balance_micros,
        balance_synced_at: k.balance_synced_at,
        sync_error: k.sync_error,
        rpm: k.rpm,
        tpm: k.tpm,
        in_flight: live.inflight,
        consecutive_failures: live.fails,
        last_used_at: k.last_used_at,
        last_error: k.last_error,
        validated_at: k.validated_at,
        validation_error: k.validation_error,
        egress_proxy: k.egress_proxy.as_deref().map(|p| {
            egress::open_proxy(&state.cipher, p)
                .map(|u| egress::mask_proxy(&u))
                .unwrap_or_else(|_| "(undecryptable)".into())
        }),
        created_at: k.created_at,
        requests: k.requests_total,
        successes: k.successes_total,
        success_rate: (k.requests_total > 0)
            .then(|| k.successes_total as f64 / k.requests_total as f64),
        failures: KeyFailures {
            client: k.failures_4xx,
            server: k.failures_5xx,
            network: k.failures_network,
        },
        failures_by_status: codes
            .map(|c| c.iter().map(|(s, n)| (s.to_string(), *n)).collect())
            .unwrap_or_default(),
        tokens: k.tokens_total,
        cost: k.cost_total_micros,
    }
}

async fn views(state: &AppState, rows: Vec<upstream_key::Model>) -> Result<Vec<KeyView>> {
    let ids: Vec<i64> = rows.iter().map(|k| k.id).collect();
    let refs: Vec<crate::coord::KeyRef> = rows
        .iter()
        .map(|k| crate::coord::KeyRef::new(k.service_id, k.id))
        .collect();
    let live = state.coord.live_states(&refs).await?;
    let codes = crate::db::keys::status_counts(&state.db, &ids).await?;
    let now = now_ms();
    Ok(rows
        .into_iter()
        .zip(live.iter())
        .map(|(k, l)| {
            let c = codes.get(&k.id);
            view(state, k, l, c, now)
        })
        .collect())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct StatusFilter {
    /// Only keys in these statuses, comma-separated (`invalid,cooling`); every key when absent.
    #[param(
        pattern = "^ *(active|cooling|exhausted|invalid|disabled) *(, *(active|cooling|exhausted|invalid|disabled) *)*$"
    )]
    pub status: Option<String>,
}

impl StatusFilter {
    pub fn statuses(&self) -> Result<Vec<KeyStatus>> {
        let Some(list) = self.status.as_deref() else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(|s| {
                s.trim()
                    .parse::<KeyStatus>()
                    .map_err(|e| Error::BadRequest(format!("status: {e}")))
            })
            .collect()
    }
}

/// No `Debug`: it carries upstream keys.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"keys": [{"key": "sk-example-1", "label": "primary", "weight": 2}, {"key": "sk-example-2", "balance": 10}]}))]
pub struct AddKeys {
    /// Each item: `{"key", "label"?, "weight"?, "balance"?, "egress_proxy"?}` (or a bare
    /// string); `egress_proxy` is this key's own outbound proxy, as the service's.
    #[schema(value_type = Vec<KeyItem>)]
    pub keys: Vec<serde_json::Value>,
}

/// One key to add, as `AddKeys` documents it (the import parser reads the JSON itself, to report
/// every bad item at once rather than the first).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum KeyItem {
    Bare(KeySecret),
    Full {
        key: KeySecret,
        label: Option<String>,
        /// Share of the `weighted` strategy's picks (default 1).
        #[schema(minimum = 1, maximum = 1000)]
        weight: Option<i32>,
        /// In currency units.
        #[schema(minimum = 0, maximum = 1_000_000_000)]
        balance: Option<f64>,
        /// This key's own outbound proxy, as the service's `egress_proxy`.
        egress_proxy: Option<String>,
    },
}

/// An upstream key: 4 to 1024 visible ASCII characters (it travels in a header), no `,` or `;`.
#[derive(Serialize, ToSchema)]
#[schema(pattern = "^[!-+\\--:<-~]{4,1024}$", example = "sk-example-1")]
#[allow(dead_code)]
struct KeySecret(String);

#[derive(Debug, Serialize, ToSchema)]
pub struct AddKeysResult {
    pub added: usize,
    /// Keys already in the service (or repeated in the request): reported, not re-added.
    pub duplicates: usize,
    /// Always empty on success: a request with any bad item is refused whole (400). In a dry
    /// run, every bad line or item, each naming where it is (`line 3: ...`, `keys[2]: ...`).
    pub errors: Vec<String>,
    /// True when nothing was written (`?dry_run=true`): `added` and `duplicates` say what an
    /// import of the same body would do (none is added while any line is bad).
    pub dry_run: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct ImportOptions {
    /// Check the body and report what an import would do, without writing anything: bad lines
    /// come back in `errors` with status 200 instead of a 400.
    pub dry_run: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchKey {
    pub label: Option<String>,
    /// Share of the `weighted` strategy's picks, 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<i32>,
    /// Relative price of this key, 0 to 1000 (1 = list price, 0.5 = half): the `cost`
    /// strategy picks the lowest.
    #[schema(minimum = 0, maximum = 1000)]
    pub cost_factor: Option<f64>,
    /// In currency units (a decimal string is accepted too); stored exactly, to 0.000001.
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub balance: Option<i64>,
    /// Requests per minute for this key (0 = unlimited).
    #[schema(minimum = 0)]
    pub rpm: Option<i32>,
    /// Tokens per minute for this key (0 = unlimited).
    #[schema(minimum = 0)]
    pub tpm: Option<i32>,
    /// `active` (re-enable, clears cooldowns and failure counts) or `disabled`; the other
    /// statuses are the gateway's to set.
    pub status: Option<KeyStatus>,
    /// This key's own outbound proxy (`http://`, `https://`, `socks5://`, `socks5h://`, with
    /// `user:password@` if needed), overriding the service's. Stored encrypted, shown masked;
    /// `null` or `""` clears it (the service's proxy applies again).
    #[serde(default, deserialize_with = "crate::control::services::clearable")]
    #[schema(value_type = Option<String>)]
    pub egress_proxy: Option<Option<SecretString>>,
}

pub async fn list(
    state: &AppState,
    user: &Actor,
    slug: &str,
    page: &Page,
) -> Result<List<KeyView>> {
    let svc = find_service(state, user, slug).await?;
    let limit = page.limit()?;
    let rows = db::keys::list(&state.db, svc.id, page.after()?, limit).await?;
    let last = rows.last().map(|k| k.id);
    Ok(List::page(views(state, rows).await?, last, limit))
}

async fn find_key<C: ConnectionTrait>(
    db: &C,
    svc: &service::Model,
    id: i64,
) -> Result<upstream_key::Model> {
    db::keys::by_id(db, svc.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("key {id} not found in '{}'", svc.slug)))
}

/// At most this many masked keys are named in an import's audit record (the counts are exact).
const AUDITED_KEYS: usize = 100;

async fn store(
    state: &AppState,
    user: &Actor,
    svc: &service::Model,
    action: &'static str,
    keys: Vec<ParsedKey>,
) -> Result<AddKeysResult> {
    // The SSRF guard on each key's proxy (the import parser checked its form only).
    for (i, k) in keys.iter().enumerate() {
        if let Some(p) = &k.egress_proxy {
            egress::check_proxy(&state.egress, p)
                .map_err(|m| Error::BadRequest(format!("keys[{i}].egress_proxy: {m}")))?;
        }
    }
    let masked: Vec<String> = keys
        .iter()
        .take(AUDITED_KEYS)
        .map(|k| mask(&k.key))
        .collect();
    let submitted = keys.len();
    let new: Vec<db::keys::NewKey> = keys
        .into_iter()
        .map(|k| db::keys::NewKey {
            secret_enc: state.cipher.encrypt(&k.key),
            fingerprint: state.cipher.fingerprint(&k.key),
            label: k.label,
            weight: k.weight,
            balance_micros: k.balance_micros,
            egress_proxy_enc: k
                .egress_proxy
                .as_deref()
                .map(|p| egress::seal_proxy(&state.cipher, p)),
        })
        .collect();
    let txn = db::begin_write(&state.db).await?;
    let (added, duplicates) = db::keys::insert_new(&txn, svc.id, new).await?;
    let result = AddKeysResult {
        added,
        duplicates,
        errors: vec![],
        dry_run: false,
    };
    audit::record(
        &txn,
        user,
        action,
        target(svc),
        Change::action(&serde_json::json!({
            "added": added,
            "duplicates": duplicates,
            "submitted": submitted,
            "keys": masked,
        })),
    )
    .await?;
    txn.commit().await?;
    if added > 0 {
        state.config_changed().await?;
    }
    Ok(result)
}

/// The audit target of a write to a service's keys: the service (a key id is added where one
/// key is meant).
fn target(svc: &service::Model) -> Target {
    Target::new("keys", &svc.slug, Some(svc.tenant_id))
}

fn key_target(svc: &service::Model, id: i64) -> Target {
    Target::new("key", format!("{}/{id}", svc.slug), Some(svc.tenant_id))
}

fn bad_lines(errs: Vec<String>) -> Error {
    const SHOWN: usize = 50;
    let more = errs.len().saturating_sub(SHOWN);
    let mut detail = format!(
        "nothing imported; fix these and retry: {}",
        errs[..errs.len().min(SHOWN)].join("; ")
    );
    if more > 0 {
        detail.push_str(&format!("; and {more} more"));
    }
    Error::BadRequest(detail)
}

/// Adds keys given as JSON items (`{"key", "label"?, ...}` or bare strings); any bad item
/// refuses the whole request.
pub async fn add(
    state: &AppState,
    user: &Actor,
    slug: &str,
    req: AddKeys,
) -> Result<AddKeysResult> {
    user.require(Role::Operator)?;
    let svc = find_service(state, user, slug).await?;
    let keys = import::from_json_items(req.keys).map_err(bad_lines)?;
    store(state, user, &svc, "add", keys).await
}

/// Imports a file's keys (JSON, CSV `key,balance` or plain text): all or nothing. A dry run
/// reports every bad line and the counts of new and duplicate keys, and writes nothing.
pub async fn import(
    state: &AppState,
    user: &Actor,
    slug: &str,
    format: import::Format,
    bytes: &[u8],
    dry_run: bool,
) -> Result<AddKeysResult> {
    user.require(Role::Operator)?;
    let svc = find_service(state, user, slug).await?;
    let parsed = import::parse(format, bytes);
    if dry_run {
        let (added, duplicates, errors) = match parsed {
            Ok(keys) => {
                let fps: Vec<String> = keys
                    .iter()
                    .map(|k| state.cipher.fingerprint(&k.key))
                    .collect();
                let (new, dup) = db::keys::count_new(&state.db, svc.id, &fps).await?;
                (new, dup, Vec::new())
            }
            Err(errs) => (0, 0, errs),
        };
        return Ok(AddKeysResult {
            added,
            duplicates,
            errors,
            dry_run: true,
        });
    }
    let keys = parsed.map_err(bad_lines)?;
    store(state, user, &svc, "import", keys).await
}

/// A service's keys as CSV, masked: `id,key,label,status,balance,weight` (balance in currency
/// units, exact decimal text), all of them or those in the given statuses.
pub async fn export_csv(
    state: &AppState,
    user: &Actor,
    slug: &str,
    filter: &StatusFilter,
) -> Result<Vec<u8>> {
    let only = filter.statuses()?;
    let svc = find_service(state, user, slug).await?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(["id", "key", "label", "status", "balance", "weight"]);
    let mut after = None;
    loop {
        let rows = db::keys::list(&state.db, svc.id, after, 1000).await?;
        let Some(last) = rows.last().map(|k| k.id) else {
            break;
        };
        for k in views(state, rows).await? {
            if !only.is_empty() && !only.contains(&k.status) {
                continue;
            }
            let _ = w.write_record([
                k.id.to_string(),
                k.key,
                k.label.unwrap_or_default(),
                k.status.to_string(),
                k.balance
                    .map(crate::money::format_units)
                    .unwrap_or_default(),
                k.weight.to_string(),
            ]);
        }
        after = Some(last);
    }
    w.into_inner()
        .map_err(|e| Error::Internal(anyhow::anyhow!("csv: {e}")))
}

/// Changes a key's label, weight, balance, limits, proxy or status (`active` re-enables it).
pub async fn update(
    state: &AppState,
    user: &Actor,
    slug: &str,
    id: i64,
    req: PatchKey,
) -> Result<KeyView> {
    user.require(Role::Operator)?;
    let svc = find_service(state, user, slug).await?;
    let k = find_key(&state.db, &svc, id).await?;
    let before = views(state, vec![k.clone()]).await?.remove(0);
    // A top-up brings back a key that ran out (unless this request disables it).
    let topped_up = k.status == KeyStatus::Exhausted.as_str()
        && req.balance.is_some_and(|b| b > 0)
        && req.status.is_none();
    let mut am: upstream_key::ActiveModel = k.into();
    if let Some(l) = req.label {
        am.label = Set(Some(l).filter(|l| !l.trim().is_empty()));
    }
    if let Some(w) = req.weight {
        if !(1..=1000).contains(&w) {
            return Err(Error::BadRequest("weight: must be 1 to 1000".into()));
        }
        am.weight = Set(w);
    }
    if let Some(c) = req.cost_factor {
        if !(0.0..=1000.0).contains(&c) {
            return Err(Error::BadRequest("cost_factor: must be 0 to 1000".into()));
        }
        am.cost_factor = Set(c);
    }
    // Range and sign were checked when the body was read (`money::units_opt`).
    if let Some(b) = req.balance {
        am.balance_micros = Set(Some(b));
    }
    let balance_changed = req.balance.is_some();
    for (field, v) in [("rpm", req.rpm), ("tpm", req.tpm)] {
        if v.is_some_and(|v| v < 0) {
            return Err(Error::BadRequest(format!(
                "{field}: must be 0 (unlimited) or more"
            )));
        }
    }
    if let Some(v) = req.rpm {
        am.rpm = Set((v > 0).then_some(v));
    }
    if let Some(v) = req.tpm {
        am.tpm = Set((v > 0).then_some(v));
    }
    if let Some(p) = req.egress_proxy {
        let sealed = p
            .map(|url| {
                egress::check_proxy(&state.egress, url.expose_secret())
                    .map_err(|m| Error::BadRequest(format!("egress_proxy: {m}")))?;
                Ok::<_, Error>(egress::seal_proxy(&state.cipher, url.expose_secret()))
            })
            .transpose()?;
        am.egress_proxy = Set(sealed);
    }
    let mut clear = false;
    if let Some(s) = req.status.or(topped_up.then_some(KeyStatus::Active)) {
        match s {
            KeyStatus::Active => {
                clear = true;
                db::keys::reactivate(&mut am);
                // Before the row is written: a fault still queued must not undo it.
                state.events.key_reset(id);
            }
            KeyStatus::Disabled => am.status = Set(s.as_str().into()),
            other => {
                return Err(Error::BadRequest(format!(
                    "status: '{other}' is set by the gateway; use active or disabled"
                )));
            }
        }
    }
    let txn = db::begin_write(&state.db).await?;
    let k = db::keys::update(&txn, am).await?;
    let after = views(state, vec![k.clone()]).await?.remove(0);
    audit::record(
        &txn,
        user,
        "update",
        key_target(&svc, id),
        Change::updated(&before, &after),
    )
    .await?;
    txn.commit().await?;
    if clear {
        state
            .coord
            .report(svc.id, k.id, None, Fault::Clear, 0)
            .await?;
    }
    if balance_changed {
        state
            .coord
            .set_balance(
                crate::coord::KeyRef::new(k.service_id, k.id),
                k.balance_micros,
            )
            .await?;
    }
    state.config_changed().await?;
    // Read again: the live state was cleared after the row was written.
    let mut v = views(state, vec![k]).await?;
    Ok(v.remove(0))
}

pub async fn delete(state: &AppState, user: &Actor, slug: &str, id: i64) -> Result<()> {
    user.require(Role::Operator)?;
    let svc = find_service(state, user, slug).await?;
    let k = find_key(&state.db, &svc, id).await?;
    let before = views(state, vec![k]).await?.remove(0);
    let txn = db::begin_write(&state.db).await?;
    if !db::keys::delete(&txn, svc.id, id).await? {
        return Err(Error::NotFound(format!("key {id} not found in '{slug}'")));
    }
    audit::record(
        &txn,
        user,
        "delete",
        key_target(&svc, id),
        Change::deleted(&before),
    )
    .await?;
    txn.commit().await?;
    state
        .coord
        .report(svc.id, id, None, Fault::Clear, 0)
        .await?;
    state.config_changed().await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchAction {
    /// Back in rotation, as `PATCH` with `status: active` does: durable status, failure record
    /// and live health (cooldown, failure count) cleared.
    Enable,
    /// Out of rotation until enabled.
    Disable,
    Delete,
}

/// At most this many ids in one batch.
const MAX_BATCH_IDS: usize = 10_000;

/// The keys a batch applies to: by `ids` or by `status`, exactly one of them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBatch {
    pub action: BatchAction,
    /// These keys of the service (at most 10000); an id that is not one refuses the batch.
    #[schema(max_items = 10000)]
    pub ids: Option<Vec<i64>>,
    /// Every key of the service whose status, as the key list shows it, is this one.
    pub status: Option<KeyStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBatchResult {
    pub action: BatchAction,
    /// Keys the batch applied to.
    pub matched: usize,
    /// Of those, the keys whose status it changed (every one for `delete`).
    pub changed: usize,
    /// Ids of the keys it applied to, in id order.
    pub ids: Vec<i64>,
}

/// The keys a batch names, with their status now. Unknown ids refuse the whole batch.
async fn batch_keys(
    state: &AppState,
    svc_id: i64,
    slug: &str,
    req: &KeyBatch,
) -> Result<Vec<Candidate>> {
    match (&req.ids, req.status) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_BATCH_IDS {
                return Err(Error::BadRequest(format!(
                    "ids: give 1 to {MAX_BATCH_IDS} key ids"
                )));
            }
            let mut ids = ids.clone();
            ids.sort_unstable();
            ids.dedup();
            let rows = db::keys::by_ids(&state.db, svc_id, &ids).await?;
            if rows.len() != ids.len() {
                let found: std::collections::HashSet<i64> = rows.iter().map(|k| k.id).collect();
                let missing: Vec<String> = ids
                    .iter()
                    .filter(|i| !found.contains(i))
                    .take(20)
                    .map(i64::to_string)
                    .collect();
                return Err(Error::BadRequest(format!(
                    "ids: not keys of '{slug}': {}; nothing changed",
                    missing.join(", ")
                )));
            }
            Ok(jobs::with_status(state, rows).await?)
        }
        (None, Some(status)) => Ok(jobs::keys_in(state, svc_id, &[status]).await?),
        _ => Err(Error::BadRequest(
            "ids, status: give exactly one of them".into(),
        )),
    }
}

/// Enables, disables or deletes many keys at once: those with the given ids, or every key in a
/// status.
pub async fn batch(
    state: &AppState,
    user: &Actor,
    slug: &str,
    req: KeyBatch,
) -> Result<KeyBatchResult> {
    user.require(Role::Operator)?;
    let svc = find_service(state, user, slug).await?;
    let keys = batch_keys(state, svc.id, slug, &req).await?;
    let ids: Vec<i64> = keys.iter().map(|c| c.key.id).collect();
    let target = match req.action {
        BatchAction::Enable => Some(KeyStatus::Active),
        BatchAction::Disable => Some(KeyStatus::Disabled),
        BatchAction::Delete => None,
    };
    let changed = keys
        .iter()
        .filter(|c| target.is_none_or(|t| c.status != t))
        .count();
    let result = KeyBatchResult {
        action: req.action,
        matched: ids.len(),
        changed,
        ids,
    };
    if !result.ids.is_empty() {
        apply_batch(state, user, &svc, &result).await?;
        state.config_changed().await?;
    }
    Ok(result)
}

/// Writes a batch: the rows in one transaction, then the live state, as the single-key `PATCH`
/// and `DELETE` do it.
async fn apply_batch(
    state: &AppState,
    user: &Actor,
    svc: &service::Model,
    batch: &KeyBatchResult,
) -> Result<()> {
    let (svc_id, ids) = (svc.id, &batch.ids[..]);
    let txn = db::begin_write(&state.db).await?;
    let action = match batch.action {
        BatchAction::Enable => "enable",
        BatchAction::Disable => "disable",
        BatchAction::Delete => "delete_many",
    };
    audit::record(&txn, user, action, target(svc), Change::action(batch)).await?;
    match batch.action {
        BatchAction::Enable => {
            let mut am = upstream_key::ActiveModel::default();
            db::keys::reactivate(&mut am);
            // Before the rows are written: faults still queued must not undo it.
            for id in ids {
                state.events.key_reset(*id);
            }
            db::keys::update_many(&txn, svc_id, ids, am).await?;
        }
        BatchAction::Disable => {
            let am = upstream_key::ActiveModel {
                status: Set(KeyStatus::Disabled.as_str().into()),
                ..Default::default()
            };
            db::keys::update_many(&txn, svc_id, ids, am).await?;
            txn.commit().await?;
            return Ok(());
        }
        BatchAction::Delete => db::keys::delete_many(&txn, svc_id, ids).await?,
    }
    txn.commit().await?;
    for id in ids {
        state
            .coord
            .report(svc_id, *id, None, Fault::Clear, 0)
            .await?;
    }
    Ok(())
}

impl From<jobs::Error> for Error {
    fn from(e: jobs::Error) -> Self {
        match e {
            jobs::Error::Db(e) => e.into(),
            jobs::Error::Coord(e) => e.into(),
            other => Error::Internal(other.into()),
        }
    }
}

/// Tests keys now (one by id, or every key of the service in the given statuses), with a cheap
/// upstream request each: status, latency and error. A key out of rotation that answers comes
/// back; one the upstream refuses goes out; a 429, 5xx or timeout changes nothing. The request,
/// its reading and what it records live in `jobs::validate`, shared with the scheduled
/// validation.
pub async fn test(
    state: &AppState,
    user: &Actor,
    slug: &str,
    which: Which<'_>,
) -> Result<Vec<KeyTest>> {
    user.require(Role::Operator)?;
    let svc = find_service(state, user, slug).await?;
    let keys = selected(state, &svc, which).await?;
    let tested = validate::test_keys(state, &svc, keys, None).await?;
    audit_outcome(state, user, &svc, "test", &tested).await?;
    Ok(tested)
}

/// Reads keys' balances from the upstream's billing API now (one by id, or every key). A key
/// below the service's `min_balance` goes out as `exhausted`; an exhausted key topped up comes
/// back. The adapters live in `billing::sync`, what a result does in `jobs::sync`.
pub async fn sync(
    state: &AppState,
    user: &Actor,
    slug: &str,
    which: Which<'_>,
) -> Result<Vec<KeySync>> {
    user.require(Role::Operator)?;
    let svc = find_service(state, user, slug).await?;
    let settings = jobs::sync::settings_of(&svc).ok_or_else(|| {
        Error::Conflict(format!(
            "balance_sync: service '{}' has no balance sync settings; set them with PATCH /admin/services/{}",
            svc.slug, svc.slug
        ))
    })?;
    let keys = selected(state, &svc, which).await?;
    let synced = jobs::sync::sync_keys(state, &svc, &settings, keys, None).await?;
    audit_outcome(state, user, &svc, "sync", &synced).await?;
    Ok(synced)
}

/// The keys a test or sync is for.
pub enum Which<'a> {
    One(i64),
    /// Every key in these statuses (all keys when empty).
    InStatus(&'a [KeyStatus]),
}

async fn selected(
    state: &AppState,
    svc: &service::Model,
    which: Which<'_>,
) -> Result<Vec<Candidate>> {
    Ok(match which {
        Which::One(id) => {
            let k = find_key(&state.db, svc, id).await?;
            jobs::with_status(state, vec![k]).await?
        }
        Which::InStatus(only) => jobs::keys_in(state, svc.id, only).await?,
    })
}

/// A test or sync has written what it found (key statuses, balances) as it went, key by key, as
/// the scheduled jobs do; its audit record follows, with each key's outcome.
async fn audit_outcome(
    state: &AppState,
    user: &Actor,
    svc: &service::Model,
    action: &'static str,
    summary: &[impl Serialize],
) -> Result<()> {
    let shown = &summary[..summary.len().min(1000)];
    audit::record(
        &state.db,
        user,
        action,
        target(svc),
        Change::action(&serde_json::json!({"keys": summary.len(), "results": shown})),
    )
    .await
}
