//! Spec §3 and §4: chat completions through agents and providers, against fake providers that
//! speak the OpenAI and Anthropic wire formats.

mod completions;
mod failures;
mod faults;
mod parameters;
mod sessions;
mod streaming;
mod tools;
mod validation;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use polpo_api::config::Config;
use serde_json::{Value, json};

use crate::fakes::FakeProvider;
use crate::helpers::{TestApp, TestResponse, client};

struct Setup {
    openai: FakeProvider,
    anthropic: FakeProvider,
    app: TestApp,
}

async fn setup_with(config: Config) -> Setup {
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let app = TestApp::with_fakes(&openai, &anthropic, config).await;
    Setup { openai, anthropic, app }
}

async fn setup() -> Setup {
    setup_with(Config::default()).await
}

impl Setup {
    async fn agent(&self, name: &str, model: &str, extra: Value) -> Value {
        let mut body = json!({"name": name, "model": model});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let response = self.app.post("/v1/agents", &self.app.test_key, body).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        response.json()
    }

    async fn chat(&self, body: Value, session: Option<&str>) -> TestResponse {
        let mut builder = Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {}", self.app.test_key))
            .header("content-type", "application/json");
        if let Some(session) = session {
            builder = builder.header("x-session-id", session);
        }
        self.app.send(builder.body(Body::from(body.to_string())).unwrap()).await
    }

    async fn messages(&self, session: &str) -> Vec<Value> {
        let response = self
            .app
            .get(&format!("/v1/chat/sessions/{session}/messages"), &self.app.test_key)
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        response.json().as_array().unwrap().clone()
    }
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// The `data:` payloads of a chat stream, checking the framing rules of spec §3.8 on the way.
fn data_frames(text: &str) -> Vec<String> {
    let mut frames = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        for line in block.lines() {
            assert!(
                !line.starts_with("id:") && !line.starts_with("event:"),
                "forbidden line {line:?}"
            );
            if line.starts_with(':') {
                continue;
            }
            let payload = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {line:?}"));
            if payload != "[DONE]" {
                let value: Value = serde_json::from_str(payload).expect("every data line is one JSON object");
                assert!(value.is_object());
            }
            frames.push(payload.to_string());
        }
    }
    frames
}

/// A chat completion request sent over HTTP; its response as it starts, to be read whole or
/// chunk by chunk.
async fn send_completion(base: &str, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn stream(base: &str, key: &str, body: Value) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let response = send_completion(base, key, &body).await;
    let status = response.status();
    let headers = response.headers().clone();
    // A cut stream may end with a transport error after its last frame; keep what arrived.
    let mut text = String::new();
    let mut response = response;
    while let Ok(Some(bytes)) = response.chunk().await {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    (status, headers, text)
}

fn json_frames(frames: &[String]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| *f != "[DONE]")
        .map(|f| serde_json::from_str(f).unwrap())
        .collect()
}
