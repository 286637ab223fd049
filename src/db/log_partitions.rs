//! Daily partitions of `request_logs` on Postgres (see migration 009): the days ahead are created
//! before their rows arrive, and whole days past the retention are dropped instead of deleted.
//!
//! Partitions are named `request_logs_pYYYYMMDD` and hold one UTC day; `request_logs_default`
//! takes rows no day partition covers (a gateway that did not run maintenance for a week, a clock
//! far off, rows loaded in bulk); the next run gives their days a partition and moves them there.
use std::collections::BTreeSet;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait,
};

/// Days after today that get a partition (the same horizon as the migration's).
pub const AHEAD_DAYS: i64 = 7;
const PREFIX: &str = "request_logs_p";
const DEFAULT: &str = "request_logs_default";
/// Replicas run the maintenance every hour: one at a time, or two would create the same day.
const LOCK: i64 = 7_242_017_009;

/// What one maintenance run changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// Rows deleted by time from the DEFAULT partition.
    pub deleted: u64,
}

pub fn name(day: NaiveDate) -> String {
    format!("{PREFIX}{}", day.format("%Y%m%d"))
}

/// The day of a partition named by [`name`]; None for any other table (chrono alone would read
/// seven digits as a date too).
fn day_of(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

fn start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// True when `request_logs` is the partitioned table of migration 009 (false on SQLite).
pub async fn partitioned(db: &DatabaseConnection) -> Result<bool, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(false);
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT relkind::text = 'p' AS p FROM pg_class WHERE oid = 'request_logs'::regclass",
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get::<bool>("", "p"))
        .transpose()?
        .unwrap_or(false))
}

/// Ensures partitions for `now`'s day, the days ahead and the days of rows waiting in DEFAULT,
/// and drops the day partitions that end at or before `cutoff` (rows in DEFAULT older than it are
/// deleted). One transaction, so a
/// failure changes nothing; it holds the parent's lock only for catalog changes, not for a scan.
pub async fn maintain(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    cutoff: Option<DateTime<Utc>>,
) -> Result<Changes, DbErr> {
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({LOCK})"))
        .await?;
    // Inserts wait behind DROP and ATTACH: better to give up for an hour than stall the writer.
    txn.execute_unprepared("SET LOCAL lock_timeout = '5s'")
        .await?;
    let existing = partitions(&txn).await?;
    let has_default = existing.iter().any(|p| p == DEFAULT);
    let mut days: BTreeSet<NaiveDate> = (0..=AHEAD_DAYS)
        .map(|d| now.date_naive() + Duration::days(d))
        .collect();
    if has_default {
        days.extend(days_in_default(&txn).await?);
    }
    let mut changes = Changes::default();
    let expired = |day: NaiveDate| cutoff.is_some_and(|c| start(day + Duration::days(1)) <= c);
    for day in days.into_iter().filter(|d| !expired(*d)) {
        let name = name(day);
        if !existing.contains(&name) {
            create(&txn, day, has_default).await?;
            changes.created.push(name);
        }
    }
    if let Some(cutoff) = cutoff {
        for (name, day) in existing.iter().filter_map(|n| Some((n, day_of(n)?))) {
            if expired(day) {
                txn.execute_unprepared(&format!("DROP TABLE IF EXISTS {name}"))
                    .await?;
                changes.dropped.push(name.clone());
            }
        }
        if has_default {
            changes.deleted = txn
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    format!("DELETE FROM {DEFAULT} WHERE ts < $1"),
                    [cutoff.into()],
                ))
                .await?
                .rows_affected();
        }
    }
    txn.commit().await?;
    Ok(changes)
}

async fn partitions(txn: &DatabaseTransaction) -> Result<Vec<String>, DbErr> {
    let rows = txn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'request_logs'::regclass",
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String>("", "name"))
        .collect()
}

/// The UTC days of the rows in DEFAULT (normally none: the scan of an empty table is free).
async fn days_in_default(txn: &DatabaseTransaction) -> Result<Vec<NaiveDate>, DbErr> {
    let rows = txn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS day FROM {DEFAULT}"),
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<NaiveDate>("", "day"))
        .collect()
}

/// Creates the day's partition. Rows of that day already in DEFAULT (written while the day had no
/// partition) are moved into it first: attaching a range that DEFAULT still holds rows of fails.
async fn create(txn: &DatabaseTransaction, day: NaiveDate, has_default: bool) -> Result<(), DbErr> {
    let name = name(day);
    let (from, to) = (start(day), start(day + Duration::days(1)));
    let bounds = format!(
        "FROM ('{}') TO ('{}')",
        from.format("%Y-%m-%d %H:%M:%S+00"),
        to.format("%Y-%m-%d %H:%M:%S+00")
    );
    if !has_default {
        return txn
            .execute_unprepared(&format!(
                "CREATE TABLE {name} PARTITION OF request_logs FOR VALUES {bounds}"
            ))
            .await
            .map(|_| ());
    }
    txn.execute_unprepared(&format!(
        "CREATE TABLE {name} (LIKE request_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    ))
    .await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "WITH moved AS (DELETE FROM {DEFAULT} WHERE ts >= $1 AND ts < $2 RETURNING *) \
             INSERT INTO {name} SELECT * FROM moved"
        ),
        [from.into(), to.into()],
    ))
    .await?;
    // The parent's indexes are built on the new table as it attaches.
    txn.execute_unprepared(&format!(
        "ALTER TABLE request_logs ATTACH PARTITION {name} FOR VALUES {bounds}"
    ))
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_name_round_trips_to_its_day_and_other_names_are_not_days() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        assert_eq!(name(day), "request_logs_p20261122");
        assert_eq!(day_of(&name(day)), Some(day));
        assert_eq!(day_of(DEFAULT), None);
        assert_eq!(day_of("request_logs_p2026112"), None);
    }
}
