//! `TestApp::spawn(Backend::Postgres)` gives a gateway on a loopback port with its own database (a
//! fresh SQLite file, or a fresh Postgres database and Redis key prefix), logged in as admin.
use std::time::{Duration, Instant};

use keygate::{App, Config};
use sea_orm::{ConnectionTrait, Database};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::servers::servers;

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: SQLite file + in-process coordination store.
    Sqlite,
    /// Enterprise mode: Postgres + Redis.
    Postgres,
}

/// A configuration several app instances can share (one database, one Redis prefix).
pub struct Shared {
    pub config: Config,
    _dir: tempfile::TempDir,
}

impl Shared {
    pub async fn new(backend: Backend) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("TEST_LOG").is_some() {
            keygate::telemetry::init_tracing("text");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::defaults();
        c.server.listen = "127.0.0.1:0".parse().unwrap();
        c.database.data_dir = dir.path().to_path_buf();
        c.database.max_connections = 5;
        c.auth.admin_password = Some(SecretString::from(ADMIN_PASSWORD));
        c.proxy.refresh_interval_ms = 100;
        // Tests wait for rows to land: a short flush keeps those waits short.
        c.log.flush_interval_ms = 100;
        // Mock upstreams listen on loopback, which the SSRF guard refuses unless allowed.
        c.egress.allow = vec!["127.0.0.0/8".into(), "::1/128".into()];
        if backend == Backend::Postgres {
            let s = servers();
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            let admin = Database::connect(format!("{}/postgres", s.pg_base))
                .await
                .unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin.close().await.unwrap();
            c.database.url = Some(SecretString::from(format!("{}/{name}", s.pg_base)));
            c.redis.url = Some(SecretString::from(s.redis_url.clone()));
            c.redis.prefix = format!("{name}:");
            c.auth.jwt_secret = Some(SecretString::from("jwt-secret-for-tests-0123456789"));
            c.crypto.encryption_key = Some(SecretString::from("ab".repeat(32)));
        }
        Self {
            config: c,
            _dir: dir,
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    pub state: keygate::state::AppState,
    shutdown: Option<oneshot::Sender<()>>,
    _shared: Option<Shared>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        let shared = Shared::new(backend).await;
        let mut app = Self::spawn_with(&shared.config).await;
        app._shared = Some(shared);
        app
    }

    pub async fn spawn_with(config: &Config) -> Self {
        let app = App::build(config.clone()).await.expect("app builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let state = app.state();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        let http = reqwest::Client::new();
        let mut t = Self {
            base,
            http,
            token: String::new(),
            state,
            shutdown: Some(tx),
            _shared: None,
        };
        t.token = t.login("admin", ADMIN_PASSWORD).await;
        t
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn login(&self, user: &str, password: &str) -> String {
        let r = self
            .http
            .post(self.url("/admin/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login as {user}");
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// An admin API call with the admin token; returns status and JSON body (Null when empty).
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.admin_as(&self.token.clone(), method, path, body).await
    }

    pub async fn admin_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http.request(m, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, v)
    }

    pub async fn create_service(&self, slug: &str, kind: &str, base_url: &str) {
        let (s, v) = self
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": slug, "kind": kind, "base_url": base_url})),
            )
            .await;
        assert_eq!(s, 201, "create service: {v}");
    }

    pub async fn add_keys(&self, slug: &str, keys: &[&str]) {
        let items: Vec<Value> = keys.iter().map(|k| json!({"key": k})).collect();
        let (s, v) = self
            .admin(
                "POST",
                &format!("/admin/services/{slug}/keys"),
                Some(json!({"keys": items})),
            )
            .await;
        assert_eq!(s, 200, "add keys: {v}");
        assert_eq!(v["added"], keys.len(), "{v}");
    }

    /// A new access key allowed on every slug; returns the full key.
    pub async fn access_key(&self) -> String {
        let (s, v) = self
            .admin("POST", "/admin/access-keys", Some(json!({"name": "test"})))
            .await;
        assert_eq!(s, 201, "create access key: {v}");
        v["key"].as_str().unwrap().to_string()
    }

    /// A slug served by the mock with the given keys, and an access key for it.
    pub async fn with_service(&self, slug: &str, base_url: &str, keys: &[&str]) -> String {
        self.create_service(slug, "openai", base_url).await;
        self.add_keys(slug, keys).await;
        self.access_key().await
    }

    pub async fn chat(&self, slug: &str, access_key: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/llm/{slug}/v1/chat/completions")))
            .bearer_auth(access_key)
            .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    }

    /// Key statuses of a slug, by masked key.
    pub async fn key_statuses(&self, slug: &str) -> Vec<(String, String)> {
        let (s, v) = self
            .admin("GET", &format!("/admin/services/{slug}/keys"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["key"].as_str().unwrap().to_string(),
                    k["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs one async test body on both backends: `both!(name, |backend| async move { ... })`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite_and_memory() {
                ($body)($crate::harness::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres_and_redis() {
                ($body)($crate::harness::Backend::Postgres).await
            }
        }
    };
}
