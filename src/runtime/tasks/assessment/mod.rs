//! How a task's output is judged (spec §5.2, §5.7 steps 2–3): the expectations and expected
//! outcomes a task is created with, the deterministic checks, the reviewer's request and reply,
//! and the outcomes kept when the task is done. Pure functions: the task runner makes the
//! reviewer calls and writes the results.

mod checks;
mod input;
mod outcomes;
mod review;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use checks::{check, json_in};
pub use input::{read_expectations, read_expectations_at, read_outcomes, read_outcomes_at};
pub use outcomes::{ExpectedOutcome, Outcome, OutcomeType, extract_outcomes, outcomes_text};
pub use review::{REVIEW_SCHEMA_NAME, read_review, review_dimensions, review_request, review_retry};

/// One acceptance criterion of a task (spec §5.2), as stored and returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Expectation {
    /// A reviewer model scores each dimension 1–5; passes when the weighted mean reaches `threshold`.
    LlmReview {
        criteria: Option<String>,
        dimensions: Vec<Dimension>,
        threshold: f64,
    },
    /// The output contains `text`.
    #[serde(rename_all = "camelCase")]
    Contains { text: String, case_sensitive: bool },
    /// The pattern (Rust `regex` syntax) matches somewhere in the output.
    Regex { pattern: String },
    /// The output's JSON validates against this JSON Schema 2020-12.
    JsonSchema {
        #[schema(value_type = Object)]
        schema: Value,
    },
}

impl Expectation {
    /// The `type` name, as in the JSON and in each check.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::LlmReview { .. } => "llm_review",
            Self::Contains { .. } => "contains",
            Self::Regex { .. } => "regex",
            Self::JsonSchema { .. } => "json_schema",
        }
    }
}

/// One scored aspect of an `llm_review`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dimension {
    pub name: String,
    pub description: String,
    pub weight: f64,
}

/// The result of one expectation, or of a required outcome that could not be produced.
/// `scores` and `globalScore` are set for `llm_review` checks only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// The expectation type, or `outcome`.
    pub r#type: String,
    pub passed: bool,
    pub message: String,
    #[serde(default)]
    pub scores: Option<Vec<Score>>,
    #[serde(default)]
    pub global_score: Option<f64>,
}

/// The reviewer's score of one dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Score {
    pub dimension: String,
    /// 1 to 5.
    pub score: i64,
    pub weight: f64,
    pub reasoning: String,
}

