//! Reading a mission create or PATCH body (spec §6.1, §6.2 rule 6): every field checked for
//! shape and limits and every problem named by its JSON path; team members read as agent
//! create bodies, task definitions as task fields. The rules that need the whole mission or the
//! project's agents are in `runtime::missions::plan`.

use serde_json::{Map, Value};

use crate::api::agents::read_config;
use crate::api::input::{Field, Fields, JsonObject};
use crate::api::tasks::input::{DESCRIPTION_BYTES, retry_policy, structured};
use crate::clock::{Timestamp, parse_rfc3339};
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::runtime::agents;
use crate::runtime::missions::crud::MissionInput;
use crate::runtime::missions::model::{Checkpoint, Delay, QualityGate, TaskDef, Team};
use crate::runtime::tasks::assessment::{read_expectations_at, read_outcomes_at};

const WRITABLE: &[&str] = &[
    "name",
    "prompt",
    "data",
    "tasks",
    "team",
    "qualityThreshold",
    "deadline",
    "schedule",
    "endDate",
    "qualityGates",
    "checkpoints",
    "delays",
];
const READ_ONLY: &[&str] = &[
    "id",
    "status",
    "executionCount",
    "taskCount",
    "currentRunId",
    "createdAt",
    "updatedAt",
];
/// What the legacy string form of `data` may carry (spec §6.2 rule 6).
const LEGACY: &[&str] = &["tasks", "team", "qualityGates", "checkpoints", "delays", "data"];
const TASK_FIELDS: &[&str] = &[
    "title",
    "description",
    "assignTo",
    "dependsOn",
    "expectations",
    "expectedOutcomes",
    "maxRetries",
    "priority",
    "sideEffects",
    "maxDuration",
    "retryPolicy",
];
const MAX_TASKS: usize = 200;
const MAX_TEAM: usize = 64;
const MAX_HOLDS: usize = 64;
const DATA_BYTES: usize = 256 * 1024;
const PROMPT_BYTES: usize = 64 * 1024;

/// The fields of a body; `creating` makes `name` and `tasks` required.
pub fn read(rt: &Runtime, body: JsonObject, creating: bool) -> Result<MissionInput, ApiError> {
    let mut object = body.0;
    // The legacy form: a `data` string holding the definitions.
    if let Some(Value::String(text)) = object.get("data").cloned() {
        let clashing: Vec<&str> = LEGACY[..5]
            .iter()
            .copied()
            .filter(|k| object.contains_key(*k))
            .collect();
        if !clashing.is_empty() {
            return Err(ApiError::invalid_field(
                "data",
                format!(
                    "a data string carries the definitions; it cannot be combined with {}",
                    clashing.join(", ")
                ),
            ));
        }
        let inner: Map<String, Value> = match serde_json::from_str(&text) {
            Ok(Value::Object(inner)) => inner,
            _ => {
                return Err(ApiError::invalid_field(
                    "data",
                    "a data string must hold a JSON object {tasks, team?, qualityGates?, checkpoints?, delays?, data?}",
                ));
            }
        };
        if let Some(unknown) = inner.keys().find(|k| !LEGACY.contains(&k.as_str())) {
            return Err(ApiError::invalid_field(&format!("data.{unknown}"), "unknown field"));
        }
        object.remove("data");
        for (key, value) in inner {
            object.insert(key, value);
        }
        object.entry("data").or_insert(Value::Null);
    }
    let mut f = Fields::new(object, WRITABLE, READ_ONLY);
    let name = f.string("name", 1, 200);
    if let Field::Value(name) = &name
        && crate::runtime::missions::crud::group_owner(name) != name
    {
        f.error(
            f.path("name"),
            "must not end in \" #<digits>\", which names a mission's later runs",
        );
    }
    if creating && !matches!(name, Field::Value(_)) && !f.has_error("name") {
        f.error(f.path("name"), "required");
    }
    let prompt = f.text("prompt", PROMPT_BYTES);
    let data = match f.raw("data") {
        Field::Value(Value::Object(map)) => {
            let size = serde_json::to_string(&map).map_or(usize::MAX, |t| t.len());
            if size > DATA_BYTES {
                f.error(f.path("data"), format!("must be at most {DATA_BYTES} bytes of JSON"));
                Field::Absent
            } else {
                Field::Value(Value::Object(map))
            }
        }
        Field::Value(_) => {
            f.error(
                f.path("data"),
                "must be a JSON object (or a string holding the definitions)",
            );
            Field::Absent
        }
        Field::Null => Field::Null,
        Field::Absent => Field::Absent,
    };
    let tasks = match f.raw("tasks") {
        Field::Value(Value::Array(items)) if (1..=MAX_TASKS).contains(&items.len()) => Field::Value(
            items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| task_def(&mut f, i, item))
                .collect(),
        ),
        Field::Value(Value::Array(_)) => {
            f.error(f.path("tasks"), format!("must have 1 to {MAX_TASKS} task definitions"));
            Field::Absent
        }
        Field::Value(_) | Field::Null => {
            f.error(f.path("tasks"), "must be an array of task definitions");
            Field::Absent
        }
        Field::Absent => {
            if creating {
                f.error(f.path("tasks"), "required: 1 to 200 task definitions");
            }
            Field::Absent
        }
    };
    let team = team(rt, &mut f);
    let quality_threshold = f.number("qualityThreshold", 1.0, 5.0);
    let deadline = timestamp(&mut f, "deadline");
    let schedule = f.string("schedule", 1, 200);
    let end_date = timestamp(&mut f, "endDate");
    let quality_gates = holds(&mut f, "qualityGates", &["minScore", "requireAllPassed"], |f, base| {
        Some(QualityGate {
            name: base.name,
            after_tasks: base.after,
            blocks_tasks: base.blocks,
            min_score: f.number("minScore", 1.0, 5.0).into_option(),
            require_all_passed: f.boolean("requireAllPassed").into_option().unwrap_or(false),
        })
    });
    let checkpoints = holds(&mut f, "checkpoints", &["message"], |f, base| {
        Some(Checkpoint {
            name: base.name,
            after_tasks: base.after,
            blocks_tasks: base.blocks,
            message: f.text("message", 4000).into_option(),
        })
    });
    let delays = holds(&mut f, "delays", &["duration"], |f, base| {
        let duration = f.string("duration", 1, 64);
        if matches!(duration, Field::Absent | Field::Null) && !f.has_error("duration") {
            f.error(f.path("duration"), "required: an ISO 8601 duration such as PT30M");
        }
        Some(Delay {
            name: base.name,
            after_tasks: base.after,
            blocks_tasks: base.blocks,
            duration: duration.into_option()?,
        })
    });
    f.finish()?;
    Ok(MissionInput {
        name,
        prompt,
        data,
        tasks,
        team,
        quality_threshold,
        deadline,
        schedule,
        end_date,
        quality_gates,
        checkpoints,
        delays,
    })
}

