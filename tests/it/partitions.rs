//! Request-log retention: on Postgres whole daily partitions are dropped and the days ahead are
//! created before their rows arrive; on SQLite old rows are deleted by time.
use chrono::{DateTime, Duration, Utc};
use keygate::db::entity::request_log;
use keygate::db::log_partitions::{AHEAD_DAYS, name};
use keygate::db::logs::prune_at;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement};

use crate::both;
use crate::harness::{Backend, Shared, TestApp};
use crate::sinks::event;

/// A migrated database of the backend with no gateway on it, so that no background upkeep runs
/// between a test's steps; the `Shared` keeps the database's directory alive.
async fn migrated(b: Backend) -> (Shared, DatabaseConnection) {
    let shared = Shared::new(b).await;
    let db = keygate::db::connect(&shared.config.database).await.unwrap();
    (shared, db)
}

/// Writes one log row at `ts` the way the log writer does; returns its id.
async fn log_at(db: &DatabaseConnection, ts: DateTime<Utc>) -> uuid::Uuid {
    let mut ev = event("kept", 1);
    ev.ts = ts;
    request_log::Entity::insert(keygate::db::log_rows::row(&ev))
        .exec_without_returning(db)
        .await
        .unwrap();
    ev.id
}

async fn ids(db: &DatabaseConnection) -> Vec<uuid::Uuid> {
    let mut ids: Vec<_> = request_log::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

async fn table_exists(db: &DatabaseConnection, table: &str) -> bool {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT to_regclass('{table}') IS NOT NULL AS e"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "e").unwrap()
}

/// The partition (table) that holds the row.
async fn home(db: &DatabaseConnection, id: uuid::Uuid) -> String {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT tableoid::regclass::text AS t FROM request_logs WHERE id = $1",
            [id.into()],
        ))
        .await
        .unwrap()
        .expect("the row exists");
    row.try_get("", "t").unwrap()
}

both!(
    retention_removes_logs_older_than_it_and_on_postgres_drops_their_whole_day,
    |b: Backend| async move {
        let (_shared, db) = migrated(b).await;
        let now = Utc::now();
        let today = now.date_naive();
        if b == Backend::Postgres {
            // Partitions as a gateway running 10 and 2 days ago would have made them.
            for ago in [10, 2] {
                prune_at(&db, 0, now - Duration::days(ago)).await.unwrap();
            }
        }
        let old = log_at(&db, now - Duration::days(10)).await;
        let recent = log_at(&db, now - Duration::days(2)).await;
        let fresh = log_at(&db, now).await;

        let pruned = prune_at(&db, 5, now).await.unwrap();

        let mut kept = vec![recent, fresh];
        kept.sort();
        assert_eq!(ids(&db).await, kept, "only the row past 5 days is gone");
        assert!(!kept.contains(&old));
        if b == Backend::Sqlite {
            assert_eq!(pruned.rows_deleted, 1, "SQLite deletes by time");
            return;
        }
        let day = |d: i64| name(today + Duration::days(d));
        assert_eq!(pruned.rows_deleted, 0, "nothing was deleted row by row");
        assert!(
            pruned.partitions.dropped.contains(&day(-10)),
            "{:?}",
            pruned.partitions
        );
        assert!(
            !table_exists(&db, &day(-10)).await,
            "the old day is dropped"
        );
        assert!(
            table_exists(&db, &day(-5)).await,
            "a day not wholly past 5 days stays"
        );
        assert_eq!(home(&db, recent).await, day(-2));
        assert_eq!(home(&db, fresh).await, day(0));
        for ahead in 1..=AHEAD_DAYS {
            assert!(
                table_exists(&db, &day(ahead)).await,
                "{} exists",
                day(ahead)
            );
        }
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_before_their_day_had_a_partition_move_into_one_and_stale_ones_are_deleted() {
    let (_shared, db) = migrated(Backend::Postgres).await;
    let now = Utc::now();
    let beyond = now + Duration::days(AHEAD_DAYS + 1);
    let early = log_at(&db, beyond).await;
    // Older than the migration's first partition (bulk-loaded, or replayed after a long outage).
    let late = log_at(&db, now - Duration::days(3)).await;
    let stale = log_at(&db, now - Duration::days(40)).await;
    for id in [early, late, stale] {
        assert_eq!(home(&db, id).await, "request_logs_default");
    }

    // Tomorrow's run makes the day after the horizon, and a day for the late row.
    let pruned = prune_at(&db, 30, now + Duration::days(1)).await.unwrap();

    let early_day = name(beyond.date_naive());
    let late_day = name((now - Duration::days(3)).date_naive());
    assert_eq!(
        pruned.partitions.created,
        vec![late_day.clone(), early_day.clone()]
    );
    assert_eq!(home(&db, early).await, early_day, "moved out of DEFAULT");
    assert_eq!(home(&db, late).await, late_day, "moved out of DEFAULT");
    assert_eq!(
        pruned.rows_deleted, 1,
        "the stale DEFAULT row is deleted by time, not given a partition"
    );
    let mut kept = vec![early, late];
    kept.sort();
    assert_eq!(ids(&db).await, kept);
    assert_eq!(
        prune_at(&db, 30, now + Duration::days(1)).await.unwrap(),
        Default::default(),
        "a second run the same day changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_written_twice_to_the_partitioned_table_is_one_row() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let ev = event("twice", 1);
    app.state.events.request(ev.clone());
    app.state.events.request(ev.clone());
    app.state
        .events
        .flush_and_close(std::time::Duration::from_secs(30))
        .await;
    let db = app.state.db.clone();
    let n = keygate::db::logs::count_for_service(&db, "twice")
        .await
        .unwrap();
    assert_eq!(n, 1);
}
