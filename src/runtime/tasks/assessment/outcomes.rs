//! The outcomes of a task (spec §5.2): what it is expected to produce, and what is kept from its
//! output when it enters `done`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{Check, json_in};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeType {
    Text,
    Json,
    Url,
}

impl OutcomeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
            Self::Url => "url",
        }
    }
}

/// An outcome the task is expected to produce (spec §5.1 `expectedOutcomes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExpectedOutcome {
    pub r#type: OutcomeType,
    pub label: String,
    pub description: Option<String>,
    pub required: bool,
}

/// An outcome kept from the output; the member of its type is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    pub r#type: OutcomeType,
    pub label: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub url: Option<String>,
}

/// The outcomes an output yields (spec §5.2): `text` is the output, `json` its JSON (as for
/// `json_schema`), `url` its first http(s) URL. An outcome that cannot be produced is left out;
/// when it is required, a failed `outcome` check says so, so that the assessment fails with a
/// reason the fix attempt can act on.
pub fn extract_outcomes(expected: &[ExpectedOutcome], output: &str) -> (Vec<Outcome>, Vec<Check>) {
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for wanted in expected {
        let mut outcome = Outcome {
            r#type: wanted.r#type,
            label: wanted.label.clone(),
            text: None,
            data: None,
            url: None,
        };
        let missing = match wanted.r#type {
            OutcomeType::Text if output.trim().is_empty() => Some("the output is empty"),
            OutcomeType::Text => {
                outcome.text = Some(output.to_string());
                None
            }
            OutcomeType::Json => match json_in(output) {
                Some(data) => {
                    outcome.data = Some(data);
                    None
                }
                None => Some("the output is not JSON and has no ```json block that parses as JSON"),
            },
            OutcomeType::Url => match first_url(output) {
                Some(url) => {
                    outcome.url = Some(url);
                    None
                }
                None => Some("the output has no http(s) URL"),
            },
        };
        match missing {
            None => outcomes.push(outcome),
            Some(why) if wanted.required => failed.push(Check {
                r#type: "outcome".into(),
                passed: false,
                message: format!("the required outcome \"{}\" could not be produced: {why}", wanted.label),
                scores: None,
                global_score: None,
            }),
            Some(_) => {}
        }
    }
    (outcomes, failed)
}

/// The expected outcomes section of a task brief (spec §5.7 step 2): one bullet each, saying
/// how the outcome is taken from the output.
pub fn outcomes_text(expected: &[ExpectedOutcome]) -> String {
    expected
        .iter()
        .map(|o| {
            let how = match o.r#type {
                OutcomeType::Text => "text: the whole output",
                OutcomeType::Json => "JSON: the whole output, or its first ```json block",
                OutcomeType::Url => "URL: the first http(s) URL in the output",
            };
            let required = if o.required { "required" } else { "optional" };
            let description = o.description.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
            format!("- {} ({how}; {required}){description}", o.label)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first `http://` or `https://` URL in `text` that starts a word, without the punctuation
/// that prose and markdown put after a link.
fn first_url(text: &str) -> Option<String> {
    // ASCII lower-casing keeps byte offsets, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find("http") {
        let start = from + found;
        from = start + 4;
        let rest = &lower[start..];
        let scheme = if rest.starts_with("https://") {
            8
        } else if rest.starts_with("http://") {
            7
        } else {
            continue;
        };
        if text[..start].chars().next_back().is_some_and(char::is_alphanumeric) {
            continue;
        }
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | '`'))
            .map_or(text.len(), |at| start + at);
        let url = trim_url(&text[start..end]);
        if url.len() > scheme && !url[scheme..].starts_with('/') {
            return Some(url.to_string());
        }
    }
    None
}