fn timestamp(f: &mut Fields, key: &str) -> Field<Timestamp> {
    match f.string(key, 1, 64) {
        Field::Value(text) => match parse_rfc3339(&text) {
            Some(ms) => Field::Value(Timestamp(ms)),
            None => {
                f.error(f.path(key), "must be an RFC 3339 timestamp");
                Field::Absent
            }
        },
        Field::Null => Field::Null,
        Field::Absent => Field::Absent,
    }
}

fn object_at(f: &mut Fields, path: String, value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        _ => {
            f.error(path, "must be an object");
            None
        }
    }
}

/// One TaskDef (spec §6.1), each field as in §5.1.
fn task_def(f: &mut Fields, i: usize, value: Value) -> Option<TaskDef> {
    let prefix = format!("{}[{i}]", f.path("tasks"));
    let mut object = object_at(f, prefix.clone(), value)?;
    let expectations = object.remove("expectations");
    let outcomes = object.remove("expectedOutcomes");
    let mut t = Fields::nested(object, format!("{prefix}."), TASK_FIELDS, &[]);
    let title = t.string("title", 1, 200);
    if !matches!(title, Field::Value(_)) && !t.has_error("title") {
        t.error(t.path("title"), "required");
    }
    let description = t.text("description", DESCRIPTION_BYTES);
    let assign_to = t.string("assignTo", 1, 256);
    let depends_on = t.string_list("dependsOn", 64, |item| {
        (item.is_empty() || item.chars().count() > 200).then(|| "must be a task title of 1 to 200 characters".into())
    });
    let expectations_at = format!("{prefix}.expectations");
    let expectations = structured(expectations, &mut t, |v| read_expectations_at(&expectations_at, v))
        .into_option()
        .unwrap_or_default();
    let outcomes_at = format!("{prefix}.expectedOutcomes");
    let expected_outcomes = structured(outcomes, &mut t, |v| read_outcomes_at(&outcomes_at, v))
        .into_option()
        .unwrap_or_default();
    let max_retries = t.integer("maxRetries", 0, 10);
    let priority = t.integer("priority", -1000, 1000);
    let side_effects = t.boolean("sideEffects");
    let max_duration = t.integer("maxDuration", 1000, 86_400_000);
    let policy = retry_policy(&mut t);
    f.absorb(t);
    let title = title.into_option()?;
    Some(TaskDef {
        description: description.into_option().unwrap_or_else(|| title.clone()),
        title,
        assign_to: assign_to.into_option().unwrap_or_default(),
        depends_on: depends_on.into_option().unwrap_or_default(),
        expectations,
        expected_outcomes,
        max_retries: max_retries.into_option().unwrap_or(2),
        priority: priority.into_option().unwrap_or(0),
        side_effects: side_effects.into_option().unwrap_or(false),
        max_duration: max_duration.into_option(),
        retry_policy: policy.into_option(),
    })
}

