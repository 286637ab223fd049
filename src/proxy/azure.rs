//! Azure OpenAI as options of the `openai` kind: a deployment path template that calls carrying a
//! model are routed through, and an `api-version` query parameter on every call. With
//! `base_url = https://<resource>.openai.azure.com/openai` and `deployment_path =
//! deployments/{model}`, a chat call for model `gpt4o` goes to
//! `.../openai/deployments/gpt4o/chat/completions?api-version=...` and `/v1/models` to
//! `.../openai/models?api-version=...`. The model is the one sent upstream (after aliases), so an
//! alias maps a client's model name to a deployment. The key goes in `api-key` unless the service
//! names its own auth header (`Kind::auth_defaults`).
use url::form_urlencoded;

use super::body::ReqBody;
use super::error::{ErrorKind, ProxyError};
use super::finish::Finish;
use super::ingress::Admitted;

/// First path segments (under base_url) that Azure serves per deployment. The rest (`models`,
/// `files`, `batches`, `responses`) lives at the resource level, with the model in the body.
const PER_DEPLOYMENT: [&str; 5] = ["chat", "completions", "embeddings", "audio", "images"];

/// A service's Azure options, checked when the snapshot loads.
pub struct Azure {
    /// Without leading or trailing slashes; `{model}` stands for the upstream model.
    deployment_path: Option<String>,
    api_version: Option<String>,
}

fn first_segment(path: &str) -> &str {
    path.split(['/', '?']).next().unwrap_or("")
}

/// Checks a deployment path template and returns it without surrounding slashes. Its first
/// segment may not be one `PER_DEPLOYMENT` names: that keeps `Azure::url` idempotent.
pub fn check_deployment_path(t: &str) -> Result<String, String> {
    let t = t.trim().trim_matches('/');
    if t.is_empty() || t.len() > 200 {
        return Err("must be 1 to 200 characters, like deployments/{model}".into());
    }
    let literal = t.replace("{model}", "");
    if !literal
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err("may hold letters, digits, - _ . / and {model} only".into());
    }
    if t.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err("must not have empty, . or .. segments".into());
    }
    if PER_DEPLOYMENT.contains(&first_segment(t)) {
        return Err(format!(
            "must not start with '{}': that is the part of the path the client calls",
            first_segment(t)
        ));
    }
    Ok(t.to_string())
}

pub fn check_api_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 64 letters, digits, - _ or . (like 2024-10-21)".into())
    }
}

impl Azure {
    /// None when neither option is set (a plain OpenAI service). A stored value that fails its
    /// check (a row edited by hand) is dropped with an error line.
    pub fn load(
        slug: &str,
        deployment_path: Option<&str>,
        api_version: Option<&str>,
    ) -> Option<Self> {
        let deployment_path = deployment_path.and_then(|t| {
            check_deployment_path(t)
                .map_err(|e| tracing::error!(slug, error = %e, "bad deployment_path ignored"))
                .ok()
        });
        let api_version = api_version.and_then(|v| {
            check_api_version(v)
                .map_err(|e| tracing::error!(slug, error = %e, "bad api_version ignored"))
                .ok()
                .map(|_| v.to_string())
        });
        (deployment_path.is_some() || api_version.is_some()).then_some(Self {
            deployment_path,
            api_version,
        })
    }

    /// The part of `url` under `base`, when it is one of this service's URLs.
    fn rest<'a>(base: &str, url: &'a str) -> Option<&'a str> {
        url.strip_prefix(base).map(|r| r.trim_start_matches('/'))
    }

    fn per_deployment(&self, rest: &str) -> bool {
        self.deployment_path.is_some() && PER_DEPLOYMENT.contains(&first_segment(rest))
    }

    /// The Azure URL for `url` (`base` + path + query): the deployment path inserted before a
    /// per-deployment path, and `api-version` replacing any the client sent. Applying it to its
    /// own result changes nothing. Err: the call needs a deployment and `model` cannot be one.
    pub fn url(&self, base: &str, url: &str, model: Option<&str>) -> Result<String, String> {
        let Some(rest) = Self::rest(base, url) else {
            return Ok(url.to_string());
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut out = String::with_capacity(url.len() + 64);
        out.push_str(base);
        out.push('/');
        if let Some(template) = self
            .deployment_path
            .as_ref()
            .filter(|_| self.per_deployment(path))
        {
            let model = model.ok_or(
                "this service routes calls by deployment: the request needs a 'model' (the deployment, or an alias of it)",
            )?;
            let model = crate::formats::registry::path_segment(model)
                .map_err(|r| r.message().to_string())?;
            out.push_str(&template.replace("{model}", model));
            out.push('/');
        }
        out.push_str(path);
        match &self.api_version {
            None if query.is_empty() => {}
            None => {
                out.push('?');
                out.push_str(query);
            }
            Some(v) => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                for (k, val) in form_urlencoded::parse(query.as_bytes()) {
                    if k != "api-version" {
                        q.append_pair(&k, &val);
                    }
                }
                q.append_pair("api-version", v);
                out.push('?');
                out.push_str(&q.finish());
            }
        }
        Ok(out)
    }
}

