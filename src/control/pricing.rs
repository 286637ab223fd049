//! Pricing rules: prices per model glob, global or on one slug, over the built-in default table
//! (`src/billing/prices.json`), and `check`, which says what prices a model and why.
//!
//! Tenancy: a rule on a slug belongs to that slug's tenant; its operators write it. A global rule
//! (no slug) prices every tenant's traffic, so only an admin of no tenant writes one. Everyone
//! logged in reads the global rules and those on the slugs of their tenant.
use sea_orm::ActiveValue::Set;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::audit::{self, Change, Target};
use super::services::find as find_service;
use super::{Actor, Error, List, Page, Result, Role};
use crate::billing::pricing::{Price, Source};
use crate::db::{self, entity::pricing_rule};
use crate::events::Tokens;
use crate::money::Micros;
use crate::state::AppState;

/// Priorities a rule may take: room to order rules, small enough to read.
const PRIORITY: std::ops::RangeInclusive<i32> = -1000..=1000;
const MAX_PATTERN: usize = 200;

#[derive(Debug, Serialize, ToSchema)]
pub struct PricingRuleView {
    pub id: i64,
    /// Glob on the model name (`gpt-4o*`, `gemini-3-pro-*`).
    pub pattern: String,
    /// The slug this rule prices; null: every slug (a global rule).
    pub slug: Option<String>,
    pub priority: i32,
    /// Per 1M prompt tokens not read from or written to a cache, in currency units.
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub input_per_mtok: Micros,
    /// Per 1M completion tokens.
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub output_per_mtok: Micros,
    /// Per 1M tokens read from the prompt cache; null: priced as input.
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub cache_read_per_mtok: Option<Micros>,
    /// Per 1M tokens written to the prompt cache; null: priced as input.
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub cache_write_per_mtok: Option<Micros>,
    /// Per request, whatever its tokens.
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub per_request: Micros,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<pricing_rule::Model> for PricingRuleView {
    fn from(r: pricing_rule::Model) -> Self {
        Self {
            id: r.id,
            pattern: r.pattern,
            slug: r.slug,
            priority: r.priority,
            input_per_mtok: r.input_per_mtok_micros,
            output_per_mtok: r.output_per_mtok_micros,
            cache_read_per_mtok: r.cache_read_per_mtok_micros,
            cache_write_per_mtok: r.cache_write_per_mtok_micros,
            per_request: r.per_request_micros,
            created_at: r.created_at,
        }
    }
}

/// A rule as written: amounts are decimal currency units (`2.5`, or `"2.5"`), stored exactly to
/// 0.000001. At least one amount must be given; an absent per-token or per-request amount is 0,
/// an absent cache amount means "priced as input".
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PricingRuleBody {
    /// Glob on the model name: `*`, `?` and `[...]`, at most 200 characters.
    #[schema(min_length = 1, max_length = 200, example = "gpt-4o*")]
    pub pattern: String,
    /// -1000 to 1000 (default 0); the highest matching priority wins. On a tie a slug's own rule
    /// beats a global one, a stored rule beats the built-in table, then the more specific
    /// pattern (fewer wildcards, then longer) wins.
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: i32,
    /// An existing slug of your tenant; absent: every slug (admins of no tenant only).
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub input_per_mtok: Option<Micros>,
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub output_per_mtok: Option<Micros>,
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub cache_read_per_mtok: Option<Micros>,
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub cache_write_per_mtok: Option<Micros>,
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub per_request: Option<Micros>,
}

impl PricingRuleBody {
    /// Checks what needs no database, and fills `am` with every field (a full replace).
    fn apply(self, am: &mut pricing_rule::ActiveModel) -> Result<()> {
        if self.pattern.chars().count() > MAX_PATTERN {
            return Err(Error::BadRequest(format!(
                "pattern: at most {MAX_PATTERN} characters"
            )));
        }
        crate::proxy::models::compile(&self.pattern)
            .map_err(|e| Error::BadRequest(format!("pattern: {e}")))?;
        if !PRIORITY.contains(&self.priority) {
            return Err(Error::BadRequest(format!(
                "priority: must be {} to {}",
                PRIORITY.start(),
                PRIORITY.end()
            )));
        }
        let amounts = [
            self.input_per_mtok,
            self.output_per_mtok,
            self.cache_read_per_mtok,
            self.cache_write_per_mtok,
            self.per_request,
        ];
        if amounts.iter().all(Option::is_none) {
            return Err(Error::BadRequest(
                "input_per_mtok, output_per_mtok, cache_read_per_mtok, cache_write_per_mtok, \
                 per_request: a rule sets at least one price"
                    .into(),
            ));
        }
        am.pattern = Set(self.pattern);
        am.priority = Set(self.priority);
        am.slug = Set(self.slug);
        am.input_per_mtok_micros = Set(self.input_per_mtok.unwrap_or(0));
        am.output_per_mtok_micros = Set(self.output_per_mtok.unwrap_or(0));
        am.cache_read_per_mtok_micros = Set(self.cache_read_per_mtok);
        am.cache_write_per_mtok_micros = Set(self.cache_write_per_mtok);
        am.per_request_micros = Set(self.per_request.unwrap_or(0));
        Ok(())
    }
}

/// The slugs whose rules `user` sees besides the global ones; None: every rule (no tenant).
async fn visible_slugs(state: &AppState, user: &Actor) -> Result<Option<Vec<String>>> {
    match user.tenant_scope() {
        None => Ok(None),
        Some(t) => Ok(Some(db::services::slugs_of_tenant(&state.db, t).await?)),
    }
}

/// May `user` write a rule on `slug` (None: a global rule)? Only the role: that the slug is the
/// user's is checked where it is named (`check_slug`) or by the rule being visible at all.
fn may_write(user: &Actor, slug: Option<&str>) -> Result<()> {
    user.require(Role::Operator)?;
    if slug.is_none() && (user.role != Role::Admin || user.tenant_scope().is_some()) {
        return Err(Error::Forbidden(
            "a global pricing rule (no slug) prices every tenant's traffic: only an admin of no \
             tenant may write one; give a slug",
        ));
    }
    Ok(())
}

/// A slug named in a body must be an existing service the user sees.
async fn check_slug(state: &AppState, user: &Actor, slug: Option<&str>) -> Result<()> {
    let Some(slug) = slug else { return Ok(()) };
    match find_service(state, user, slug).await {
        Ok(_) => Ok(()),
        Err(Error::NotFound(_)) => Err(Error::BadRequest(format!("slug: no service '{slug}'"))),
        Err(e) => Err(e),
    }
}

async fn visible_rule(state: &AppState, user: &Actor, id: i64) -> Result<pricing_rule::Model> {
    let slugs = visible_slugs(state, user).await?;
    db::pricing::by_id(&state.db, slugs.as_deref(), id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("pricing rule {id} not found")))
}

