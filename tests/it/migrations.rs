//! Schema migrations on a real database of each backend: money columns move from doubles to
//! integer micros and back without losing a value; request logs become daily partitions on
//! Postgres and a plain table again on rollback.
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait, Statement, Value};

use crate::both;
use crate::harness::Backend;
use crate::servers::servers;

/// An empty database of the backend; the guard keeps a SQLite file's directory alive.
async fn empty_db(backend: Backend) -> (DatabaseConnection, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
            (Database::connect(url).await.unwrap(), Some(dir))
        }
        Backend::Postgres => {
            let s = servers();
            let name = format!("m_{}", uuid::Uuid::new_v4().simple());
            let admin = Database::connect(format!("{}/postgres", s.pg_base))
                .await
                .unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin.close().await.unwrap();
            let db = Database::connect(format!("{}/{name}", s.pg_base))
                .await
                .unwrap();
            (db, None)
        }
    }
}

async fn exec(db: &DatabaseConnection, sql: &str, values: Vec<Value>) {
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        values,
    ))
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The columns of one row, read by name.
async fn one<T: sea_orm::TryGetable>(db: &DatabaseConnection, sql: &str, cols: &[&str]) -> Vec<T> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .expect("a row");
    cols.iter()
        .map(|c| {
            row.try_get::<T>("", c)
                .unwrap_or_else(|e| panic!("{c}: {e}"))
        })
        .collect()
}

/// Rows as the previous release wrote them, with amounts in currency units as doubles.
async fn seed_before_micros(db: &DatabaseConnection) {
    // `$n` for Postgres, `?` for SQLite.
    let ph = |n: usize| match db.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => (1..=n)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => vec!["?"; n].join(", "),
    };
    exec(
        db,
        &format!(
            "INSERT INTO services (tenant_id, slug, name, kind, base_url, strategy, model_aliases, \
             model_allow, connect_timeout_ms, request_timeout_ms, max_attempts) VALUES ({})",
            ph(11)
        ),
        vec![
            1i64.into(),
            "m".into(),
            "m".into(),
            "openai".into(),
            "http://h/v1".into(),
            "balance".into(),
            serde_json::json!({}).into(),
            serde_json::json!([]).into(),
            1000i32.into(),
            1000i32.into(),
            3i32.into(),
        ],
    )
    .await;
    exec(
        db,
        &format!(
            "INSERT INTO upstream_keys (service_id, secret, fingerprint, status, balance, \
             quota_total, quota_used) VALUES ({})",
            ph(7)
        ),
        vec![
            1i64.into(),
            "v1:x".into(),
            "fp".into(),
            "active".into(),
            0.24f64.into(),
            Value::Double(None),
            1.5f64.into(),
        ],
    )
    .await;
    exec(
        db,
        &format!(
            "INSERT INTO access_keys (tenant_id, name, prefix, hash, slugs, budget, spent) \
             VALUES ({})",
            ph(7)
        ),
        vec![
            1i64.into(),
            "a".into(),
            "kg-abcde".into(),
            "h".into(),
            serde_json::json!([]).into(),
            10.1f64.into(),
            (0.1f64 + 0.2f64).into(),
        ],
    )
    .await;
    exec(
        db,
        &format!(
            "INSERT INTO request_logs (id, ts, service, path, status, attempts, latency_ms, \
             prompt_tokens, cost) VALUES ({})",
            ph(9)
        ),
        vec![
            uuid::Uuid::now_v7().into(),
            chrono::Utc::now().into(),
            "m".into(),
            "v1/chat/completions".into(),
            200i32.into(),
            1i32.into(),
            12i64.into(),
            3i32.into(),
            0.000123f64.into(),
        ],
    )
    .await;
    exec(
        db,
        &format!(
            "INSERT INTO pricing_rules (pattern, input_per1m, output_per1m, per_request) \
             VALUES ({})",
            ph(4)
        ),
        vec!["gpt-*".into(), 0.15f64.into(), 0.6f64.into(), 0.0f64.into()],
    )
    .await;
}

