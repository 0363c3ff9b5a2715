//! The deterministic checks (spec §5.2): `contains`, `regex` and `json_schema`, and where the
//! JSON of an output is found.

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::{Check, Expectation, inline_code, quoted};

/// How many schema violations a failed check lists: enough to fix the output, short enough to
/// read in a fix prompt.
const MAX_VIOLATIONS: usize = 3;

/// The longest problem text taken from a library error; its messages quote the offending
/// value, which may be the whole output.
const MAX_PROBLEM_CHARS: usize = 300;

/// The check of a deterministic expectation on `output`; `None` for `llm_review`, which needs a
/// reviewer call.
pub fn check(expectation: &Expectation, output: &str) -> Option<Check> {
    let (passed, message) = match expectation {
        Expectation::LlmReview { .. } => return None,
        Expectation::Contains { text, case_sensitive } => {
            let found = if *case_sensitive {
                output.contains(text.as_str())
            } else {
                output.to_lowercase().contains(&text.to_lowercase())
            };
            let case = if *case_sensitive { "" } else { " (in any letter case)" };
            let verb = if found { "contains" } else { "does not contain" };
            (found, format!("the output {verb} {}{case}", quoted(text)))
        }
        Expectation::Regex { pattern } => match compile_regex(pattern) {
            Ok(regex) if regex.is_match(output) => (true, format!("the output matches {}", inline_code(pattern))),
            Ok(_) => (false, format!("the output does not match {}", inline_code(pattern))),
            Err(problem) => (false, format!("the pattern {problem}")),
        },
        Expectation::JsonSchema { schema } => json_schema_check(schema, output),
    };
    Some(Check {
        r#type: expectation.kind().to_string(),
        passed,
        message,
        scores: None,
        global_score: None,
    })
}

fn json_schema_check(schema: &Value, output: &str) -> (bool, String) {
    let validator = match compile_schema(schema) {
        Ok(v) => v,
        Err(problem) => return (false, format!("the schema {problem}")),
    };
    let Some(json) = json_in(output) else {
        return (
            false,
            "the output is not JSON and has no ```json block that parses as JSON".into(),
        );
    };
    let violations: Vec<String> = validator
        .iter_errors(&json)
        .take(MAX_VIOLATIONS)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            clip(&format!("at {at}: {e}"))
        })
        .collect();
    if violations.is_empty() {
        (true, "the output JSON is valid against the schema".into())
    } else {
        (
            false,
            format!(
                "the output JSON is not valid against the schema: {}",
                violations.join("; ")
            ),
        )
    }
}

/// The JSON of an output (spec §5.2): the whole output when it parses, else the first
/// ```` ```json ```` fenced block, if that parses. Models often wrap JSON in prose and a fence.
pub fn json_in(output: &str) -> Option<Value> {
    if let Ok(value) = serde_json::from_str(output.trim()) {
        return Some(value);
    }
    let mut lines = output.lines();
    lines.by_ref().find(|line| is_json_fence(line))?;
    // An unclosed fence runs to the end of the text, as in CommonMark: a reply cut at its
    // token limit still yields what it has.
    let body: Vec<&str> = lines.take_while(|line| !line.trim().starts_with("```")).collect();
    serde_json::from_str(&body.join("\n")).ok()
}

fn is_json_fence(line: &str) -> bool {
    line.trim()
        .strip_prefix("```")
        .is_some_and(|info| info.trim().eq_ignore_ascii_case("json"))
}

/// A pattern as `regex` compiles it, or why not (one line, for a field message).
pub(super) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern).build().map_err(|e| match e {
        regex::Error::CompiledTooBig(_) => "is too large once compiled".to_string(),
        other => {
            // The syntax error is several lines pointing at the pattern; its last line says what is wrong.
            let text = other.to_string();
            let last = text.lines().last().unwrap_or_default();
            format!("does not compile: {}", clip(last.trim_start_matches("error: ")))
        }
    })
}

