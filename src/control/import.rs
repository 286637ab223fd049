//! Parsing of key imports: JSON, CSV (`key,balance`), plain text. Everything is validated before
//! anything is written, and every bad line is named, so an import either lands whole or not at all.
//!
//! A plain-text line (blank lines and `#` comments skipped) is one of:
//! - `sk-key1,0.24`: a key and its balance, the CSV form (a space or `;` may separate them too);
//! - `sk-a,sk-b sk-c;sk-d`: several keys, separated by commas, spaces or semicolons, when no part
//!   is a number;
//! - anything else (`sk-a,abc,0.2`, a number first, a bad balance) is an error naming the line.
//!
//! No key is ever stored with a comma, semicolon or whitespace in it (`check_key`): such a "key"
//! is several keys pasted together, and sending it upstream only fails.
use serde::Deserialize;

#[derive(Clone, PartialEq)]
pub struct ParsedKey {
    pub key: String,
    pub label: Option<String>,
    pub weight: i32,
    /// Micro-units (`crate::money`).
    pub balance_micros: Option<i64>,
    /// The key's own outbound proxy, checked (`egress::parse_proxy`); JSON items only.
    pub egress_proxy: Option<String>,
}

/// Shows the key masked only.
impl std::fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("key", &crate::crypto::mask(&self.key))
            .field("label", &self.label)
            .field("weight", &self.weight)
            .field("balance_micros", &self.balance_micros)
            .field(
                "egress_proxy",
                &self.egress_proxy.as_deref().map(crate::egress::mask_proxy),
            )
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Text,
}

impl Format {
    /// From a Content-Type (parameters ignored), falling back to a file name's extension.
    pub fn detect(content_type: Option<&str>, file_name: Option<&str>) -> Option<Self> {
        let ct = content_type
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        match ct.as_str() {
            "application/json" => return Some(Self::Json),
            "text/csv" | "application/csv" => return Some(Self::Csv),
            "text/plain" => return Some(Self::Text),
            _ => {}
        }
        let ext = file_name?.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Self::Json),
            "csv" => Some(Self::Csv),
            "txt" | "text" | "keys" => Some(Self::Text),
            _ => None,
        }
    }

    /// The Content-Type that `detect` reads as this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Csv => "text/csv",
            Self::Text => "text/plain",
        }
    }
}

/// Checks one key: visible ASCII (it travels in an HTTP header), 4 to 1024 characters.
pub fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("key is empty".into());
    }
    if k.chars().any(|c| c.is_whitespace()) {
        return Err("key contains whitespace".into());
    }
    if k.contains([',', ';']) {
        return Err("key contains a comma or semicolon (separate keys go on their own)".into());
    }
    if !k.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("key contains characters that cannot be sent in a header".into());
    }
    if !(4..=1024).contains(&k.len()) {
        return Err("key must be 4 to 1024 characters".into());
    }
    Ok(())
}

/// A balance in currency units, as JSON or CSV carries it, to micros.
fn check_balance(b: Option<f64>) -> Result<Option<i64>, String> {
    b.map(crate::money::amount_from_units_f64)
        .transpose()
        .map_err(|e| format!("balance {e}"))
}

