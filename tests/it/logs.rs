//! `/admin/logs`: filters, cursor paging across replicas and concurrent inserts, tenant
//! isolation, one row by id, and the streamed CSV / NDJSON export.
use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keygate::db::entity::request_log;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, IntoActiveModel};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock;

/// A log row as the log writer would store it; tests change the fields they filter on.
fn row(service: &str, ts: DateTime<Utc>) -> request_log::Model {
    request_log::Model {
        id: keygate::events::log_id(ts),
        ts,
        service: service.into(),
        access_key_id: None,
        upstream_key_id: None,
        model: Some("gpt-test".into()),
        path: "/v1/chat/completions".into(),
        status: 200,
        attempts: 1,
        latency_ms: 12,
        ttft_ms: None,
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        cache_read_tokens: Some(0),
        cache_write_tokens: Some(0),
        cost_micros: Some(1_500),
        error_kind: None,
        upstream_model: None,
        streamed: false,
        cancelled: false,
        estimated: false,
        client_format: Some("openai".into()),
        upstream_format: Some("openai".into()),
        tried: None,
        target: None,
    }
}

async fn seed(app: &TestApp, rows: &[request_log::Model]) {
    for chunk in rows.chunks(200) {
        request_log::Entity::insert_many(chunk.iter().cloned().map(|r| r.into_active_model()))
            .exec_without_returning(&app.state.db)
            .await
            .unwrap();
    }
}

fn at(secs_ago: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(secs_ago)
}

