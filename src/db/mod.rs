//! Relational store (SeaORM): Postgres in enterprise mode, a SQLite file by default. Handlers call the
//! per-aggregate query functions here and never build SQL themselves.
pub mod access_keys;
pub mod audit;
pub mod entity;
pub mod health;
pub mod keys;
pub mod log_partitions;
pub mod log_rows;
pub mod logs;
pub mod pricing;
pub mod rekey;
pub mod rollups;
pub mod services;
pub mod tenants;
pub mod users;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, RuntimeErr,
    TransactionTrait,
};
use secrecy::ExposeSecret;

use crate::config::DatabaseConfig;

/// The default tenant created by the first migration.
pub const DEFAULT_TENANT: i64 = 1;

/// Where the embedded default keeps its SQLite file.
pub fn sqlite_url(cfg: &DatabaseConfig) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        cfg.data_dir.join("keygate.db").display()
    )
}

/// Creates the SQLite file readable by its owner only (0600) before SQLite does (which would use
/// the umask, typically 0644): it holds the encrypted keys and the users' password hashes. SQLite
/// gives its `-wal` and `-shm` files the database file's permissions. An existing file is
/// tightened too.
fn private_sqlite_file(path: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The URL in use, without any password, for log lines.
pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Connects and runs pending migrations.
pub async fn connect(cfg: &DatabaseConfig) -> anyhow::Result<DatabaseConnection> {
    let db = connect_only(cfg).await?;
    migrate(&db).await?;
    Ok(db)
}

/// Runs pending migrations. On Postgres, replicas starting together take turns: the migrations run
/// in one transaction holding an advisory lock, and Postgres DDL is transactional.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        let txn = db.begin().await?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(7242017001)")
            .await?;
        Migrator::up(&txn, None).await?;
        txn.commit().await?;
    } else {
        Migrator::up(db, None).await?;
    }
    Ok(())
}

pub async fn connect_only(cfg: &DatabaseConfig) -> anyhow::Result<DatabaseConnection> {
    let url = match &cfg.url {
        Some(u) if !u.expose_secret().is_empty() => u.expose_secret().to_string(),
        _ => {
            std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
                anyhow::anyhow!("cannot create data dir {}: {e}", cfg.data_dir.display())
            })?;
            private_sqlite_file(&cfg.data_dir.join("keygate.db"))?;
            sqlite_url(cfg)
        }
    };
    let sqlite = url.starts_with("sqlite:");
    let mut opts = ConnectOptions::new(url.clone());
    opts.max_connections(if sqlite { 8 } else { cfg.max_connections })
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let db = Database::connect(opts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", redacted_url(&url)))?;
    if sqlite {
        // WAL lets the request-log writer and admin reads proceed side by side.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    Ok(db)
}

/// A transaction that reads before it writes. On SQLite it takes the write lock at `BEGIN`
/// (`IMMEDIATE`), waiting out the busy timeout for it: a deferred one that read first fails at
/// once with "database is locked" when another connection (the request-log writer) committed
/// in between, as it cannot upgrade its read snapshot. Postgres ignores the mode.
pub async fn begin_write(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// A query error from sqlx used directly (the Postgres-only bulk paths), in the shape sea-orm
/// gives its own, so the same checks read both.
pub fn sqlx_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(e)))
}

/// True when the error is a unique-constraint violation (both backends).
pub fn is_unique_violation(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// True when the pool could not hand out a connection in time.
pub fn is_pool_exhausted(e: &DbErr) -> bool {
    match e {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(_)) => true,
        _ => false,
    }
}

pub async fn ping(db: &DatabaseConnection) -> bool {
    db.ping().await.is_ok()
}