/// `team`: `{name?, agents}` or a bare array of agent configurations.
fn team(rt: &Runtime, f: &mut Fields) -> Field<Team> {
    let (name, members, at) = match f.raw("team") {
        Field::Value(Value::Array(items)) => (None, items, f.path("team")),
        Field::Value(Value::Object(mut map)) => {
            let path = f.path("team");
            let name = match map.remove("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(name)) if (1..=200).contains(&name.chars().count()) => Some(name),
                Some(_) => {
                    f.error(format!("{path}.name"), "must be a string of 1 to 200 characters");
                    None
                }
            };
            if let Some(unknown) = map.keys().find(|k| k.as_str() != "agents") {
                f.error(format!("{path}.{unknown}"), "unknown field");
            }
            match map.remove("agents") {
                Some(Value::Array(items)) => (name, items, format!("{path}.agents")),
                _ => {
                    f.error(format!("{path}.agents"), "required: an array of agent configurations");
                    return Field::Absent;
                }
            }
        }
        Field::Value(_) => {
            f.error(
                f.path("team"),
                "must be {name?, agents: [...]} or an array of agent configurations",
            );
            return Field::Absent;
        }
        Field::Null => return Field::Null,
        Field::Absent => return Field::Absent,
    };
    if members.is_empty() || members.len() > MAX_TEAM {
        f.error(at, format!("must have 1 to {MAX_TEAM} agents"));
        return Field::Absent;
    }
    let mut agents_out = Vec::new();
    for (i, member) in members.into_iter().enumerate() {
        let Some(object) = object_at(f, format!("{at}[{i}]"), member) else {
            continue;
        };
        let changes = read_config(rt, object, format!("{at}[{i}]."), f);
        if let Ok(config) = agents::config(changes) {
            agents_out.push(config);
        }
    }
    Field::Value(Team {
        name,
        agents: agents_out,
    })
}

/// The members every hold has.
struct HoldBase {
    name: String,
    after: Vec<String>,
    blocks: Vec<String>,
}

/// A list of holds (gates, checkpoints, delays) with their own fields read by `own`.
fn holds<T>(
    f: &mut Fields,
    key: &str,
    own_fields: &[&str],
    own: impl Fn(&mut Fields, HoldBase) -> Option<T>,
) -> Field<Vec<T>> {
    let items = match f.raw(key) {
        Field::Value(Value::Array(items)) if items.len() <= MAX_HOLDS => items,
        Field::Value(Value::Array(_)) => {
            f.error(f.path(key), format!("must have at most {MAX_HOLDS} items"));
            return Field::Absent;
        }
        Field::Value(_) => {
            f.error(f.path(key), "must be an array");
            return Field::Absent;
        }
        Field::Null => return Field::Null,
        Field::Absent => return Field::Absent,
    };
    let mut known = vec!["name", "afterTasks", "blocksTasks"];
    known.extend_from_slice(own_fields);
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let prefix = format!("{}[{i}]", f.path(key));
        let Some(object) = object_at(f, prefix.clone(), item) else {
            continue;
        };
        let mut h = Fields::nested(object, format!("{prefix}."), &known, &[]);
        let name = h.string("name", 1, 200);
        if !matches!(name, Field::Value(_)) && !h.has_error("name") {
            h.error(h.path("name"), "required");
        }
        let titles =
            |item: &str| (item.is_empty() || item.chars().count() > 200).then(|| "must be a task title".into());
        let after = h.string_list("afterTasks", MAX_TASKS, titles);
        let blocks = h.string_list("blocksTasks", MAX_TASKS, titles);
        for (field, list) in [("afterTasks", &after), ("blocksTasks", &blocks)] {
            if !matches!(list, Field::Value(_)) && !h.has_error(field) {
                h.error(h.path(field), "required: a non-empty list of task titles");
            }
        }
        let base = HoldBase {
            name: name.into_option().unwrap_or_default(),
            after: after.into_option().unwrap_or_default(),
            blocks: blocks.into_option().unwrap_or_default(),
        };
        let read = own(&mut h, base);
        f.absorb(h);
        out.extend(read);
    }
    Field::Value(out)
}
