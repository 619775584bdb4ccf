//! The rules of request bodies and query strings that serde's types cannot say: lengths,
//! ranges, and text Postgres cannot store. Every request DTO implements [`Validate`]; the
//! [`Json`](crate::extract::Json) and [`Query`](crate::extract::Query) extractors call it, so a
//! handler only ever sees input that the database accepts. A refusal names each field:
//! `details.problems: [{field, message}]`.
//!
//! The limits stated here are also the `maxLength`/`minimum`/`maximum` of the OpenAPI
//! document (the `#[schema(..)]` attributes on the DTOs); keep both in step.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// One field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// The field, as a path: `metadata.tags[2]`, `limit`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The problems found in one request.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

/// A request DTO whose values must be checked beyond their types.
pub trait Validate {
    /// Adds a [`Problem`] for every field that breaks a rule.
    fn validate(&self, problems: &mut Problems);
}

/// Largest magnitude of a number in stored JSON. Postgres keeps a `jsonb` number as an exact
/// decimal and writes it back in full; near `f64::MAX` that text no longer parses as an `f64`,
/// so the thread or assistant could be stored but never read again.
const MAX_JSON_NUMBER: f64 = 1e300;

/// Postgres cannot store U+0000 in `text` nor in `jsonb` (it answers `22021` or
/// `22P05`), so no field may carry it.
const NUL: char = '\0';

impl Problems {
    /// Records that `field` breaks a rule.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { field: field.into(), message: message.into() });
    }

    /// The problems found, empty when the request is valid.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// A text Postgres can store, of `min..=max` characters (`max` 0: no limit); `min` 1 also
    /// refuses text of only white space.
    pub fn text(&mut self, field: &str, value: &str, min: usize, max: usize) {
        if value.contains(NUL) {
            self.add(field, "must not contain the NUL character (U+0000)");
            return;
        }
        let chars = value.chars().count();
        if min > 0 && value.trim().is_empty() {
            self.add(field, "must not be empty");
        } else if chars < min || (max > 0 && chars > max) {
            self.add(field, format!("must be {min} to {max} characters (got {chars})"));
        }
    }

    /// [`Problems::text`] for an optional field; absent is fine.
    pub fn opt_text(&mut self, field: &str, value: Option<&str>, min: usize, max: usize) {
        if let Some(value) = value {
            self.text(field, value, min, max);
        }
    }

    /// A JSON value Postgres can store as `jsonb` and give back: no NUL in any key or string and
    /// no number beyond ±1e300, at any depth.
    pub fn json(&mut self, field: &str, value: &Value) {
        match value {
            Value::String(s) if s.contains(NUL) => self.add(field, "must not contain the NUL character (U+0000)"),
            Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() > MAX_JSON_NUMBER) => {
                self.add(field, "numbers must be between -1e300 and 1e300");
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.json(&format!("{field}[{i}]"), item);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    if key.contains(NUL) {
                        self.add(field, "keys must not contain the NUL character (U+0000)");
                    } else {
                        self.json(&format!("{field}.{key}"), item);
                    }
                }
            }
            _ => {}
        }
    }

    /// A JSON object (or absent), storable as `jsonb`, of at most `max_bytes` serialised.
    pub fn json_object(&mut self, field: &str, value: Option<&Value>, max_bytes: usize) {
        let Some(value) = value else { return };
        if !value.is_object() {
            self.add(field, "must be a JSON object");
        } else if max_bytes > 0 && value.to_string().len() > max_bytes {
            self.add(field, format!("must be at most {max_bytes} bytes as JSON"));
        } else {
            self.json(field, value);
        }
    }

    /// A number in `min..=max`, or absent.
    pub fn range<T: PartialOrd + std::fmt::Display + Copy>(&mut self, field: &str, value: Option<T>, min: T, max: T) {
        if let Some(v) = value
            && !(v >= min && v <= max)
        {
            self.add(field, format!("must be between {min} and {max} (got {v})"));
        }
    }
}

/// The problems of `value`, or `None` when it is valid.
pub fn check(value: &impl Validate) -> Option<Vec<Problem>> {
    let mut problems = Problems::default();
    value.validate(&mut problems);
    let problems = problems.into_vec();
    (!problems.is_empty()).then_some(problems)
}

/// One sentence listing every problem, for the error message.
pub fn summary(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_anywhere_in_json_names_its_path() {
        let mut p = Problems::default();
        p.json_object("metadata", Some(&json!({"a": {"b": ["ok", "x\u{0}y"]}})), 0);
        assert_eq!(p.into_vec(), vec![Problem { field: "metadata.a.b[1]".into(), message: p_msg() }]);
    }

    fn p_msg() -> String {
        "must not contain the NUL character (U+0000)".into()
    }

    #[test]
    fn text_counts_characters_not_bytes() {
        let mut p = Problems::default();
        p.text("name", &"é".repeat(200), 1, 200);
        p.text("blank", "  ", 1, 200);
        p.range("k", Some(0), 1, 50);
        let fields: Vec<_> = p.into_vec().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["blank", "k"]);
    }
}
