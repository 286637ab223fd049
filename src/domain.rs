//! Closed sets of the domain as enums: service kind, key-choice strategy, key status, admin role and
//! retry classes. Their serde names are the wire and database names (operators' scripts depend on
//! them, so they never change), and `ToSchema` puts the allowed values in the OpenAPI spec. Bad
//! values are refused where JSON is read, with serde's message naming the allowed ones. Database
//! columns stay text: `as_str` writes them and `parse` reads them.
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Declares `ALL` (wire names), `as_str`, `parse`, `Display` and `FromStr` from one table, so the
/// serde names and the text forms cannot drift apart (a unit test checks them against serde).
macro_rules! names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: [&'static str; [$($name),+].len()] = [$($name),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(Self::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s).ok_or_else(|| {
                    format!("'{s}' is not one of {}", Self::ALL.join(", "))
                })
            }
        }
    };
}

/// The upstream API a service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
    Gemini,
    Rest,
    /// Routes requests by model to other slugs (`routes`), with fallbacks; has no keys.
    Router,
}

names!(Kind { OpenAi => "openai", Anthropic => "anthropic", Gemini => "gemini", Rest => "rest", Router => "router" });

impl Kind {
    /// Upstream auth header and value template used when the service sets none.
    pub fn default_auth(self) -> (&'static str, &'static str) {
        match self {
            Self::OpenAi | Self::Rest | Self::Router => ("authorization", "Bearer {key}"),
            Self::Anthropic => ("x-api-key", "{key}"),
            Self::Gemini => ("x-goog-api-key", "{key}"),
        }
    }

    /// The defaults when the service sets none, given whether it is an Azure OpenAI service
    /// (an `openai` one with a deployment path or an API version): Azure takes its key in
    /// `api-key`, as is.
    pub fn auth_defaults(self, azure: bool) -> (&'static str, &'static str) {
        if azure && self == Self::OpenAi {
            ("api-key", "{key}")
        } else {
            self.default_auth()
        }
    }
}

/// Whether a service keeps a client's session on one key (so the provider's prompt cache hits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// Keys are picked by the strategy alone.
    #[default]
    None,
    /// A request naming a session (the `affinity_header`, `prompt_cache_key`, `user` or
    /// `metadata.user_id`) goes to the session's key while it is usable.
    Session,
}

names!(Affinity { None => "none", Session => "session" });

/// How an `openai` service serves the Responses API (`/v1/responses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponsesMode {
    /// Pass through; when the upstream answers 404 to `/responses`, translate to chat
    /// completions from then on (remembered per service on each replica).
    #[default]
    Auto,
    /// Always pass through to the upstream's `/responses`.
    Passthrough,
    /// Always translate to the upstream's `/chat/completions`.
    Translate,
}

names!(ResponsesMode {
    Auto => "auto",
    Passthrough => "passthrough",
    Translate => "translate",
});

/// How a service picks among its usable keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Exact rotation over the usable keys (the key list, when all are usable), shared by all
    /// replicas.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin: weights 1/2/3 over 600 requests give exactly 100/200/300.
    Weighted,
    /// Fewest requests in flight, then least recently used.
    LeastUsed,
    Random,
    /// Highest remaining balance first; keys whose balance is below the price are skipped.
    Balance,
    /// Power of two choices over each key's peak-EWMA latency times its requests in flight.
    Latency,
    /// A weighted draw by each key's weight times its recent success rate, squared.
    SuccessRate,
    /// The key with the lowest `cost_factor`; ties in round-robin order.
    Cost,
}

names!(Strategy {
    RoundRobin => "round_robin",
    Weighted => "weighted",
    LeastUsed => "least_used",
    Random => "random",
    Balance => "balance",
    Latency => "latency",
    SuccessRate => "success_rate",
    Cost => "cost",
});

impl Strategy {
    /// The name the Lua script uses.
    pub fn script_name(self) -> &'static str {
        match self {
            Self::RoundRobin => "rr",
            Self::Weighted => "weighted",
            Self::LeastUsed => "least_used",
            Self::Random => "random",
            Self::Balance => "balance",
            Self::Latency => "latency",
            Self::SuccessRate => "success_rate",
            Self::Cost => "cost",
        }
    }
}

/// An upstream key's status as the admin API shows it: `invalid`, `exhausted` and `disabled` are
/// durable (in the database); `cooling` is live (coordination store); `active` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Cooling,
    Exhausted,
    Invalid,
    Disabled,
}

names!(KeyStatus {
    Active => "active",
    Cooling => "cooling",
    Exhausted => "exhausted",
    Invalid => "invalid",
    Disabled => "disabled",
});