/// The global rules and those on the actor's tenant's slugs.
pub async fn list(state: &AppState, user: &Actor, page: &Page) -> Result<List<PricingRuleView>> {
    let limit = page.limit()?;
    let slugs = visible_slugs(state, user).await?;
    let rows = db::pricing::list(&state.db, slugs.as_deref(), page.after()?, limit).await?;
    let last = rows.last().map(|r| r.id);
    Ok(List::page(
        rows.into_iter().map(Into::into).collect(),
        last,
        limit,
    ))
}

/// A new rule; it applies at once, on every replica, over the built-in defaults.
pub async fn create(
    state: &AppState,
    user: &Actor,
    req: PricingRuleBody,
) -> Result<PricingRuleView> {
    may_write(user, req.slug.as_deref())?;
    check_slug(state, user, req.slug.as_deref()).await?;
    let mut am = pricing_rule::ActiveModel::default();
    req.apply(&mut am)?;
    let txn = db::begin_write(&state.db).await?;
    let view: PricingRuleView = db::pricing::insert(&txn, am).await?.into();
    audit::record(
        &txn,
        user,
        "create",
        target(state, &view).await?,
        Change::created(&view),
    )
    .await?;
    txn.commit().await?;
    state.config_changed().await?;
    Ok(view)
}

/// A rule is its slug's tenant's; a global rule is no tenant's.
async fn target(state: &AppState, r: &PricingRuleView) -> Result<Target> {
    let tenant = match &r.slug {
        Some(slug) => db::services::by_slug(&state.db, slug)
            .await?
            .map(|s| s.tenant_id),
        None => None,
    };
    Ok(Target::new("pricing_rule", r.id, tenant))
}