/// The global score of an assessment (spec §5.2): the mean of its reviews' scores, `None`
/// when no `llm_review` ran, since deterministic checks only pass or fail.
pub fn global_score(checks: &[Check]) -> Option<f64> {
    let scores: Vec<f64> = checks
        .iter()
        .filter(|c| c.r#type == "llm_review")
        .filter_map(|c| c.global_score)
        .collect();
    if scores.is_empty() {
        return None;
    }
    Some(round2(scores.iter().sum::<f64>() / scores.len() as f64))
}

/// Scores are shown and stored with two decimals, so that `4.333…` reads as `4.33` everywhere.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A score for people: `4.0`, `4.5`, `4.33`.
fn show_score(x: f64) -> String {
    let text = format!("{x:.2}");
    match text.strip_suffix('0') {
        Some(shorter) => shorter.to_string(),
        None => text,
    }
}

/// The acceptance criteria section of a task brief (spec §5.7 step 2): one markdown bullet per
/// expectation, saying what the output will be judged on.
pub fn criteria_text(expectations: &[Expectation]) -> String {
    expectations
        .iter()
        .map(|expectation| match expectation {
            Expectation::Contains { text, case_sensitive } => {
                let case = if *case_sensitive { "" } else { " (in any letter case)" };
                format!("- The output contains {}{case}", quoted(text))
            }
            Expectation::Regex { pattern } => {
                format!("- The output matches the regular expression {}", inline_code(pattern))
            }
            Expectation::JsonSchema { schema } => {
                let pretty = serde_json::to_string_pretty(schema).unwrap_or_else(|_| schema.to_string());
                format!(
                    "- The output is JSON valid against this schema (the whole output, or its first ```json block):\n{}",
                    indent(&format!("```json\n{pretty}\n```"))
                )
            }
            Expectation::LlmReview {
                criteria,
                dimensions,
                threshold,
            } => {
                let mut text = format!(
                    "- Reviewed on a scale of 1 to 5, passing at a weighted mean of {}:",
                    show_score(*threshold)
                );
                if let Some(criteria) = criteria {
                    text.push('\n');
                    text.push_str(&indent(criteria));
                }
                for d in dimensions {
                    text.push('\n');
                    text.push_str(&indent(&format!("- {}: {}", d.name, d.description)));
                }
                text
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON string literal: quotes and control characters inside stay readable.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

/// A markdown code span that survives backticks inside `text`.
fn inline_code(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    if longest == 0 {
        format!("{fence}{text}{fence}")
    } else {
        format!("{fence} {text} {fence}")
    }
}

/// Continuation lines of a markdown bullet.
fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An `llm_review` expectation for tests: dimensions by name and weight.
    pub(super) fn review(criteria: Option<&str>, dimensions: &[(&str, f64)], threshold: f64) -> Expectation {
        Expectation::LlmReview {
            criteria: criteria.map(str::to_string),
            dimensions: dimensions
                .iter()
                .map(|(name, weight)| Dimension {
                    name: name.to_string(),
                    description: format!("how {name} it is"),
                    weight: *weight,
                })
                .collect(),
            threshold,
        }
    }

    #[test]
    fn expectations_serialise_as_the_spec_shows_them() {
        let contains = Expectation::Contains {
            text: "2.0".into(),
            case_sensitive: false,
        };
        assert_eq!(
            serde_json::to_value(&contains).unwrap(),
            json!({"type": "contains", "text": "2.0", "caseSensitive": false})
        );
        let stored = json!({"type": "llm_review", "criteria": null, "threshold": 3.5,
                            "dimensions": [{"name": "clarity", "description": "clear", "weight": 2.0}]});
        let read: Expectation = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), stored);
        let check = Check {
            r#type: "regex".into(),
            passed: true,
            message: "ok".into(),
            scores: None,
            global_score: None,
        };
        assert_eq!(
            serde_json::to_value(&check).unwrap(),
            json!({"type": "regex", "passed": true, "message": "ok", "scores": null, "globalScore": null})
        );
    }

    #[test]
    fn the_global_score_is_the_mean_of_the_reviews_only() {
        let check = |kind: &str, score: Option<f64>| Check {
            r#type: kind.into(),
            passed: true,
            message: String::new(),
            scores: None,
            global_score: score,
        };
        assert_eq!(global_score(&[check("contains", None)]), None);
        assert_eq!(global_score(&[]), None);
        let checks = [
            check("llm_review", Some(4.0)),
            check("contains", None),
            check("llm_review", Some(4.67)),
        ];
        assert_eq!(global_score(&checks), Some(4.34));
    }

    #[test]
    fn scores_read_with_one_or_two_decimals() {
        assert_eq!(show_score(4.0), "4.0");
        assert_eq!(show_score(4.5), "4.5");
        assert_eq!(show_score(4.33), "4.33");
        assert_eq!(show_score(3.0), "3.0");
    }

    #[test]
    fn criteria_text_has_one_bullet_per_expectation() {
        let text = criteria_text(&[
            Expectation::Contains {
                text: "2.0".into(),
                case_sensitive: true,
            },
            Expectation::Regex {
                pattern: r"v\d+".into(),
            },
            Expectation::JsonSchema {
                schema: json!({"type": "object"}),
            },
            review(Some("Release notes a user can follow."), &[("clarity", 1.0)], 3.0),
        ]);
        assert!(text.starts_with("- The output contains \"2.0\"\n"), "{text}");
        assert!(
            text.contains("- The output matches the regular expression `v\\d+`"),
            "{text}"
        );
        assert!(
            text.contains("  ```json\n  {\n    \"type\": \"object\"\n  }\n  ```"),
            "{text}"
        );
        assert!(
            text.contains("weighted mean of 3.0:\n  Release notes a user can follow.\n  - clarity: how clarity it is"),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| l.starts_with("- ")).count(), 4);
        assert_eq!(criteria_text(&[]), "");
    }

    #[test]
    fn code_spans_survive_backticks() {
        assert_eq!(inline_code("a`b"), "`` a`b ``");
        assert_eq!(inline_code("ab"), "`ab`");
    }
}
