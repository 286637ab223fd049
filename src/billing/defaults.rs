//! The built-in default price table: `prices.json` beside this file, embedded at compile time,
//! so a fresh gateway prices common public models before anyone writes a rule. Stored rules
//! override it (`PriceTable` tries them first on equal priority). The tests below read every
//! entry, so a bad entry fails `cargo test` instead of a start-up.
use std::sync::LazyLock;

use serde::Deserialize;

use super::pricing::{Price, Rule, Source};
use crate::money::Micros;

const TABLE: &str = include_str!("prices.json");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Where the prices come from, for people reading the file.
    #[allow(dead_code)]
    about: String,
    /// The date the prices were taken (YYYY-MM-DD).
    taken: String,
    currency: String,
    models: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    provider: String,
    patterns: Vec<String>,
    #[serde(with = "crate::money::units")]
    input_per_mtok: Micros,
    #[serde(with = "crate::money::units")]
    output_per_mtok: Micros,
    #[serde(default, with = "crate::money::units_opt")]
    cache_read_per_mtok: Option<Micros>,
    #[serde(default, with = "crate::money::units_opt")]
    cache_write_per_mtok: Option<Micros>,
    #[serde(default, with = "crate::money::units_opt")]
    per_request: Option<Micros>,
}

/// The date the default prices were taken, as the file says.
pub fn taken() -> &'static str {
    &DEFAULTS.0
}

/// The default rules, one per pattern, all global and at priority 0.
pub fn rules() -> &'static [Rule] {
    &DEFAULTS.1
}

static DEFAULTS: LazyLock<(String, Vec<Rule>)> = LazyLock::new(|| {
    parse(TABLE).unwrap_or_else(|e| {
        // Unreachable once the unit tests pass; never worth refusing to start over.
        tracing::error!(error = %e, "the built-in price table is broken; only stored rules apply");
        (String::new(), Vec::new())
    })
});

fn parse(text: &str) -> Result<(String, Vec<Rule>), String> {
    let file: File = serde_json::from_str(text).map_err(|e| format!("prices.json: {e}"))?;
    if file.currency != "USD" {
        return Err(format!("currency: expected USD, found {}", file.currency));
    }
    chrono::NaiveDate::parse_from_str(&file.taken, "%Y-%m-%d")
        .map_err(|e| format!("taken: '{}' is not a date: {e}", file.taken))?;
    let mut rules = Vec::new();
    for e in file.models {
        if e.patterns.is_empty() {
            return Err(format!("{}: an entry without patterns", e.provider));
        }
        let price = Price {
            input_per_mtok: e.input_per_mtok,
            output_per_mtok: e.output_per_mtok,
            cache_read_per_mtok: e.cache_read_per_mtok,
            cache_write_per_mtok: e.cache_write_per_mtok,
            per_request: e.per_request.unwrap_or(0),
        };
        for pattern in e.patterns {
            let matcher = crate::proxy::models::compile(&pattern)
                .map_err(|m| format!("{}: {m}", e.provider))?;
            rules.push(Rule {
                source: Source::Default(pattern.clone()),
                pattern,
                matcher,
                slug: None,
                priority: 0,
                price,
            });
        }
    }
    Ok((file.taken, rules))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::billing::pricing::PriceTable;

    #[test]
    fn every_default_entry_parses_and_its_patterns_compile() {
        let (taken, rules) = parse(TABLE).expect("prices.json is valid");
        assert!(!taken.is_empty());
        assert!(rules.len() >= 20, "{} rules", rules.len());
        let mut seen = HashSet::new();
        for r in &rules {
            assert!(seen.insert(r.pattern.clone()), "'{}' twice", r.pattern);
            let p = r.price;
            assert!(
                p.input_per_mtok > 0 && p.output_per_mtok > 0,
                "{}",
                r.pattern
            );
            // A cache hit is never dearer than plain input in any provider's list.
            assert!(
                p.cache_read_per_mtok.is_none_or(|c| c <= p.input_per_mtok),
                "{}",
                r.pattern
            );
        }
        assert_eq!(
            rules.len(),
            super::rules().len(),
            "the embedded table loads"
        );
    }

    #[test]
    fn known_models_resolve_to_their_list_price() {
        let t = PriceTable::new(rules().to_vec());
        let price = |m: &str| t.price("any", m).unwrap_or_else(|| panic!("{m} unpriced"));
        let mini = price("gpt-4o-mini");
        assert_eq!(
            (mini.input_per_mtok, mini.output_per_mtok),
            (150_000, 600_000)
        );
        assert_eq!(mini.cache_read_per_mtok, Some(75_000));
        assert_eq!(price("gpt-4o").input_per_mtok, 2_500_000);
        assert_eq!(price("gpt-4.1-nano-2025-04-14").output_per_mtok, 400_000);
        let sonnet = price("claude-sonnet-4-5-20250929");
        assert_eq!(sonnet.cache_write_per_mtok, Some(3_750_000));
        assert_eq!(price("claude-opus-4-20250514").output_per_mtok, 75_000_000);
        assert_eq!(
            price("claude-opus-4-5-20251101").output_per_mtok,
            25_000_000
        );
        assert_eq!(price("claude-haiku-4-5").input_per_mtok, 1_000_000);
        assert_eq!(price("gemini-2.5-flash").output_per_mtok, 2_500_000);
        assert_eq!(price("gemini-2.5-flash-lite").input_per_mtok, 100_000);
        assert_eq!(price("o4-mini").cache_read_per_mtok, Some(275_000));
        assert!(
            t.price("any", "gpt-4o-audio-preview").is_none(),
            "not guessed"
        );
        assert!(t.price("any", "llama-3-70b").is_none());
    }

    #[test]
    fn a_bad_entry_is_an_error_naming_it() {
        let bad = |models: &str| {
            parse(&format!(
                r#"{{"about":"","taken":"2026-11-22","currency":"USD","models":[{models}]}}"#
            ))
            .map(|_| ())
            .unwrap_err()
        };
        let e =
            bad(r#"{"provider":"x","patterns":["gpt-["],"input_per_mtok":1,"output_per_mtok":1}"#);
        assert!(e.contains("gpt-["), "{e}");
        let e = bad(r#"{"provider":"x","patterns":["a"],"input_per_mtok":-1,"output_per_mtok":1}"#);
        assert!(e.contains("negative"), "{e}");
        let e = bad(r#"{"provider":"x","patterns":[],"input_per_mtok":1,"output_per_mtok":1}"#);
        assert!(e.contains("without patterns"), "{e}");
        let e = bad(r#"{"provider":"x","patterns":["a"],"input_per_mtok":1}"#);
        assert!(e.contains("output_per_mtok"), "{e}");
    }
}