/// Where a service's keys learn their balance (`billing::sync`): an upstream billing API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncAdapter {
    /// OpenAI's legacy billing API, as one-api / new-api resellers still serve it:
    /// `/dashboard/billing/subscription` hard limit minus `/dashboard/billing/usage` total.
    OpenaiBilling,
    /// OpenRouter: the key's `limit_remaining`, or the account's credits for a key without a limit.
    Openrouter,
    /// SiliconFlow user info (`data.totalBalance`).
    Siliconflow,
    /// DeepSeek balance (`balance_infos[0].total_balance`).
    Deepseek,
    /// Moonshot / Kimi balance (`data.available_balance`).
    Moonshot,
    /// Any reseller: a method, a path and JSON pointers into its answer.
    Custom,
}

names!(SyncAdapter {
    OpenaiBilling => "openai_billing",
    Openrouter => "openrouter",
    Siliconflow => "siliconflow",
    Deepseek => "deepseek",
    Moonshot => "moonshot",
    Custom => "custom",
});

/// Admin API role. Ordered: admin > operator > viewer; viewers only read.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

names!(Role { Admin => "admin", Operator => "operator", Viewer => "viewer" });

/// A class of upstream failure after which a request is retried on another key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RetryClass {
    /// 401 and 403: the key is refused.
    Auth,
    /// 402, or an insufficient-quota answer: the key is out of money.
    Quota,
    /// 429.
    RateLimit,
    /// Any 5xx.
    ServerError,
    /// No response head within the request timeout.
    Timeout,
    /// The connection to the upstream failed.
    Connect,
}

names!(RetryClass {
    Auth => "auth",
    Quota => "quota",
    RateLimit => "rate_limit",
    ServerError => "server_error",
    Timeout => "timeout",
    Connect => "connect",
});

impl RetryClass {
    /// Whether an upstream answer with `status` falls in this class (by status alone).
    pub fn covers(self, status: u16) -> bool {
        match self {
            Self::Auth => status == 401 || status == 403,
            Self::Quota => status == 402,
            Self::RateLimit => status == 429,
            Self::ServerError => (500..=599).contains(&status),
            Self::Timeout | Self::Connect => false,
        }
    }
}

/// One item of a retry policy: a class, or one more upstream status (400-599) outside the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RetryRule {
    Class(RetryClass),
    Status(u16),
}

/// Which upstream failures are retried on another key.
///
/// Canonical form (responses, and the database column): an array of retry classes, then any extra
/// statuses, e.g. `["auth", "quota", "rate_limit", "server_error", "timeout", "connect"]` or
/// `["rate_limit", 408]`. Requests also accept the older comma-separated string of statuses
/// (`"401,402,403,429,5xx"`); such a string names no class, and because the data plane always
/// retried timeouts and connect errors before classes existed, it implies `timeout` and `connect`.
/// Statuses the string lists are folded into classes when they cover one whole: `5xx` ->
/// `server_error`, `429` -> `rate_limit`, `402` -> `quota`, `401` with `403` -> `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// Sorted, no repeats.
    classes: Vec<RetryClass>,
    /// Statuses outside every listed class; sorted, no repeats.
    statuses: Vec<u16>,
}

/// The item names a retry policy accepts, for error messages.
const RETRY_ITEMS: &str =
    "auth, quota, rate_limit, server_error, timeout, connect, 5xx or a status 400-599";

impl RetryOn {
    /// What a new service gets (the old default `401,402,403,429,5xx`, read as classes).
    pub fn default_policy() -> Self {
        Self::from_items(
            [
                RetryClass::Auth,
                RetryClass::Quota,
                RetryClass::RateLimit,
                RetryClass::ServerError,
                RetryClass::Timeout,
                RetryClass::Connect,
            ]
            .map(RetryRule::Class),
        )
    }

