//! HTTP only: one file per resource, thin handlers, request and response types beside them.
//! The route table below is also the source of the OpenAPI document, so a route cannot exist
//! without being documented.

pub mod agents;
pub mod approvals;
pub mod chat;
pub mod events;
pub mod health;
pub mod input;
pub mod memory;
pub mod missions;
pub mod models;
pub mod openapi;
pub mod sessions;
pub mod sse;
pub mod tasks;
pub mod webhooks;

use std::sync::LazyLock;

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// The REST error body (spec §1.6).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Human-readable message.
    error: String,
    /// Machine-readable code: bad_request, unauthorized, invalid_api_key, not_found, …
    code: String,
    /// Optional; `fields` maps JSON paths to problems for validation failures.
    details: Option<serde_json::Value>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "polpo-api", description = "Polpo's hosted Agent API (spec: API.md, version 1)"),
    servers((url = "/")),
    modifiers(&Security),
    security(("bearer" = []), ("apiKeyHeader" = [])),
    components(schemas(ErrorBody, openapi::OpenAiErrorBody, openapi::OpenAiError))
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_live_… / sk_test_…")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKeyHeader",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// Every route of the server, documented.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi_json))
        .routes(routes!(agents::list_agents, agents::create_agent))
        .routes(routes!(agents::get_agent, agents::update_agent, agents::delete_agent))
        .routes(routes!(memory::get_agent_memory, memory::put_agent_memory))
        .routes(routes!(memory::get_project_memory, memory::put_project_memory))
        .routes(routes!(chat::create_chat_completion))
        .routes(routes!(models::list_models))
        .routes(routes!(models::get_model))
        .routes(routes!(sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::delete_session))
        .routes(routes!(sessions::list_messages))
        .routes(routes!(tasks::list_tasks, tasks::create_task))
        .routes(routes!(tasks::get_task, tasks::update_task, tasks::delete_task))
        .routes(routes!(tasks::run_task))
        .routes(routes!(tasks::pause_task))
        .routes(routes!(tasks::retry_task))
        .routes(routes!(tasks::kill_task))
        .routes(routes!(tasks::reassess_task))
        .routes(routes!(tasks::queue_task))
        .routes(routes!(approvals::list_approvals))
        .routes(routes!(approvals::get_approval))
        .routes(routes!(approvals::approve_approval))
        .routes(routes!(approvals::reject_approval))
        .routes(routes!(missions::list_missions, missions::create_mission))
        .routes(routes!(
            missions::get_mission,
            missions::update_mission,
            missions::delete_mission
        ))
        .routes(routes!(missions::execute_mission))
        .routes(routes!(missions::list_runs))
        .routes(routes!(missions::get_run))
        .routes(routes!(missions::resume_mission))
        .routes(routes!(missions::abort_mission))
        .routes(routes!(missions::resume_checkpoint))
        .routes(routes!(missions::mission_report))
        .routes(routes!(events::stream_events))
        .routes(routes!(events::event_history))
        .routes(routes!(webhooks::list_webhooks, webhooks::create_webhook))
        .routes(routes!(webhooks::get_webhook, webhooks::delete_webhook))
        .routes(routes!(webhooks::list_deliveries))
}

/// One frame of a task or mission stream: the chat-chunk envelope with its own `object` (spec
/// §5.6, §6.9), and the `polpo` member when given.
pub fn chunk_frame(
    object: &str,
    id: &str,
    delta: serde_json::Value,
    finish: Option<&str>,
    polpo: Option<serde_json::Value>,
) -> Result<sse::Event, std::convert::Infallible> {
    let mut frame = serde_json::json!({
        "id": id, "object": object, "created": crate::clock::now_ms() / 1000,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    if let Some(polpo) = polpo {
        frame["polpo"] = polpo;
    }
    Ok(sse::Event::default().json_data(&frame))
}

/// The one OpenAI-shaped error frame that ends a task or mission stream (spec §3.9).
pub fn error_frame(error: &crate::error::ApiError) -> Result<sse::Event, std::convert::Infallible> {
    let body = serde_json::json!({"error": error.report().openai_error()});
    Ok(sse::Event::default().json_data(&body))
}

/// Keeps a stream slot of the key (spec §1.7) for as long as `frames` is open.
pub fn holding<S>(
    frames: S,
    slot: crate::middleware::rate_limit::StreamSlot,
) -> impl futures_util::Stream<Item = S::Item> + Send + 'static
where
    S: futures_util::Stream + Send + 'static,
{
    use futures_util::StreamExt;
    frames.map(move |frame| {
        let _held = &slot;
        frame
    })
}

/// The OpenAPI document, built once from [`routes`].
pub static OPENAPI: LazyLock<String> = LazyLock::new(|| {
    let (_, mut doc) = routes().split_for_parts();
    openapi::SharedAnswers.modify(&mut doc);
    let mut doc = serde_json::to_value(&doc).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
    openapi::refine(&mut doc);
    openapi::add_links(&mut doc);
    doc.to_string()
});

/// The routes that answer without a key (spec §1.1); everything else is denied by default.
pub const PUBLIC_GET_PATHS: &[&str] = &["/health", "/ready", "/metrics", "/v1/openapi.json"];
