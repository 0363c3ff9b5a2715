//! The `expectations` and `expectedOutcomes` of a task, read as spec §5.1–§5.2 bound them.
//! Every problem is reported under its JSON path (spec §0.4 rules 3, 5, 8); `null` or an absent
//! optional member takes its default (rule 6).

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::checks::{compile_regex, compile_schema};
use super::{Dimension, Expectation, ExpectedOutcome, OutcomeType};

type Problems = BTreeMap<String, String>;

const MAX_EXPECTATIONS: usize = 32;
/// Not bounded by the spec; as many as expectations, so that one brief stays readable.
const MAX_OUTCOMES: usize = 32;
/// Every dimension is one enum value of the reviewer's schema and one score to give.
const MAX_DIMENSIONS: usize = 32;
/// Criteria are long text like a task description (spec §1.9).
const MAX_CRITERIA_BYTES: usize = 64 * 1024;
const MAX_DESCRIPTION_CHARS: usize = 2000;
const SANDBOX: &str = "needs a sandbox, which this server does not have (spec §11)";

/// Reads the `expectations` of a task request: `null` is none.
pub fn read_expectations(value: &Value) -> Result<Vec<Expectation>, Problems> {
    read_expectations_at("expectations", value)
}

/// As [`read_expectations`], with problems reported under `path` (a mission's
/// `tasks[2].expectations`).
pub fn read_expectations_at(path: &str, value: &Value) -> Result<Vec<Expectation>, Problems> {
    let mut problems = Problems::new();
    let read: Vec<Expectation> = list(path, value, MAX_EXPECTATIONS, &mut problems)
        .iter()
        .enumerate()
        .filter_map(|(i, item)| expectation(&format!("{path}[{i}]"), item, &mut problems))
        .collect();
    if problems.is_empty() { Ok(read) } else { Err(problems) }
}

/// Reads the `expectedOutcomes` of a task request: `null` is none.
pub fn read_outcomes(value: &Value) -> Result<Vec<ExpectedOutcome>, Problems> {
    read_outcomes_at("expectedOutcomes", value)
}

/// As [`read_outcomes`], with problems reported under `path`.
pub fn read_outcomes_at(path: &str, value: &Value) -> Result<Vec<ExpectedOutcome>, Problems> {
    let mut problems = Problems::new();
    let mut labels = HashSet::new();
    let read: Vec<ExpectedOutcome> = list(path, value, MAX_OUTCOMES, &mut problems)
        .iter()
        .enumerate()
        .filter_map(|(i, item)| outcome(&format!("{path}[{i}]"), item, &mut labels, &mut problems))
        .collect();
    if problems.is_empty() { Ok(read) } else { Err(problems) }
}

fn list<'v>(path: &str, value: &'v Value, max: usize, problems: &mut Problems) -> &'v [Value] {
    match value {
        Value::Null => &[],
        Value::Array(items) if items.len() > max => {
            add(problems, path.to_string(), format!("must have at most {max} items"));
            &[]
        }
        Value::Array(items) => items,
        _ => {
            add(problems, path.to_string(), "must be an array");
            &[]
        }
    }
}

fn add(problems: &mut Problems, path: String, problem: impl Into<String>) {
    problems.entry(path).or_insert_with(|| problem.into());
}

fn expectation(path: &str, value: &Value, p: &mut Problems) -> Option<Expectation> {
    let item = Item::open(path, value, p)?;
    let kind = item.required_string("type", p)?;
    match kind.as_str() {
        "contains" => {
            item.only(&["type", "text", "caseSensitive"], p);
            let text = item.string("text", 1, 1000, p);
            let case_sensitive = item.boolean("caseSensitive", p).unwrap_or(true);
            Some(Expectation::Contains {
                text: text?,
                case_sensitive,
            })
        }
        "regex" => {
            item.only(&["type", "pattern"], p);
            let pattern = item.string("pattern", 1, 1000, p)?;
            if let Err(problem) = compile_regex(&pattern) {
                add(p, item.at("pattern"), problem);
                return None;
            }
            Some(Expectation::Regex { pattern })
        }
        "json_schema" => {
            item.only(&["type", "schema"], p);
            let schema = match item.get("schema") {
                None => return item.problem("schema", "required", p),
                Some(schema @ Value::Object(_)) => schema.clone(),
                Some(_) => return item.problem("schema", "must be an object (a JSON Schema 2020-12)", p),
            };
            if let Err(problem) = compile_schema(&schema) {
                return item.problem("schema", problem, p);
            }
            Some(Expectation::JsonSchema { schema })
        }
        "llm_review" => llm_review(&item, p),
        "test" | "script" | "file_exists" => item.problem("type", format!("\"{kind}\" {SANDBOX}"), p),
        _ => item.problem("type", "must be one of llm_review, contains, regex, json_schema", p),
    }
}

