//! Prices per model (USD per 1M tokens) from `ops/pricing.toml` or `CHATQ_PRICING_FILE`.

use std::{collections::HashMap, path::Path};

use chrono::NaiveDate;
use serde::Deserialize;

const BUILT_IN: &str = include_str!("../../ops/pricing.toml");

/// Prices of one model from a date on.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ModelPrice {
    /// Model name as the provider reports it, without a snapshot date.
    pub name: String,
    /// First day these prices apply.
    pub effective: NaiveDate,
    /// USD per 1M input tokens (not cached).
    pub input: f64,
    /// USD per 1M cached input tokens; defaults to the input price.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// USD per 1M output tokens.
    #[serde(default)]
    pub output: f64,
}

#[derive(Deserialize)]
struct PricingFile {
    #[serde(default)]
    model: Vec<ModelPrice>,
}

/// Errors loading a pricing file.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// The file could not be read.
    #[error("cannot read pricing file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file is not valid pricing TOML; `line` and `column` count from 1.
    #[error("invalid pricing file {path}:{line}:{column}: {message}")]
    Parse { path: String, line: usize, column: usize, message: String },
}

/// The price table: every dated entry per model.
#[derive(Clone, Debug, Default)]
pub struct Pricing {
    models: HashMap<String, Vec<ModelPrice>>,
}

/// Token counts of one provider call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// All input tokens, cached ones included (OpenAI's `prompt_tokens`).
    pub input: u64,
    /// The cached subset of `input`.
    pub cached_input: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
}

impl Pricing {
    /// The built-in table, or `file` when given.
    pub fn load(file: Option<&Path>) -> Result<Self, PricingError> {
        match file {
            None => Self::parse(BUILT_IN, "ops/pricing.toml (built in)"),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| PricingError::Read { path: shown.clone(), source })?;
                Self::parse(&text, &shown)
            }
        }
    }

    fn parse(text: &str, path: &str) -> Result<Self, PricingError> {
        let file: PricingFile = toml::from_str(text).map_err(|e| {
            let (line, column) = line_column(text, e.span().map_or(0, |span| span.start));
            PricingError::Parse { path: path.into(), line, column, message: e.message().trim_end().to_string() }
        })?;
        let mut models: HashMap<String, Vec<ModelPrice>> = HashMap::new();
        for price in file.model {
            models.entry(price.name.clone()).or_default().push(price);
        }
        for prices in models.values_mut() {
            prices.sort_by_key(|p| p.effective);
        }
        Ok(Self { models })
    }

    /// Every model the table prices, sorted: the `model` label values metrics start with.
    pub fn models(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.models.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The price in force for `model` on `day`, if the model is known.
    pub fn price(&self, model: &str, day: NaiveDate) -> Option<&ModelPrice> {
        let prices = self.models.get(model).or_else(|| self.models.get(strip_snapshot_date(model)))?;
        prices.iter().rev().find(|p| p.effective <= day).or_else(|| prices.first())
    }

    /// Cost in USD of a call, or `None` when the model is unpriced (never "free").
    pub fn cost(&self, model: &str, day: NaiveDate, usage: TokenUsage) -> Option<f64> {
        let p = self.price(model, day)?;
        let cached = usage.cached_input.min(usage.input);
        let uncached = usage.input - cached;
        let micros = uncached as f64 * p.input
            + cached as f64 * p.cached_input.unwrap_or(p.input)
            + usage.output as f64 * p.output;
        Some(micros / 1_000_000.0)
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// `gpt-4o-mini-2024-07-18` → `gpt-4o-mini`.
fn strip_snapshot_date(model: &str) -> &str {
    let bytes = model.as_bytes();
    if bytes.len() > 11 {
        let (head, tail) = model.split_at(model.len() - 11);
        let t = tail.as_bytes();
        let is_date = t[0] == b'-'
            && t[5] == b'-'
            && t[8] == b'-'
            && t.iter().enumerate().all(|(i, c)| matches!(i, 0 | 5 | 8) || c.is_ascii_digit());
        if is_date {
            return head;
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()
    }

    #[test]
    fn built_in_table_prices_gpt_4o_mini_with_cached_discount() {
        let p = Pricing::load(None).unwrap();
        let usage = TokenUsage { input: 1_000_000, cached_input: 400_000, output: 100_000 };
        let cost = p.cost("gpt-4o-mini", day(), usage).unwrap();
        // 600k * 0.15 + 400k * 0.075 + 100k * 0.60, per million
        assert!((cost - (0.09 + 0.03 + 0.06)).abs() < 1e-12, "{cost}");
    }

    #[test]
    fn snapshot_names_fall_back_to_the_base_model() {
        let p = Pricing::load(None).unwrap();
        assert!(p.price("gpt-4o-mini-2024-07-18", day()).is_some());
    }

    #[test]
    fn unknown_models_are_unpriced_not_free() {
        let p = Pricing::load(None).unwrap();
        assert_eq!(p.cost("my-local-llama", day(), TokenUsage { input: 10, cached_input: 0, output: 10 }), None);
    }

    #[test]
    fn a_bad_file_is_refused_naming_its_path_line_and_column() {
        let dir = std::env::temp_dir().join(format!("chatq-pricing-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pricing.toml");
        std::fs::write(&path, "[[model]]\nname = 'm'\neffective = '2026-01-01'\ninput = 'cheap'\n").unwrap();
        let err = Pricing::load(Some(&path)).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains(&format!("{}:4:9:", path.display())), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let err = Pricing::parse("[[model]]\nname = 'm'\ninput = = 1\n", "p.toml").unwrap_err().to_string();
        assert!(err.starts_with("invalid pricing file p.toml:3:"), "{err}");
    }

    #[test]
    fn a_missing_file_is_refused_naming_its_path() {
        let err = Pricing::load(Some(Path::new("/nonexistent/chatq-pricing.toml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/chatq-pricing.toml"), "{err}");
    }

    #[test]
    fn line_and_column_count_from_one_in_characters() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nxé=", 6), (2, 3));
        assert_eq!(line_column("a", 99), (1, 2));
    }

    #[test]
    fn later_entries_win_from_their_effective_date() {
        let p = Pricing::parse(
            "[[model]]\nname='m'\neffective='2026-01-01'\ninput=1.0\noutput=1.0\n\
             [[model]]\nname='m'\neffective='2026-06-01'\ninput=2.0\noutput=2.0\n",
            "test",
        )
        .unwrap();
        assert_eq!(p.price("m", NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()).unwrap().input, 1.0);
        assert_eq!(p.price("m", NaiveDate::from_ymd_opt(2026, 7, 1).unwrap()).unwrap().input, 2.0);
    }
}