/// Every row of a listing, following `next_cursor` with pages of `limit`.
async fn all_pages(app: &TestApp, token: &str, query: &str, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("/admin/logs?limit={limit}&{query}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = app.admin_as(token, "GET", &q, None).await;
        assert_eq!(s, 200, "{q}: {v}");
        out.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn id_set(rows: &[&request_log::Model]) -> HashSet<String> {
    rows.iter().map(|r| r.id.to_string()).collect()
}

/// Rows (ts desc, id desc): each item strictly older than the one before.
fn assert_newest_first(items: &[Value]) {
    let keys: Vec<(DateTime<Utc>, Uuid)> = items
        .iter()
        .map(|i| {
            (
                i["ts"].as_str().unwrap().parse().unwrap(),
                i["id"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    for w in keys.windows(2) {
        assert!(w[0] > w[1], "not newest first: {w:?}");
    }
}

async fn access_key(app: &TestApp, name: &str) -> (i64, String) {
    let (s, v) = app
        .admin("POST", "/admin/access-keys", Some(json!({"name": name})))
        .await;
    assert_eq!(s, 201, "{v}");
    (v["id"].as_i64().unwrap(), v["key"].as_str().unwrap().into())
}

async fn key_ids(app: &TestApp, slug: &str) -> Vec<i64> {
    let (_, v) = app
        .admin("GET", &format!("/admin/services/{slug}/keys"), None)
        .await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect()
}

async fn row_count(app: &TestApp) -> usize {
    all_pages(app, &app.token, "", 500).await.len()
}

both!(
    logs_are_filtered_and_paged_across_two_replicas_traffic_and_new_rows_do_not_shift_pages,
    |b: Backend| async move {
        let up = mock::start().await;
        let shared = Shared::new(b).await;
        let a = TestApp::spawn_with(&shared.config).await;
        // Two replicas share Postgres and Redis; SQLite is one process's embedded store.
        let second = match b {
            Backend::Postgres => Some(TestApp::spawn_with(&shared.config).await),
            Backend::Sqlite => None,
        };
        let replicas: Vec<&TestApp> = std::iter::once(&a).chain(second.as_ref()).collect();
        a.create_service("alpha", "openai", &up.base).await;
        a.add_keys("alpha", &["sk-logs-alpha-key-0001"]).await;
        a.create_service("beta", "openai", &up.base).await;
        a.add_keys("beta", &["sk-logs-beta-key-0002"]).await;
        let (ak1_id, ak1) = access_key(&a, "one").await;
        let (ak2_id, ak2) = access_key(&a, "two").await;
        let beta_key = key_ids(&a, "beta").await[0];
        for r in &replicas {
            assert!(
                eventually(Duration::from_secs(5), || async {
                    r.state.snapshot.load().version == a.state.snapshot.load().version
                })
                .await
            );
        }
        for i in 0..10 {
            let app = replicas[i % replicas.len()];
            let (slug, ak) = if i < 6 {
                ("alpha", &ak1)
            } else {
                ("beta", &ak2)
            };
            assert_eq!(app.chat(slug, ak).await.status(), 200);
        }
        assert!(
            eventually(Duration::from_secs(10), || async {
                row_count(&a).await == 10
            })
            .await,
            "both replicas' rows land"
        );

        let every = all_pages(&a, &a.token, "", 3).await;
        assert_eq!(every.len(), 10);
        assert_eq!(ids(&every).into_iter().collect::<HashSet<_>>().len(), 10);
        assert_newest_first(&every);
        let alpha = all_pages(&a, &a.token, "service=alpha", 4).await;
        assert_eq!(alpha.len(), 6);
        assert!(alpha.iter().all(|i| i["service"] == "alpha"));
        let by_ak = all_pages(&a, &a.token, &format!("access_key={ak2_id}"), 2).await;
        assert_eq!(by_ak.len(), 4);
        assert!(by_ak.iter().all(|i| i["access_key_id"] == ak2_id));
        assert_eq!(
            all_pages(&a, &a.token, &format!("access_key={ak1_id}"), 50)
                .await
                .len(),
            6
        );
        let by_key = all_pages(&a, &a.token, &format!("key={beta_key}"), 50).await;
        assert_eq!(ids(&by_key), ids(&by_ak), "beta's key served ak2's calls");
        let shown = &by_key[0];
        assert_eq!(shown["key"], "sk-...0002", "{shown}");
        assert_eq!(
            shown["tried"],
            json!([{"key_id": beta_key, "key": "sk-...0002"}])
        );
        assert!(!shown.to_string().contains("sk-logs-beta-key-0002"));
        assert_eq!(shown["status"], 200);
        assert_eq!(shown["model"], "gpt-test");

        // Page 1 is read, then more traffic lands on both replicas: the next pages continue
        // strictly older than page 1, none of the new rows shift or repeat rows.
        let (s, p1) = a.admin("GET", "/admin/logs?limit=4", None).await;
        assert_eq!(s, 200);
        let cursor = p1["next_cursor"].as_str().unwrap().to_string();
        for r in &replicas {
            assert_eq!(r.chat("alpha", &ak1).await.status(), 200);
            assert_eq!(r.chat("beta", &ak2).await.status(), 200);
        }
        let total = 10 + 2 * replicas.len();
        assert!(
            eventually(Duration::from_secs(10), || async {
                row_count(&a).await == total
            })
            .await
        );
        let (s, p2) = a
            .admin(
                "GET",
                &format!("/admin/logs?limit=100&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{p2}");
        let mut paged = ids(p1["items"].as_array().unwrap());
        paged.extend(ids(p2["items"].as_array().unwrap()));
        assert_eq!(
            paged,
            ids(&every),
            "the pages equal the listing before the inserts"
        );
        assert!(p2["next_cursor"].is_null());
    }
);

both!(
    every_filter_narrows_the_log_to_the_matching_rows,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("svc", "openai", "http://127.0.0.1:9/v1")
            .await;
        app.add_keys("svc", &["sk-filter-key-one-0001", "sk-filter-key-two-0002"])
            .await;
        let keys = key_ids(&app, "svc").await;
        let rows = vec![
            request_log::Model {
                upstream_key_id: Some(keys[0]),
                tried: Some(format!("[{},{}]", keys[1], keys[0])),
                attempts: 2,
                access_key_id: Some(7),
                ..row("svc", at(50))
            },
            request_log::Model {
                status: 429,
                error_kind: Some("rate_limit".into()),
                upstream_key_id: Some(keys[1]),
                tried: Some(format!("[{}]", keys[1])),
                ..row("svc", at(40))
            },
            request_log::Model {
                status: 503,
                error_kind: Some("server_error".into()),
                ..row("svc", at(30))
            },
            request_log::Model {
                model: Some("alias".into()),
                upstream_model: Some("gpt-real".into()),
                streamed: true,
                ttft_ms: Some(80),
                ..row("svc", at(20))
            },
            request_log::Model {
                estimated: true,
                target: Some("svc".into()),
                ..row("router", at(10))
            },
            row("svc", at(7200)),
        ];
        seed(&app, &rows).await;
        let r = |i: usize| &rows[i];
        let from = (Utc::now() - chrono::Duration::seconds(3600)).to_rfc3339();
        let to = at(25).to_rfc3339();
        let cases: Vec<(String, HashSet<String>)> = vec![
            ("service=router".into(), id_set(&[r(4)])),
            ("access_key=7".into(), id_set(&[r(0)])),
            (format!("key={}", keys[1]), id_set(&[r(1)])),
            ("model=gpt-real".into(), id_set(&[r(3)])),
            ("model=alias".into(), id_set(&[r(3)])),
            ("upstream_model=alias".into(), HashSet::new()),
            ("upstream_model=gpt-real".into(), id_set(&[r(3)])),
            ("status=429".into(), id_set(&[r(1)])),
            ("status=5xx".into(), id_set(&[r(2)])),
            ("status=4xx".into(), id_set(&[r(1)])),
            ("error_kind=server_error".into(), id_set(&[r(2)])),
            ("streamed=true".into(), id_set(&[r(3)])),
            ("estimated=true".into(), id_set(&[r(4)])),
            ("target=svc".into(), id_set(&[r(4)])),
            (
                format!("from={}", urlencode(&from)),
                id_set(&[r(0), r(1), r(2), r(3), r(4)]),
            ),
            (
                format!("from={}&to={}", urlencode(&from), urlencode(&to)),
                id_set(&[r(0), r(1), r(2)]),
            ),
            (
                "service=svc&status=2xx&streamed=false".into(),
                id_set(&[r(0), r(5)]),
            ),
        ];
        for (q, want) in cases {
            let got: HashSet<String> = ids(&all_pages(&app, &app.token, &q, 2).await)
                .into_iter()
                .collect();
            assert_eq!(got, want, "?{q}");
        }

        // One row by id: masked keys, the tried list in order, cost in currency units.
        let (s, v) = app
            .admin("GET", &format!("/admin/logs/{}", rows[0].id), None)
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["key"], "sk-...0001");
        assert_eq!(
            v["tried"],
            json!([{"key_id": keys[1], "key": "sk-...0002"}, {"key_id": keys[0], "key": "sk-...0001"}])
        );
        assert_eq!(v["cost"], 0.0015);
        assert_eq!(v["attempts"], 2);
        assert!(!v.to_string().contains("sk-filter-key"));
        for missing in [
            Uuid::now_v7().to_string(),
            Uuid::new_v4().to_string(),
            "not-a-uuid".into(),
        ] {
            let (s, v) = app
                .admin("GET", &format!("/admin/logs/{missing}"), None)
                .await;
            assert_eq!(s, 404, "{v}");
        }

        for (q, param) in [
            ("status=6xx", "status"),
            ("status=ok", "status"),
            ("streamed=yes", "streamed"),
            ("estimated=1", "estimated"),
            ("from=yesterday", "from"),
            ("to=2026-13-01", "to"),
            ("access_key=abc", "access_key"),
            ("key=k1", "key"),
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            ("cursor=garbage", "cursor"),
            (
                "status=429&status=500",
                "Failed to deserialize query string: duplicate field `status`",
            ),
        ] {
            let (s, v) = app.admin("GET", &format!("/admin/logs?{q}"), None).await;
            assert_eq!(s, 400, "?{q}: {v}");
            assert!(
                v["detail"].as_str().unwrap().starts_with(param),
                "?{q}: {v}"
            );
        }
    }
);

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

both!(
    a_tenant_user_sees_only_the_log_rows_of_its_own_services,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        keygate::db::entity::tenant::ActiveModel {
            id: Set(2),
            name: Set("other".into()),
            created_at: Set(Utc::now()),
        }
        .insert(&app.state.db)
        .await
        .unwrap();
        app.create_service("t1-svc", "openai", "http://127.0.0.1:9/v1")
            .await;
        let (s, v) = app
            .admin("POST", "/admin/users", Some(json!({"username": "t2logs", "password": "tenant-two-pass", "role": "viewer", "tenant_id": 2})))
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = app
            .admin("POST", "/admin/users", Some(json!({"username": "t2op", "password": "tenant-two-pass", "role": "operator", "tenant_id": 2})))
            .await;
        assert_eq!(s, 201, "{v}");
        let op = app.login("t2op", "tenant-two-pass").await;
        let (s, v) = app
            .admin_as(&op, "POST", "/admin/services", Some(json!({"slug": "t2-svc", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"})))
            .await;
        assert_eq!(s, 201, "{v}");
        let t2 = app.login("t2logs", "tenant-two-pass").await;
        let theirs = row("t2-svc", at(5));
        let other = row("t1-svc", at(4));
        seed(&app, &[theirs.clone(), other.clone()]).await;

        let seen = ids(&all_pages(&app, &t2, "", 50).await);
        assert_eq!(seen, vec![theirs.id.to_string()]);
        assert!(all_pages(&app, &t2, "service=t1-svc", 50).await.is_empty());
        let (s, _) = app
            .admin_as(&t2, "GET", &format!("/admin/logs/{}", other.id), None)
            .await;
        assert_eq!(s, 404, "another tenant's row is not found");
        let (s, _) = app
            .admin_as(&t2, "GET", &format!("/admin/logs/{}", theirs.id), None)
            .await;
        assert_eq!(s, 200);
        let export = app
            .http
            .get(app.url("/admin/logs/export?format=ndjson"))
            .bearer_auth(&t2)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(export.lines().count(), 1, "{export}");
        assert!(export.contains(&theirs.id.to_string()));
        // The global admin sees both tenants' rows.
        assert_eq!(all_pages(&app, &app.token, "", 50).await.len(), 2);
    }
);

async fn export(app: &TestApp, query: &str) -> (reqwest::header::HeaderMap, String) {
    let r = app
        .http
        .get(app.url(&format!("/admin/logs/export?{query}")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    let h = r.headers().clone();
    (h, r.text().await.unwrap())
}

both!(
    export_streams_exactly_the_filtered_rows_as_csv_and_ndjson,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        // More rows than one export chunk, so the stream pages through the database.
        let mut rows: Vec<request_log::Model> = (0..2300)
            .map(|i| request_log::Model {
                status: if i % 10 == 0 { 500 } else { 200 },
                cost_micros: Some(1_234_567),
                ..row("exp", at(i))
            })
            .collect();
        rows.push(row("elsewhere", at(1)));
        seed(&app, &rows).await;
        let want: HashSet<String> = rows
            .iter()
            .filter(|r| r.service == "exp" && r.status == 200)
            .map(|r| r.id.to_string())
            .collect();
        assert_eq!(want.len(), 2070);

        let (h, csv) = export(&app, "format=csv&service=exp&status=2xx").await;
        assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
        let disposition = h["content-disposition"].to_str().unwrap();
        assert!(
            disposition.starts_with("attachment; filename=\"keygate-logs-")
                && disposition.ends_with(".csv\""),
            "{disposition}"
        );
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(&header[..3], ["id", "ts", "service"]);
        assert!(header.contains(&"tried".to_string()) && header.contains(&"cost".to_string()));
        let cost_col = header.iter().position(|c| c == "cost").unwrap();
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 2070, "one row per matching log, no repeats");
        let got: HashSet<String> = records.iter().map(|r| r[0].to_string()).collect();
        assert_eq!(got, want);
        assert_eq!(&records[0][cost_col], "1.234567");

        let (h, nd) = export(&app, "format=ndjson&service=exp&status=2xx").await;
        assert_eq!(h["content-type"], "application/x-ndjson");
        assert!(
            h["content-disposition"]
                .to_str()
                .unwrap()
                .ends_with(".ndjson\"")
        );
        let items: Vec<Value> = nd
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(items.len(), 2070);
        assert_newest_first(&items);
        assert_eq!(ids(&items).into_iter().collect::<HashSet<_>>(), want);

        let r = app
            .http
            .get(app.url("/admin/logs/export?format=xml"))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(v["detail"].as_str().unwrap().starts_with("format"), "{v}");
    }
);

both!(
    every_field_of_a_written_batch_reads_back_as_the_writer_meant_it,
    |b: Backend| async move {
        use keygate::events::{RequestEvent, Tokens, log_writer};
        use sea_orm::{ColumnTrait, QueryFilter, TryIntoModel};
        let app = TestApp::spawn(b).await;
        // Microseconds are what both databases keep of a time.
        let ts =
            DateTime::from_timestamp_micros(Utc::now().timestamp_micros() - 5_000_123).unwrap();
        let full = RequestEvent {
            id: keygate::events::log_id(ts),
            ts,
            service: "rt-ünïcode".into(),
            access_key_id: Some(i64::MAX),
            upstream_key_id: Some(-7),
            tried: vec![3, -7],
            model: Some("模型-🙂".into()),
            upstream_model: Some("upstream/model:v2".into()),
            path: format!("/v1/{}", "p".repeat(600)),
            status: 599,
            attempts: u32::MAX,
            latency_ms: u64::MAX,
            ttft_ms: Some(0),
            tokens: Tokens {
                prompt: 1,
                completion: u64::MAX,
                cache_read: 3,
                cache_write: 4,
            },
            cost_micros: Some(-12),
            error_kind: Some("rate_limited".into()),
            streamed: true,
            cancelled: true,
            estimated: true,
            client_format: "anthropic",
            upstream_format: "gemini",
            target: Some("target-slug".into()),
            bodies: None,
        };
        let bare = RequestEvent {
            id: keygate::events::log_id(ts + chrono::Duration::microseconds(1)),
            ts: ts + chrono::Duration::microseconds(1),
            service: "rt-bare".into(),
            access_key_id: None,
            upstream_key_id: None,
            tried: vec![],
            model: None,
            upstream_model: None,
            path: String::new(),
            status: 0,
            attempts: 0,
            latency_ms: 0,
            ttft_ms: None,
            tokens: Tokens::default(),
            cost_micros: None,
            error_kind: None,
            streamed: false,
            cancelled: false,
            estimated: false,
            client_format: "openai",
            upstream_format: "openai",
            target: None,
            bodies: None,
        };
        // A batch of bare rows alone: no value in any optional column (on Postgres each of those
        // columns is sent as one NULL array rather than an array of NULLs).
        let alone = RequestEvent {
            id: keygate::events::log_id(ts + chrono::Duration::microseconds(2)),
            ts: ts + chrono::Duration::microseconds(2),
            service: "rt-bare-alone".into(),
            ..bare.clone()
        };
        let batch = vec![full, bare];
        log_writer::insert(app.state.db.clone(), &batch)
            .await
            .unwrap();
        log_writer::insert(app.state.db.clone(), std::slice::from_ref(&alone))
            .await
            .unwrap();
        let batch = [batch, vec![alone]].concat();
        for ev in &batch {
            let stored = request_log::Entity::find()
                .filter(request_log::Column::Id.eq(ev.id))
                .filter(request_log::Column::Ts.eq(ev.ts))
                .one(&app.state.db)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("row {} was written", ev.service));
            let meant = keygate::db::log_rows::row(ev).try_into_model().unwrap();
            assert_eq!(stored, meant);
        }
        // The cut path keeps 512 characters, and the largest counters saturate, not wrap.
        let full = request_log::Entity::find()
            .filter(request_log::Column::Service.eq("rt-ünïcode"))
            .one(&app.state.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(full.path.chars().count(), 512);
        assert_eq!(
            (full.latency_ms, full.completion_tokens, full.attempts),
            (i64::MAX, Some(i64::MAX), i32::MAX)
        );
        assert_eq!(full.tried.as_deref(), Some("[3,-7]"));
    }
);
