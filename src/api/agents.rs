//! `/v1/agents`: agent CRUD (spec §2.1, §2.2).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::input::{Field, Fields, JsonObject, Page, QueryParams};
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::providers::types::{REASONING_VALUES, Reasoning};
use crate::runtime::Runtime;
use crate::runtime::agents::{self, Agent, AgentChanges, Identity, IdentityChanges};

const WRITABLE: &[&str] = &[
    "name",
    "role",
    "model",
    "systemPrompt",
    "allowedTools",
    "skills",
    "maxTurns",
    "maxConcurrency",
    "reasoning",
    "identity",
    "reportsTo",
    "temperature",
    "maxTokens",
    "metadata",
];
const READ_ONLY: &[&str] = &["id", "createdAt", "updatedAt"];
const IDENTITY_STRINGS: &[&str] = &[
    "displayName",
    "title",
    "company",
    "email",
    "bio",
    "timezone",
    "tone",
    "personality",
];
const IDENTITY_FIELDS: &[&str] = &[
    "displayName",
    "title",
    "company",
    "email",
    "bio",
    "timezone",
    "tone",
    "personality",
    "responsibilities",
    "socials",
];
/// Long texts (`systemPrompt`) are bounded in bytes (spec §1.9).
pub const LONG_TEXT_BYTES: usize = 64 * 1024;

/// An agent create body (spec §2.1); `null` for an optional field means absent.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct AgentRequest {
    /// 1–64 of `[A-Za-z0-9_-]`, not starting with `agt_`; immutable.
    #[schema(min_length = 1, max_length = 64, pattern = r"^(?!agt_)[A-Za-z0-9_-]+$")]
    name: String,
    /// `provider:model` or `provider/model` of a provider the server offers.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    #[schema(max_length = 200)]
    role: Option<String>,
    system_prompt: Option<String>,
    #[schema(schema_with = allowed_tools)]
    allowed_tools: Option<Vec<String>>,
    #[schema(schema_with = skills)]
    skills: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 1000)]
    max_turns: Option<i64>,
    #[schema(minimum = 1, maximum = 2147483647)]
    max_concurrency: Option<i64>,
    reasoning: Option<Reasoning>,
    identity: Option<Identity>,
    #[schema(min_length = 1, max_length = 64)]
    reports_to: Option<String>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    temperature: Option<f64>,
    #[schema(minimum = 1, maximum = 2147483647)]
    max_tokens: Option<i64>,
    #[schema(schema_with = crate::api::openapi::metadata_schema)]
    metadata: Option<BTreeMap<String, String>>,
}

/// An agent PATCH body: present fields change, `null` resets an optional field.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct AgentPatch {
    /// Immutable: only the agent's own name is accepted.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^(?!agt_)[A-Za-z0-9_-]+$",
        nullable = false
    )]
    #[serde(default)]
    name: Option<String>,
    #[schema(min_length = 1, max_length = 256, nullable = false)]
    #[serde(default)]
    model: Option<String>,
    #[schema(max_length = 200)]
    role: Option<String>,
    system_prompt: Option<String>,
    #[schema(schema_with = allowed_tools)]
    allowed_tools: Option<Vec<String>>,
    #[schema(schema_with = skills)]
    skills: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 1000)]
    max_turns: Option<i64>,
    #[schema(minimum = 1, maximum = 2147483647)]
    max_concurrency: Option<i64>,
    reasoning: Option<Reasoning>,
    identity: Option<Identity>,
    #[schema(min_length = 1, max_length = 64)]
    reports_to: Option<String>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    temperature: Option<f64>,
    #[schema(minimum = 1, maximum = 2147483647)]
    max_tokens: Option<i64>,
    #[schema(schema_with = crate::api::openapi::metadata_schema)]
    metadata: Option<BTreeMap<String, String>>,
}

/// Up to 128 tool names of 1–128 characters of `[A-Za-z0-9_.:*-]` (spec §2.1).
fn allowed_tools() -> utoipa::openapi::Array {
    string_list(128, Some(r"^[A-Za-z0-9_.:*-]{1,128}$"))
}

/// Up to 64 skill names of 1–128 characters (spec §2.1).
fn skills() -> utoipa::openapi::Array {
    string_list(64, None)
}

fn string_list(max_items: usize, pattern: Option<&str>) -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(128))
                .pattern(pattern),
        )
        .max_items(Some(max_items))
        .build()
}

