//! Printing answers: the admin API's JSON as it is (`--json`), or a table for a person.
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Map, Value};

pub fn json(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        v => serde_json::to_string_pretty(v).unwrap_or_default(),
    }
}

/// A list as rows (the given columns, or every field, nested objects flattened to `a.b`); one
/// object as field/value rows; a list inside an object (stats' totals) as its own table below.
pub fn table(v: &Value, columns: Option<&[&str]>) -> String {
    match v {
        Value::Null => String::new(),
        Value::Array(items) => rows(items, columns),
        Value::Object(map) => {
            let mut t = new_table();
            t.set_header(vec!["field", "value"]);
            let mut lists = Vec::new();
            for (k, v) in map {
                match v {
                    Value::Array(a) if a.iter().any(Value::is_object) => lists.push((k, a)),
                    other => {
                        t.add_row(vec![k.clone(), cell(other)]);
                    }
                }
            }
            let mut out = t.to_string();
            for (name, items) in lists {
                out.push_str(&format!("\n{name}:\n{}", rows(items, None)));
            }
            out
        }
        other => cell(other),
    }
}

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    t
}

fn rows(items: &[Value], columns: Option<&[&str]>) -> String {
    if items.is_empty() {
        return "(none)".into();
    }
    let flat: Vec<Map<String, Value>> = items
        .iter()
        .map(|i| {
            let mut m = Map::new();
            flatten("", i, &mut m);
            m
        })
        .collect();
    let cols: Vec<String> = match columns {
        Some(c) => c.iter().map(|s| s.to_string()).collect(),
        None => {
            let mut cols: Vec<String> = Vec::new();
            for m in &flat {
                for k in m.keys() {
                    if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
            cols
        }
    };
    let mut t = new_table();
    t.set_header(cols.clone());
    for m in &flat {
        t.add_row(
            cols.iter()
                .map(|c| m.get(c).map(cell).unwrap_or_default())
                .collect::<Vec<_>>(),
        );
    }
    t.to_string()
}

fn flatten(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// One value as a cell: strings bare, null empty, lists comma-separated, the rest as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_prints_the_chosen_columns_with_nested_fields_flattened() {
        let out = table(
            &json!([{"id": 1, "slugs": ["a", "b"], "f": {"x": 2}, "hidden": "no"}]),
            Some(&["id", "slugs", "f.x"]),
        );
        assert!(out.contains("f.x"), "{out}");
        assert!(out.contains("a,b"), "{out}");
        assert!(!out.contains("hidden"), "{out}");
    }

    #[test]
    fn an_object_prints_as_fields_with_its_lists_below() {
        let out = table(&json!({"bucket": "1m", "totals": [{"requests": 3}]}), None);
        assert!(out.contains("bucket"), "{out}");
        assert!(out.contains("totals:"), "{out}");
        assert!(out.contains("requests"), "{out}");
    }
}
