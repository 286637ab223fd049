//! Model names per service: aliases (`gpt4` → `gpt-4o`, `claude-*` → `claude-sonnet-4-5`) and
//! the allow-list, both with `*`/`?` wildcards, compiled once when the snapshot loads.
use globset::{Glob, GlobMatcher};
use serde_json::Value;

/// A service's model rules.
#[derive(Debug, Default, Clone)]
pub struct ModelRules {
    /// Most specific first: exact names, then patterns with fewer wildcards and more literal text.
    aliases: Vec<(GlobMatcher, String)>,
    /// None: every model is allowed.
    allow: Option<Vec<GlobMatcher>>,
}

/// A pattern as a matcher; `Err` names what is wrong with it (the admin API's message).
pub fn compile(pattern: &str) -> Result<GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("a model pattern must not be empty".into());
    }
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("'{pattern}' is not a valid pattern: {e}"))
}

fn specificity(pattern: &str) -> (usize, usize) {
    let wild = pattern
        .chars()
        .filter(|c| matches!(c, '*' | '?' | '['))
        .count();
    (wild, usize::MAX - pattern.len())
}

impl ModelRules {
    /// From the stored JSON (`{"glob": "model"}` and `["glob", ...]`); bad entries are skipped
    /// with an error line (the admin API never stores them).
    pub fn load(slug: &str, aliases: &Value, allow: &Value) -> Self {
        let mut a: Vec<(String, GlobMatcher, String)> = Vec::new();
        for (pattern, target) in aliases.as_object().into_iter().flatten() {
            match (compile(pattern), target.as_str()) {
                (Ok(m), Some(t)) if !t.is_empty() => a.push((pattern.clone(), m, t.to_string())),
                _ => tracing::error!(slug, pattern, "bad model alias skipped"),
            }
        }
        a.sort_by_key(|(p, _, _)| specificity(p));
        let allow = allow.as_array().filter(|l| !l.is_empty()).map(|l| {
            l.iter()
                .filter_map(|p| p.as_str())
                .filter_map(|p| compile(p).ok())
                .collect()
        });
        Self {
            aliases: a.into_iter().map(|(_, m, t)| (m, t)).collect(),
            allow,
        }
    }

    /// The model to send upstream for what the client asked, when an alias applies.
    pub fn resolve(&self, model: &str) -> Option<&str> {
        self.aliases
            .iter()
            .find(|(m, _)| m.is_match(model))
            .map(|(_, t)| t.as_str())
    }

    /// What a client may call, out of the model ids an upstream lists: those the allow-list
    /// lets through, then every alias written without wildcards whose target is allowed (`gpt4`
    /// can be listed; `claude-*` cannot).
    pub fn list(&self, upstream: &[String]) -> Vec<String> {
        let mut out: Vec<String> = upstream
            .iter()
            .filter(|id| self.allows(id, id))
            .cloned()
            .collect();
        for (m, target) in &self.aliases {
            let name = m.glob().glob();
            if !name.contains(['*', '?', '['])
                && self.allows(name, target)
                && !out.iter().any(|o| o == name)
            {
                out.push(name.to_string());
            }
        }
        out
    }

    /// Whether the client may call `asked` (which resolves to `resolved`): either name may be
    /// on the allow-list, so an alias of an allowed model is allowed.
    pub fn allows(&self, asked: &str, resolved: &str) -> bool {
        match &self.allow {
            None => true,
            Some(list) => list
                .iter()
                .any(|m| m.is_match(asked) || m.is_match(resolved)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_most_specific_alias_wins() {
        let r = ModelRules::load(
            "s",
            &json!({"claude-*": "claude-sonnet-4-5", "claude-opus": "claude-opus-4-1", "gpt4": "gpt-4o"}),
            &json!([]),
        );
        assert_eq!(r.resolve("gpt4"), Some("gpt-4o"));
        assert_eq!(r.resolve("claude-opus"), Some("claude-opus-4-1"));
        assert_eq!(r.resolve("claude-haiku"), Some("claude-sonnet-4-5"));
        assert_eq!(r.resolve("gpt-4o"), None);
    }

    #[test]
    fn an_alias_of_an_allowed_model_is_allowed() {
        let r = ModelRules::load("s", &json!({"fast": "gpt-4o-mini"}), &json!(["gpt-4o*"]));
        assert!(r.allows("gpt-4o", "gpt-4o"));
        assert!(r.allows("fast", "gpt-4o-mini"));
        assert!(!r.allows("o3", "o3"));
        assert!(ModelRules::load("s", &json!({}), &json!([])).allows("anything", "anything"));
    }

    #[test]
    fn a_list_keeps_allowed_models_and_adds_plain_aliases() {
        let r = ModelRules::load(
            "s",
            &json!({"fast": "gpt-4o-mini", "claude-*": "gpt-4o", "old": "o1"}),
            &json!(["gpt-4o*", "fast"]),
        );
        let up = [
            "gpt-4o".to_string(),
            "gpt-4o-mini".into(),
            "o1".into(),
            "dall-e".into(),
        ];
        assert_eq!(r.list(&up), vec!["gpt-4o", "gpt-4o-mini", "fast"]);
        let open = ModelRules::load("s", &json!({"gpt4": "gpt-4o"}), &json!([]));
        assert_eq!(open.list(&up[..1]), vec!["gpt-4o", "gpt4"]);
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(compile("gpt-[").unwrap_err().contains("gpt-["));
        assert!(compile("").is_err());
    }
}

/// The model stage: refuses a model the service does not offer, and rewrites an aliased one in
/// the body (or the Gemini path). Only a call that uses an alias loses byte-for-byte passthrough.
pub fn apply(
    fin: &mut super::finish::Finish,
    adm: &mut super::ingress::Admitted,
    body: &mut super::body::ReqBody,
) -> Result<(), super::error::ProxyError> {
    use super::error::{ErrorKind, ProxyError};
    use crate::formats::Endpoint;
    // Behind a router, the name the router resolved is what its target is asked for.
    let Some(asked) = fin.upstream_model.clone().or_else(|| fin.model.clone()) else {
        return Ok(());
    };
    let rules = &adm.svc.models;
    let resolved = rules.resolve(&asked).map(str::to_string);
    let target = resolved.as_deref().unwrap_or(&asked);
    if !rules.allows(&asked, target) {
        return Err(ProxyError::new(
            ErrorKind::ModelNotAllowed,
            fin.client_fmt,
            format!(
                "the model '{asked}' does not exist or is not offered on '{}'",
                adm.svc.slug
            ),
        ));
    }
    let Some(to) = resolved else {
        return Ok(());
    };
    if let Endpoint::Gemini { model, .. } = &mut adm.endpoint {
        adm.url = adm
            .url
            .replacen(&format!("models/{asked}:"), &format!("models/{to}:"), 1);
        *model = to.clone();
    } else if let super::body::ReqBody::Buffered(b) = body {
        // A streamed body (over the retry buffer) goes as it is: it cannot be rewritten.
        if let Ok(mut v) = serde_json::from_slice::<Value>(b)
            && let Some(m) = v.get_mut("model")
        {
            *m = Value::String(to.clone());
            if let Ok(out) = serde_json::to_vec(&v) {
                *b = bytes::Bytes::from(out);
            }
        }
    }
    fin.upstream_model = Some(to);
    Ok(())
}