fn name_problem(name: &str) -> Option<String> {
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Some("may contain only letters, digits, '_' and '-'".into())
    } else if name.starts_with(agents::ID_PREFIX) {
        Some("must not start with agt_".into())
    } else {
        None
    }
}

fn tool_problem(tool: &str) -> Option<String> {
    let ok_chars = tool.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:*-".contains(&b));
    let len = tool.chars().count();
    (!(1..=128).contains(&len) || !ok_chars).then(|| "must be 1 to 128 characters of [A-Za-z0-9_.:*-]".into())
}

fn skill_problem(skill: &str) -> Option<String> {
    (!(1..=128).contains(&skill.chars().count())).then(|| "must be 1 to 128 characters long".into())
}

/// A plausible IANA zone name: `UTC`, or `Area/Location` with a known area. The server ships no
/// time-zone database, so the location itself is not looked up.
fn timezone_problem(tz: &str) -> Option<String> {
    const AREAS: &[&str] = &[
        "Africa",
        "America",
        "Antarctica",
        "Arctic",
        "Asia",
        "Atlantic",
        "Australia",
        "Europe",
        "Indian",
        "Pacific",
        "Etc",
    ];
    let chars_ok = tz.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    let shape_ok = matches!(tz, "UTC" | "GMT")
        || tz.split_once('/').is_some_and(|(area, rest)| {
            AREAS.contains(&area) && !rest.is_empty() && rest.split('/').all(|p| !p.is_empty())
        });
    (!chars_ok || !shape_ok).then(|| "must be an IANA time zone name such as Europe/Rome".into())
}

/// Reads and checks an agent body; `creating` makes `name` and `model` required.
fn read_changes(rt: &Runtime, body: JsonObject, creating: bool) -> Result<AgentChanges, ApiError> {
    let mut f = Fields::new(body.0, WRITABLE, READ_ONLY);
    let changes = read_fields(rt, &mut f, creating);
    f.finish()?;
    Ok(changes)
}

/// An agent configuration at `prefix` of a larger body (a mission's team member), read as a
/// create body; its problems go to `f`.
pub fn read_config(
    rt: &Runtime,
    object: serde_json::Map<String, serde_json::Value>,
    prefix: String,
    f: &mut Fields,
) -> AgentChanges {
    let mut nested = Fields::nested(object, prefix, WRITABLE, READ_ONLY);
    let changes = read_fields(rt, &mut nested, true);
    f.absorb(nested);
    changes
}

fn read_fields(rt: &Runtime, f: &mut Fields, creating: bool) -> AgentChanges {
    let name = f.string("name", 1, 64);
    if let Field::Value(n) = &name
        && let Some(problem) = name_problem(n)
    {
        f.error(f.path("name"), problem);
    }
    let model = f.string("model", 1, 256);
    if let Field::Value(m) = &model
        && let Err(problem) = rt.providers.check_model(m)
    {
        f.error(f.path("model"), problem);
    }
    for (key, field) in [("name", &name), ("model", &model)] {
        let missing = if creating {
            !matches!(field, Field::Value(_))
        } else {
            matches!(field, Field::Null)
        };
        if missing && !f.has_error(key) {
            f.error(f.path(key), "required");
        }
    }
    let role = f.string("role", 0, 200);
    let system_prompt = f.text("systemPrompt", LONG_TEXT_BYTES);
    let allowed_tools = f.string_list("allowedTools", 128, tool_problem);
    let skills = f.string_list("skills", 64, skill_problem);
    let max_turns = f.integer("maxTurns", 1, 1000);
    let max_concurrency = f.integer("maxConcurrency", 1, i64::from(i32::MAX));
    let reasoning = match f.one_of("reasoning", REASONING_VALUES) {
        Field::Value(r) => Reasoning::parse(&r).map_or(Field::Absent, Field::Value),
        Field::Null => Field::Null,
        Field::Absent => Field::Absent,
    };
    let identity = match f.object("identity", IDENTITY_FIELDS) {
        Field::Value(mut nested) => {
            let strings = IDENTITY_STRINGS
                .iter()
                .map(|&m| (m, nested.string(m, 0, 1000)))
                .collect::<Vec<_>>();
            if let Some((_, Field::Value(tz))) = strings.iter().find(|(m, _)| *m == "timezone")
                && let Some(problem) = timezone_problem(tz)
            {
                nested.error(nested.path("timezone"), problem);
            }
            let responsibilities = nested.string_list("responsibilities", 32, |s| {
                (s.chars().count() > 1000).then(|| "must be at most 1000 characters long".into())
            });
            let socials = nested.string_map("socials", 16, (1, 1000), 1000);
            f.absorb(nested);
            Field::Value(IdentityChanges {
                strings,
                responsibilities,
                socials,
            })
        }
        Field::Null => Field::Null,
        Field::Absent => Field::Absent,
    };
    let reports_to = f.string("reportsTo", 1, 64);
    let temperature = f.number("temperature", 0.0, 2.0);
    let max_tokens = f.integer("maxTokens", 1, i64::from(i32::MAX));
    let metadata = f.metadata("metadata");
    AgentChanges {
        name,
        role,
        model,
        system_prompt,
        allowed_tools,
        skills,
        max_turns,
        max_concurrency,
        reasoning,
        identity,
        reports_to,
        temperature,
        max_tokens,
        metadata,
    }
}