    /// Parses the comma-separated text form: class names, `5xx` and statuses 400-599, in any mix
    /// (`401,429,5xx`, `auth,rate_limit`). See the type's doc for what a statuses-only string means.
    /// The error names the first bad item.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut items = Vec::new();
        let mut legacy = true;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item.eq_ignore_ascii_case("5xx") {
                items.push(RetryRule::Class(RetryClass::ServerError));
            } else if let Some(c) = RetryClass::parse(item) {
                legacy = false;
                items.push(RetryRule::Class(c));
            } else {
                items.push(RetryRule::Status(parse_status(item)?));
            }
        }
        if legacy {
            items.push(RetryRule::Class(RetryClass::Timeout));
            items.push(RetryRule::Class(RetryClass::Connect));
        }
        Ok(Self::from_items(items))
    }

    /// Builds the canonical form from items: statuses that make up a whole class become it, and
    /// statuses a listed class covers are dropped.
    pub fn from_items(items: impl IntoIterator<Item = RetryRule>) -> Self {
        let mut classes = Vec::new();
        let mut statuses = Vec::new();
        for i in items {
            match i {
                RetryRule::Class(c) => classes.push(c),
                RetryRule::Status(s) => statuses.push(s),
            }
        }
        let has = |s: &[u16], c| s.contains(&c);
        if has(&statuses, 402) {
            classes.push(RetryClass::Quota);
        }
        if has(&statuses, 429) {
            classes.push(RetryClass::RateLimit);
        }
        if has(&statuses, 401) && has(&statuses, 403) {
            classes.push(RetryClass::Auth);
        }
        classes.sort();
        classes.dedup();
        statuses.retain(|s| !classes.iter().any(|c| c.covers(*s)));
        statuses.sort();
        statuses.dedup();
        Self { classes, statuses }
    }

    pub fn classes(&self) -> &[RetryClass] {
        &self.classes
    }

    /// Statuses retried beyond the classes.
    pub fn statuses(&self) -> &[u16] {
        &self.statuses
    }

    pub fn has(&self, class: RetryClass) -> bool {
        self.classes.contains(&class)
    }

    /// Whether an upstream answer with `status` is retried on another key.
    pub fn retries(&self, status: u16) -> bool {
        self.classes.iter().any(|c| c.covers(status)) || self.statuses.contains(&status)
    }

    pub fn retries_timeout(&self) -> bool {
        self.has(RetryClass::Timeout)
    }

    pub fn retries_connect(&self) -> bool {
        self.has(RetryClass::Connect)
    }

    /// The canonical items, classes first.
    pub fn items(&self) -> Vec<RetryRule> {
        self.classes
            .iter()
            .copied()
            .map(RetryRule::Class)
            .chain(self.statuses.iter().copied().map(RetryRule::Status))
            .collect()
    }

    /// The database text: canonical items, comma-separated (`auth,rate_limit,408`). Always names
    /// its classes, so it never reads back as the statuses-only form.
    pub fn to_db(&self) -> String {
        let mut out: Vec<String> = self
            .classes
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        out.extend(self.statuses.iter().map(u16::to_string));
        if self.classes.is_empty() {
            // Statuses alone would read back as the older form (implying timeout and connect);
            // an explicit empty class list is not expressible in it, so mark it.
            out.insert(0, "none".into());
        }
        out.join(",")
    }

    /// Reads the database text (`to_db`'s form, or the older statuses string).
    pub fn from_db(s: &str) -> Result<Self, String> {
        match s
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .split_first()
        {
            Some((&"none", rest)) => rest
                .iter()
                .filter(|i| !i.is_empty())
                .map(|i| parse_status(i).map(RetryRule::Status))
                .collect::<Result<Vec<_>, _>>()
                .map(Self::from_items),
            _ => Self::parse(s),
        }
    }
}