/// A schema compiled as JSON Schema 2020-12, or why not. Offline: a task's schema must never
/// make the server fetch a URL or read a file, so only references inside it resolve.
pub(super) fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::draft202012::options()
        .offline()
        .build(schema)
        .map_err(|e| format!("does not compile as JSON Schema 2020-12: {}", clip(&e.to_string())))
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_PROBLEM_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(expectation: Expectation, output: &str) -> Check {
        check(&expectation, output).unwrap()
    }

    fn contains(text: &str, case_sensitive: bool) -> Expectation {
        Expectation::Contains {
            text: text.into(),
            case_sensitive,
        }
    }

    fn schema(schema: Value) -> Expectation {
        Expectation::JsonSchema { schema }
    }

    #[test]
    fn contains_respects_letter_case_only_when_asked() {
        let hit = run(contains("Version 2.0", true), "Release: Version 2.0 is out");
        assert!(hit.passed);
        assert_eq!(hit.r#type, "contains");
        assert_eq!(hit.message, "the output contains \"Version 2.0\"");
        assert!(!run(contains("version 2.0", true), "Version 2.0").passed);
        let loose = run(contains("version 2.0", false), "VERSION 2.0 is out");
        assert!(loose.passed, "{}", loose.message);
        let miss = run(contains("3.0", false), "Version 2.0");
        assert!(!miss.passed);
        assert_eq!(miss.message, "the output does not contain \"3.0\" (in any letter case)");
    }

    #[test]
    fn a_regex_matches_anywhere_in_the_output() {
        let pattern = |p: &str| Expectation::Regex { pattern: p.into() };
        assert!(run(pattern(r"v\d+\.\d+"), "we shipped v2.10 today").passed);
        assert!(run(pattern("(?m)^## Changes$"), "# Notes\n## Changes\n- a").passed);
        let miss = run(pattern(r"^\d+$"), "forty-two");
        assert!(!miss.passed);
        assert_eq!(miss.message, r"the output does not match `^\d+$`");
    }

    #[test]
    fn json_schema_reads_the_whole_output_or_the_first_json_block() {
        let object = schema(json!({"type": "object", "required": ["version"],
                                   "properties": {"version": {"type": "string"}}}));
        assert!(run(object.clone(), " {\"version\": \"2.0\"}\n").passed);
        let fenced = "Here it is:\n\n```json\n{\"version\": \"2.0\"}\n```\n\nAnything else?";
        assert!(run(object.clone(), fenced).passed);
        let wrong = run(object.clone(), "```json\n{\"version\": 2}\n```");
        assert!(!wrong.passed);
        assert!(
            wrong
                .message
                .starts_with("the output JSON is not valid against the schema: at /version:"),
            "{}",
            wrong.message
        );
        let missing = run(object.clone(), "{}");
        assert!(
            missing.message.contains("at /: \"version\" is a required property"),
            "{}",
            missing.message
        );
        let prose = run(object, "The version is 2.0, with no JSON at all.");
        assert!(!prose.passed);
        assert!(prose.message.contains("is not JSON"), "{}", prose.message);
    }

    #[test]
    fn json_is_found_where_the_spec_says() {
        assert_eq!(json_in("[1, 2]"), Some(json!([1, 2])));
        assert_eq!(json_in("42"), Some(json!(42)));
        assert_eq!(
            json_in("text\n```JSON\n{\"a\": 1}\n```\n```json\n{\"b\": 2}\n```"),
            Some(json!({"a": 1}))
        );
        assert_eq!(json_in("```json\n{\"cut\": true}"), Some(json!({"cut": true})));
        assert_eq!(json_in("```\n{\"a\": 1}\n```"), None, "only a json fence counts");
        assert_eq!(json_in("```json\nnot json\n```"), None);
        assert_eq!(json_in("hello"), None);
    }

    #[test]
    fn reviews_are_not_deterministic_checks() {
        let review = Expectation::LlmReview {
            criteria: Some("good".into()),
            dimensions: vec![],
            threshold: 3.0,
        };
        assert_eq!(check(&review, "anything"), None);
    }

    #[test]
    fn compile_problems_read_on_one_line() {
        let problem = compile_regex("(abc").unwrap_err();
        assert_eq!(problem, "does not compile: unclosed group");
        let problem = compile_schema(&json!({"type": "strin"})).unwrap_err();
        assert!(
            problem.starts_with("does not compile as JSON Schema 2020-12: "),
            "{problem}"
        );
        assert!(compile_schema(&json!({"$ref": "https://example.com/schema.json"})).is_err());
        assert!(compile_schema(&json!({"$defs": {"v": {"type": "string"}}, "$ref": "#/$defs/v"})).is_ok());
    }
}
