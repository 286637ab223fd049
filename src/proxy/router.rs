//! Router slugs: a service of kind `router` has no keys of its own; it sends each request to the
//! first route whose model glob matches, trying the route's targets in order while a target fails
//! before any byte reached the client (no usable key, upstream errors after its retries, a
//! timeout). Each target is an ordinary slug with its own format, aliases, keys and strategy, so
//! an OpenAI client can be served by an Anthropic target. A router never targets a router
//! (checked when routes are written).
use globset::GlobMatcher;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorKind;

/// A route as the admin API takes and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Glob of the model names this route takes (`gpt-*`, `*`).
    pub model: String,
    /// Target slugs in fallback order.
    pub targets: Vec<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Routes(Vec<(GlobMatcher, Vec<String>)>);

impl Routes {
    /// From the stored JSON; bad entries are skipped with an error line (the admin API never
    /// stores them).
    pub fn load(slug: &str, stored: Option<&serde_json::Value>) -> Self {
        let Some(v) = stored else {
            return Self::default();
        };
        match serde_json::from_value::<Vec<RouteSpec>>(v.clone()) {
            Ok(specs) => Self(
                specs
                    .into_iter()
                    .filter_map(|r| match super::models::compile(&r.model) {
                        Ok(m) => Some((m, r.targets)),
                        Err(e) => {
                            tracing::error!(slug, error = %e, "bad route skipped");
                            None
                        }
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::error!(slug, error = %e, "bad routes ignored");
                Self::default()
            }
        }
    }

    /// The targets of the first route that takes `model` (a request without a model is matched
    /// as the empty name, which only `*` takes).
    pub fn targets(&self, model: Option<&str>) -> Option<&[String]> {
        let m = model.unwrap_or("");
        self.0
            .iter()
            .find(|(g, _)| g.is_match(m))
            .map(|(_, t)| t.as_slice())
    }

    /// Every target slug of every route, each once, in route order (the models list).
    pub fn all_targets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, ts) in &self.0 {
            for t in ts {
                if !out.contains(&t.as_str()) {
                    out.push(t);
                }
            }
        }
        out
    }
}

/// Whether another target may still serve a request that failed with `kind` on this one: the
/// failures that are the target's (no key, upstream failing, timing out or rate limiting every
/// key), not the client's.
pub fn falls_back_on(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::NoUsableKey
            | ErrorKind::UpstreamFailed
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamRateLimited
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_matching_route_wins_and_a_missing_model_matches_only_a_catch_all() {
        let r = Routes::load(
            "r",
            Some(&json!([
                {"model": "gpt-*", "targets": ["oai", "backup"]},
                {"model": "claude-*", "targets": ["anth"]},
                {"model": "*", "targets": ["cheap"]},
            ])),
        );
        assert_eq!(
            r.targets(Some("gpt-4o")),
            Some(&["oai".to_string(), "backup".to_string()][..])
        );
        assert_eq!(r.targets(Some("claude-3")), Some(&["anth".to_string()][..]));
        assert_eq!(r.targets(Some("llama")), Some(&["cheap".to_string()][..]));
        assert_eq!(r.targets(None), Some(&["cheap".to_string()][..]));
        assert_eq!(r.all_targets(), vec!["oai", "backup", "anth", "cheap"]);
        let narrow = Routes::load("r", Some(&json!([{"model": "gpt-*", "targets": ["oai"]}])));
        assert_eq!(narrow.targets(Some("claude-3")), None);
        assert_eq!(narrow.targets(None), None);
    }
}