fn check_weight(w: Option<i64>) -> Result<i32, String> {
    match w {
        None => Ok(1),
        Some(w @ 1..=1000) => Ok(w as i32),
        Some(_) => Err("weight must be 1 to 1000".into()),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonDoc {
    Wrapped { keys: Vec<serde_json::Value> },
    Bare(Vec<serde_json::Value>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonKey {
    key: String,
    label: Option<String>,
    weight: Option<i64>,
    balance: Option<f64>,
    egress_proxy: Option<String>,
}

/// An empty proxy is none; the message never repeats the URL.
fn check_proxy(p: Option<String>) -> Result<Option<String>, String> {
    match p.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(url) => crate::egress::parse_proxy(url)
            .map(|_| Some(url.to_string()))
            .map_err(|e| format!("egress_proxy: {e}")),
    }
}

/// Parses JSON items (`"sk-..."` or `{"key", "label"?, "weight"?, "balance"?}`).
pub fn from_json_items(items: Vec<serde_json::Value>) -> Result<Vec<ParsedKey>, Vec<String>> {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let parsed = match item {
            serde_json::Value::String(s) => check_key(s.trim()).map(|_| ParsedKey {
                key: s.trim().to_string(),
                label: None,
                weight: 1,
                balance_micros: None,
                egress_proxy: None,
            }),
            // serde's messages quote the offending value, which may be a key: say what is expected.
            v => serde_json::from_value::<JsonKey>(v)
                .map_err(|_| {
                    "expected a string or {\"key\": string, \"label\"?: string, \"weight\"?: integer, \"balance\"?: number, \"egress_proxy\"?: string}"
                        .to_string()
                })
                .and_then(|k| {
                    let key = k.key.trim().to_string();
                    check_key(&key)?;
                    Ok(ParsedKey {
                        key,
                        label: k.label.filter(|l| !l.trim().is_empty()),
                        weight: check_weight(k.weight)?,
                        balance_micros: check_balance(k.balance)?,
                        egress_proxy: check_proxy(k.egress_proxy)?,
                    })
                }),
        };
        match parsed {
            Ok(p) => out.push(p),
            Err(e) => errs.push(format!("keys[{i}]: {e}")),
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

pub fn parse(format: Format, body: &[u8]) -> Result<Vec<ParsedKey>, Vec<String>> {
    let text = std::str::from_utf8(body).map_err(|_| vec!["body: not UTF-8 text".to_string()])?;
    match format {
        Format::Json => {
            let doc: JsonDoc = serde_json::from_str(text).map_err(|e| {
                vec![format!(
                    "body: expected {{\"keys\": [...]}} or a JSON array ({e})"
                )]
            })?;
            let items = match doc {
                JsonDoc::Wrapped { keys } | JsonDoc::Bare(keys) => keys,
            };
            from_json_items(items)
        }
        Format::Text => {
            let mut out = Vec::new();
            let mut errs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                match text_line(l) {
                    Ok(keys) => out.extend(keys),
                    Err(e) => errs.push(format!("line {}: {e}", i + 1)),
                }
            }
            if errs.is_empty() { Ok(out) } else { Err(errs) }
        }
        Format::Csv => parse_csv(text),
    }
}

/// One plain-text line: a key and its balance, or several keys (see the module notes).
fn text_line(line: &str) -> Result<Vec<ParsedKey>, String> {
    let parts: Vec<&str> = line
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .collect();
    let plain = |key: &str, balance_micros| ParsedKey {
        key: key.to_string(),
        label: None,
        weight: 1,
        balance_micros,
        egress_proxy: None,
    };
    match parts.as_slice() {
        [key, balance] if !looks_numeric(key) && looks_numeric(balance) => {
            check_key(key)?;
            Ok(vec![plain(key, Some(csv_balance(balance)?))])
        }
        keys if !keys.iter().any(|p| looks_numeric(p)) => keys
            .iter()
            .map(|k| check_key(k).map(|()| plain(k, None)))
            .collect(),
        _ => Err("expected keys separated by commas, spaces or semicolons, or key,balance".into()),
    }
}

/// A part that reads as an amount (`0.24`, `-1`, `1e3`, `1.2.3`): a balance, maybe a bad one,
/// never a key.
fn looks_numeric(p: &str) -> bool {
    p.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '.' | '+' | '-'))
        && p.bytes().any(|b| b.is_ascii_digit())
        && p.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-' | b'e' | b'E'))
}

/// A balance as CSV and text carry it: decimal text straight to micros, never through a double.
fn csv_balance(b: &str) -> Result<i64, String> {
    match crate::money::parse_units(b) {
        Ok(m) if m >= 0 && !b.starts_with('-') => Ok(m),
        _ => Err(format!(
            "balance '{}' is not a non-negative amount up to {}",
            b.chars().take(32).collect::<String>(),
            crate::money::MAX_UNITS
        )),
    }
}

fn parse_csv(text: &str) -> Result<Vec<ParsedKey>, Vec<String>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(i as u64 + 1);
                errs.push(format!("line {line}: not valid CSV"));
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(i as u64 + 1);
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        let key = rec.get(0).unwrap_or("");
        if i == 0 && key.eq_ignore_ascii_case("key") {
            continue; // header row
        }
        if rec.len() > 2 {
            errs.push(format!(
                "line {line}: expected key,balance but found {} fields",
                rec.len()
            ));
            continue;
        }
        if let Err(e) = check_key(key) {
            errs.push(format!("line {line}: {e}"));
            continue;
        }
        let balance_micros = match rec.get(1).filter(|b| !b.is_empty()).map(csv_balance) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                errs.push(format!("line {line}: {e}"));
                continue;
            }
        };
        out.push(ParsedKey {
            key: key.to_string(),
            label: None,
            weight: 1,
            balance_micros,
            egress_proxy: None,
        });
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_skips_blanks_and_comments_and_names_bad_lines() {
        let ok = parse(Format::Text, b"# keys\nsk-aaaa1111\n\n  sk-bbbb2222  \n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].key, "sk-bbbb2222");
        let err = parse(
            Format::Text,
            b"sk-aaaa1111\nsk bad key\nsk-cccc3333\n\x01x\n",
        )
        .unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err[0].starts_with("line 2:"), "{err:?}");
        assert!(err[1].starts_with("line 4:"), "{err:?}");
    }

    #[test]
    fn a_text_line_is_a_key_and_balance_or_several_keys() {
        let ok = parse(
            Format::Text,
            b"sk-key1111,0.24\nsk-aaaa1111,sk-bbbb2222\nsk-cccc3333 sk-dddd4444\n\
              sk-eeee5555;sk-ffff6666 ,sk-gggg7777\nsk-hhhh8888 12\n",
        )
        .unwrap();
        let got: Vec<(&str, Option<i64>)> = ok
            .iter()
            .map(|k| (k.key.as_str(), k.balance_micros))
            .collect();
        assert_eq!(
            got,
            vec![
                ("sk-key1111", Some(240_000)),
                ("sk-aaaa1111", None),
                ("sk-bbbb2222", None),
                ("sk-cccc3333", None),
                ("sk-dddd4444", None),
                ("sk-eeee5555", None),
                ("sk-ffff6666", None),
                ("sk-gggg7777", None),
                ("sk-hhhh8888", Some(12_000_000)),
            ]
        );
    }

    #[test]
    fn a_text_line_that_is_neither_form_is_named() {
        let err = parse(
            Format::Text,
            b"sk-good1111\nsk-aaaa1111,abc,0.2\nsk-bbbb2222,-1\n0.5,sk-cccc3333\n\
              sk-dddd4444,1.2.3\nsk-eeee5555,abc\n",
        )
        .unwrap_err();
        let lines: Vec<&str> = err.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            lines,
            ["line 2", "line 3", "line 4", "line 5", "line 6"],
            "{err:?}"
        );
        assert!(err[1].contains("balance '-1'"), "{err:?}");
        assert!(
            err[4].contains("4 to 1024"),
            "'abc' is too short for a key: {err:?}"
        );
    }

    #[test]
    fn no_key_with_a_separator_in_it_gets_through_any_form() {
        for (format, body) in [
            (Format::Json, &br#"["sk-aaaa1111,sk-bbbb2222"]"#[..]),
            (Format::Json, br#"[{"key": "sk-aaaa1111;sk-bbbb2222"}]"#),
            (Format::Csv, b"\"sk-aaaa1111,sk-bbbb2222\",1\n"),
        ] {
            let err = parse(format, body).unwrap_err();
            assert!(err[0].contains("comma or semicolon"), "{format:?}: {err:?}");
        }
    }

    #[test]
    fn csv_reads_key_and_balance_with_optional_header() {
        let ok = parse(
            Format::Csv,
            b"key,balance\nsk-aaaa1111,12.5\nsk-bbbb2222,\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].balance_micros, Some(12_500_000));
        assert_eq!(ok[1].balance_micros, None);
        let err = parse(
            Format::Csv,
            b"sk-aaaa1111,abc\nsk-bbbb2222,1,2\nsk-cccc3333,-1\n",
        )
        .unwrap_err();
        assert_eq!(err.len(), 3, "{err:?}");
        assert!(err[0].starts_with("line 1:"));
        assert!(err[1].starts_with("line 2:"));
        assert!(err[2].starts_with("line 3:"));
    }

    #[test]
    fn json_accepts_wrapped_and_bare_forms() {
        let a = parse(
            Format::Json,
            br#"{"keys":[{"key":"sk-aaaa1111","weight":2,"balance":3}]}"#,
        )
        .unwrap();
        assert_eq!(a[0].weight, 2);
        let b = parse(Format::Json, br#"["sk-aaaa1111", {"key":"sk-bbbb2222"}]"#).unwrap();
        assert_eq!(b.len(), 2);
        let err = parse(
            Format::Json,
            br#"["sk-aaaa1111", {"key":""}, {"key":"sk-x1234","weight":0}]"#,
        )
        .unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err[0].starts_with("keys[1]:"));
        assert!(err[1].starts_with("keys[2]:"));
    }

    #[test]
    fn format_comes_from_content_type_then_file_name() {
        assert_eq!(
            Format::detect(Some("text/csv; charset=utf-8"), None),
            Some(Format::Csv)
        );
        assert_eq!(
            Format::detect(Some("application/octet-stream"), Some("k.txt")),
            Some(Format::Text)
        );
        assert_eq!(Format::detect(None, Some("k.bin")), None);
    }
}
