//! Provider faults under concurrency: timeouts, 500s, 429s and cut streams, fifty turns at once
//! beside healthy ones. Each client gets its documented answer, healthy turns are not held up,
//! nothing answers 500, and the server is ready afterwards. The test prints what was injected
//! and what was observed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use polpo_api::config::Config;
use serde_json::json;

use super::{data_frames, send_completion, setup_with, stream, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_turns_with_injected_faults_each_get_their_documented_answer() {
    let mut config = Config::default();
    config.upstream.first_chunk_timeout = Duration::from_secs(3);
    let s = setup_with(config).await;
    let base = s.app.serve().await;
    let key = s.app.test_key.clone();
    // (model, streamed, what the client must see)
    let plan: Vec<(&str, bool, &str)> = (0..50)
        .map(|i| match i % 5 {
            0 => ("hang", false, "504 upstream_timeout"),
            1 => ("fail-500", false, "502 upstream_error"),
            2 => ("fail-429", false, "429 rate_limited"),
            3 => ("cut", true, "200 then an upstream_error frame"),
            _ => ("ok", false, "200"),
        })
        .collect();
    let started = Instant::now();
    let turns = plan.iter().map(|(model, streamed, _)| {
        let (base, key) = (base.clone(), key.clone());
        let body = json!({"model": format!("openai:{model}"), "stream": streamed, "messages": user("hi")});
        async move {
            let began = Instant::now();
            let observed = if *streamed {
                let (status, _, text) = stream(&base, &key, body).await;
                let frames = data_frames(&text);
                let error = frames
                    .iter()
                    .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
                    .find_map(|f| f["error"]["code"].as_str().map(str::to_string));
                match error {
                    Some(code) => format!("{} then an {code} frame", status.as_u16()),
                    None => format!("{}", status.as_u16()),
                }
            } else {
                let response = send_completion(&base, &key, &body).await;
                let status = response.status().as_u16();
                let retry = response.headers().get("retry-after").is_some();
                let text = response.text().await.unwrap();
                let code = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
                match (status, code) {
                    (429, Some(code)) if retry => format!("429 {code}"),
                    (429, Some(code)) => format!("429 {code} without Retry-After"),
                    (200, _) => "200".to_string(),
                    (status, Some(code)) => format!("{status} {code}"),
                    (status, None) => format!("{status} {text}"),
                }
            };
            (observed, began.elapsed())
        }
    });
    let results = futures_util::future::join_all(turns).await;
    let mut table: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for ((model, _, _), (observed, _)) in plan.iter().zip(&results) {
        *table.entry((model, observed.clone())).or_default() += 1;
    }
    println!("injected            observed                               turns");
    for ((model, observed), n) in &table {
        println!("{model:<19} {observed:<38} {n}");
    }
    println!("all fifty answered in {:.1} s", started.elapsed().as_secs_f64());
    for ((model, _, expected), (observed, _)) in plan.iter().zip(&results) {
        assert_eq!(observed, expected, "{model}");
    }
    // Healthy turns are not held up: each ended before any hanging one timed out.
    let took = |wanted: &'static str| -> Vec<Duration> {
        plan.iter()
            .zip(&results)
            .filter(|((m, _, _), _)| *m == wanted)
            .map(|(_, (_, t))| *t)
            .collect()
    };
    let slowest_ok = took("ok").into_iter().max().unwrap();
    let first_timeout = took("hang").into_iter().min().unwrap();
    assert!(
        slowest_ok < first_timeout,
        "a healthy turn ({slowest_ok:?}) waited for the faults ({first_timeout:?})"
    );
    let ready = s.app.call("GET", "/ready", None, None).await;
    assert_eq!(ready.status.as_u16(), 200, "{}", ready.text);
    let after = s
        .chat(json!({"model": "openai:ok", "messages": user("still there?")}), None)
        .await;
    assert_eq!(after.status.as_u16(), 200, "{}", after.text);
}
