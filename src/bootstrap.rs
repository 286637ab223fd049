//! First-start work: secrets for the embedded default, and the bootstrap admin user.
use std::path::Path;

use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::crypto::{self, Cipher};
use crate::db;

/// Reads a secret from config, or (embedded default only) from a file in the data dir, creating
/// it on first start. Enterprise mode refuses to start without it: replicas must share it.
pub fn secret_or_generate(
    cfg: &Config,
    given: Option<&SecretString>,
    env_name: &str,
    file: &str,
    generate: impl Fn() -> String,
) -> anyhow::Result<SecretString> {
    if let Some(s) = given.filter(|s| !s.expose_secret().is_empty()) {
        return Ok(s.clone());
    }
    if cfg.is_enterprise() {
        anyhow::bail!("{env_name} must be set in enterprise mode (DATABASE_URL is Postgres)");
    }
    let path = cfg.database.data_dir.join(file);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(SecretString::from(s));
        }
    }
    std::fs::create_dir_all(&cfg.database.data_dir)?;
    let s = generate();
    write_private(&path, &s)?;
    tracing::warn!(
        path = %path.display(),
        "{env_name} not set: generated one and stored it beside the database; set {env_name} for production"
    );
    Ok(SecretString::from(s))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

pub fn cipher(cfg: &Config) -> anyhow::Result<Cipher> {
    let key = secret_or_generate(
        cfg,
        cfg.crypto.encryption_key.as_ref(),
        "KEYGATE_ENCRYPTION_KEY",
        "encryption.key",
        Cipher::generate_encoded,
    )?;
    let previous = cfg
        .crypto
        .previous_keys
        .as_ref()
        .map(|k| k.expose_secret().to_string())
        .unwrap_or_default();
    Ok(Cipher::from_encoded(key.expose_secret())?
        .with_previous(previous.split(',').map(str::trim).filter(|k| !k.is_empty()))?)
}

pub fn jwt_secret(cfg: &Config) -> anyhow::Result<SecretString> {
    let s = secret_or_generate(
        cfg,
        cfg.auth.jwt_secret.as_ref(),
        "JWT_SECRET",
        "jwt.secret",
        || crypto::random_token(48),
    )?;
    if s.expose_secret().len() < 16 {
        anyhow::bail!("JWT_SECRET must be at least 16 characters");
    }
    Ok(s)
}

/// Creates the admin user when the users table is empty. Without `ADMIN_PASSWORD` a password is
/// generated and printed once to stdout (not to the log stream).
pub async fn ensure_admin(db: &DatabaseConnection, cfg: &Config) -> anyhow::Result<()> {
    if db::users::count(db).await? > 0 {
        return Ok(());
    }
    let name = cfg.auth.admin_username.trim();
    if name.is_empty() {
        anyhow::bail!("ADMIN_USERNAME must not be empty");
    }
    let (password, generated) = match &cfg.auth.admin_password {
        Some(p) if !p.expose_secret().is_empty() => (p.expose_secret().to_string(), false),
        _ => (crypto::random_token(20), true),
    };
    let hash = crypto::hash_password(&password)?;
    match db::users::create(db, None, name, hash, "admin").await {
        Ok(_) => {}
        // Another replica created it first.
        Err(e) if db::is_unique_violation(&e) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if generated {
        println!(
            "keygate: created admin user '{name}' with generated password: {password}\n\
             keygate: this is shown once; set ADMIN_PASSWORD to choose it yourself."
        );
    } else {
        tracing::info!(username = name, "created admin user from ADMIN_PASSWORD");
    }
    Ok(())
}