fn llm_review(item: &Item, p: &mut Problems) -> Option<Expectation> {
    item.only(&["type", "criteria", "dimensions", "threshold"], p);
    let criteria = match item.get("criteria") {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => item.problem("criteria", "must not be empty", p),
        Some(Value::String(s)) if s.len() > MAX_CRITERIA_BYTES => item.problem(
            "criteria",
            format!("must be at most {MAX_CRITERIA_BYTES} bytes of UTF-8"),
            p,
        ),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => item.problem("criteria", "must be a string", p),
    };
    let dimensions = match item.get("dimensions") {
        None => Vec::new(),
        Some(Value::Array(list)) if list.len() > MAX_DIMENSIONS => {
            add(
                p,
                item.at("dimensions"),
                format!("must have at most {MAX_DIMENSIONS} items"),
            );
            Vec::new()
        }
        Some(Value::Array(list)) => dimensions(&item.at("dimensions"), list, p),
        Some(_) => {
            add(p, item.at("dimensions"), "must be an array");
            Vec::new()
        }
    };
    let no_dimensions = item
        .get("dimensions")
        .is_none_or(|d| d.as_array().is_some_and(Vec::is_empty));
    if item.get("criteria").is_none() && no_dimensions {
        add(p, item.at("criteria"), "required when there are no dimensions");
    }
    let threshold = item.number("threshold", 1.0, 5.0, p).unwrap_or(3.0);
    Some(Expectation::LlmReview {
        criteria,
        dimensions,
        threshold,
    })
}

fn dimensions(path: &str, list: &[Value], p: &mut Problems) -> Vec<Dimension> {
    let mut names = HashSet::new();
    let mut read = Vec::new();
    for (j, value) in list.iter().enumerate() {
        let Some(item) = Item::open(&format!("{path}[{j}]"), value, p) else {
            continue;
        };
        item.only(&["name", "description", "weight"], p);
        let name = item.string("name", 1, 100, p);
        if let Some(name) = &name
            && !names.insert(name.clone())
        {
            add(p, item.at("name"), format!("duplicate dimension name \"{name}\""));
        }
        let description = item.string("description", 1, MAX_DESCRIPTION_CHARS, p);
        let weight = match item.get("weight") {
            None => Some(1.0),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(w) if w > 0.0 && w.is_finite() => Some(w),
                _ => item.problem("weight", "must be greater than 0", p),
            },
            Some(_) => item.problem("weight", "must be a number", p),
        };
        if let (Some(name), Some(description), Some(weight)) = (name, description, weight) {
            read.push(Dimension {
                name,
                description,
                weight,
            });
        }
    }
    read
}

fn outcome(path: &str, value: &Value, labels: &mut HashSet<String>, p: &mut Problems) -> Option<ExpectedOutcome> {
    let item = Item::open(path, value, p)?;
    item.only(&["type", "label", "description", "required"], p);
    let kind = item.required_string("type", p).and_then(|kind| match kind.as_str() {
        "text" => Some(OutcomeType::Text),
        "json" => Some(OutcomeType::Json),
        "url" => Some(OutcomeType::Url),
        "file" | "media" => item.problem("type", format!("\"{kind}\" {SANDBOX}"), p),
        _ => item.problem("type", "must be one of text, json, url", p),
    });
    let label = item.string("label", 1, 200, p);
    if let Some(label) = &label
        && !labels.insert(label.clone())
    {
        add(p, item.at("label"), format!("duplicate label \"{label}\""));
    }
    let description = match item.get("description") {
        None => Some(None),
        Some(_) => item.string("description", 0, MAX_DESCRIPTION_CHARS, p).map(Some),
    };
    let required = item.boolean("required", p).unwrap_or(true);
    Some(ExpectedOutcome {
        r#type: kind?,
        label: label?,
        description: description?,
        required,
    })
}

