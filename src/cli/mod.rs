//! `keygate admin <resource> <verb>`: the admin API from a shell.
//!
//! Against the configured database by default (the same configuration the server reads: the
//! config file and `KEYGATE__*` / `DATABASE_URL` / `REDIS_URL`), in process, through the control
//! layer the HTTP handlers use; or against a running keygate with `--url` and a token
//! (`--token`, or `--username` and `--password` to log in). Output is a table, or the admin API's
//! own JSON with `--json`. Exit codes say what went wrong (see `exit_code`).
mod ops;
mod output;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::control::{Actor, import::Format};
use ops::{Failure, Op, Remote};

/// Exit codes, documented in `keygate admin --help` and the README.
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything unexpected (an internal error; the message says more).
    pub const ERROR: i32 = 1;
    /// The command line itself is wrong (clap's own code).
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const CONFLICT: i32 = 4;
    /// The input was refused: a bad field, a bad file, too large.
    pub const INVALID: i32 = 5;
    /// Not logged in, a bad token, or a role that does not allow it.
    pub const DENIED: i32 = 6;
    /// The database, Redis or the remote keygate did not answer.
    pub const UNAVAILABLE: i32 = 7;
}

/// Maps a failure to its exit code: the same for a local run and for the HTTP status a remote
/// keygate answered with.
fn exit_code(f: &Failure) -> i32 {
    match f.status {
        404 => exit::NOT_FOUND,
        409 => exit::CONFLICT,
        400 | 413 | 415 | 422 => exit::INVALID,
        401 | 403 => exit::DENIED,
        0 | 502..=504 => exit::UNAVAILABLE,
        _ => exit::ERROR,
    }
}

#[derive(Args, Debug)]
#[command(after_help = "\
Runs against the configured database unless --url is given.

Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 not found, 4 conflict,
5 invalid input, 6 not authenticated or not allowed, 7 unavailable.")]
pub struct AdminArgs {
    /// A running keygate to manage over its admin API (e.g. http://keygate:8000) instead of the
    /// configured database.
    #[arg(long, env = "KEYGATE_URL", global = true)]
    url: Option<String>,
    /// Bearer token for --url (from POST /admin/auth/login or the console).
    #[arg(long, env = "KEYGATE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Log in as this user for --url (with --password) instead of a token.
    #[arg(long, env = "KEYGATE_USERNAME", global = true)]
    username: Option<String>,
    #[arg(long, env = "KEYGATE_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Print the admin API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Resource,
}

#[derive(Subcommand, Debug)]
enum Resource {
    /// Services: one slug per upstream API.
    #[command(subcommand)]
    Services(ServicesCmd),
    /// Upstream keys of a service (always shown masked).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Access keys: what clients send to the data plane.
    #[command(subcommand, name = "access-keys")]
    AccessKeys(AccessKeysCmd),
    /// Admin API users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Pricing rules.
    #[command(subcommand)]
    Pricing(PricingCmd),
    /// Request statistics.
    Stats(StatsArgs),
    /// Tenants (global admins write).
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// The audit log of admin writes, newest first.
    Audit(AuditArgs),
    /// Re-encrypt every stored secret with KEYGATE_ENCRYPTION_KEY (the keys being rotated out
    /// go in KEYGATE_PREVIOUS_ENCRYPTION_KEYS). Batches commit as they go: run it again to
    /// resume. Against the configured database only.
    RotateEncryptionKey,
}

/// Settings beyond the flags: any field of the API's body, as a JSON object, e.g.
/// `--set '{"max_attempts": 5}'`.
#[derive(Args, Debug, Default)]
struct Extra {
    #[arg(long = "set", value_name = "JSON")]
    set: Option<String>,
}

impl Extra {
    /// The flags' fields, then `--set`'s on top.
    fn body(&self, fields: Vec<(&str, Option<Value>)>) -> Result<Value, Failure> {
        let mut m = Map::new();
        for (k, v) in fields {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        if let Some(s) = &self.set {
            match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(extra)) => m.extend(extra),
                _ => {
                    return Err(invalid(
                        "--set: must be a JSON object, e.g. '{\"name\": \"x\"}'",
                    ));
                }
            }
        }
        Ok(Value::Object(m))
    }
}

