//! The key list as operators use it: statistics per key, batch enable/disable/delete by ids or by
//! status, and the CSV export filtered by status.
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp, eventually};
use crate::mock::{self, Behaviour, MockServer};

const BAD: &str = "sk-batch-bad-key-0001";
const GOOD: &str = "sk-batch-good-key-002";
const THIRD: &str = "sk-batch-third-key-03";

async fn keys(app: &TestApp, slug: &str) -> Vec<Value> {
    let (s, v) = app
        .admin("GET", &format!("/admin/services/{slug}/keys"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

async fn status_of(app: &TestApp, slug: &str, id: i64) -> String {
    keys(app, slug)
        .await
        .iter()
        .find(|k| k["id"] == id)
        .map(|k| k["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "gone".into())
}

async fn batch(app: &TestApp, slug: &str, body: Value) -> (u16, Value) {
    app.admin(
        "POST",
        &format!("/admin/services/{slug}/keys/batch"),
        Some(body),
    )
    .await
}

/// The export's data rows as (id, status).
async fn export(app: &TestApp, slug: &str, query: &str) -> (u16, Vec<(i64, String)>) {
    let r = app
        .http
        .get(app.url(&format!("/admin/services/{slug}/keys/export{query}")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    if status != 200 {
        return (status, vec![]);
    }
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,key,label,status,balance,weight"));
    let rows = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[3].to_string())
        })
        .collect();
    (status, rows)
}

fn chats(up: &MockServer, key: &str) -> usize {
    up.mock
        .seen()
        .iter()
        .filter(|s| s.key == key && s.path == "/v1/chat/completions")
        .count()
}

both!(
    batch_enable_brings_back_a_key_the_upstream_refused_and_it_serves_traffic_again,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        up.mock.set(BAD, Behaviour::Status(401, None));
        let ak = app.with_service("bt", &up.base, &[BAD, GOOD]).await;
        let ids: Vec<i64> = keys(&app, "bt")
            .await
            .iter()
            .map(|k| k["id"].as_i64().unwrap())
            .collect();
        let (bad, good) = (ids[0], ids[1]);
        assert!(
            eventually(Duration::from_secs(10), || async {
                assert_eq!(
                    app.chat("bt", &ak).await.status(),
                    200,
                    "retried on the good key"
                );
                status_of(&app, "bt", bad).await == "invalid"
            })
            .await,
            "the 401 takes the key out"
        );
        let (s, rows) = export(&app, "bt", "?status=invalid").await;
        assert_eq!((s, rows), (200, vec![(bad, "invalid".to_string())]));

        // The upstream takes the key again; one batch puts every invalid key back.
        up.mock.set(BAD, Behaviour::Ok);
        let (s, v) = batch(&app, "bt", json!({"action": "enable", "status": "invalid"})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v,
            json!({"action": "enable", "matched": 1, "changed": 1, "ids": [bad]})
        );
        assert_eq!(status_of(&app, "bt", bad).await, "active");
        assert_eq!(status_of(&app, "bt", good).await, "active");
        let before = chats(&up, BAD);
        assert!(
            eventually(Duration::from_secs(10), || async {
                assert_eq!(app.chat("bt", &ak).await.status(), 200);
                chats(&up, BAD) > before
            })
            .await,
            "the enabled key serves traffic again"
        );
        // It stays back: no fault queued before the enable is written after it.
        let (_, svc) = app.admin("GET", "/admin/services/bt", None).await;
        let row = keygate::db::keys::by_id(&app.state.db, svc["id"].as_i64().unwrap(), bad)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, "active");
        assert_eq!(status_of(&app, "bt", bad).await, "active");
    }
);

both!(
    batch_disable_and_delete_act_on_ids_or_a_status_and_report_what_they_touched,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let ak = app.with_service("bd", &up.base, &[BAD, GOOD, THIRD]).await;
        let ids: Vec<i64> = keys(&app, "bd")
            .await
            .iter()
            .map(|k| k["id"].as_i64().unwrap())
            .collect();
        let (k1, k2, k3) = (ids[0], ids[1], ids[2]);

        let (s, v) = batch(
            &app,
            "bd",
            json!({"action": "disable", "ids": [k3, k2, k2]}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v,
            json!({"action": "disable", "matched": 2, "changed": 2, "ids": [k2, k3]})
        );
        let (_, v) = batch(&app, "bd", json!({"action": "disable", "ids": [k2]})).await;
        assert_eq!(
            (&v["matched"], &v["changed"]),
            (&json!(1), &json!(0)),
            "already disabled"
        );
        let (_, rows) = export(&app, "bd", "?status=disabled").await;
        assert_eq!(rows, vec![(k2, "disabled".into()), (k3, "disabled".into())]);
        let (_, rows) = export(&app, "bd", "?status=active,disabled").await;
        assert_eq!(rows.len(), 3);
        let (_, rows) = export(&app, "bd", "?status=invalid").await;
        assert!(rows.is_empty());
        let (s, _) = export(&app, "bd", "?status=broken").await;
        assert_eq!(s, 400);
        for _ in 0..4 {
            assert_eq!(app.chat("bd", &ak).await.status(), 200);
        }
        assert_eq!(chats(&up, BAD), 4, "disabled keys get no traffic");

        let (_, v) = batch(&app, "bd", json!({"action": "enable", "ids": [k3]})).await;
        assert_eq!(v["ids"], json!([k3]));
        assert_eq!(status_of(&app, "bd", k3).await, "active");
        let (s, v) = batch(
            &app,
            "bd",
            json!({"action": "delete", "status": "disabled"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v,
            json!({"action": "delete", "matched": 1, "changed": 1, "ids": [k2]})
        );
        let (_, v) = batch(&app, "bd", json!({"action": "delete", "ids": [k3]})).await;
        assert_eq!(v["ids"], json!([k3]));
        let left: Vec<i64> = keys(&app, "bd")
            .await
            .iter()
            .map(|k| k["id"].as_i64().unwrap())
            .collect();
        assert_eq!(left, vec![k1]);
        let (_, v) = batch(&app, "bd", json!({"action": "enable", "status": "invalid"})).await;
        assert_eq!(
            v,
            json!({"action": "enable", "matched": 0, "changed": 0, "ids": []})
        );

        // Refused whole, naming what is wrong; nothing changes.
        app.with_service("other", &up.base, &["sk-batch-other-svc-04"])
            .await;
        let foreign = keys(&app, "other").await[0]["id"].as_i64().unwrap();
        for (body, field) in [
            (json!({"action": "delete", "ids": [k1, foreign]}), "ids"),
            (json!({"action": "delete", "ids": [k1, 999999]}), "999999"),
            (json!({"action": "delete", "ids": []}), "ids"),
            (
                json!({"action": "delete", "ids": [k1], "status": "active"}),
                "ids, status",
            ),
            (json!({"action": "delete"}), "ids, status"),
            (json!({"action": "explode", "ids": [k1]}), "action"),
            (json!({"action": "disable", "status": "sleeping"}), "status"),
        ] {
            let (s, v) = batch(&app, "bd", body.clone()).await;
            assert_eq!(s, 400, "{body}: {v}");
            assert!(v["detail"].as_str().unwrap().contains(field), "{body}: {v}");
        }
        assert_eq!(status_of(&app, "bd", k1).await, "active");
        assert_eq!(status_of(&app, "other", foreign).await, "active");
        let (s, _) = batch(&app, "nope", json!({"action": "delete", "ids": [k1]})).await;
        assert_eq!(s, 404);
    }
);

both!(
    the_key_view_shows_each_keys_statistics_from_the_database,
    |b: Backend| async move {
        use sea_orm::{ActiveModelTrait, ActiveValue::Set, ActiveValue::Unchanged};
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        app.with_service("st", &up.base, &[GOOD, THIRD]).await;
        let id = keys(&app, "st").await[0]["id"].as_i64().unwrap();
        keygate::db::entity::upstream_key::ActiveModel {
            id: Unchanged(id),
            requests_total: Set(10),
            successes_total: Set(7),
            failures_4xx: Set(1),
            failures_5xx: Set(2),
            failures_network: Set(0),
            tokens_total: Set(12_345),
            cost_total_micros: Set(1_234_567),
            ..Default::default()
        }
        .update(&app.state.db)
        .await
        .unwrap();
        let listed = keys(&app, "st").await;
        let k = &listed[0];
        assert_eq!(
            (&k["requests"], &k["successes"]),
            (&json!(10), &json!(7)),
            "{k}"
        );
        assert_eq!(k["failures"], json!({"4xx": 1, "5xx": 2, "network": 0}));
        assert_eq!(k["tokens"], 12_345);
        assert_eq!(k["cost"], json!(1.234567), "decimal currency units");
        let fresh = &listed[1];
        assert_eq!(
            (&fresh["requests"], &fresh["tokens"], &fresh["cost"]),
            (&json!(0), &json!(0), &json!(0.0))
        );
        assert_eq!(fresh["failures"], json!({"4xx": 0, "5xx": 0, "network": 0}));
    }
);
