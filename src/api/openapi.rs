//! What every operation of the OpenAPI document shares, written once instead of on each route:
//! the error answers any route can give (spec §1.6–§1.9) and the pagination parameters (§1.5).

use serde::Serialize;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Schema};
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
            }
            // Every POST reads a body (an absent one is `{}`) and refuses a bad one.
            if let Some(operation) = item.post.as_mut() {
                add(operation, 400, "bad request: an invalid body", openai);
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