fn trim_url(mut url: &str) -> &str {
    while let Some(last) = url.chars().next_back() {
        let unbalanced = |open: char| url.matches(last).count() > url.matches(open).count();
        let trailing = match last {
            '.' | ',' | ';' | ':' | '!' | '?' | '*' => true,
            ')' => unbalanced('('),
            ']' => unbalanced('['),
            '}' => unbalanced('{'),
            _ => false,
        };
        if !trailing {
            break;
        }
        url = &url[..url.len() - last.len_utf8()];
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wanted(kind: OutcomeType, label: &str, required: bool) -> ExpectedOutcome {
        ExpectedOutcome {
            r#type: kind,
            label: label.into(),
            description: None,
            required,
        }
    }

    #[test]
    fn text_json_and_url_outcomes_come_from_the_output() {
        let output = "Published at https://example.com/notes/2.0.\n\n```json\n{\"version\": \"2.0\"}\n```";
        let expected = [
            wanted(OutcomeType::Text, "Notes", true),
            wanted(OutcomeType::Json, "Data", true),
            wanted(OutcomeType::Url, "Link", true),
        ];
        let (outcomes, failed) = extract_outcomes(&expected, output);
        assert_eq!(failed, vec![]);
        assert_eq!(outcomes[0].text.as_deref(), Some(output));
        assert_eq!(outcomes[1].data, Some(json!({"version": "2.0"})));
        assert_eq!(outcomes[2].url.as_deref(), Some("https://example.com/notes/2.0"));
        assert_eq!(
            serde_json::to_value(&outcomes[2]).unwrap(),
            json!({"type": "url", "label": "Link", "text": null, "data": null, "url": "https://example.com/notes/2.0"})
        );
    }

    #[test]
    fn a_missing_required_outcome_is_a_failed_check() {
        let expected = [
            wanted(OutcomeType::Url, "Link", true),
            wanted(OutcomeType::Json, "Data", false),
            wanted(OutcomeType::Text, "Notes", true),
        ];
        let (outcomes, failed) = extract_outcomes(&expected, "No link here, and no JSON.");
        assert_eq!(outcomes.len(), 1, "only the text: {outcomes:?}");
        assert_eq!(outcomes[0].label, "Notes");
        assert_eq!(failed.len(), 1, "the optional JSON is simply left out");
        assert_eq!(failed[0].r#type, "outcome");
        assert!(!failed[0].passed);
        assert_eq!(
            failed[0].message,
            "the required outcome \"Link\" could not be produced: the output has no http(s) URL"
        );
        let (_, failed) = extract_outcomes(&expected[2..], "  \n");
        assert!(failed[0].message.contains("\"Notes\""), "{failed:?}");
    }

    #[test]
    fn urls_are_found_as_a_reader_sees_them() {
        assert_eq!(
            first_url("see HTTPS://Example.com/a?b=1#c, then"),
            Some("HTTPS://Example.com/a?b=1#c".into())
        );
        assert_eq!(
            first_url("[docs](https://docs.rs/regex)."),
            Some("https://docs.rs/regex".into())
        );
        assert_eq!(
            first_url("**https://en.wikipedia.org/wiki/Rust_(language)**"),
            Some("https://en.wikipedia.org/wiki/Rust_(language)".into())
        );
        assert_eq!(
            first_url("<http://localhost:8080/x>"),
            Some("http://localhost:8080/x".into())
        );
        assert_eq!(first_url("ftp://a.b and https:// alone, xhttp://no.pe"), None);
        assert_eq!(
            first_url("the http header, then http://b.example"),
            Some("http://b.example".into())
        );
    }

    #[test]
    fn the_brief_says_how_each_outcome_is_taken() {
        let mut link = wanted(OutcomeType::Url, "Link", false);
        link.description = Some("where it was published".into());
        assert_eq!(
            outcomes_text(&[wanted(OutcomeType::Json, "Data", true), link]),
            "- Data (JSON: the whole output, or its first ```json block; required)\n\
             - Link (URL: the first http(s) URL in the output; optional): where it was published"
        );
    }
}
