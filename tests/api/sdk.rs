//! Spec §3.1: the official OpenAI Python SDK, pointed at the server, works for plain, streamed
//! and tool-calling requests against OpenAI- and Anthropic-backed agents, and surfaces errors as
//! its own exception types (`tests/python/test_openai_sdk.py`).

use std::process::Command;
use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::config::Config;
use serde_json::json;

use crate::fakes::FakeProvider;
use crate::helpers::TestApp;

/// The interpreter with the pinned `openai` package: `POLPO_TEST_PYTHON` (set by `.ci/run`),
/// else `python3`.
fn python() -> String {
    let python = std::env::var("POLPO_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import openai"]).output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "{python} cannot import openai: run .ci/run, or pip install -r tests/python/requirements.txt \
         and set POLPO_TEST_PYTHON"
    );
    python
}

#[tokio::test]
async fn the_official_openai_python_sdk_works() {
    let python = python();
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let mut config = Config::default();
    config.upstream.first_chunk_timeout = Duration::from_secs(1);
    let app = TestApp::with_fakes(&openai, &anthropic, config).await;
    for (name, model) in [
        ("gpt-agent", "openai:ok"),
        ("echo-agent", "openai:echo"),
        ("gpt-tools", "openai:tool"),
        ("gpt-500", "openai:fail-500"),
        ("gpt-429", "openai:fail-429"),
        ("gpt-hang", "openai:hang"),
        ("gpt-cut", "openai:cut"),
        ("gpt-nonjson", "openai:non-json"),
        ("claude-agent", "anthropic:ok"),
        ("claude-tools", "anthropic:tool"),
        ("claude-error", "anthropic:error-event"),
    ] {
        let response = app
            .post("/v1/agents", &app.test_key, json!({"name": name, "model": model}))
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    }
    let base = app.serve().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/test_openai_sdk.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .env("POLPO_BASE_URL", &base)
        .env("POLPO_KEY", &app.test_key)
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the OpenAI SDK tests failed:\n{report}");
    let ran: usize = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    assert!(
        ran >= 12 && report.contains("\nOK"),
        "expected every SDK test to run and pass:\n{report}"
    );
    // Every request reached a provider as a stream with usage requested.
    assert!(
        openai
            .requests()
            .iter()
            .all(|r| r.body["stream"] == true && r.body["stream_options"]["include_usage"] == true)
    );
    assert!(!anthropic.requests().is_empty());
}