/// The Azure stage, on the final upstream URL (after any translation changed the path): the
/// model is the translated request's, else the aliased one, else the client's.
pub fn route(
    fin: &Finish,
    adm: &mut Admitted,
    translated_model: Option<&str>,
) -> Result<(), ProxyError> {
    let Some(az) = &adm.svc.azure else {
        return Ok(());
    };
    let model = translated_model
        .or(fin.upstream_model.as_deref())
        .or(fin.model.as_deref());
    let url = az
        .url(&adm.svc.base_url, &adm.url, model)
        .map_err(|m| ProxyError::new(ErrorKind::BadRequest, fin.client_fmt, m))?;
    adm.url = url;
    Ok(())
}

/// A streamed body (over the retry buffer, or sent without a length) for a per-deployment path
/// is read whole first: the deployment comes from its `model`, which a stream would hide.
pub async fn read_model(
    fin: &Finish,
    adm: &Admitted,
    body: &mut ReqBody,
    max_body: usize,
) -> Result<(), ProxyError> {
    let needed = adm.svc.azure.as_ref().is_some_and(|az| {
        Azure::rest(&adm.svc.base_url, &adm.url).is_some_and(|r| az.per_deployment(r))
    });
    if !needed || fin.model.is_some() || !body.is_stream() {
        return Ok(());
    }
    let bytes = body
        .whole(max_body)
        .await
        .map_err(|(kind, msg)| ProxyError::new(kind, fin.client_fmt, msg))?;
    *body = ReqBody::Buffered(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://res.openai.azure.com/openai";

    fn az(dep: Option<&str>, ver: Option<&str>) -> Azure {
        Azure::load("t", dep, ver).unwrap()
    }

    #[test]
    fn per_deployment_calls_go_through_the_deployment_with_the_api_version() {
        let a = az(Some("/deployments/{model}/"), Some("2024-10-21"));
        let url = a
            .url(BASE, &format!("{BASE}/chat/completions"), Some("gpt4o"))
            .unwrap();
        assert_eq!(
            url,
            format!("{BASE}/deployments/gpt4o/chat/completions?api-version=2024-10-21")
        );
        assert_eq!(a.url(BASE, &url, Some("gpt4o")).unwrap(), url, "idempotent");
        assert_eq!(
            a.url(BASE, &format!("{BASE}/models?api-version=1&x=y"), None)
                .unwrap(),
            format!("{BASE}/models?x=y&api-version=2024-10-21"),
            "resource-level call, the client's api-version replaced"
        );
        assert!(
            a.url(BASE, &format!("{BASE}/embeddings"), None)
                .unwrap_err()
                .contains("model")
        );
        assert!(
            a.url(BASE, &format!("{BASE}/embeddings"), Some("../x"))
                .is_err()
        );
    }

    #[test]
    fn an_api_version_alone_leaves_paths_alone() {
        let a = az(None, Some("2025-01-01-preview"));
        assert_eq!(
            a.url(BASE, &format!("{BASE}/chat/completions?stream=1"), None)
                .unwrap(),
            format!("{BASE}/chat/completions?stream=1&api-version=2025-01-01-preview")
        );
        let d = az(Some("deployments/fixed"), None);
        assert_eq!(
            d.url(BASE, &format!("{BASE}/chat/completions?a=b"), Some("m"))
                .unwrap(),
            format!("{BASE}/deployments/fixed/chat/completions?a=b")
        );
    }

    #[test]
    fn templates_are_checked() {
        assert_eq!(
            check_deployment_path("/openai/deployments/{model}/").unwrap(),
            "openai/deployments/{model}"
        );
        for bad in [
            "",
            "a//b",
            "a/../b",
            "chat/{model}",
            "a?b",
            "{other}",
            "a b",
        ] {
            assert!(check_deployment_path(bad).is_err(), "{bad}");
        }
        assert!(check_api_version("2024-10-21").is_ok());
        assert!(check_api_version("a&b=c").is_err());
        assert!(Azure::load("t", None, None).is_none());
    }
}
