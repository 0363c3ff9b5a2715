//! The request shapes of a task's structured fields (spec §5.1, §5.2), for the OpenAPI document
//! only: the bodies themselves are read field by field in `input` and `runtime::tasks`.
#![allow(dead_code)]

use serde::Deserialize;
use utoipa::ToSchema;

/// One acceptance criterion as a request gives it (spec §5.2), told apart by `type`. `test`,
/// `script` and `file_exists` need a sandbox and are refused.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExpectationInput {
    /// A reviewer model scores each dimension 1–5 (`criteria` alone is one dimension,
    /// `overall`); passes when the weighted mean reaches `threshold`. At least one of `criteria`
    /// and `dimensions` is given.
    LlmReview {
        /// Not blank; at most 64 KiB of UTF-8.
        #[schema(pattern = r"\S")]
        criteria: Option<String>,
        /// Names unique within the list.
        #[schema(max_items = 32)]
        dimensions: Option<Vec<DimensionInput>>,
        /// Default 3.
        #[schema(minimum = 1.0, maximum = 5.0)]
        threshold: Option<f64>,
    },
    /// The output contains `text`.
    Contains {
        #[schema(min_length = 1, max_length = 1000)]
        text: String,
        /// Default `true`.
        #[serde(rename = "caseSensitive")]
        case_sensitive: Option<bool>,
    },
    /// The pattern matches somewhere in the output; it must compile in Rust `regex` syntax.
    Regex {
        #[schema(min_length = 1, max_length = 1000, format = "regex")]
        pattern: String,
    },
    /// The output's JSON validates against `schema`, which must compile as JSON Schema 2020-12.
    JsonSchema {
        #[schema(value_type = Object)]
        schema: serde_json::Value,
    },
}

/// One scored aspect of an `llm_review`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DimensionInput {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    #[schema(min_length = 1, max_length = 2000)]
    description: String,
    /// Greater than 0; default 1.
    #[schema(exclusive_minimum = 0.0)]
    weight: Option<f64>,
}

/// An outcome the task is expected to produce; labels are unique within the list. `file` and
/// `media` need a sandbox and are refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedOutcomeInput {
    #[serde(rename = "type")]
    kind: OutcomeKind,
    #[schema(min_length = 1, max_length = 200)]
    label: String,
    #[schema(max_length = 2000)]
    description: Option<String>,
    /// Default `true`.
    required: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Text,
    Json,
    Url,
}

/// How retries escalate; `null` members are absent.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicyInput {
    #[schema(minimum = 1, maximum = 10)]
    escalate_after: Option<i64>,
    /// An agent of the project, by id or name.
    #[schema(min_length = 1, max_length = 256)]
    fallback_agent: Option<String>,
    /// A model the server offers, as `provider:model` or `provider/model`.
    #[schema(min_length = 1, max_length = 256)]
    escalate_model: Option<String>,
}

/// One task definition of a mission as a request gives it (spec §6.1 TaskDef); each field is
/// checked as on a task (§5.1).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDefInput {
    /// Unique within the mission.
    #[schema(min_length = 1, max_length = 200)]
    title: String,
    /// Default: the title. At most 64 KiB of UTF-8.
    description: Option<String>,
    /// A team member or a project agent, by id or name; default the first team member.
    #[schema(min_length = 1, max_length = 256)]
    assign_to: Option<String>,
    /// Titles of other tasks of the mission.
    #[schema(max_items = 64)]
    depends_on: Option<Vec<String>>,
    #[schema(max_items = 32)]
    expectations: Option<Vec<ExpectationInput>>,
    #[schema(max_items = 32)]
    expected_outcomes: Option<Vec<ExpectedOutcomeInput>>,
    #[schema(minimum = 0, maximum = 10)]
    max_retries: Option<i64>,
    #[schema(minimum = -1000, maximum = 1000)]
    priority: Option<i64>,
    side_effects: Option<bool>,
    /// Milliseconds.
    #[schema(minimum = 1000, maximum = 86400000)]
    max_duration: Option<i64>,
    retry_policy: Option<RetryPolicyInput>,
}