both!(
    money_columns_become_exact_micros_and_come_back_on_rollback,
    |b: Backend| async move {
        let (db, _dir) = empty_db(b).await;
        Migrator::up(&db, Some(2)).await.unwrap();
        seed_before_micros(&db).await;

        Migrator::up(&db, None).await.unwrap();
        assert_eq!(
            one::<Option<i64>>(
                &db,
                "SELECT balance_micros, quota_total_micros, quota_used_micros FROM upstream_keys",
                &["balance_micros", "quota_total_micros", "quota_used_micros"],
            )
            .await,
            vec![Some(240_000), None, Some(1_500_000)],
            "0.24 is 240000 micros; NULL stays NULL"
        );
        assert_eq!(
            one::<i64>(
                &db,
                "SELECT budget_micros, spent_micros FROM access_keys",
                &["budget_micros", "spent_micros"],
            )
            .await,
            vec![10_100_000, 300_000],
            "0.1 + 0.2 stored as a double lands on exactly 300000"
        );
        assert_eq!(
            one::<i64>(
                &db,
                "SELECT cost_micros, prompt_tokens FROM request_logs",
                &["cost_micros", "prompt_tokens"],
            )
            .await,
            vec![123, 3]
        );
        assert_eq!(
            one::<i64>(
                &db,
                "SELECT input_per_mtok_micros, output_per_mtok_micros, per_request_micros \
                 FROM pricing_rules",
                &[
                    "input_per_mtok_micros",
                    "output_per_mtok_micros",
                    "per_request_micros"
                ],
            )
            .await,
            vec![150_000, 600_000, 0]
        );
        // The entities read the migrated schema, new request-log columns at their defaults.
        let k = keygate::db::entity::upstream_key::Entity::find()
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(k.balance_micros, Some(240_000));
        let log = keygate::db::entity::request_log::Entity::find()
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(log.cost_micros, Some(123));
        assert!(!log.streamed && !log.cancelled && !log.estimated);
        assert_eq!((log.tried, log.upstream_model), (None, None));

        // Back past the money migration (and every one after it).
        Migrator::down(&db, Some(Migrator::migrations().len() as u32 - 2))
            .await
            .unwrap();
        assert_eq!(
            one::<Option<f64>>(
                &db,
                "SELECT balance, quota_total, quota_used FROM upstream_keys",
                &["balance", "quota_total", "quota_used"],
            )
            .await,
            vec![Some(0.24), None, Some(1.5)]
        );
        assert_eq!(
            one::<f64>(
                &db,
                "SELECT budget, spent, (SELECT cost FROM request_logs) AS cost, \
                 (SELECT input_per1m FROM pricing_rules) AS input FROM access_keys",
                &["budget", "spent", "cost", "input"],
            )
            .await,
            vec![10.1, 0.3, 0.000123, 0.15]
        );
        let gone = db
            .execute_unprepared("SELECT streamed FROM request_logs")
            .await;
        assert!(gone.is_err(), "the request-event columns are dropped");
        // And up again: the migration is repeatable after a rollback.
        Migrator::up(&db, None).await.unwrap();
        assert_eq!(
            one::<i64>(
                &db,
                "SELECT spent_micros FROM access_keys",
                &["spent_micros"]
            )
            .await,
            vec![300_000]
        );
    }
);

/// The names of `request_logs`' partitions (none when it is a plain table).
async fn log_partitions(db: &DatabaseConnection) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'request_logs'::regclass ORDER BY 1",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get("", "name").unwrap())
        .collect()
}

/// The primary key's columns and the secondary indexes of `request_logs`.
async fn log_keys(db: &DatabaseConnection) -> (String, Vec<String>) {
    let pk = one::<String>(
        db,
        "SELECT pg_get_constraintdef(oid) AS pk FROM pg_constraint \
         WHERE conrelid = 'request_logs'::regclass AND contype = 'p'",
        &["pk"],
    )
    .await
    .remove(0);
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT c.relname::text AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = 'request_logs'::regclass AND NOT i.indisprimary ORDER BY 1",
        ))
        .await
        .unwrap();
    (
        pk,
        rows.iter()
            .map(|r| r.try_get("", "name").unwrap())
            .collect(),
    )
}

