//! The real `keygate` binary as a child process, on a database and a Redis prefix of its own:
//! for tests that need what only a process has (SIGTERM, its own tracing subscriber, stderr).
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

use crate::harness::eventually;
use crate::servers::{free_port, servers};

pub const PASSWORD: &str = "process-test-password";

pub struct Proc {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub base: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh database on the shared Postgres; its URL.
pub async fn fresh_database() -> String {
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
    format!("{}/{name}", s.pg_base)
}

/// The settings of an enterprise replica on `database` and `redis` (with `prefix`).
pub fn enterprise_env(database: &str, redis: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database),
        ("REDIS_URL", redis),
        ("KEYGATE__REDIS__PREFIX", prefix),
        ("JWT_SECRET", "jwt-secret-for-tests-0123456789"),
        ("KEYGATE_ENCRYPTION_KEY", &"ab".repeat(32)),
        ("ADMIN_PASSWORD", PASSWORD),
        ("RUST_LOG", "info"),
        // The mock upstream is on loopback, which the SSRF guard refuses unless allowed.
        ("KEYGATE__EGRESS__ALLOW", "127.0.0.0/8,::1/128"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Proc {
    /// Starts the binary with exactly `env` (plus PORT) and waits for `/healthz`.
    pub async fn start(env: &[(String, String)]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .current_dir(dir.path())
            .env_clear()
            .env("PORT", port.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        assert!(
            eventually(Duration::from_secs(60), || async {
                http.get(format!("{base}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            })
            .await,
            "the binary never answered"
        );
        Self {
            child,
            _dir: dir,
            base,
            stderr,
        }
    }

    /// SIGTERM: the graceful shutdown an orchestrator asks for.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits (off the async workers) for the process to exit; its exit code.
    pub async fn exited(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn token(&self) -> String {
        let r: Value = reqwest::Client::new()
            .post(format!("{}/admin/auth/login", self.base))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["access_token"].as_str().unwrap().to_string()
    }

    pub async fn admin(&self, token: &str, method: &str, path: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// A slug on `upstream` with `keys`, and an access key for it.
    pub async fn slug(&self, slug: &str, upstream: &str, keys: &[&str]) -> String {
        let token = self.token().await;
        self.admin(
            &token,
            "POST",
            "/admin/services",
            json!({"slug": slug, "kind": "openai", "base_url": upstream}),
        )
        .await;
        let items: Vec<Value> = keys.iter().map(|k| json!({"key": k})).collect();
        self.admin(
            &token,
            "POST",
            &format!("/admin/services/{slug}/keys"),
            json!({"keys": items}),
        )
        .await;
        let ak = self
            .admin(&token, "POST", "/admin/access-keys", json!({"name": "t"}))
            .await;
        ak["key"].as_str().unwrap().to_string()
    }
}