fn invalid(detail: &str) -> Failure {
    Failure {
        status: 400,
        detail: detail.to_string(),
    }
}

#[derive(Subcommand, Debug)]
enum ServicesCmd {
    List,
    Get {
        slug: String,
    },
    Create {
        slug: String,
        /// openai, anthropic, gemini, azure, rest or router.
        #[arg(long)]
        kind: String,
        /// The upstream's URL, with its version segment (https://api.openai.com/v1).
        #[arg(long)]
        base_url: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// round_robin, weighted, least_used, random, balance or cost.
        #[arg(long)]
        strategy: Option<String>,
        /// The owning tenant (admins of no tenant; default: the default tenant).
        #[arg(long)]
        tenant: Option<i64>,
        #[command(flatten)]
        extra: Extra,
    },
    Update {
        slug: String,
        #[arg(long)]
        base_url: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        strategy: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[command(flatten)]
        extra: Extra,
    },
    Delete {
        slug: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    List {
        slug: String,
    },
    /// Add keys given as arguments, or one per line on standard input when none is given (so
    /// they stay out of the shell's history).
    Add {
        slug: String,
        keys: Vec<String>,
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        weight: Option<i32>,
        /// In currency units.
        #[arg(long)]
        balance: Option<String>,
    },
    /// Import a file: .json, .csv (`key,balance`) or text (one key a line). All or nothing.
    Import {
        slug: String,
        file: PathBuf,
        /// json, csv or text (default: from the file's extension; text otherwise).
        #[arg(long)]
        format: Option<String>,
        /// Report bad lines and the new and duplicate counts, and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Put keys back in rotation (clears cooldowns and failure counts).
    Enable {
        slug: String,
        #[arg(required_unless_present = "status")]
        ids: Vec<i64>,
        /// Every key in this status instead of ids (e.g. invalid).
        #[arg(long, conflicts_with = "ids")]
        status: Option<String>,
    },
    /// Take keys out of rotation until enabled.
    Disable {
        slug: String,
        #[arg(required_unless_present = "status")]
        ids: Vec<i64>,
        #[arg(long, conflicts_with = "ids")]
        status: Option<String>,
    },
    Delete {
        slug: String,
        id: i64,
    },
    /// Test keys against the upstream now (one, or all of the service).
    Test {
        slug: String,
        id: Option<i64>,
    },
    /// Read balances from the upstream's billing API now (one key, or all).
    Sync {
        slug: String,
        id: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
enum AccessKeysCmd {
    List,
    Get {
        id: i64,
    },
    /// Create one; the full key is printed this once.
    Create {
        name: String,
        #[command(flatten)]
        limits: AccessKeyLimits,
        /// The owning tenant (admins of no tenant; default: the default tenant).
        #[arg(long)]
        tenant: Option<i64>,
    },
    Update {
        id: i64,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: AccessKeyLimits,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    Delete {
        id: i64,
    },
}

/// What an access key may call, and how much.
#[derive(Args, Debug)]
struct AccessKeyLimits {
    /// Slugs it may call, comma-separated (default: every slug of its tenant).
    #[arg(long, value_delimiter = ',')]
    slugs: Option<Vec<String>>,
    #[arg(long)]
    rpm: Option<i32>,
    #[arg(long)]
    tpm: Option<i32>,
    #[arg(long)]
    rpd: Option<i32>,
    /// In currency units.
    #[arg(long)]
    budget: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    expires_at: Option<String>,
}

impl AccessKeyLimits {
    fn fields(self) -> Vec<(&'static str, Option<Value>)> {
        let n = |v: Option<i32>| v.map(|v| json!(v));
        vec![
            ("slugs", self.slugs.map(|s| json!(s))),
            ("rpm", n(self.rpm)),
            ("tpm", n(self.tpm)),
            ("rpd", n(self.rpd)),
            ("budget", self.budget.map(Value::String)),
            ("expires_at", self.expires_at.map(Value::String)),
        ]
    }
}

#[derive(Subcommand, Debug)]
enum UsersCmd {
    List,
    /// Create a user; without --password one is generated and printed once.
    Create {
        username: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        #[arg(long, env = "KEYGATE_NEW_PASSWORD", hide_env_values = true)]
        new_password: Option<String>,
        /// The user's tenant (default: global).
        #[arg(long)]
        tenant: Option<i64>,
    },
    /// Change a user (by id or username).
    Update {
        user: String,
        #[arg(long)]
        role: Option<String>,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
    },
    /// Delete a user (by id or username).
    Delete {
        user: String,
    },
    /// Set a new generated password for a user and print it once (revokes their tokens).
    /// Against the configured database only: it is the way back in when no admin can log in.
    ResetPassword {
        user: String,
    },
}

#[derive(Args, Debug)]
struct Prices {
    /// Per million input tokens, in currency units.
    #[arg(long)]
    input: Option<String>,
    /// Per million output tokens.
    #[arg(long)]
    output: Option<String>,
    #[arg(long)]
    cache_read: Option<String>,
    #[arg(long)]
    cache_write: Option<String>,
    /// Per request.
    #[arg(long)]
    per_request: Option<String>,
    /// Only on this slug (default: global).
    #[arg(long)]
    slug: Option<String>,
    #[arg(long)]
    priority: Option<i32>,
}

impl Prices {
    fn body(&self, pattern: &str) -> Value {
        let money = |v: &Option<String>| v.as_ref().map(|s| Value::String(s.clone()));
        let mut m = Map::new();
        m.insert("pattern".into(), json!(pattern));
        for (k, v) in [
            ("input_per_mtok", money(&self.input)),
            ("output_per_mtok", money(&self.output)),
            ("cache_read_per_mtok", money(&self.cache_read)),
            ("cache_write_per_mtok", money(&self.cache_write)),
            ("per_request", money(&self.per_request)),
            ("slug", self.slug.as_ref().map(|s| json!(s))),
            ("priority", self.priority.map(|p| json!(p))),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
        Value::Object(m)
    }
}

#[derive(Subcommand, Debug)]
enum PricingCmd {
    List,
    /// Price models matching a glob (e.g. 'gpt-4o*').
    Create {
        pattern: String,
        #[command(flatten)]
        prices: Prices,
    },
    /// Replace a rule whole.
    Update {
        id: i64,
        pattern: String,
        #[command(flatten)]
        prices: Prices,
    },
    Delete {
        id: i64,
    },
    /// Which price applies to a model, and why.
    Check {
        model: String,
        #[arg(long)]
        slug: Option<String>,
    },
}

#[derive(Args, Debug)]
struct StatsArgs {
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// service, key, access_key or model.
    #[arg(long)]
    group_by: Option<String>,
    /// RFC 3339 or unix seconds.
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// 1m, 1h or 1d.
    #[arg(long)]
    bucket: Option<String>,
}

impl AdminArgs {
    /// Whether the command goes to a running keygate rather than the configured database.
    pub fn is_remote(&self) -> bool {
        self.url.is_some()
    }
}

#[derive(Subcommand, Debug)]
enum TenantsCmd {
    List,
    Create {
        name: String,
    },
    Rename {
        id: i64,
        name: String,
    },
    /// Delete a tenant that owns nothing any more.
    Delete {
        id: i64,
    },
}

#[derive(Args, Debug)]
struct AuditArgs {
    /// A username, or cli:<OS user>.
    #[arg(long)]
    actor: Option<String>,
    /// create, update, delete, or an action's name (import, disable, test...).
    #[arg(long)]
    action: Option<String>,
    /// service, key, keys, access_key, pricing_rule, user, tenant.
    #[arg(long)]
    target_type: Option<String>,
    #[arg(long)]
    target_id: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// Entries to show (1 to 1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

const TENANTS: &[&str] = &["id", "name", "created_at"];
const AUDIT: &[&str] = &[
    "id",
    "ts",
    "actor",
    "via",
    "action",
    "target_type",
    "target_id",
    "tenant_id",
];

/// What a command does once it has an answer: how to print it.
struct Plan {
    op: Op,
    /// The table's columns for a list (None: every field).
    columns: Option<&'static [&'static str]>,
    /// Printed instead of an empty answer (a delete).
    done: Option<String>,
}

fn plan(op: Op, columns: Option<&'static [&'static str]>) -> Plan {
    Plan {
        op,
        columns,
        done: None,
    }
}

const SERVICES: &[&str] = &[
    "slug",
    "kind",
    "base_url",
    "strategy",
    "enabled",
    "tenant_id",
];
const KEYS: &[&str] = &[
    "id",
    "key",
    "label",
    "status",
    "balance",
    "weight",
    "in_flight",
    "requests",
    "success_rate",
    "last_error",
];
const ACCESS_KEYS: &[&str] = &[
    "id",
    "name",
    "prefix",
    "slugs",
    "rpm",
    "tpm",
    "rpd",
    "budget",
    "spent",
    "enabled",
    "expires_at",
];
const USERS: &[&str] = &[
    "id",
    "username",
    "role",
    "tenant_id",
    "disabled",
    "created_at",
];
const PRICING: &[&str] = &[
    "id",
    "pattern",
    "slug",
    "priority",
    "input_per_mtok",
    "output_per_mtok",
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "per_request",
];
const TESTS: &[&str] = &[
    "key_id",
    "key",
    "ok",
    "status",
    "latency_ms",
    "key_status_before",
    "key_status_after",
    "error",
];
const SYNCS: &[&str] = &[
    "key_id",
    "key",
    "ok",
    "balance",
    "currency",
    "key_status_before",
    "key_status_after",
    "sync_error",
];

/// Where the commands run.
enum Target {
    Local(crate::state::AppState),
    Remote(Remote),
}

impl Target {
    async fn run(&self, op: &Op, actor: &Actor) -> Result<Value, Failure> {
        match self {
            Target::Local(state) => op.local(state, actor).await,
            Target::Remote(api) => op.remote(api).await,
        }
    }
}

/// Runs an admin command; returns the process's exit code.
pub async fn run(args: AdminArgs, config: Option<Config>) -> i32 {
    match run_inner(args, config).await {
        Ok(()) => exit::OK,
        Err(f) => {
            eprintln!("error: {}", f.detail);
            exit_code(&f)
        }
    }
}

async fn run_inner(args: AdminArgs, config: Option<Config>) -> Result<(), Failure> {
    let actor = Actor::cli();
    let local_only = |what: &str| Failure {
        status: 400,
        detail: format!("{what} works against the configured database only: drop --url"),
    };
    // Offline-only commands first: they need no gateway state.
    match &args.command {
        Resource::RotateEncryptionKey => {
            if args.url.is_some() {
                return Err(local_only("rotate-encryption-key"));
            }
            return rotate_encryption_key(&need_config(config)?).await;
        }
        Resource::Users(UsersCmd::ResetPassword { user }) => {
            if args.url.is_some() {
                return Err(local_only("users reset-password"));
            }
            return reset_password(&need_config(config)?, &actor, user).await;
        }
        _ => {}
    }
    let target = match &args.url {
        Some(url) => {
            let base = url.trim_end_matches('/').to_string();
            let token = match (&args.token, &args.username, &args.password) {
                (Some(t), _, _) => t.clone(),
                (None, Some(u), Some(p)) => Remote::login(&base, u, p).await?,
                _ => {
                    return Err(Failure {
                        status: 401,
                        detail:
                            "--url needs --token (or KEYGATE_TOKEN), or --username and --password"
                                .into(),
                    });
                }
            };
            Target::Remote(Remote {
                base,
                token,
                http: reqwest::Client::new(),
            })
        }
        None => {
            let config = need_config(config)?;
            let (state, _events) =
                crate::app::App::build_state(config)
                    .await
                    .map_err(|e| Failure {
                        status: 0,
                        detail: format!("{e:#}"),
                    })?;
            Target::Local(state)
        }
    };
    let plan = match args.command {
        Resource::Services(c) => services(c)?,
        Resource::Keys(c) => keys(c)?,
        Resource::AccessKeys(c) => access_keys(c)?,
        Resource::Users(c) => users(c, &target, &actor).await?,
        Resource::Pricing(c) => pricing(c),
        Resource::Stats(s) => {
            let mut q = vec![];
            for (k, v) in [
                ("service", s.service),
                ("group_by", s.group_by),
                ("from", s.from),
                ("to", s.to),
                ("bucket", s.bucket),
            ] {
                if let Some(v) = v {
                    q.push((k.to_string(), v));
                }
            }
            plan(Op::Stats(q), None)
        }
        Resource::Tenants(c) => match c {
            TenantsCmd::List => plan(Op::ListTenants, Some(TENANTS)),
            TenantsCmd::Create { name } => plan(Op::CreateTenant(json!({ "name": name })), None),
            TenantsCmd::Rename { id, name } => {
                plan(Op::UpdateTenant(id, json!({ "name": name })), None)
            }
            TenantsCmd::Delete { id } => Plan {
                done: Some(format!("deleted tenant {id}")),
                op: Op::DeleteTenant(id),
                columns: None,
            },
        },
        Resource::Audit(a) => {
            let mut q = vec![("limit".to_string(), a.limit.to_string())];
            for (k, v) in [
                ("actor", a.actor),
                ("action", a.action),
                ("target_type", a.target_type),
                ("target_id", a.target_id),
                ("since", a.since),
                ("until", a.until),
            ] {
                if let Some(v) = v {
                    q.push((k.to_string(), v));
                }
            }
            plan(Op::Audit(q), Some(AUDIT))
        }
        Resource::RotateEncryptionKey => unreachable!("handled above"),
    };
    let value = target.run(&plan.op, &actor).await?;
    let out = if args.json {
        output::json(&value)
    } else {
        match (&value, plan.done) {
            (Value::Null, Some(done)) => done,
            _ => output::table(&value, plan.columns),
        }
    };
    if !out.is_empty() {
        println!("{out}");
    }
    Ok(())
}

fn need_config(config: Option<Config>) -> Result<Config, Failure> {
    config.ok_or_else(|| Failure {
        status: 0,
        detail: "no configuration could be read".into(),
    })
}

fn services(c: ServicesCmd) -> Result<Plan, Failure> {
    let s = |v: Option<String>| v.map(Value::String);
    Ok(match c {
        ServicesCmd::List => plan(Op::ListServices, Some(SERVICES)),
        ServicesCmd::Get { slug } => plan(Op::GetService(slug), None),
        ServicesCmd::Create {
            slug,
            kind,
            base_url,
            name,
            strategy,
            tenant,
            extra,
        } => plan(
            Op::CreateService(extra.body(vec![
                ("slug", Some(json!(slug))),
                ("tenant_id", tenant.map(|t| json!(t))),
                ("kind", Some(json!(kind))),
                ("base_url", s(base_url)),
                ("name", s(name)),
                ("strategy", s(strategy)),
            ])?),
            None,
        ),
        ServicesCmd::Update {
            slug,
            base_url,
            name,
            strategy,
            enable,
            disable,
            extra,
        } => plan(
            Op::UpdateService(
                slug,
                extra.body(vec![
                    ("base_url", s(base_url)),
                    ("name", s(name)),
                    ("strategy", s(strategy)),
                    ("enabled", toggle(enable, disable)),
                ])?,
            ),
            None,
        ),
        ServicesCmd::Delete { slug } => Plan {
            done: Some(format!("deleted service '{slug}'")),
            op: Op::DeleteService(slug),
            columns: None,
        },
    })
}

fn toggle(enable: bool, disable: bool) -> Option<Value> {
    match (enable, disable) {
        (true, _) => Some(json!(true)),
        (_, true) => Some(json!(false)),
        _ => None,
    }
}

fn keys(c: KeysCmd) -> Result<Plan, Failure> {
    Ok(match c {
        KeysCmd::List { slug } => plan(Op::ListKeys(slug), Some(KEYS)),
        KeysCmd::Add {
            slug,
            keys,
            label,
            weight,
            balance,
        } => {
            let keys = if keys.is_empty() {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| invalid(&format!("reading keys from standard input: {e}")))?;
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            } else {
                keys
            };
            if keys.is_empty() {
                return Err(invalid("no keys given (as arguments or on standard input)"));
            }
            let items: Vec<Value> = keys
                .into_iter()
                .map(|k| {
                    let mut m = Map::new();
                    m.insert("key".into(), json!(k));
                    if let Some(l) = &label {
                        m.insert("label".into(), json!(l));
                    }
                    if let Some(w) = weight {
                        m.insert("weight".into(), json!(w));
                    }
                    if let Some(b) = &balance {
                        m.insert("balance".into(), json!(b));
                    }
                    Value::Object(m)
                })
                .collect();
            plan(Op::AddKeys(slug, json!({ "keys": items })), None)
        }
        KeysCmd::Import {
            slug,
            file,
            format,
            dry_run,
        } => {
            let format = match format.as_deref() {
                Some("json") => Format::Json,
                Some("csv") => Format::Csv,
                Some("text" | "txt") => Format::Text,
                Some(other) => {
                    return Err(invalid(&format!(
                        "--format: '{other}' is not json, csv or text"
                    )));
                }
                None => Format::detect(None, file.to_str()).unwrap_or(Format::Text),
            };
            let bytes =
                std::fs::read(&file).map_err(|e| invalid(&format!("{}: {e}", file.display())))?;
            plan(
                Op::ImportKeys {
                    slug,
                    format,
                    bytes,
                    dry_run,
                },
                None,
            )
        }
        KeysCmd::Enable { slug, ids, status } => batch(slug, "enable", ids, status),
        KeysCmd::Disable { slug, ids, status } => batch(slug, "disable", ids, status),
        KeysCmd::Delete { slug, id } => Plan {
            done: Some(format!("deleted key {id} of '{slug}'")),
            op: Op::DeleteKey(slug, id),
            columns: None,
        },
        KeysCmd::Test { slug, id } => plan(Op::TestKeys(slug, id), Some(TESTS)),
        KeysCmd::Sync { slug, id } => plan(Op::SyncKeys(slug, id), Some(SYNCS)),
    })
}

fn batch(slug: String, action: &str, ids: Vec<i64>, status: Option<String>) -> Plan {
    let body = match status {
        Some(s) => json!({"action": action, "status": s}),
        None => json!({"action": action, "ids": ids}),
    };
    plan(Op::BatchKeys(slug, body), None)
}

fn access_keys(c: AccessKeysCmd) -> Result<Plan, Failure> {
    Ok(match c {
        AccessKeysCmd::List => plan(Op::ListAccessKeys, Some(ACCESS_KEYS)),
        AccessKeysCmd::Get { id } => plan(Op::GetAccessKey(id), None),
        AccessKeysCmd::Create {
            name,
            limits,
            tenant,
        } => {
            let mut fields = vec![
                ("name", Some(json!(name))),
                ("tenant_id", tenant.map(|t| json!(t))),
            ];
            fields.extend(limits.fields());
            plan(Op::CreateAccessKey(Extra::default().body(fields)?), None)
        }
        AccessKeysCmd::Update {
            id,
            name,
            limits,
            enable,
            disable,
        } => {
            let mut fields = vec![
                ("name", name.map(Value::String)),
                ("enabled", toggle(enable, disable)),
            ];
            fields.extend(limits.fields());
            plan(
                Op::UpdateAccessKey(id, Extra::default().body(fields)?),
                None,
            )
        }
        AccessKeysCmd::Delete { id } => Plan {
            done: Some(format!("deleted access key {id}")),
            op: Op::DeleteAccessKey(id),
            columns: None,
        },
    })
}

/// A user named by id or username: a name is looked up in the user list.
async fn user_id(target: &Target, actor: &Actor, user: &str) -> Result<i64, Failure> {
    if let Ok(id) = user.parse::<i64>() {
        return Ok(id);
    }
    let list = target.run(&Op::ListUsers, actor).await?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|u| u.get("username").and_then(Value::as_str) == Some(user))
        .and_then(|u| u.get("id").and_then(Value::as_i64))
        .ok_or_else(|| Failure {
            status: 404,
            detail: format!("no user named '{user}'"),
        })
}

async fn users(c: UsersCmd, target: &Target, actor: &Actor) -> Result<Plan, Failure> {
    Ok(match c {
        UsersCmd::List => plan(Op::ListUsers, Some(USERS)),
        UsersCmd::Create {
            username,
            role,
            new_password,
            tenant,
        } => {
            let (password, generated) = match new_password {
                Some(p) => (p, false),
                None => (crate::crypto::random_token(20), true),
            };
            if generated {
                // On standard error, so `--json` output stays one JSON document.
                eprintln!("password for {username} (shown once): {password}");
            }
            plan(
                Op::CreateUser(json!({
                    "username": username,
                    "password": password,
                    "role": role,
                    "tenant_id": tenant,
                })),
                None,
            )
        }
        UsersCmd::Update {
            user,
            role,
            disable,
            enable,
        } => {
            let id = user_id(target, actor, &user).await?;
            let body = Extra::default().body(vec![
                ("role", role.map(Value::String)),
                ("disabled", toggle(disable, enable)),
            ])?;
            plan(Op::UpdateUser(id, body), None)
        }
        UsersCmd::Delete { user } => {
            let id = user_id(target, actor, &user).await?;
            Plan {
                done: Some(format!("deleted user '{user}'")),
                op: Op::DeleteUser(id),
                columns: None,
            }
        }
        UsersCmd::ResetPassword { .. } => unreachable!("handled before a target is chosen"),
    })
}

fn pricing(c: PricingCmd) -> Plan {
    match c {
        PricingCmd::List => plan(Op::ListPricing, Some(PRICING)),
        PricingCmd::Create { pattern, prices } => {
            plan(Op::CreatePricing(prices.body(&pattern)), None)
        }
        PricingCmd::Update {
            id,
            pattern,
            prices,
        } => plan(Op::ReplacePricing(id, prices.body(&pattern)), None),
        PricingCmd::Delete { id } => Plan {
            done: Some(format!("deleted pricing rule {id}")),
            op: Op::DeletePricing(id),
            columns: None,
        },
        PricingCmd::Check { model, slug } => plan(Op::CheckPrice { model, slug }, None),
    }
}

async fn rotate_encryption_key(config: &Config) -> Result<(), Failure> {
    let fail = |e: anyhow::Error| Failure {
        status: 0,
        detail: format!("{e:#}"),
    };
    let db = crate::db::connect(&config.database).await.map_err(fail)?;
    let cipher = crate::bootstrap::cipher(config).map_err(fail)?;
    let r = crate::db::rekey::rotate(&db, &cipher)
        .await
        .map_err(|e| fail(e.into()))?;
    println!(
        "re-encrypted {} key secrets and {} proxy URLs with key {}; {} fingerprints recomputed; {} undecryptable",
        r.secrets,
        r.proxies,
        cipher.key_id(),
        r.fingerprints,
        r.undecryptable
    );
    if r.undecryptable > 0 {
        return Err(Failure {
            status: 500,
            detail: format!(
                "{} secrets open with no configured key: add the key that sealed them to KEYGATE_PREVIOUS_ENCRYPTION_KEYS",
                r.undecryptable
            ),
        });
    }
    Ok(())
}

async fn reset_password(config: &Config, actor: &Actor, user: &str) -> Result<(), Failure> {
    let fail = |e: anyhow::Error| Failure {
        status: 0,
        detail: format!("{e:#}"),
    };
    let db = crate::db::connect(&config.database).await.map_err(fail)?;
    let password = crate::control::users::reset_password(&db, actor, user).await?;
    drop(db);
    println!("new password for {user}: {password}");
    Ok(())
}
