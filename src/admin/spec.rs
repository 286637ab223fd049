//! The error contract written into the OpenAPI document once, for every operation, instead of on
//! each handler: what any admin operation can answer besides its own results follows from its
//! shape (secured, has parameters, takes a JSON body, names a resource in its path), so it is
//! derived from that shape here and cannot drift from one handler to the next. Handlers document
//! their success responses and the errors particular to them (409 on a duplicate, 403 on a role).
use serde_json::{Map, Value, json};
use utoipa::Modify;

/// A slug as the API takes it (documentation only: the handlers check it themselves).
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "openai")]
#[allow(dead_code)]
pub struct Slug(String);

/// Applied to the finished document (after every route has added its operation).
pub struct ErrorContract;

const PROBLEM: &str = "#/components/schemas/Problem";

/// (status, description) of the errors an operation can answer by its shape.
fn standard(status: &str) -> &'static str {
    match status {
        "400" => {
            "The request is malformed: a parameter, the JSON or a field is invalid (named in `detail`)"
        }
        "401" => "The bearer token is missing, invalid or expired, or its user is disabled",
        "403" => "Your role (or tenant) does not allow this action",
        "404" => "No such resource (or not one of your tenant's)",
        "413" => "The body is larger than the admin API accepts (16 MiB)",
        "415" => "The body is not `application/json`",
        "409" => {
            "A conflict with what is stored: a value that must be unique is taken, or the resource is in use"
        }
        "429" => "Too many requests: retry after `Retry-After` seconds",
        "503" => {
            "The database is unreachable or busy: the admin API is unavailable until it answers (see `Retry-After` and /readyz)"
        }
        _ => "Error",
    }
}

fn success(status: &str) -> &'static str {
    match status {
        "200" => "Success",
        "201" => "Created",
        "204" => "Done; no content",
        _ => "Success",
    }
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": PROBLEM}}}
    })
}

impl Modify for ErrorContract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut doc = serde_json::to_value(&*openapi).expect("the OpenAPI model serialises");
        apply(&mut doc);
        *openapi = serde_json::from_value(doc).expect("the amended document is still OpenAPI");
    }
}

fn apply(doc: &mut Value) {
    // Relative: the document is served by the keygate it describes, wherever that listens.
    doc["servers"] = json!([{"url": "/", "description": "The keygate serving this document"}]);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if let Some(op) = op.as_object_mut() {
                amend(path, method, op);
            }
        }
    }
}

fn amend(path: &str, method: &str, op: &mut Map<String, Value>) {
    let secured = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .any(|r| r.as_object().is_some_and(|o| !o.is_empty()))
        });
    if !secured {
        // Explicitly public, so no reader (or linter) takes a missing list for an oversight.
        op.insert("security".into(), json!([]));
    }
    let params = op.get("parameters").and_then(Value::as_array);
    let has_params = params.is_some_and(|p| !p.is_empty());
    let has_path_params = params.is_some_and(|p| p.iter().any(|p| p["in"] == "path"));
    let json_body = op
        .get("requestBody")
        .and_then(|b| b.get("content"))
        .and_then(Value::as_object)
        .is_some_and(|c| c.contains_key("application/json"));
    let admin = path.starts_with("/admin/");
    let writes = method != "get";

    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    // Every error the handlers return is problem+json; utoipa labels a body application/json.
    for (status, resp) in responses.iter_mut() {
        let Some(resp) = resp.as_object_mut() else {
            continue;
        };
        if let Some(content) = resp.get_mut("content").and_then(Value::as_object_mut)
            && content
                .get("application/json")
                .is_some_and(|c| c["schema"]["$ref"] == PROBLEM)
            && let Some(c) = content.remove("application/json")
        {
            content.insert("application/problem+json".into(), c);
        }
        let described = resp
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.is_empty());
        if !described {
            let d = if status.starts_with('2') {
                success(status)
            } else {
                standard(status)
            };
            resp.insert("description".into(), d.into());
        }
    }
    if !admin {
        return;
    }
    let mut add = |status: &str| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| problem_response(standard(status)));
    };
    if has_params || json_body {
        add("400");
    }
    if secured {
        add("401");
        if writes || path.starts_with("/admin/users") {
            add("403");
        }
    }
    if has_path_params {
        add("404");
    }
    if json_body {
        add("413");
        add("415");
    }
    add("503");
}
