//! The load of the database outage test: clients creating and reading agents and streaming
//! chat completions, every answer kept with its timing, and how each answer is judged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::complete_frames;

/// One answer the load received: when it was sent (from the start of the test), how long it
/// took, its status (`0`: no HTTP answer at all) and what came with it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub what: String,
    /// A streamed chat completion (OpenAI error shape, error frames), not a REST call.
    pub chat: bool,
    pub sent: Duration,
    pub took: Duration,
    pub status: u16,
    pub retry_after: Option<String>,
    /// `x-session-id` of a chat answer.
    pub session: Option<String>,
    pub body: String,
}

/// Clients creating and reading agents, and clients streaming chat completions, as fast as the
/// server answers, until told to stop. Keeps every answer and the names of the agents whose
/// creation was answered `201`.
pub struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    created: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(base: &str, key: &str, (rest, chat): (usize, usize), t0: Instant) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let created = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // Far above any answer time the test accepts, so that a hang shows as a slow answer.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut clients: Vec<tokio::task::JoinHandle<()>> = (0..chat)
            .map(|i| {
                let (answers, stop) = (answers.clone(), stop.clone());
                let (http, base, key) = (http.clone(), base.to_string(), key.to_string());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let turn = http
                            .post(format!("{base}/v1/chat/completions"))
                            .bearer_auth(&key)
                            .json(&json!({
                                "model": "mock/echo", "stream": true,
                                "messages": [{"role": "user", "content": format!("chat {i} turn {n}")}],
                            }));
                        let answer = send(turn, format!("chat stream {i}-{n}"), t0).await;
                        answers.lock().unwrap().push(Answer { chat: true, ..answer });
                    }
                })
            })
            .collect();
        clients.extend((0..rest).map(|i| {
            let (answers, created, stop) = (answers.clone(), created.clone(), stop.clone());
            let (http, base, key) = (http.clone(), base.to_string(), key.to_string());
            tokio::spawn(async move {
                let (mut n, mut last) = (0, None);
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let name = format!("load-{i}-{n}");
                    let create = http
                        .post(format!("{base}/v1/agents"))
                        .bearer_auth(&key)
                        .json(&json!({"name": name, "model": "mock/echo"}));
                    let answer = send(create, format!("POST agent {name}"), t0).await;
                    if answer.status == 201 {
                        created.lock().unwrap().push(name.clone());
                        last = Some(name);
                    }
                    answers.lock().unwrap().push(answer);
                    // Reads the newest agent this client created (a refused create made none).
                    if let Some(name) = &last {
                        let read = http.get(format!("{base}/v1/agents/{name}")).bearer_auth(&key);
                        let answer = send(read, format!("GET agent {name}"), t0).await;
                        answers.lock().unwrap().push(answer);
                    }
                }
            })
        }));
        Self {
            answers,
            created,
            stop,
            clients,
        }
    }

    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    pub async fn finish(self) -> (Vec<Answer>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        let created = self.created.lock().unwrap().clone();
        (answers, created)
    }
}

async fn send(request: reqwest::RequestBuilder, what: String, t0: Instant) -> Answer {
    let sent = t0.elapsed();
    let started = Instant::now();
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let session = response
                .headers()
                .get("x-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.text().await.unwrap_or_default();
            Answer {
                what,
                chat: false,
                sent,
                took: started.elapsed(),
                status,
                retry_after,
                session,
                body,
            }
        }
        Err(e) => Answer {
            what,
            chat: false,
            sent,
            took: started.elapsed(),
            status: 0,
            retry_after: None,
            session: None,
            body: e.to_string(),
        },
    }
}

/// One line per answer, for failure messages.
pub fn describe<'a>(answers: impl IntoIterator<Item = &'a Answer>) -> String {
    answers
        .into_iter()
        .map(|a| {
            format!(
                "{}: {} sent at {:.1?}, took {:.1?}: {}",
                a.what, a.status, a.sent, a.took, a.body
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A `2xx`; for a chat stream, one that ended with `[DONE]`.
    Served,
    /// `503 unavailable` with `Retry-After: 1` in the path's error shape (spec §1.6, §3.11), or a
    /// chat stream that ended with an `unavailable` error frame.
    Unavailable,
    /// Anything else: a `500`, a hang, a cut connection, a wrong shape.
    Wrong,
}

pub fn verdict(answer: &Answer) -> Verdict {
    let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    let refused = answer.status == 503 && answer.retry_after.as_deref() == Some("1");
    if !answer.chat {
        return match answer.status {
            200..=299 => Verdict::Served,
            503 if refused && body["code"] == "unavailable" && body["error"] == "service unavailable" => {
                Verdict::Unavailable
            }
            _ => Verdict::Wrong,
        };
    }
    if answer.status == 503 {
        return if refused && body["error"]["code"] == "unavailable" && body["error"]["type"] == "api_error" {
            Verdict::Unavailable
        } else {
            Verdict::Wrong
        };
    }
    let frames = complete_frames(&answer.body);
    let last: Value = frames
        .last()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or(Value::Null);
    match (answer.status, frames.last().map(String::as_str)) {
        (200, Some("[DONE]")) => Verdict::Served,
        (200, Some(_)) if last["error"]["code"] == "unavailable" => Verdict::Unavailable,
        _ => Verdict::Wrong,
    }
}

pub fn success(answer: &Answer) -> bool {
    verdict(answer) == Verdict::Served
}