both!(
    request_logs_become_daily_partitions_with_their_rows_and_indexes_and_back_on_rollback,
    |b: Backend| async move {
        let (db, _dir) = empty_db(b).await;
        // Everything before the partitioning migration, then it alone (and back).
        let before = Migrator::migrations()
            .iter()
            .position(|m| m.name().ends_with("log_partitions"))
            .unwrap() as u32;
        Migrator::up(&db, Some(before)).await.unwrap();
        let now = chrono::Utc::now();
        let mut seeded = Vec::new();
        for ago in [3, 0] {
            let mut ev = crate::sinks::event("m", ago);
            ev.ts = now - chrono::Duration::days(ago as i64);
            keygate::db::entity::request_log::Entity::insert(keygate::db::log_rows::row(&ev))
                .exec_without_returning(&db)
                .await
                .unwrap();
            seeded.push(ev.id);
        }
        let ids = |db: DatabaseConnection| async move {
            let mut ids: Vec<_> = keygate::db::entity::request_log::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            ids.sort();
            ids
        };
        seeded.sort();
        let pg = b == Backend::Postgres;
        let indexes_before = if pg {
            Some(log_keys(&db).await.1)
        } else {
            None
        };

        Migrator::up(&db, Some(1)).await.unwrap();
        assert_eq!(ids(db.clone()).await, seeded, "every row is copied");
        if pg {
            let day = |d: i64| {
                keygate::db::log_partitions::name((now + chrono::Duration::days(d)).date_naive())
            };
            let mut want: Vec<String> = [-3, 0, 1, 2, 3, 4, 5, 6, 7].map(day).to_vec();
            want.push("request_logs_default".into());
            want.sort();
            assert_eq!(log_partitions(&db).await, want);
            let (pk, indexes) = log_keys(&db).await;
            assert_eq!(pk, "PRIMARY KEY (id, ts)");
            assert_eq!(Some(indexes), indexes_before, "the indexes carry over");
        }

        Migrator::down(&db, Some(1)).await.unwrap();
        assert_eq!(ids(db.clone()).await, seeded, "every row comes back");
        if pg {
            assert_eq!(log_partitions(&db).await, Vec::<String>::new());
            let (pk, indexes) = log_keys(&db).await;
            assert_eq!(pk, "PRIMARY KEY (id)");
            assert_eq!(Some(indexes), indexes_before);
        }
        // And up again: the migration is repeatable after a rollback.
        Migrator::up(&db, None).await.unwrap();
        assert_eq!(ids(db.clone()).await, seeded);
    }
);

/// Index definitions of `request_logs` by name, and whether it has a primary key.
async fn log_index_defs(
    db: &DatabaseConnection,
) -> (bool, std::collections::BTreeMap<String, String>) {
    let pk = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT 1 AS one FROM pg_constraint WHERE conrelid = 'request_logs'::regclass AND contype = 'p'",
        ))
        .await
        .unwrap()
        .is_some();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT indexname::text AS name, indexdef AS def FROM pg_indexes WHERE tablename = 'request_logs'",
        ))
        .await
        .unwrap();
    let defs = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "name").unwrap(),
                r.try_get("", "def").unwrap(),
            )
        })
        .collect();
    (pk, defs)
}