/// Replaces a rule whole (an absent amount becomes 0, or "priced as input" for the cache
/// amounts; an absent slug makes it global).
pub async fn replace(
    state: &AppState,
    user: &Actor,
    id: i64,
    req: PricingRuleBody,
) -> Result<PricingRuleView> {
    let existing = visible_rule(state, user, id).await?;
    may_write(user, existing.slug.as_deref())?;
    may_write(user, req.slug.as_deref())?;
    check_slug(state, user, req.slug.as_deref()).await?;
    let before = PricingRuleView::from(existing.clone());
    let mut am: pricing_rule::ActiveModel = existing.into();
    req.apply(&mut am)?;
    let txn = db::begin_write(&state.db).await?;
    let after: PricingRuleView = db::pricing::update(&txn, am).await?.into();
    audit::record(
        &txn,
        user,
        "update",
        target(state, &after).await?,
        Change::updated(&before, &after),
    )
    .await?;
    txn.commit().await?;
    state.config_changed().await?;
    Ok(after)
}

/// Deletes a rule; the model falls back to the next rule, or the built-in default.
pub async fn delete(state: &AppState, user: &Actor, id: i64) -> Result<()> {
    let existing = visible_rule(state, user, id).await?;
    may_write(user, existing.slug.as_deref())?;
    let before = PricingRuleView::from(existing);
    let target = target(state, &before).await?;
    let txn = db::begin_write(&state.db).await?;
    if !db::pricing::delete(&txn, id).await? {
        return Err(Error::NotFound(format!("pricing rule {id} not found")));
    }
    audit::record(&txn, user, "delete", target, Change::deleted(&before)).await?;
    txn.commit().await?;
    state.config_changed().await?;
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CheckQuery {
    /// The model name to price, e.g. `gpt-4o-mini`.
    #[param(required = true, value_type = String, pattern = "\\S")]
    pub model: Option<String>,
    /// Price it as this slug would (its own rules first); absent: global rules and defaults only.
    pub slug: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    /// A stored pricing rule (`rule_id`).
    Rule,
    /// The built-in default table (`src/billing/prices.json`).
    Default,
}

/// Which price applies to a model, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceCheck {
    pub model: String,
    /// The slug asked about; null: none.
    pub slug: Option<String>,
    pub source: PriceSource,
    /// The stored rule's id (source `rule`).
    pub rule_id: Option<i64>,
    /// The pattern that matched.
    pub pattern: String,
    /// The matched rule's slug; null: a global rule or a default.
    pub rule_slug: Option<String>,
    pub priority: i32,
    /// When the built-in table's prices were taken (source `default`).
    pub prices_taken: Option<String>,
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub input_per_mtok: Micros,
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub output_per_mtok: Micros,
    /// Null: cache reads are priced as input.
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub cache_read_per_mtok: Option<Micros>,
    /// Null: cache writes are priced as input.
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub cache_write_per_mtok: Option<Micros>,
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub per_request: Micros,
    /// What one request with 1M input and 1M output tokens would cost at this price.
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub example_cost_1m_in_1m_out: Micros,
}

/// Which price the gateway applies to a model: the stored rule or default entry that matched,
/// its prices, and an example cost. Not found when nothing prices the model.
pub async fn check(state: &AppState, user: &Actor, q: CheckQuery) -> Result<PriceCheck> {
    let model = q
        .model
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| Error::BadRequest("model: required".into()))?;
    if let Some(slug) = &q.slug {
        find_service(state, user, slug).await?;
    }
    let snap = state.snapshot.load();
    // No service has an empty slug, so without one only global rules and defaults match.
    let rule = snap
        .prices
        .find(q.slug.as_deref().unwrap_or(""), &model)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "model: no pricing rule or default price matches '{model}'{}",
                q.slug
                    .as_deref()
                    .map(|s| format!(" on '{s}'"))
                    .unwrap_or_default()
            ))
        })?;
    let (source, rule_id, prices_taken) = match &rule.source {
        Source::Rule(id) => (PriceSource::Rule, Some(*id), None),
        Source::Default(_) => (
            PriceSource::Default,
            None,
            Some(crate::billing::defaults::taken().to_string()),
        ),
    };
    let p: Price = rule.price;
    Ok(PriceCheck {
        model,
        slug: q.slug,
        source,
        rule_id,
        pattern: rule.pattern.clone(),
        rule_slug: rule.slug.clone(),
        priority: rule.priority,
        prices_taken,
        input_per_mtok: p.input_per_mtok,
        output_per_mtok: p.output_per_mtok,
        cache_read_per_mtok: p.cache_read_per_mtok,
        cache_write_per_mtok: p.cache_write_per_mtok,
        per_request: p.per_request,
        example_cost_1m_in_1m_out: p.cost(&Tokens {
            prompt: 1_000_000,
            completion: 1_000_000,
            ..Default::default()
        }),
    })
}
