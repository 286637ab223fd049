//! `keygate admin <resource> <verb>`: the real binary, against the database a running gateway
//! uses (in process, through the control layer) and against that gateway's admin API (`--url`).
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use keygate::Config;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock;

const SECRETS: [&str; 2] = [
    "sk-cli-first-0123456789abcdef",
    "sk-cli-second-0123456789abcdef",
];

/// The environment that points the binary at the same stores as `config`.
fn env_of(config: &Config) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "KEYGATE__DATABASE__DATA_DIR".to_string(),
            config.database.data_dir.display().to_string(),
        ),
        (
            "KEYGATE__EGRESS__ALLOW".into(),
            "127.0.0.0/8,::1/128".into(),
        ),
        ("USER".into(), "ops-tester".into()),
    ];
    let secret =
        |s: &Option<secrecy::SecretString>| s.as_ref().map(|s| s.expose_secret().to_string());
    for (name, value) in [
        ("DATABASE_URL", secret(&config.database.url)),
        ("REDIS_URL", secret(&config.redis.url)),
        ("JWT_SECRET", secret(&config.auth.jwt_secret)),
        (
            "KEYGATE_ENCRYPTION_KEY",
            secret(&config.crypto.encryption_key),
        ),
    ] {
        if let Some(v) = value {
            env.push((name.into(), v));
        }
    }
    env.push(("KEYGATE__REDIS__PREFIX".into(), config.redis.prefix.clone()));
    env
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `keygate` with exactly `env`, feeding `stdin`; off the async runtime's threads.
async fn keygate(env: &[(String, String)], args: &[&str], stdin: &str) -> Out {
    let env = env.to_vec();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(&args)
            .current_dir(dir.path())
            .env_clear()
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

both!(
    the_cli_manages_services_keys_and_access_keys_in_the_database_a_running_gateway_serves_from,
    |backend: Backend| async move {
        let shared = Shared::new(backend).await;
        let app = TestApp::spawn_with(&shared.config).await;
        let up = mock::start().await;
        let env = env_of(&shared.config);
        let run = |args: Vec<&'static str>| {
            let env = env.clone();
            async move { keygate(&env, &args, "").await }
        };

        let base_url: &'static str = Box::leak(up.base.clone().into_boxed_str());
        let o = run(vec![
            "admin",
            "services",
            "create",
            "cli-svc",
            "--kind",
            "openai",
            "--base-url",
            base_url,
            "--set",
            r#"{"max_attempts": 2}"#,
        ])
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            o.stdout.contains("cli-svc"),
            "a table of the new service: {}",
            o.stdout
        );

        // Keys on standard input stay out of the command line.
        let o = keygate(
            &env,
            &["admin", "--json", "keys", "add", "cli-svc"],
            &format!("{}\n{}\n", SECRETS[0], SECRETS[1]),
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(o.json()["added"], 2, "{}", o.stdout);

        let o = run(vec!["admin", "--json", "keys", "list", "cli-svc"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let listed = o.json();
        let masks: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            masks,
            SECRETS
                .iter()
                .map(|s| keygate::crypto::mask(s))
                .collect::<Vec<_>>()
        );
        let first_id = listed[0]["id"].as_i64().unwrap().to_string();
        let table = run(vec!["admin", "keys", "list", "cli-svc"]).await;
        for s in SECRETS {
            assert!(
                !table.stdout.contains(s) && !o.stdout.contains(s),
                "a full key was printed"
            );
        }

        // The first key out of rotation; the gateway's own API shows it.
        let first: &'static str = Box::leak(first_id.into_boxed_str());
        let o = run(vec!["admin", "keys", "disable", "cli-svc", first]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let (_, keys) = app.admin("GET", "/admin/services/cli-svc/keys", None).await;
        assert_eq!(keys["items"][0]["status"], "disabled", "{keys}");
        assert_eq!(keys["items"][1]["status"], "active", "{keys}");

        let o = run(vec![
            "admin",
            "--json",
            "access-keys",
            "create",
            "cli-team",
            "--slugs",
            "cli-svc",
            "--rpm",
            "100",
        ])
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let access_key = o.json()["key"].as_str().unwrap().to_string();

        // The running gateway picks up what the CLI wrote (through Redis, or on the embedded
        // default by watching the audit log) and serves with it, on the key still in rotation.
        assert!(
            eventually(Duration::from_secs(10), || async {
                app.chat("cli-svc", &access_key).await.status() == 200
            })
            .await,
            "the running gateway never served with what the CLI wrote"
        );
        assert!(up.mock.seen().iter().all(|s| s.key == SECRETS[1]));

        // Every write is in the audit log, as the CLI's, named by the OS user.
        let (status, audit) = app
            .admin("GET", "/admin/audit?actor=cli:ops-tester&limit=100", None)
            .await;
        assert_eq!(status, 200, "{audit}");
        let actions: Vec<(String, String, String)> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["via"], "cli", "{e}");
                (
                    e["target_type"].as_str().unwrap().to_string(),
                    e["action"].as_str().unwrap().to_string(),
                    e["target_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for want in [
            ("service", "create", "cli-svc"),
            ("keys", "add", "cli-svc"),
            ("keys", "disable", "cli-svc"),
            ("access_key", "create", ""),
        ] {
            assert!(
                actions.iter().any(|a| a.0 == want.0
                    && a.1 == want.1
                    && (want.2.is_empty() || a.2 == want.2)),
                "{want:?} not in {actions:?}"
            );
        }
        let text = audit.to_string();
        assert!(!SECRETS.iter().any(|s| text.contains(s)) && !text.contains(&access_key));
        // The CLI reads the same log.
        let o = run(vec![
            "admin",
            "--json",
            "audit",
            "--actor",
            "cli:ops-tester",
            "--target-type",
            "service",
        ])
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let entries = o.json();
        assert!(
            entries
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(|e| e["target_type"] == "service")),
            "{entries}"
        );

        // Exit codes say what went wrong.
        assert_eq!(run(vec!["admin", "services", "get", "nope"]).await.code, 3);
        let dup = run(vec![
            "admin",
            "services",
            "create",
            "cli-svc",
            "--kind",
            "openai",
            "--base-url",
            base_url,
        ])
        .await;
        assert_eq!(
            (dup.code, dup.stderr.contains("already exists")),
            (4, true),
            "{}",
            dup.stderr
        );
        let bad = run(vec![
            "admin",
            "services",
            "create",
            "x",
            "--kind",
            "cohere",
            "--base-url",
            base_url,
        ])
        .await;
        assert_eq!(bad.code, 5, "{}", bad.stderr);
        assert!(bad.stderr.contains("cohere"), "{}", bad.stderr);
    }
);

both!(
    the_cli_drives_a_running_gateway_over_its_admin_api_with_a_url_and_a_token,
    |backend: Backend| async move {
        let app = TestApp::spawn(backend).await;
        let up = mock::start().await;
        // Nothing of the server's configuration: only where it is and a token.
        let env = vec![
            ("KEYGATE_URL".to_string(), app.base.clone()),
            ("KEYGATE_TOKEN".to_string(), app.token.clone()),
        ];
        let o = keygate(
            &env,
            &[
                "admin",
                "services",
                "create",
                "remote",
                "--kind",
                "openai",
                "--base-url",
                &up.base,
            ],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let (status, svc) = app.admin("GET", "/admin/services/remote", None).await;
        assert_eq!(
            (status, svc["base_url"].as_str()),
            (200, Some(up.base.as_str()))
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.csv");
        std::fs::write(
            &file,
            format!("key,balance\n{},5\n{},7.5\n", SECRETS[0], SECRETS[1]),
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let dry = keygate(
            &env,
            &[
                "admin",
                "--json",
                "keys",
                "import",
                "remote",
                file,
                "--dry-run",
            ],
            "",
        )
        .await;
        assert_eq!(
            (dry.code, dry.json()["dry_run"].clone()),
            (0, Value::Bool(true)),
            "{}",
            dry.stderr
        );
        let (_, none) = app.admin("GET", "/admin/services/remote/keys", None).await;
        assert_eq!(
            none["items"].as_array().unwrap().len(),
            0,
            "a dry run wrote keys"
        );
        let o = keygate(
            &env,
            &["admin", "--json", "keys", "import", "remote", file],
            "",
        )
        .await;
        assert_eq!(o.json()["added"], 2, "{}", o.stderr);
        let o = keygate(&env, &["admin", "--json", "keys", "list", "remote"], "").await;
        let balances: Vec<f64> = o
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["balance"].as_f64().unwrap())
            .collect();
        assert_eq!(balances, [5.0, 7.5]);

        let o = keygate(
            &env,
            &[
                "admin",
                "--json",
                "pricing",
                "create",
                "cli-model*",
                "--input",
                "1.5",
                "--output",
                "3",
                "--slug",
                "remote",
            ],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let o = keygate(
            &env,
            &[
                "admin",
                "--json",
                "pricing",
                "check",
                "cli-model-x",
                "--slug",
                "remote",
            ],
            "",
        )
        .await;
        assert_eq!(
            (
                o.json()["source"].as_str(),
                o.json()["input_per_mtok"].as_f64()
            ),
            (Some("rule"), Some(1.5))
        );

        let o = keygate(
            &env,
            &["admin", "users", "create", "cli-viewer", "--role", "viewer"],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            o.stderr.contains("password for cli-viewer (shown once)"),
            "{}",
            o.stderr
        );
        let o = keygate(
            &env,
            &[
                "admin",
                "users",
                "update",
                "cli-viewer",
                "--role",
                "operator",
            ],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let o = keygate(&env, &["admin", "--json", "users", "list"], "").await;
        let user = o
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == "cli-viewer")
            .cloned()
            .unwrap();
        assert_eq!(user["role"], "operator");

        let o = keygate(
            &env,
            &[
                "admin",
                "--json",
                "stats",
                "--service",
                "remote",
                "--bucket",
                "1h",
            ],
            "",
        )
        .await;
        assert_eq!(
            (o.code, o.json()["bucket"].as_str()),
            (0, Some("1h")),
            "{}",
            o.stderr
        );

        // Exit codes, remote: a bad token, a keygate that is not there, a command that only
        // works on the database.
        let bad_token = vec![
            ("KEYGATE_URL".to_string(), app.base.clone()),
            ("KEYGATE_TOKEN".to_string(), "not-a-token".to_string()),
        ];
        assert_eq!(
            keygate(&bad_token, &["admin", "services", "list"], "")
                .await
                .code,
            6
        );
        let closed = format!("http://127.0.0.1:{}", crate::servers::free_port());
        let gone = vec![
            ("KEYGATE_URL".to_string(), closed),
            ("KEYGATE_TOKEN".to_string(), app.token.clone()),
        ];
        let o = keygate(&gone, &["admin", "services", "list"], "").await;
        assert_eq!(o.code, 7, "{}", o.stderr);
        assert_eq!(
            keygate(&env, &["admin", "rotate-encryption-key"], "")
                .await
                .code,
            5
        );
        assert_eq!(
            keygate(&env, &["admin", "keys", "delete", "remote", "999999"], "")
                .await
                .code,
            3
        );
    }
);
