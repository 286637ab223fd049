//! Operator metrics: tokens and cost by slug and model, key status gauges, coordination call
//! latency.
use serde_json::json;

use crate::both;
use crate::harness::{Backend, TestApp};
use crate::mock::{self, Behaviour};

/// The value of the sample whose line starts with `name{` and holds every `label`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

both!(
    metrics_count_tokens_and_cost_by_model_and_keys_by_status,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let slug = format!("met-{}", if b == Backend::Sqlite { "lite" } else { "pg" });
        let ak = app
            .with_service(
                &slug,
                &up.base,
                &["sk-metrics-good-0001", "sk-metrics-bad-00002"],
            )
            .await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/pricing",
                Some(json!({"pattern": "*", "slug": slug, "input_per_mtok": 1, "output_per_mtok": 2})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        up.mock
            .set("sk-metrics-bad-00002", Behaviour::Status(401, None));
        // The pricing rule reaches the snapshot within a refresh; then four answered requests.
        assert!(
            crate::harness::eventually(std::time::Duration::from_secs(10), || async {
                app.state
                    .snapshot
                    .load()
                    .prices
                    .price(&slug, "gpt-test")
                    .is_some()
            })
            .await
        );
        for _ in 0..4 {
            assert_eq!(app.chat(&slug, &ak).await.status(), 200);
        }
        let counts = keygate::jobs::gauges::count(&app.state).await.unwrap();
        assert_eq!(counts[&(slug.clone(), "active")], 1, "{counts:?}");
        assert_eq!(counts[&(slug.clone(), "invalid")], 1, "{counts:?}");
        assert_eq!(counts[&(slug.clone(), "cooling")], 0);

        let text = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let s = format!("slug=\"{slug}\"");
        let prompt = sample(
            &text,
            "keygate_tokens_total",
            &[&s, "kind=\"prompt\"", "model=\"gpt-test\""],
        );
        // The mock reports 3 prompt and 1 completion tokens per answer.
        assert_eq!(prompt, Some(12.0), "{text}");
        let completion = sample(&text, "keygate_tokens_total", &[&s, "kind=\"completion\""]);
        assert_eq!(completion, Some(4.0));
        // 3 tokens at 1 per 1M plus 1 at 2 per 1M is 5 micro-units a request.
        assert_eq!(
            sample(&text, "keygate_cost_micros_total", &[&s]),
            Some(20.0)
        );
        assert_eq!(
            sample(&text, "keygate_keys", &[&s, "status=\"invalid\""]),
            Some(1.0)
        );
        if b == Backend::Postgres {
            let n = sample(
                &text,
                "keygate_coord_call_duration_seconds_count",
                &["op=\"acquire\""],
            );
            assert!(n.is_some_and(|n| n >= 4.0), "{text}");
        }
    }
);

#[test]
fn every_metric_keygate_emits_is_in_the_readme_table() {
    let root = env!("CARGO_MANIFEST_DIR");
    let src = std::fs::read_to_string(format!("{root}/src/telemetry/metrics.rs")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let names: Vec<&str> = src
        .lines()
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"keygate_"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(names.len() > 20, "{names:?}");
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the README's metrics table: {missing:?}"
    );
}
