//! Stored-key hygiene: keyed fingerprints (legacy ones brought up to date at start), encryption
//! key rotation that is resumable and leaves every secret readable, and the offline admin
//! commands of the binary.
use std::process::Command;

use keygate::crypto::{Cipher, sha256_hex};
use keygate::db::entity::upstream_key;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::both;
use crate::harness::{Backend, Shared, TestApp};

const KEYS: [&str; 3] = [
    "sk-rotate-key-00001",
    "sk-rotate-key-00002",
    "sk-rotate-key-00003",
];

/// The encryption key a config uses (given, or generated beside the SQLite database).
fn key_of(shared: &Shared) -> String {
    match &shared.config.crypto.encryption_key {
        Some(k) => k.expose_secret().to_string(),
        None => std::fs::read_to_string(shared.config.database.data_dir.join("encryption.key"))
            .unwrap()
            .trim()
            .to_string(),
    }
}

both!(
    rotating_the_encryption_key_reseals_every_secret_resumably_and_keeps_duplicates_found,
    |b: Backend| async move {
        let mut shared = Shared::new(b).await;
        let app = TestApp::spawn_with(&shared.config).await;
        app.create_service("rot", "openai", "http://127.0.0.1:9/v1")
            .await;
        app.add_keys("rot", &KEYS).await;
        let (s, _) = app
            .admin(
                "PATCH",
                "/admin/services/rot",
                Some(json!({"egress_proxy": "http://user:pass@127.0.0.1:3128"})),
            )
            .await;
        assert_eq!(s, 200);
        let old = key_of(&shared);
        drop(app);

        // A legacy row: fingerprinted with a keyless hash, as before fingerprints were keyed.
        let rows = upstream_key::Entity::find()
            .all(&app_db(&shared).await)
            .await
            .unwrap();
        let legacy = rows[0].clone();
        let mut am: upstream_key::ActiveModel = legacy.clone().into();
        am.fingerprint = Set(sha256_hex(KEYS[0]));
        am.update(&app_db(&shared).await).await.unwrap();

        // The new key, with the old one kept to decrypt.
        let new = Cipher::generate_encoded();
        shared.config.crypto.encryption_key = Some(SecretString::from(new.clone()));
        shared.config.crypto.previous_keys = Some(SecretString::from(old.clone()));
        let cipher = keygate::bootstrap::cipher(&shared.config).unwrap();
        let db = app_db(&shared).await;
        let first = keygate::db::rekey::rotate(&db, &cipher).await.unwrap();
        assert_eq!(first.secrets, 3, "{first:?}");
        assert_eq!(first.proxies, 1, "the service's proxy: {first:?}");
        assert_eq!(
            first.fingerprints, 3,
            "the legacy one and the two keyed with the old key"
        );
        assert_eq!(first.undecryptable, 0);
        let again = keygate::db::rekey::rotate(&db, &cipher).await.unwrap();
        assert_eq!(
            again,
            Default::default(),
            "a second run finds nothing left to do"
        );

        // The new key alone now reads every secret.
        let only_new = Cipher::from_encoded(&new).unwrap();
        for k in upstream_key::Entity::find().all(&db).await.unwrap() {
            assert!(KEYS.contains(&only_new.decrypt(&k.secret).unwrap().as_str()));
            assert!(k.fingerprint.starts_with("h1:"));
        }
        // A gateway on the new key alone still finds the duplicates.
        shared.config.crypto.previous_keys = None;
        let app = TestApp::spawn_with(&shared.config).await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/rot/keys",
                Some(json!({"keys": [{"key": KEYS[0]}, {"key": "sk-rotate-key-00004"}]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["added"].as_u64(), v["duplicates"].as_u64()),
            (Some(1), Some(1)),
            "{v}"
        );
        let (_, keys) = app.admin("GET", "/admin/services/rot/keys", None).await;
        for k in keys["items"].as_array().unwrap() {
            let masked = k["key"].as_str().unwrap();
            let shown = masked.chars().filter(|c| *c != '.').count();
            assert!(
                shown * 3 <= KEYS[0].len(),
                "{masked} shows more than a third"
            );
        }
    }
);

async fn app_db(shared: &Shared) -> sea_orm::DatabaseConnection {
    keygate::db::connect_only(&shared.config.database)
        .await
        .unwrap()
}

#[test]
fn the_binary_resets_a_password_offline_and_rotates_the_encryption_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // `migrate` creates the embedded database and the bootstrap admin.
    let (code, _, err) = run(&["migrate"], &[("ADMIN_PASSWORD", "first-password-123")]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&["admin", "users", "reset-password", "admin"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let password = out.trim().rsplit(": ").next().unwrap().to_string();
    assert!(
        out.starts_with("new password for admin: ") && password.len() >= 20,
        "{out}"
    );
    let (code, _, err) = run(&["admin", "users", "reset-password", "nobody"], &[]);
    // 3: not found (`keygate admin --help` lists the exit codes).
    assert_eq!(code, Some(3));
    assert!(err.contains("no user named 'nobody'"), "{err}");

    // (The sealing itself is tested above; here the command's wiring and its report.)
    let old = Cipher::generate_encoded();
    let new = Cipher::generate_encoded();
    let (code, out, err) = run(
        &["admin", "rotate-encryption-key"],
        &[
            ("KEYGATE_ENCRYPTION_KEY", &new),
            ("KEYGATE_PREVIOUS_ENCRYPTION_KEYS", old.trim()),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("0 undecryptable"), "{out}");
}
