//! What every operation of the OpenAPI document shares, written once instead of on each route:
//! the error answers any route can give (spec §1.6–§1.9), the pagination parameters (§1.5), the
//! `Idempotency-Key` header of every POST (§1.8), the bounds of every `metadata` map (§1.9), and
//! the links from a created object to the operations that take its id.

use serde::Serialize;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder, Schema};
use utoipa::{Modify, ToSchema};

/// The error body of the OpenAI-compatible routes (spec §3.11).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OpenAiErrorBody {
    error: OpenAiError,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OpenAiError {
    message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error` or `api_error`.
    #[serde(rename = "type")]
    kind: String,
    code: String,
    param: Option<String>,
}

/// Adds to each operation the answers the middleware and extractors give on any route, in the
/// error shape of that route.
pub struct SharedAnswers;

const PUBLIC: &[&str] = super::PUBLIC_GET_PATHS;

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let openai = path.starts_with("/v1/chat/completions") || path.starts_with("/v1/models");
            let public = PUBLIC.contains(&path.as_str());
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                limit_parameter(operation);
                shared_answers(operation, openai, public);
                untyped_streams(operation);
            }
            // An absent body reads as `{}`: a PATCH changes nothing, an action takes its
            // defaults (spec §0.4 rule 2). A create still needs its required fields, and a
            // rejection its `feedback`.
            let action = path.contains('}') && !path.ends_with("/reject");
            let optional = [Some(&mut item.patch), action.then_some(&mut item.post)];
            for operation in optional.into_iter().flatten().flatten() {
                if let Some(body) = operation.request_body.as_mut() {
                    body.required = Some(Required::False);
                }
            }
            // Every POST reads a body (an absent one is `{}`) and refuses a bad one.
            if let Some(operation) = item.post.as_mut() {
                add(operation, 400, "bad request: an invalid body", openai);
                idempotency_key(operation);
            }
        }
    }
}

/// A `text/event-stream` answer is frames, not one JSON value: its frames are described in
/// prose, and no schema is given for the stream as a whole.
fn untyped_streams(operation: &mut Operation) {
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response
            && let Some(content) = response.content.get_mut("text/event-stream")
        {
            content.schema = None;
        }
    }
}

/// The optional `Idempotency-Key` of any POST (spec §1.8).
fn idempotency_key(operation: &mut Operation) {
    let schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(255))
        .pattern(Some("^[ -~]+$"))
        .build();
    let parameter = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "1–255 printable ASCII characters; a retry with the same key and body is answered once (spec §1.8).",
        ))
        .schema(Some(schema))
        .build();
    operation.parameters.get_or_insert_with(Vec::new).push(parameter);
}

/// A `metadata` map as spec §1.9 bounds it: at most 16 keys of 1–64 characters, string values of
/// at most 512; `null` is absent on create and clears it on PATCH.
pub fn metadata_schema() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
            .max_properties(Some(16))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(64)),
            ))
            .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(512))
                    .build(),
            )))))
            .build(),
    )
}

/// What a response hands to the next call: `(producer, status, targets, parameters, body)`. The
/// parameters and body are runtime expressions over the producer's response (OpenAPI links).
type Follow = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    Option<fn() -> serde_json::Value>,
);

const BY_ID: &[(&str, &str)] = &[("path.id", "$response.body#/id")];

const FOLLOWS: &[Follow] = &[
    (
        "create_agent",
        "201",
        &[
            "get_agent",
            "update_agent",
            "delete_agent",
            "get_agent_memory",
            "put_agent_memory",
        ],
        &[("path.idOrName", "$response.body#/id")],
        None,
    ),
    // The bodies below are whole requests: the agent's first task, a one-message chat with it,
    // and a one-task plan for it, named after the agent's id so that each is new.
    (
        "create_agent",
        "201",
        &["create_task"],
        &[],
        Some(|| serde_json::json!({"title": "$response.body#/id", "assignTo": "$response.body#/name"})),
    ),
    (
        "create_agent",
        "201",
        &["create_chat_completion"],
        &[],
        Some(|| {
            serde_json::json!({
                "agent": "$response.body#/name",
                "messages": [{"role": "user", "content": "Hello"}],
            })
        }),
    ),
    (
        "create_agent",
        "201",
        &["create_mission"],
        &[],
        Some(|| {
            serde_json::json!({
                "name": "$response.body#/id",
                "tasks": [{"title": "First", "assignTo": "$response.body#/name"}],
            })
        }),
    ),
    (
        "create_chat_completion",
        "200",
        &["get_session", "delete_session", "list_messages"],
        &[("path.id", "$response.header.x-session-id")],
        None,
    ),
    (
        "create_task",
        "201",
        &[
            "get_task",
            "update_task",
            "delete_task",
            "run_task",
            "pause_task",
            "retry_task",
            "kill_task",
            "reassess_task",
            "queue_task",
        ],
        BY_ID,
        None,
    ),
    (
        "create_mission",
        "201",
        &[
            "get_mission",
            "update_mission",
            "delete_mission",
            "execute_mission",
            "list_runs",
            "resume_mission",
            "abort_mission",
        ],
        BY_ID,
        None,
    ),
    (
        "execute_mission",
        "202",
        &["get_run"],
        &[
            ("path.id", "$response.body#/missionId"),
            ("path.runId", "$response.body#/id"),
        ],
        None,
    ),
    (
        "execute_mission",
        "202",
        &["mission_report"],
        &[
            ("path.id", "$response.body#/missionId"),
            ("query.runId", "$response.body#/id"),
        ],
        None,
    ),
    (
        "execute_mission",
        "202",
        &["abort_mission", "resume_mission", "list_runs"],
        &[("path.id", "$response.body#/missionId")],
        None,
    ),
    (
        "create_webhook",
        "201",
        &["get_webhook", "delete_webhook", "list_deliveries"],
        BY_ID,
        None,
    ),
];

/// What the derived schemas cannot say: one body type serves create and PATCH of a mission,
/// but a create needs `name` and `tasks`; and each kind of expectation takes only its own
/// members.
pub fn refine(doc: &mut serde_json::Value) {
    if let Some(schema) = doc.pointer_mut("/paths/~1v1~1missions/post/requestBody/content/application~1json/schema") {
        *schema = serde_json::json!({
            "allOf": [schema.take()],
            "required": ["name", "tasks"],
            "properties": {"name": {"type": "string"}, "tasks": {"type": "array"}},
        });
    }
    if let Some(serde_json::Value::Array(kinds)) = doc.pointer_mut("/components/schemas/ExpectationInput/oneOf") {
        for kind in kinds {
            kind["additionalProperties"] = false.into();
        }
    }
}

/// Adds the links of [`FOLLOWS`] to the producers' responses, so that a client (or a stateful
/// fuzzer) knows which operation takes what a create returned. Written into the JSON document:
/// utoipa 5 serialises its link object with snake_case names, which OpenAPI does not define.
pub fn add_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
    {
        let Some(id) = operation
            .get("operationId")
            .and_then(|id| id.as_str())
            .map(str::to_string)
        else {
            continue;
        };
        for (producer, status, targets, parameters, body) in FOLLOWS {
            let Some(response) = operation
                .pointer_mut(&format!("/responses/{status}"))
                .and_then(|r| r.as_object_mut())
                .filter(|_| *producer == id)
            else {
                continue;
            };
            let links = response.entry("links").or_insert_with(|| serde_json::json!({}));
            for target in *targets {
                let mut link = serde_json::json!({"operationId": target});
                if !parameters.is_empty() {
                    link["parameters"] = parameters
                        .iter()
                        .map(|(name, expression)| ((*name).to_string(), serde_json::json!(expression)))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
                if let Some(body) = body {
                    link["requestBody"] = body();
                    // The body is the whole request, not fields to merge into a generated one.
                    link["x-schemathesis"] = serde_json::json!({"merge_body": false});
                }
                links[*target] = link;
            }
        }
    }
}

/// `limit` is 1–1000, default 100, on every list (spec §1.5).
fn limit_parameter(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if parameter.name == "limit" && parameter.parameter_in == ParameterIn::Query {
            parameter.schema = Some(RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .minimum(Some(1))
                    .maximum(Some(1000))
                    .default(Some(serde_json::json!(100)))
                    .build(),
            )));
        }
    }
}

fn shared_answers(operation: &mut Operation, openai: bool, public: bool) {
    let has_query = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Query);
    let has_body = operation.request_body.is_some();
    if has_query || has_body {
        add(operation, 400, "bad request: invalid body or query parameters", openai);
    }
    if has_body {
        add(operation, 413, "the request body is over the limit", openai);
    }
    if public {
        return;
    }
    add(
        operation,
        401,
        "no key, or a key that is malformed, unknown, revoked or expired",
        openai,
    );
    add(operation, 429, "rate limited; see `Retry-After`", openai);
    add(
        operation,
        503,
        "database unreachable, or the server is shutting down",
        openai,
    );
    // Errors the route lists with a description only get the body of its shape.
    let listed: Vec<u16> = operation
        .responses
        .responses
        .keys()
        .filter_map(|k| k.parse().ok())
        .filter(|&s| s >= 400)
        .collect();
    for status in listed {
        add(operation, status, "", openai);
    }
}

/// Lists `status` with the route's error body unless the route already documents it.
fn add(operation: &mut Operation, status: u16, description: &str, openai: bool) {
    let schema = if openai { "OpenAiErrorBody" } else { "ErrorBody" };
    let responses = &mut operation.responses.responses;
    let key = status.to_string();
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(schema)))
        .build();
    match responses.get_mut(&key) {
        // A status documented without a body gets the shared body.
        Some(RefOr::T(response)) if response.content.is_empty() => {
            response.content.insert("application/json".into(), content);
        }
        Some(_) => {}
        None => {
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .build();
            responses.insert(key, RefOr::T(response));
        }
    }
}