/// List agents in creation order (spec §2.2, pagination §1.5).
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    params(("limit" = Option<i64>, Query, description = "1–1000, default 100"),
           ("after" = Option<String>, Query, description = "id of the last agent of the previous page", pattern = r"^agt_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses((status = 200, body = [Agent], headers(("x-next-cursor" = String, description = "present when more agents exist"))),
              (status = 400, body = crate::api::ErrorBody)))]
pub async fn list_agents(
    State(rt): State<Runtime>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, agents::ID_PREFIX)?;
    query.finish()?;
    let items = agents::list(&rt.db, &auth.scope, page.after.as_deref(), page.fetch()).await?;
    Ok(page.respond(items, |a| &a.id))
}

/// Create an agent (spec §2.2).
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = AgentRequest,
    responses((status = 201, body = Agent), (status = 400, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "an agent with this name exists")))]
pub async fn create_agent(
    State(rt): State<Runtime>,
    auth: AuthContext,
    body: JsonObject,
) -> Result<(StatusCode, Json<Agent>), ApiError> {
    let changes = read_changes(&rt, body, true)?;
    let agent = agents::create(&rt, &auth.scope, changes).await?;
    Ok((StatusCode::CREATED, Json(agent)))
}

/// Read one agent by id or name (spec §2.2).
#[utoipa::path(get, path = "/v1/agents/{idOrName}", tag = "agents",
    params(("idOrName" = String, Path, description = "agent id (agt_…) or name")),
    responses((status = 200, body = Agent), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_agent(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id_or_name): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(agents::get(&rt.db, &auth.scope, &id_or_name).await?))
}

/// Update an agent; `identity` is merged one level deep (spec §2.2 rule 1).
#[utoipa::path(patch, path = "/v1/agents/{idOrName}", tag = "agents", request_body = AgentPatch,
    params(("idOrName" = String, Path, description = "agent id (agt_…) or name")),
    responses((status = 200, body = Agent), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody)))]
pub async fn update_agent(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id_or_name): Path<String>,
    body: JsonObject,
) -> Result<Json<Agent>, ApiError> {
    let changes = read_changes(&rt, body, false)?;
    Ok(Json(agents::update(&rt, &auth.scope, &id_or_name, changes).await?))
}

/// Delete an agent and its memory (spec §2.2 rule 2).
#[utoipa::path(delete, path = "/v1/agents/{idOrName}", tag = "agents",
    params(("idOrName" = String, Path, description = "agent id (agt_…) or name"),
           ("force" = Option<bool>, Query, description = "fail the agent's non-terminal tasks first")),
    responses((status = 204), (status = 404, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody)))]
pub async fn delete_agent(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id_or_name): Path<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let force = query.flag("force")?;
    query.finish()?;
    agents::delete(&rt, &auth.scope, &id_or_name, force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_zones_look_like_iana_names() {
        assert!(timezone_problem("Europe/Rome").is_none());
        assert!(timezone_problem("America/Argentina/Buenos_Aires").is_none());
        assert!(timezone_problem("UTC").is_none());
        assert!(timezone_problem("Mars/Olympus").is_some());
        assert!(timezone_problem("Europe/").is_some());
        assert!(timezone_problem("CET; DROP").is_some());
    }

    #[test]
    fn agent_names_follow_the_pattern() {
        assert!(name_problem("backend-dev_2").is_none());
        assert!(name_problem("agt_x").is_some());
        assert!(name_problem("has space").is_some());
    }
}
