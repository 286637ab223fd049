//! Pricing rules through the admin API: decimal prices stored exactly, validation naming the
//! field, tenancy, and `check` explaining which rule or default prices a model.
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp};

async fn create(app: &TestApp, body: Value) -> Value {
    let (s, v) = app.admin("POST", "/admin/pricing", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v
}

async fn check(app: &TestApp, query: &str) -> (u16, Value) {
    app.admin("GET", &format!("/admin/pricing/check?{query}"), None)
        .await
}

async fn rule_ids(app: &TestApp, token: &str) -> Vec<i64> {
    let (s, v) = app.admin_as(token, "GET", "/admin/pricing", None).await;
    assert_eq!(s, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

both!(
    pricing_rules_round_trip_with_decimal_prices_read_back_exactly,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("oa", "openai", "http://127.0.0.1:9/v1")
            .await;
        let per_call = create(
            &app,
            json!({"pattern": "gemini-3-pro-*", "per_request": 0.08}),
        )
        .await;
        assert_eq!(per_call["per_request"], json!(0.08), "{per_call}");
        assert_eq!(per_call["input_per_mtok"], json!(0.0));
        assert_eq!(per_call["cache_read_per_mtok"], Value::Null);
        assert_eq!(per_call["slug"], Value::Null, "absent slug = global");
        assert_eq!(per_call["priority"], 0);
        let tokens = create(
            &app,
            json!({"pattern": "gpt-4o*", "slug": "oa", "priority": 5, "input_per_mtok": 2.5,
                "output_per_mtok": "10", "cache_read_per_mtok": "1.25",
                "cache_write_per_mtok": 0.000001}),
        )
        .await;
        assert_eq!(tokens["input_per_mtok"], json!(2.5));
        assert_eq!(tokens["output_per_mtok"], json!(10.0));
        assert_eq!(tokens["cache_read_per_mtok"], json!(1.25));
        assert_eq!(tokens["cache_write_per_mtok"], json!(0.000001));
        assert_eq!(
            (&tokens["slug"], &tokens["priority"]),
            (&json!("oa"), &json!(5))
        );

        let (id1, id2) = (
            per_call["id"].as_i64().unwrap(),
            tokens["id"].as_i64().unwrap(),
        );
        // Stored as integer micro-units.
        let row = keygate::db::pricing::by_id(&app.state.db, None, id1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.per_request_micros, 80_000);
        let row = keygate::db::pricing::by_id(&app.state.db, None, id2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.input_per_mtok_micros, row.cache_write_per_mtok_micros),
            (2_500_000, Some(1))
        );

        let (s, v) = app.admin("GET", "/admin/pricing", None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["items"], json!([per_call, tokens]), "listed as created");
        let (_, page1) = app.admin("GET", "/admin/pricing?limit=1", None).await;
        assert_eq!(page1["items"][0]["id"], id1);
        let cursor = page1["next_cursor"].as_str().unwrap();
        let (_, page2) = app
            .admin(
                "GET",
                &format!("/admin/pricing?limit=1&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(page2["items"][0]["id"], id2);

        // PUT replaces the whole rule: what it leaves out goes back to its default.
        let (s, v) = app
            .admin(
                "PUT",
                &format!("/admin/pricing/{id2}"),
                Some(json!({"pattern": "gpt-4o", "input_per_mtok": "3.000001"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["id"], id2);
        assert_eq!(v["pattern"], "gpt-4o");
        assert_eq!(v["input_per_mtok"], json!(3.000001));
        assert_eq!(v["output_per_mtok"], json!(0.0));
        assert_eq!(v["cache_read_per_mtok"], Value::Null);
        assert_eq!((&v["slug"], &v["priority"]), (&Value::Null, &json!(0)));

        let (s, _) = app
            .admin("DELETE", &format!("/admin/pricing/{id1}"), None)
            .await;
        assert_eq!(s, 204);
        let (s, v) = app
            .admin("DELETE", &format!("/admin/pricing/{id1}"), None)
            .await;
        assert_eq!(s, 404, "{v}");
        let (s, _) = app
            .admin(
                "PUT",
                "/admin/pricing/999999",
                Some(json!({"pattern": "x", "per_request": 1})),
            )
            .await;
        assert_eq!(s, 404);
        assert_eq!(rule_ids(&app, &app.token).await, vec![id2]);

        // Deleting the service takes the rules on its slug with it.
        create(
            &app,
            json!({"pattern": "o3", "slug": "oa", "per_request": 1}),
        )
        .await;
        let (s, _) = app.admin("DELETE", "/admin/services/oa", None).await;
        assert_eq!(s, 204);
        assert_eq!(rule_ids(&app, &app.token).await, vec![id2]);
    }
);

both!(
    invalid_pricing_rules_are_refused_with_a_problem_naming_the_field,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("oa", "openai", "http://127.0.0.1:9/v1")
            .await;
        for (body, field) in [
            (json!({"pattern": "gpt-[", "per_request": 1}), "pattern"),
            (json!({"pattern": "", "per_request": 1}), "pattern"),
            (
                json!({"pattern": "x".repeat(201), "per_request": 1}),
                "pattern",
            ),
            (
                json!({"pattern": "x", "priority": 5000, "per_request": 1}),
                "priority",
            ),
            (
                json!({"pattern": "x", "slug": "nope", "per_request": 1}),
                "slug",
            ),
            (json!({"pattern": "x"}), "at least one price"),
            (
                json!({"pattern": "x", "input_per_mtok": -1}),
                "input_per_mtok",
            ),
            (json!({"pattern": "x", "per_request": "abc"}), "per_request"),
            (
                json!({"pattern": "x", "output_per_mtok": 1e12}),
                "output_per_mtok",
            ),
            (
                json!({"pattern": "x", "per_request": 1, "colour": "red"}),
                "colour",
            ),
            (json!({"per_request": 1}), "pattern"),
        ] {
            let (s, v) = app
                .admin("POST", "/admin/pricing", Some(body.clone()))
                .await;
            assert_eq!(s, 400, "{body}: {v}");
            assert_eq!(v["type"], "https://keygate.dev/problems/validation", "{v}");
            let detail = v["detail"].as_str().unwrap();
            assert!(detail.contains(field), "{body}: {detail}");
        }
        let r = app
            .http
            .post(app.url("/admin/pricing"))
            .bearer_auth(&app.token)
            .json(&json!({"pattern": "x", "input_per_mtok": -0.5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("must not be negative"),
            "{v}"
        );
        // A refused PUT leaves the rule as it was.
        let kept = create(&app, json!({"pattern": "x", "per_request": 0.5})).await;
        let (s, _) = app
            .admin(
                "PUT",
                &format!("/admin/pricing/{}", kept["id"]),
                Some(json!({"pattern": "y["})),
            )
            .await;
        assert_eq!(s, 400);
        let (_, v) = app.admin("GET", "/admin/pricing", None).await;
        assert_eq!(v["items"], json!([kept]), "nothing half-written");
        let (s, v) = check(&app, "slug=oa").await;
        assert_eq!(s, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains("model"), "{v}");
    }
);

both!(
    pricing_rules_belong_to_their_slugs_tenant_and_global_ones_to_admins_of_no_tenant,
    |b: Backend| async move {
        use sea_orm::{ActiveModelTrait, ActiveValue::Set};
        let app = TestApp::spawn(b).await;
        keygate::db::entity::tenant::ActiveModel {
            id: Set(2),
            name: Set("other".into()),
            created_at: Set(chrono::Utc::now()),
        }
        .insert(&app.state.db)
        .await
        .unwrap();
        app.create_service("t1", "openai", "http://127.0.0.1:9/v1")
            .await;
        let global = create(&app, json!({"pattern": "*", "per_request": 0.01})).await;
        let t1_rule = create(
            &app,
            json!({"pattern": "*", "slug": "t1", "per_request": 1}),
        )
        .await;
        for (name, role) in [("t2op", "operator"), ("viewer1", "viewer")] {
            let tenant = if role == "operator" {
                json!(2)
            } else {
                Value::Null
            };
            let (s, v) = app
                .admin(
                    "POST",
                    "/admin/users",
                    Some(json!({"username": name, "password": "a-long-password-1",
                        "role": role, "tenant_id": tenant})),
                )
                .await;
            assert_eq!(s, 201, "{v}");
        }
        let t2 = app.login("t2op", "a-long-password-1").await;
        let viewer = app.login("viewer1", "a-long-password-1").await;

        // A viewer reads everything its tenant sees, and writes nothing.
        assert_eq!(
            rule_ids(&app, &viewer).await,
            vec![
                global["id"].as_i64().unwrap(),
                t1_rule["id"].as_i64().unwrap()
            ]
        );
        let (s, _) = app
            .admin_as(
                &viewer,
                "POST",
                "/admin/pricing",
                Some(json!({"pattern": "v", "slug": "t1", "per_request": 1})),
            )
            .await;
        assert_eq!(s, 403);

        // A tenant's operator: its own slug's rules, never a global one nor another tenant's.
        let (s, v) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/services",
                Some(json!({"slug": "t2", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/pricing",
                Some(json!({"pattern": "gpt-*", "per_request": 1})),
            )
            .await;
        assert_eq!(s, 403, "{v}");
        let (s, v) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/pricing",
                Some(json!({"pattern": "gpt-*", "slug": "t1", "per_request": 1})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains("slug"), "{v}");
        let (s, own) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/pricing",
                Some(json!({"pattern": "gpt-*", "slug": "t2", "per_request": 2})),
            )
            .await;
        assert_eq!(s, 201, "{own}");
        assert_eq!(
            rule_ids(&app, &t2).await,
            vec![global["id"].as_i64().unwrap(), own["id"].as_i64().unwrap()],
            "global rules and its own slug's, not tenant 1's"
        );
        let (s, _) = app
            .admin_as(
                &t2,
                "DELETE",
                &format!("/admin/pricing/{}", t1_rule["id"]),
                None,
            )
            .await;
        assert_eq!(s, 404, "another tenant's rule is out of sight");
        let (s, _) = app
            .admin_as(
                &t2,
                "DELETE",
                &format!("/admin/pricing/{}", global["id"]),
                None,
            )
            .await;
        assert_eq!(s, 403, "a global rule is read-only to a tenant");
        let (s, _) = app
            .admin_as(&t2, "GET", "/admin/pricing/check?model=x&slug=t1", None)
            .await;
        assert_eq!(s, 404);
        let (s, v) = app
            .admin_as(
                &t2,
                "GET",
                "/admin/pricing/check?model=gpt-4o&slug=t2",
                None,
            )
            .await;
        assert_eq!((s, &v["rule_id"]), (200, &own["id"]), "{v}");
    }
);

both!(
    check_explains_whether_a_default_a_global_rule_a_slug_override_or_a_priority_prices_a_model,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("cheap", "openai", "http://127.0.0.1:9/v1")
            .await;

        // Nothing stored: the built-in table.
        let (s, v) = check(&app, "model=gpt-4o-mini").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["source"], "default");
        assert_eq!(v["rule_id"], Value::Null);
        assert_eq!(v["pattern"], "gpt-4o-mini");
        assert_eq!(
            (
                &v["input_per_mtok"],
                &v["output_per_mtok"],
                &v["cache_read_per_mtok"]
            ),
            (&json!(0.15), &json!(0.6), &json!(0.075))
        );
        assert!(v["prices_taken"].is_string(), "{v}");
        assert_eq!(v["example_cost_1m_in_1m_out"], json!(0.75));

        // A stored global rule overrides the default.
        let global = create(
            &app,
            json!({"pattern": "gpt-4o-mini", "input_per_mtok": 1, "output_per_mtok": 2}),
        )
        .await;
        let (_, v) = check(&app, "model=gpt-4o-mini").await;
        assert_eq!(
            (&v["source"], &v["rule_id"]),
            (&json!("rule"), &global["id"]),
            "{v}"
        );
        assert_eq!(v["rule_slug"], Value::Null);
        assert_eq!(v["prices_taken"], Value::Null);
        assert_eq!(v["example_cost_1m_in_1m_out"], json!(3.0));

        // A slug's own rule beats a global one of equal priority, even a more specific one.
        let own = create(
            &app,
            json!({"pattern": "gpt-4o*", "slug": "cheap", "input_per_mtok": 0.5,
                "output_per_mtok": 0.5}),
        )
        .await;
        let (_, v) = check(&app, "model=gpt-4o-mini&slug=cheap").await;
        assert_eq!(
            (&v["rule_id"], &v["rule_slug"]),
            (&own["id"], &json!("cheap")),
            "{v}"
        );
        assert_eq!(v["slug"], "cheap");
        assert_eq!(v["example_cost_1m_in_1m_out"], json!(1.0));
        let (_, v) = check(&app, "model=gpt-4o-mini").await;
        assert_eq!(
            v["rule_id"], global["id"],
            "other slugs keep the global rule"
        );

        // A higher priority wins over both.
        let top = create(
            &app,
            json!({"pattern": "*", "priority": 10, "per_request": 0.01}),
        )
        .await;
        let (_, v) = check(&app, "model=gpt-4o-mini&slug=cheap").await;
        assert_eq!(
            (&v["rule_id"], &v["priority"]),
            (&top["id"], &json!(10)),
            "{v}"
        );
        assert_eq!(v["per_request"], json!(0.01));
        assert_eq!(v["example_cost_1m_in_1m_out"], json!(0.01));

        // Without it an unknown model has no price at all.
        let (s, _) = app
            .admin("DELETE", &format!("/admin/pricing/{}", top["id"]), None)
            .await;
        assert_eq!(s, 204);
        let (s, v) = check(&app, "model=llama-3-70b").await;
        assert_eq!(s, 404, "{v}");
        assert_eq!(v["type"], "https://keygate.dev/problems/not-found");
        assert!(v["detail"].as_str().unwrap().contains("llama-3-70b"), "{v}");
        let (s, _) = check(&app, "model=gpt-4o&slug=nope").await;
        assert_eq!(s, 404);

        // Deleting the global rule falls back to the default table.
        app.admin("DELETE", &format!("/admin/pricing/{}", global["id"]), None)
            .await;
        let (_, v) = check(&app, "model=gpt-4o-mini").await;
        assert_eq!(v["source"], "default", "{v}");
    }
);
