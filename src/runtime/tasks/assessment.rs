//! Placeholder types for expectations and checks (replaced by the assessment module).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Expectation {
    Contains { text: String },
    LlmReview { criteria: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedOutcome {
    pub label: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub label: String,
    pub text: Option<String>,
    #[schema(value_type = Object)]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub r#type: String,
    pub passed: bool,
    pub message: String,
    pub global_score: Option<f64>,
}

pub fn criteria_text(_expectations: &[Expectation]) -> String {
    String::new()
}

pub fn check(_expectation: &Expectation, _output: &str) -> Option<Check> {
    None
}

pub fn review_request(
    model: &str,
    _title: &str,
    _description: &str,
    _expectation: &Expectation,
    _output: &str,
) -> crate::providers::types::ChatRequest {
    crate::providers::types::ChatRequest {
        model: model.to_string(),
        messages: Vec::new(),
        params: Default::default(),
    }
}

pub fn review_retry(
    previous: &crate::providers::types::ChatRequest,
    _reply: &str,
    _problem: &str,
) -> crate::providers::types::ChatRequest {
    previous.clone()
}

pub fn read_review(_expectation: &Expectation, _reply: &str) -> Result<(Check, String), String> {
    Err(String::new())
}

pub fn extract_outcomes(_expected: &[ExpectedOutcome], _output: &str) -> (Vec<Outcome>, Vec<Check>) {
    (Vec::new(), Vec::new())
}

pub fn global_score(_checks: &[Check]) -> Option<f64> {
    None
}

pub fn read_expectations(value: &Value) -> Result<Vec<Expectation>, std::collections::BTreeMap<String, String>> {
    serde_json::from_value(value.clone()).map_err(|e| [("expectations".to_string(), e.to_string())].into())
}

pub fn read_outcomes(value: &Value) -> Result<Vec<ExpectedOutcome>, std::collections::BTreeMap<String, String>> {
    serde_json::from_value(value.clone()).map_err(|e| [("expectedOutcomes".to_string(), e.to_string())].into())
}
