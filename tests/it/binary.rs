//! The real `keygate` binary on the embedded default, as `cargo run` starts it: it creates its
//! SQLite file and secrets, prints a generated admin password once, and serves.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::eventually;
use crate::servers::free_port;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_starts_with_no_configuration_and_prints_the_admin_password_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("admin password line");
    let password = line.rsplit(": ").next().unwrap().trim().to_string();
    assert!(
        line.contains("generated password") && password.len() >= 16,
        "{line}"
    );

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    let r = http
        .post(format!("{base}/admin/auth/login"))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.path().join("data/keygate.db").exists());
    assert!(dir.path().join("data/encryption.key").exists());
    // Every file keygate made holds secrets (the database has password hashes and sealed keys):
    // readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", entry.path().display());
        }
    }
}

#[test]
fn migrate_command_creates_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("migrate")
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("migrations applied"));
    assert!(dir.path().join("data/keygate.db").exists());
    // Migrating an up-to-date database is a no-op that succeeds.
    let again = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("migrate")
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert!(again.status.success());
}

#[test]
fn enterprise_mode_refuses_to_start_without_shared_secrets_before_touching_the_database() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port: if keygate tried the database first, the error would be a
    // connection error instead of the missing secret.
    let closed = crate::servers::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .current_dir(dir.path())
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("postgres://keygate:hunter2@127.0.0.1:{closed}/keygate"),
        )
        .env("PORT", crate::servers::free_port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("keygate did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("KEYGATE_ENCRYPTION_KEY must be set"), "{err}");
    assert!(!err.contains("hunter2"), "no password in the error: {err}");
}
