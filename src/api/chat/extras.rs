//! The Chat Completions fields of spec §3.2 beyond the common ones: `reasoning_effort`, the
//! parameters only OpenAI-kind providers take (forwarded to them as given, ignored by the
//! others), `modalities`, and the fields OpenAI defines that this server refuses with a pointer
//! to what to use instead.

use serde_json::{Map, Value};

use crate::api::input::{Field, Fields};
use crate::providers::types::Reasoning;

/// Scalar fields read here through the field reader.
pub(super) const FIELDS: &[&str] = &[
    "reasoning_effort",
    "logprobs",
    "top_logprobs",
    "store",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "verbosity",
];

/// Structured fields, taken out of the body before the field reader sees it.
pub(super) const STRUCTURED: &[&str] = &[
    "logit_bias",
    "prediction",
    "modalities",
    "audio",
    "web_search_options",
    "functions",
    "function_call",
];

/// Fields OpenAI defines that this server does not serve, and what to use instead.
const REFUSED: &[(&str, &str)] = &[
    (
        "audio",
        "audio output is not supported; answers are text (modalities [\"text\"])",
    ),
    (
        "web_search_options",
        "web search is not supported; describe a search function in tools instead",
    ),
    ("functions", "the legacy functions field is not supported; use tools"),
    (
        "function_call",
        "the legacy function_call field is not supported; use tool_choice",
    ),
];

pub(super) struct Extras {
    /// `reasoning_effort`, overriding the agent's `reasoning` (`none` is `off`).
    pub reasoning: Option<Reasoning>,
    pub openai_only: Map<String, Value>,
}

fn reasoning(text: &str) -> Option<Reasoning> {
    if text == "none" {
        Some(Reasoning::Off)
    } else {
        Reasoning::parse(text)
    }
}

/// Reads the extras; `structured` holds the [`STRUCTURED`] members taken out of the body
/// (`null` ones already dropped).
pub(super) fn read(f: &mut Fields, mut structured: Map<String, Value>) -> Extras {
    for (field, instead) in REFUSED {
        if structured.remove(*field).is_some() {
            f.error((*field).to_string(), *instead);
        }
    }
    let effort = f.one_of(
        "reasoning_effort",
        &["none", "minimal", "low", "medium", "high", "xhigh"],
    );
    let mut openai_only = Map::new();
    let logprobs = f.boolean("logprobs").into_option();
    if let Some(logprobs) = logprobs {
        openai_only.insert("logprobs".into(), Value::Bool(logprobs));
    }
    let logprobs = logprobs == Some(true);
    if let Field::Value(n) = f.integer("top_logprobs", 0, 20) {
        if n > 0 && !logprobs {
            f.error("top_logprobs".into(), "needs logprobs: true");
        } else if logprobs {
            openai_only.insert("top_logprobs".into(), Value::from(n));
        }
    }
    if let Some(bias) = structured.remove("logit_bias") {
        let ok = bias.as_object().is_some_and(|m| {
            m.values()
                .all(|v| v.as_f64().is_some_and(|b| (-100.0..=100.0).contains(&b)))
        });
        if ok {
            openai_only.insert("logit_bias".into(), bias);
        } else {
            f.error("logit_bias".into(), "must map token ids to numbers from -100 to 100");
        }
    }
    let mut forward = |key: &str, value: Field<Value>| {
        if let Field::Value(value) = value {
            openai_only.insert(key.to_string(), value);
        }
    };
    forward("store", f.boolean("store").map(Value::Bool));
    forward(
        "service_tier",
        f.one_of("service_tier", &["auto", "default", "flex", "scale", "priority"])
            .map(Value::String),
    );
    forward(
        "prompt_cache_key",
        f.string("prompt_cache_key", 0, 1024).map(Value::String),
    );
    forward(
        "prompt_cache_retention",
        f.string("prompt_cache_retention", 1, 64).map(Value::String),
    );
    forward(
        "safety_identifier",
        f.string("safety_identifier", 0, 64).map(Value::String),
    );
    forward(
        "verbosity",
        f.one_of("verbosity", &["low", "medium", "high"]).map(Value::String),
    );
    if let Some(prediction) = structured.remove("prediction") {
        let content = prediction.get("content");
        let ok = prediction.get("type").and_then(Value::as_str) == Some("content")
            && content.is_some_and(|c| c.is_string() || c.is_array());
        if ok {
            forward("prediction", Field::Value(prediction));
        } else {
            f.error(
                "prediction".into(),
                "must be {\"type\": \"content\", \"content\": text or text parts}",
            );
        }
    }
    if let Some(modalities) = structured.remove("modalities") {
        if modalities == Value::Array(vec![Value::from("text")]) {
            openai_only.insert("modalities".into(), modalities);
        } else {
            f.error("modalities".into(), "only [\"text\"] is supported");
        }
    }
    Extras {
        reasoning: effort.into_option().as_deref().and_then(reasoning),
        openai_only,
    }
}
