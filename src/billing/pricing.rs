//! Prices per model: rules with a glob `pattern`, an explicit `priority` and an optional `slug`
//! (absent = global), and a built-in default table for common public models that rules override.
//! Compiled into a `PriceTable` when the config snapshot loads; the data plane asks it for the
//! price of (slug, model) and turns tokens into a cost with `Price::cost`.
use globset::GlobMatcher;

use crate::events::Tokens;

/// Prices in integer micro-units of the currency: per 1M tokens of each kind, and per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input_per_mtok: i64,
    pub output_per_mtok: i64,
    /// None: cache reads are priced as input.
    pub cache_read_per_mtok: Option<i64>,
    /// None: cache writes are priced as input.
    pub cache_write_per_mtok: Option<i64>,
    pub per_request: i64,
}

impl Price {
    /// The cost of one request with these token counts, in micro-units. `prompt` includes the
    /// cache reads and writes (the canonical usage keeps OpenAI's convention), so they are taken
    /// out of it and priced on their own. Each part is rounded to the nearest micro-unit once,
    /// on the sum, so many small requests do not drift.
    pub fn cost(&self, t: &Tokens) -> i64 {
        let cached = t.cache_read.saturating_add(t.cache_write);
        let input = t.prompt.saturating_sub(cached) as i128;
        let per = |n: u64, p: i64| n as i128 * p as i128;
        let token_micro_millionths = input * self.input_per_mtok as i128
            + per(t.completion, self.output_per_mtok)
            + per(
                t.cache_read,
                self.cache_read_per_mtok.unwrap_or(self.input_per_mtok),
            )
            + per(
                t.cache_write,
                self.cache_write_per_mtok.unwrap_or(self.input_per_mtok),
            );
        let tokens = (token_micro_millionths + 500_000).div_euclid(1_000_000);
        (tokens + self.per_request as i128).clamp(0, i64::MAX as i128) as i64
    }

    /// What a request costs at least before its answer: the per-request price plus its prompt
    /// (estimated) at the input price. The `balance` strategy skips keys below it.
    pub fn estimate(&self, prompt_tokens: u64) -> i64 {
        self.cost(&Tokens {
            prompt: prompt_tokens,
            ..Default::default()
        })
    }
}

/// Where a price came from, for `GET /admin/pricing/check` and the request log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A stored rule, by id.
    Rule(i64),
    /// The built-in default table, by the pattern that matched.
    Default(String),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub source: Source,
    pub pattern: String,
    pub matcher: GlobMatcher,
    /// None: every slug.
    pub slug: Option<String>,
    pub priority: i32,
    pub price: Price,
}

/// The rules in the order they are tried: the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    rules: Vec<Rule>,
}

impl PriceTable {
    /// Orders `rules` (stored rules first, then the defaults): higher priority first; on a tie a
    /// slug's own rule before a global one, then the more specific pattern (fewer wildcards,
    /// then more literal text).
    pub fn new(mut rules: Vec<Rule>) -> Self {
        rules.sort_by_key(|r| {
            let wild = r
                .pattern
                .chars()
                .filter(|c| matches!(c, '*' | '?' | '['))
                .count();
            (
                std::cmp::Reverse(r.priority),
                matches!(r.source, Source::Default(_)),
                r.slug.is_none(),
                wild,
                std::cmp::Reverse(r.pattern.len()),
            )
        });
        Self { rules }
    }

    /// The rule that prices `model` on `slug`, if any.
    pub fn find(&self, slug: &str, model: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.slug.as_deref().is_none_or(|s| s == slug) && r.matcher.is_match(model))
    }

    pub fn price(&self, slug: &str, model: &str) -> Option<Price> {
        self.find(slug, model).map(|r| r.price)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: i64, pattern: &str, slug: Option<&str>, priority: i32, per_request: i64) -> Rule {
        Rule {
            source: Source::Rule(id),
            pattern: pattern.into(),
            matcher: globset::Glob::new(pattern).unwrap().compile_matcher(),
            slug: slug.map(str::to_string),
            priority,
            price: Price {
                per_request,
                ..Default::default()
            },
        }
    }

    #[test]
    fn cost_prices_each_kind_of_token_and_the_request() {
        let p = Price {
            input_per_mtok: 2_500_000,
            output_per_mtok: 10_000_000,
            cache_read_per_mtok: Some(1_250_000),
            cache_write_per_mtok: None,
            per_request: 80_000,
        };
        let t = Tokens {
            prompt: 1_000,
            completion: 200,
            cache_read: 400,
            cache_write: 100,
        };
        // 500 input * 2.5 + 200 * 10 + 400 * 1.25 + 100 * 2.5 (per 1M) = 1250+2000+500+250 = 4000
        // micros, plus 0.08 per request.
        assert_eq!(p.cost(&t), 4_000 + 80_000);
        assert_eq!(p.estimate(1_000_000), 2_500_000 + 80_000);
    }

    #[test]
    fn priority_wins_then_the_slugs_own_rule_then_the_more_specific_pattern() {
        let t = PriceTable::new(vec![
            rule(1, "*", None, 0, 1),
            rule(2, "gpt-4o*", None, 0, 2),
            rule(3, "gpt-4o*", Some("cheap"), 0, 3),
            rule(4, "gpt-4o-mini", None, 5, 4),
        ]);
        assert_eq!(t.price("other", "gpt-4o").unwrap().per_request, 2);
        assert_eq!(t.price("cheap", "gpt-4o").unwrap().per_request, 3);
        assert_eq!(t.price("cheap", "gpt-4o-mini").unwrap().per_request, 4);
        assert_eq!(t.price("other", "llama").unwrap().per_request, 1);
    }
}
