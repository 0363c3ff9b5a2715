//! Reading a task create or PATCH body (spec §5.1): every field checked for shape and limits,
//! every problem named by its path; expectations and expected outcomes by the assessment rules.

use serde_json::{Map, Value};

use crate::api::input::{Field, Fields, JsonObject};
use crate::clock::{Timestamp, parse_rfc3339};
use crate::error::ApiError;
use crate::runtime::tasks::assessment;
use crate::runtime::tasks::create::TaskChanges;
use crate::runtime::tasks::model::RetryPolicy;

const WRITABLE: &[&str] = &[
    "title",
    "description",
    "assignTo",
    "group",
    "dependsOn",
    "priority",
    "maxRetries",
    "maxDuration",
    "retryPolicy",
    "sideEffects",
    "deadline",
    "user",
    "metadata",
    "draft",
];
const READ_ONLY: &[&str] = &[
    "id",
    "status",
    "phase",
    "retries",
    "result",
    "outcomes",
    "missionId",
    "runId",
    "createdAt",
    "updatedAt",
    "startedAt",
    "finishedAt",
];
/// `description` limit (spec §5.1).
pub const DESCRIPTION_BYTES: usize = 64 * 1024;

/// A list read by its own rules (expectations, outcomes), problems reported under its paths.
pub fn structured<T>(
    value: Option<Value>,
    f: &mut Fields,
    read: impl Fn(&Value) -> Result<Vec<T>, std::collections::BTreeMap<String, String>>,
) -> Field<Vec<T>> {
    match value {
        None => Field::Absent,
        Some(Value::Null) => Field::Null,
        Some(value) => match read(&value) {
            Ok(items) => Field::Value(items),
            Err(problems) => {
                for (path, problem) in problems {
                    f.error(path, problem);
                }
                Field::Absent
            }
        },
    }
}

/// `retryPolicy` (spec §5.1): its members' shapes; the agent and model are checked by the rules.
pub fn retry_policy(f: &mut Fields) -> Field<RetryPolicy> {
    match f.object("retryPolicy", &["escalateAfter", "fallbackAgent", "escalateModel"]) {
        Field::Value(mut nested) => {
            let policy = RetryPolicy {
                escalate_after: nested.integer("escalateAfter", 1, 10).into_option(),
                fallback_agent: nested.string("fallbackAgent", 1, 256).into_option(),
                escalate_model: nested.string("escalateModel", 1, 256).into_option(),
            };
            f.absorb(nested);
            Field::Value(policy)
        }
        Field::Null => Field::Null,
        Field::Absent => Field::Absent,
    }
}

/// The changes of a body, and `draft` (create only).
pub fn read(body: JsonObject, creating: bool) -> Result<(TaskChanges, bool), ApiError> {
    let mut object: Map<String, Value> = body.0;
    let expectations = object.remove("expectations");
    let outcomes = object.remove("expectedOutcomes");
    let known: Vec<&str> = if creating {
        WRITABLE.to_vec()
    } else {
        WRITABLE.iter().copied().filter(|k| *k != "draft").collect()
    };
    let mut f = Fields::new(object, &known, READ_ONLY);
    let title = f.string("title", 1, 200);
    let assign_to = f.string("assignTo", 1, 256);
    for (key, field) in [("title", &title), ("assignTo", &assign_to)] {
        let missing = if creating {
            !matches!(field, Field::Value(_))
        } else {
            matches!(field, Field::Null)
        };
        if missing && !f.has_error(key) {
            f.error(f.path(key), "required");
        }
    }
    let description = f.text("description", DESCRIPTION_BYTES);
    let group = f.string("group", 1, 200);
    let depends_on = f.string_list("dependsOn", 64, |item| {
        (item.is_empty() || item.len() > 200).then(|| "must be a task id or a title of 1 to 200 characters".into())
    });
    let expectations = structured(expectations, &mut f, assessment::read_expectations);
    if matches!(&expectations, Field::Value(items) if items.len() > 32) {
        f.error("expectations".into(), "at most 32 expectations");
    }
    let expected_outcomes = structured(outcomes, &mut f, assessment::read_outcomes);
    let priority = f.integer("priority", -1000, 1000);
    let max_retries = f.integer("maxRetries", 0, 10);
    let max_duration = f.integer("maxDuration", 1000, 86_400_000);
    let retry_policy = retry_policy(&mut f);
    let side_effects = f.boolean("sideEffects");
    let deadline = match f.string("deadline", 1, 64) {
        Field::Value(text) => match parse_rfc3339(&text) {
            Some(ms) => Field::Value(Timestamp(ms)),
            None => {
                f.error(f.path("deadline"), "must be an RFC 3339 timestamp");
                Field::Absent
            }
        },
        Field::Null => Field::Null,
        Field::Absent => Field::Absent,
    };
    let user = f.string("user", 0, 256);
    let metadata = f.metadata("metadata");
    let draft = if creating {
        f.boolean("draft").into_option().unwrap_or(false)
    } else {
        false
    };
    f.finish()?;
    let changes = TaskChanges {
        title: title.into_option(),
        description,
        assign_to: assign_to.into_option(),
        group,
        depends_on,
        expectations,
        expected_outcomes,
        priority,
        max_retries,
        max_duration,
        retry_policy,
        side_effects,
        deadline,
        user,
        metadata,
    };
    Ok((changes, draft))
}