fn parse_status(item: &str) -> Result<u16, String> {
    match item.parse::<u16>() {
        Ok(c) if (400..=599).contains(&c) => Ok(c),
        _ => Err(format!("'{item}' is not one of {RETRY_ITEMS}")),
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items().serialize(s)
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Status(u64),
            Name(String),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Text(String),
            List(Vec<Item>),
        }
        let w = Wire::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected an array of retry classes (auth, quota, rate_limit, server_error, \
                 timeout, connect) and statuses, or a string like \"401,429,5xx\"",
            )
        })?;
        match w {
            Wire::Text(s) => RetryOn::parse(&s),
            Wire::List(items) => items
                .into_iter()
                .map(|i| match i {
                    Item::Status(n) => u16::try_from(n)
                        .map_err(|_| n.to_string())
                        .and_then(|n| parse_status(&n.to_string()))
                        .map(RetryRule::Status),
                    Item::Name(n) if n.eq_ignore_ascii_case("5xx") => {
                        Ok(RetryRule::Class(RetryClass::ServerError))
                    }
                    Item::Name(n) => RetryClass::parse(&n)
                        .map(RetryRule::Class)
                        .ok_or(n)
                        .or_else(|n| parse_status(&n).map(RetryRule::Status)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(RetryOn::from_items),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// The request shapes `retry_on` accepts (schema only; `RetryOn` reads them).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum RetryOnInput {
    /// Retry classes and extra statuses: `["auth", "rate_limit", 408]`.
    Rules(Vec<RetryRule>),
    /// The older comma-separated statuses: `"401,402,403,429,5xx"` (implies timeout and connect).
    Statuses(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire<T: Serialize>(v: T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn wire_names_are_the_ones_operators_already_use() {
        assert_eq!(
            Kind::ALL,
            ["openai", "anthropic", "gemini", "rest", "router"]
        );
        for k in [Kind::OpenAi, Kind::Anthropic, Kind::Gemini, Kind::Rest] {
            assert_eq!(wire(k), k.as_str());
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(
            Strategy::ALL,
            [
                "round_robin",
                "weighted",
                "least_used",
                "random",
                "balance",
                "latency",
                "success_rate",
                "cost"
            ]
        );
        for s in Strategy::ALL.map(|s| Strategy::parse(s).unwrap()) {
            assert_eq!(wire(s), s.as_str());
        }
        for s in KeyStatus::ALL.map(|s| KeyStatus::parse(s).unwrap()) {
            assert_eq!(wire(s), s.as_str());
        }
        for a in SyncAdapter::ALL.map(|s| SyncAdapter::parse(s).unwrap()) {
            assert_eq!(wire(a), a.as_str());
        }
        for r in Role::ALL.map(|s| Role::parse(s).unwrap()) {
            assert_eq!(wire(r), r.as_str());
        }
        for c in RetryClass::ALL.map(|s| RetryClass::parse(s).unwrap()) {
            assert_eq!(wire(c), c.as_str());
        }
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn an_unknown_value_is_refused_naming_the_allowed_ones() {
        let e = serde_json::from_str::<Kind>("\"cohere\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("openai") && e.contains("rest"), "{e}");
        let e = "fastest".parse::<Strategy>().unwrap_err();
        assert_eq!(
            e,
            "'fastest' is not one of round_robin, weighted, least_used, random, balance, latency, \
             success_rate, cost"
        );
    }

    #[test]
    fn the_old_default_status_string_reads_as_every_class() {
        let r = RetryOn::parse("401,402,403,429,5xx").unwrap();
        assert_eq!(r, RetryOn::default_policy());
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!([
                "auth",
                "quota",
                "rate_limit",
                "server_error",
                "timeout",
                "connect"
            ])
        );
        for s in [401, 402, 403, 429, 500, 503, 599] {
            assert!(r.retries(s), "{s}");
        }
        for s in [400, 404, 408, 422] {
            assert!(!r.retries(s), "{s}");
        }
    }

    #[test]
    fn a_partial_status_string_keeps_exactly_its_statuses() {
        let r = RetryOn::parse("401, 429").unwrap();
        assert!(r.retries(401) && r.retries(429) && !r.retries(403) && !r.retries(500));
        assert!(
            r.retries_timeout() && r.retries_connect(),
            "as the data plane always did"
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!(["rate_limit", "timeout", "connect", 401])
        );
        assert_eq!(
            RetryOn::parse("401,abc").unwrap_err(),
            format!("'abc' is not one of {RETRY_ITEMS}")
        );
        assert!(RetryOn::parse("600").is_err());
    }

    #[test]
    fn a_class_array_is_taken_literally() {
        let r: RetryOn = serde_json::from_str(r#"["rate_limit", 408]"#).unwrap();
        assert!(r.retries(429) && r.retries(408) && !r.retries(500));
        assert!(!r.retries_timeout() && !r.retries_connect());
        let e = serde_json::from_str::<RetryOn>(r#"["rate_limits"]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'rate_limits' is not one of auth, quota"), "{e}");
        let e = serde_json::from_str::<RetryOn>(r#"{"auth": true}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected an array of retry classes"), "{e}");
    }

    #[test]
    fn the_database_text_round_trips_every_policy() {
        for r in [
            RetryOn::default_policy(),
            RetryOn::parse("401,429").unwrap(),
            RetryOn::from_items([RetryRule::Class(RetryClass::Timeout)]),
            RetryOn::from_items([RetryRule::Status(408)]),
            RetryOn::from_items([]),
        ] {
            assert_eq!(RetryOn::from_db(&r.to_db()).unwrap(), r, "{}", r.to_db());
        }
        assert_eq!(
            RetryOn::default_policy().to_db(),
            "auth,quota,rate_limit,server_error,timeout,connect"
        );
        // Rows written before classes existed read as before.
        assert_eq!(
            RetryOn::from_db("401,402,403,429,5xx").unwrap(),
            RetryOn::default_policy()
        );
    }
}
