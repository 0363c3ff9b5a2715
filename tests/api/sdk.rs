//! Spec §3.1: the official OpenAI SDKs, pointed at the server, work for plain, streamed and
//! tool-calling requests against OpenAI- and Anthropic-backed agents, and surface errors as their
//! own exception types — Python (`tests/python/test_openai_sdk.py`) and Node
//! (`tests/node/openai_sdk.test.mjs`).

use std::path::Path;
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

/// The `node` binary (`POLPO_TEST_NODE`, else `node`), once the pinned `openai` package is
/// installed in `tests/node/node_modules`.
fn node() -> String {
    let modules = Path::new(NODE_DIR).join("node_modules/openai/package.json");
    assert!(
        modules.is_file(),
        "tests/node/node_modules/openai is missing: run .ci/run, or npm ci --prefix tests/node"
    );
    std::env::var("POLPO_TEST_NODE").unwrap_or_else(|_| "node".into())
}

/// `tests/python/test_openai_sdk.py` has this many tests; all must run and pass.
const PYTHON_CASES: usize = 15;
/// `tests/node/openai_sdk.test.mjs` has this many `test(...)` cases; all must run and pass.
const NODE_CASES: usize = 15;
const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");

/// The fakes, the app on them with the agents the SDK scripts name, and the app's base URL.
struct SdkServer {
    openai: FakeProvider,
    anthropic: FakeProvider,
    app: TestApp,
    base: String,
}

async fn sdk_server() -> SdkServer {
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
    SdkServer {
        openai,
        anthropic,
        app,
        base,
    }
}

/// Every request reached a provider as a stream with usage requested (spec §4.4).
fn assert_providers_streamed(server: &SdkServer) {
    assert!(
        server
            .openai
            .requests()
            .iter()
            .all(|r| r.body["stream"] == true && r.body["stream_options"]["include_usage"] == true)
    );
    assert!(!server.anthropic.requests().is_empty());
}

#[tokio::test]
async fn the_official_openai_python_sdk_works() {
    let python = python();
    let server = sdk_server().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/test_openai_sdk.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .env("POLPO_BASE_URL", &server.base)
        .env("POLPO_KEY", &server.app.test_key)
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
        ran >= PYTHON_CASES && report.contains("\nOK"),
        "expected every SDK test to run and pass:\n{report}"
    );
    assert_providers_streamed(&server);
    assert_defaults_forwarded(&server);
}

/// The frameworks' default parameters the scripts send to `echo-agent` reached the OpenAI fake
/// (spec §3.2, §3.5).
fn assert_defaults_forwarded(server: &SdkServer) {
    let requests = server.openai.requests();
    let forwarded = requests
        .iter()
        .find(|r| r.body["safety_identifier"] == "u1")
        .expect("no request with the frameworks' defaults reached the OpenAI provider");
    for (field, value) in [
        ("store", json!(false)),
        ("reasoning_effort", json!("low")),
        ("service_tier", json!("auto")),
        ("prompt_cache_key", json!("k")),
        ("verbosity", json!("low")),
        ("modalities", json!(["text"])),
    ] {
        assert_eq!(forwarded.body[field], value, "{field} in {}", forwarded.body);
    }
}

/// The last `<label> N` line of the Node test runner's summary: `ℹ pass 13` (spec reporter) or
/// `# pass 13` (TAP).
fn node_summary(report: &str, label: &str) -> Option<usize> {
    report.lines().rev().find_map(|line| {
        let line = line.trim();
        let rest = line.strip_prefix("ℹ ").or_else(|| line.strip_prefix("# "))?;
        rest.strip_prefix(label)?.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test]
async fn the_official_openai_node_sdk_works() {
    let node = node();
    let server = sdk_server().await;
    let output = tokio::process::Command::new(&node)
        .args(["--test", "--test-reporter=spec", "openai_sdk.test.mjs"])
        .current_dir(NODE_DIR)
        .env("POLPO_BASE_URL", &server.base)
        .env("POLPO_KEY", &server.app.test_key)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {node}: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the OpenAI Node SDK tests failed:\n{report}");
    let (pass, fail) = (node_summary(&report, "pass"), node_summary(&report, "fail"));
    assert!(
        pass.is_some_and(|n| n >= NODE_CASES) && fail == Some(0),
        "expected all {NODE_CASES} Node SDK tests to run and pass (pass {pass:?}, fail {fail:?}):\n{report}"
    );
    assert_providers_streamed(&server);
    assert_defaults_forwarded(&server);
}