/// One object of a list, read member by member.
struct Item<'v> {
    map: &'v Map<String, Value>,
    path: String,
}

impl<'v> Item<'v> {
    fn open(path: &str, value: &'v Value, p: &mut Problems) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self {
                map,
                path: path.to_string(),
            }),
            _ => {
                add(p, path.to_string(), "must be an object");
                None
            }
        }
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// The member, with `null` read as absent.
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Records a problem with a member; `None` so that a reader can return it.
    fn problem<T>(&self, key: &str, problem: impl Into<String>, p: &mut Problems) -> Option<T> {
        add(p, self.at(key), problem);
        None
    }

    /// Reports every member outside `known`.
    fn only(&self, known: &[&str], p: &mut Problems) {
        for key in self.map.keys().filter(|k| !known.contains(&k.as_str())) {
            add(p, self.at(key), "unknown field");
        }
    }

    fn required_string(&self, key: &str, p: &mut Problems) -> Option<String> {
        match self.get(key) {
            None => self.problem(key, "required", p),
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => self.problem(key, "must be a string", p),
        }
    }

    /// A required string of `min..=max` Unicode scalar values (spec §0.4 rule 7).
    fn string(&self, key: &str, min: usize, max: usize, p: &mut Problems) -> Option<String> {
        let s = self.required_string(key, p)?;
        let len = s.chars().count();
        if len < min || len > max {
            let problem = if min > 0 {
                format!("must be {min} to {max} characters long")
            } else {
                format!("must be at most {max} characters long")
            };
            return self.problem(key, problem, p);
        }
        Some(s)
    }

    fn boolean(&self, key: &str, p: &mut Problems) -> Option<bool> {
        match self.get(key) {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => self.problem(key, "must be a boolean", p),
        }
    }

    fn number(&self, key: &str, min: f64, max: f64, p: &mut Problems) -> Option<f64> {
        match self.get(key)? {
            Value::Number(n) => match n.as_f64() {
                Some(x) if (min..=max).contains(&x) => Some(x),
                _ => self.problem(key, format!("must be between {min} and {max}"), p),
            },
            _ => self.problem(key, "must be a number", p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(value: Value) -> Problems {
        read_expectations(&value).unwrap_err()
    }

    #[test]
    fn defaults_fill_absent_and_null_members() {
        let read = read_expectations(&json!([
            {"type": "contains", "text": "2.0"},
            {"type": "contains", "text": "2.0", "caseSensitive": null},
            {"type": "llm_review", "criteria": "clear", "dimensions": null, "threshold": null},
            {"type": "llm_review", "dimensions": [{"name": "tone", "description": "friendly"}]},
            {"type": "regex", "pattern": "v\\d+"},
            {"type": "json_schema", "schema": {"type": "object"}},
        ]))
        .unwrap();
        let contains = Expectation::Contains {
            text: "2.0".into(),
            case_sensitive: true,
        };
        assert_eq!(read[0], contains);
        assert_eq!(read[1], contains);
        assert_eq!(
            read[2],
            Expectation::LlmReview {
                criteria: Some("clear".into()),
                dimensions: vec![],
                threshold: 3.0
            }
        );
        let Expectation::LlmReview { dimensions, .. } = &read[3] else {
            panic!("{:?}", read[3]);
        };
        assert_eq!(dimensions[0].weight, 1.0);
        assert_eq!(read.len(), 6);
        assert_eq!(read_expectations(&Value::Null).unwrap(), vec![]);
        assert_eq!(read_expectations(&json!([])).unwrap(), vec![]);
    }

    #[test]
    fn the_list_itself_is_bounded() {
        assert_eq!(
            problems(json!({"type": "contains"}))["expectations"],
            "must be an array"
        );
        let many: Vec<Value> = (0..33).map(|_| json!({"type": "contains", "text": "a"})).collect();
        assert_eq!(
            problems(Value::Array(many))["expectations"],
            "must have at most 32 items"
        );
        assert_eq!(problems(json!(["contains"]))["expectations[0]"], "must be an object");
    }

    #[test]
    fn types_are_named_and_sandboxed_ones_refused() {
        let found = problems(
            json!([{"text": "a"}, {"type": "similar"}, {"type": "test", "command": "npm test"},
                                    {"type": "script"}, {"type": "file_exists", "path": "a"}, {"type": 3}]),
        );
        assert_eq!(found["expectations[0].type"], "required");
        assert_eq!(
            found["expectations[1].type"],
            "must be one of llm_review, contains, regex, json_schema"
        );
        for i in 2..5 {
            assert!(
                found[&format!("expectations[{i}].type")].contains("needs a sandbox"),
                "{found:?}"
            );
        }
        assert_eq!(found["expectations[5].type"], "must be a string");
        assert_eq!(found.len(), 6, "{found:?}");
    }

    #[test]
    fn every_problem_is_reported_under_its_path() {
        let long = "x".repeat(1001);
        let found = problems(json!([
            {"type": "contains", "text": "", "caseSensitive": "yes", "extra": 1},
            {"type": "contains", "text": long},
            {"type": "regex", "pattern": "(unclosed"},
            {"type": "regex", "pattern": "a".repeat(1001)},
            {"type": "json_schema", "schema": "string"},
            {"type": "json_schema", "schema": {"type": "strin"}},
            {"type": "json_schema"},
            {"type": "regex"},
        ]));
        assert_eq!(found["expectations[0].text"], "must be 1 to 1000 characters long");
        assert_eq!(found["expectations[0].caseSensitive"], "must be a boolean");
        assert_eq!(found["expectations[0].extra"], "unknown field");
        assert_eq!(found["expectations[1].text"], "must be 1 to 1000 characters long");
        assert_eq!(found["expectations[2].pattern"], "does not compile: unclosed group");
        assert_eq!(found["expectations[3].pattern"], "must be 1 to 1000 characters long");
        assert_eq!(
            found["expectations[4].schema"],
            "must be an object (a JSON Schema 2020-12)"
        );
        assert!(found["expectations[5].schema"].starts_with("does not compile as JSON Schema 2020-12"));
        assert_eq!(found["expectations[6].schema"], "required");
        assert_eq!(found["expectations[7].pattern"], "required");
        assert_eq!(found.len(), 10, "{found:?}");
    }

    #[test]
    fn reviews_need_criteria_or_dimensions_within_bounds() {
        let found = problems(json!([
            {"type": "llm_review"},
            {"type": "llm_review", "dimensions": [], "threshold": 5.5},
            {"type": "llm_review", "criteria": "   ", "threshold": 0},
            {"type": "llm_review", "criteria": "x".repeat(64 * 1024 + 1), "threshold": "high"},
            {"type": "llm_review", "dimensions": [
                {"name": "tone", "description": "friendly", "weight": 0},
                {"name": "tone", "description": "again"},
                {"name": "", "description": "", "weight": "heavy", "note": 1},
                {"name": "n".repeat(101), "description": "d"},
                "clarity",
            ]},
            {"type": "llm_review", "criteria": "ok", "dimensions": {"name": "tone"}},
            {"type": "llm_review", "criteria": 7},
        ]));
        assert_eq!(
            found["expectations[0].criteria"],
            "required when there are no dimensions"
        );
        assert_eq!(
            found["expectations[1].criteria"],
            "required when there are no dimensions"
        );
        assert_eq!(found["expectations[1].threshold"], "must be between 1 and 5");
        assert_eq!(found["expectations[2].criteria"], "must not be empty");
        assert_eq!(found["expectations[2].threshold"], "must be between 1 and 5");
        assert_eq!(
            found["expectations[3].criteria"],
            "must be at most 65536 bytes of UTF-8"
        );
        assert_eq!(found["expectations[3].threshold"], "must be a number");
        let dims = "expectations[4].dimensions";
        assert_eq!(found[&format!("{dims}[0].weight")], "must be greater than 0");
        assert_eq!(found[&format!("{dims}[1].name")], "duplicate dimension name \"tone\"");
        assert_eq!(found[&format!("{dims}[2].name")], "must be 1 to 100 characters long");
        assert_eq!(
            found[&format!("{dims}[2].description")],
            "must be 1 to 2000 characters long"
        );
        assert_eq!(found[&format!("{dims}[2].weight")], "must be a number");
        assert_eq!(found[&format!("{dims}[2].note")], "unknown field");
        assert_eq!(found[&format!("{dims}[3].name")], "must be 1 to 100 characters long");
        assert_eq!(found[&format!("{dims}[4]")], "must be an object");
        assert_eq!(found["expectations[5].dimensions"], "must be an array");
        assert_eq!(found["expectations[6].criteria"], "must be a string");
        assert_eq!(found.len(), 17, "{found:?}");
        let many: Vec<Value> = (0..33)
            .map(|i| json!({"name": format!("d{i}"), "description": "d"}))
            .collect();
        let found = problems(json!([{"type": "llm_review", "dimensions": many}]));
        assert_eq!(found["expectations[0].dimensions"], "must have at most 32 items");
    }

    #[test]
    fn a_prefix_places_problems_inside_a_mission() {
        let found =
            read_expectations_at("tasks[2].expectations", &json!([{"type": "regex", "pattern": "("}])).unwrap_err();
        assert!(found.contains_key("tasks[2].expectations[0].pattern"), "{found:?}");
        let found = read_outcomes_at("tasks[1].expectedOutcomes", &json!([{"type": "url"}])).unwrap_err();
        assert_eq!(found["tasks[1].expectedOutcomes[0].label"], "required");
    }

    #[test]
    fn expected_outcomes_are_read_with_defaults() {
        let read = read_outcomes(&json!([
            {"type": "text", "label": "Summary"},
            {"type": "json", "label": "Data", "description": "the numbers", "required": false},
            {"type": "url", "label": "Link", "description": null, "required": null},
        ]))
        .unwrap();
        assert_eq!(
            read,
            vec![
                ExpectedOutcome {
                    r#type: OutcomeType::Text,
                    label: "Summary".into(),
                    description: None,
                    required: true
                },
                ExpectedOutcome {
                    r#type: OutcomeType::Json,
                    label: "Data".into(),
                    description: Some("the numbers".into()),
                    required: false
                },
                ExpectedOutcome {
                    r#type: OutcomeType::Url,
                    label: "Link".into(),
                    description: None,
                    required: true
                },
            ]
        );
        assert_eq!(read_outcomes(&Value::Null).unwrap(), vec![]);
    }

    #[test]
    fn expected_outcome_problems_name_their_paths() {
        let found = read_outcomes(&json!([
            {"type": "file", "label": "Report"},
            {"type": "media", "label": "Video"},
            {"type": "pdf", "label": "A"},
            {"type": "text", "label": "A", "required": "yes", "size": 3},
            {"type": "text", "label": "", "description": "d".repeat(2001)},
            {"label": "B"},
            7,
        ]))
        .unwrap_err();
        assert!(
            found["expectedOutcomes[0].type"].contains("\"file\" needs a sandbox"),
            "{found:?}"
        );
        assert!(
            found["expectedOutcomes[1].type"].contains("\"media\" needs a sandbox"),
            "{found:?}"
        );
        assert_eq!(found["expectedOutcomes[2].type"], "must be one of text, json, url");
        assert_eq!(found["expectedOutcomes[3].label"], "duplicate label \"A\"");
        assert_eq!(found["expectedOutcomes[3].required"], "must be a boolean");
        assert_eq!(found["expectedOutcomes[3].size"], "unknown field");
        assert_eq!(found["expectedOutcomes[4].label"], "must be 1 to 200 characters long");
        assert_eq!(
            found["expectedOutcomes[4].description"],
            "must be at most 2000 characters long"
        );
        assert_eq!(found["expectedOutcomes[5].type"], "required");
        assert_eq!(found["expectedOutcomes[6]"], "must be an object");
        assert_eq!(found.len(), 10, "{found:?}");
        assert_eq!(
            read_outcomes(&json!("text")).unwrap_err()["expectedOutcomes"],
            "must be an array"
        );
    }
}