/// The plan of the log page query for `filter` as a prepared statement named `name`, planned as
/// the session says (generically here), as the pool's cached statements may come to be.
async fn generic_plan(
    txn: &sea_orm::DatabaseTransaction,
    name: &str,
    filter: &keygate::db::logs::LogFilter,
) -> Vec<String> {
    use sea_orm::sea_query::QueryBuilder;
    let q = sea_orm::QueryTrait::build(
        &keygate::db::logs::page_query(filter, None, 50),
        sea_orm::DbBackend::Postgres,
    );
    let args: Vec<String> = q
        .values
        .iter()
        .flat_map(|v| v.0.iter())
        .map(|v| sea_orm::sea_query::PostgresQueryBuilder.value_to_string(v))
        .collect();
    txn.execute_unprepared(&format!("PREPARE {name} AS {}", q.sql))
        .await
        .unwrap();
    let explain = if args.is_empty() {
        format!("EXPLAIN EXECUTE {name}")
    } else {
        format!("EXPLAIN EXECUTE {name}({})", args.join(", "))
    };
    txn.query_all_raw(Statement::from_string(
        sea_orm::DbBackend::Postgres,
        explain,
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get_by_index::<String>(0).unwrap())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_request_logs_keep_one_ascending_unique_time_index_read_backwards_and_index_only_statuses_from_300()
 {
    use sea_orm::TransactionTrait;
    let (db, _dir) = empty_db(Backend::Postgres).await;
    Migrator::up(&db, None).await.unwrap();
    let (pk, defs) = log_index_defs(&db).await;
    assert!(
        !pk,
        "no primary key: the unique time index is the conflict target"
    );
    assert!(
        defs["ux_request_logs_ts_id"].starts_with("CREATE UNIQUE INDEX")
            && defs["ux_request_logs_ts_id"].ends_with("(ts, id)"),
        "{defs:?}"
    );
    assert!(!defs.contains_key("ix_request_logs_ts_id"), "{defs:?}");
    assert!(
        defs["ix_request_logs_status_ts"].ends_with("WHERE (status >= 300)"),
        "{defs:?}"
    );

    // A status filter's page uses the partial index even under a generic plan, where the bound
    // status is unknown: the query carries the index's predicate as a literal.
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared(
        "INSERT INTO request_logs (id, ts, service, path, status, attempts, latency_ms) \
         SELECT gen_random_uuid(), now() - i * interval '1 second', 'svc', '/', \
                CASE WHEN i % 100 = 0 THEN 500 ELSE 200 END, 1, 5 \
         FROM generate_series(1, 20000) i; \
         ANALYZE request_logs; \
         SET LOCAL plan_cache_mode = force_generic_plan",
    )
    .await
    .unwrap();
    let filter = keygate::db::logs::LogFilter {
        status: Some(keygate::db::logs::StatusMatch::Exact(500)),
        ..Default::default()
    };
    let plan = generic_plan(&txn, "log_page", &filter).await;
    // Each partition's copy of the index is named after it (`request_logs_p<day>_status_ts_idx`).
    assert!(
        plan.iter().any(|l| l.contains("status_ts")) && plan.iter().any(|l| l.contains("$1")),
        "{plan:#?}"
    );

    // The newest-first page reads the ascending time index backwards, without a sort.
    let plan = generic_plan(&txn, "newest", &Default::default()).await;
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Scan Backward") && l.contains("ts_id"))
            // A sort node, not the merge's "Sort Key" (each partition's scan is already in order).
            && !plan.iter().any(|l| l.contains("Sort  (")),
        "{plan:#?}"
    );
    txn.rollback().await.unwrap();

    // One step down, the time index is descending again; another, the table has its primary
    // key and the full status index again.
    Migrator::down(&db, Some(1)).await.unwrap();
    let (_, defs) = log_index_defs(&db).await;
    assert!(
        defs["ux_request_logs_ts_id"].ends_with("(ts DESC, id DESC)"),
        "{defs:?}"
    );
    Migrator::down(&db, Some(1)).await.unwrap();
    let (pk, defs) = log_index_defs(&db).await;
    assert!(pk);
    assert!(
        defs["ix_request_logs_status_ts"].ends_with("(status, ts)"),
        "{defs:?}"
    );
    assert!(
        defs.contains_key("ix_request_logs_ts_id") && !defs.contains_key("ux_request_logs_ts_id")
    );
}
