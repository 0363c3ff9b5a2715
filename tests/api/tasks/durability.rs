//! Spec §5.8 and §10.5: tasks survive `kill -9` of their worker, run once when instances
//! share a database, keep an agent's `maxConcurrency` across instances, and are handed back at
//! once on a graceful shutdown. Runs on the real binary where a process must die.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use polpo_api::config::{Config, ProviderConfig};
use serde_json::{Value, json};

use super::{agent, task};
use crate::fakes::{FakeProvider, OK_TEXT};
use crate::helpers::{ServerProcess, TestApp, TestDatabase, eventually};

/// Statuses of a task held by a worker.
const RUNNING: [&str; 3] = ["assigned", "in_progress", "review"];

/// How many provider requests carried each task's brief, by task title (the brief's first line
/// is `# <title>`).
fn requests_by_title(fake: &FakeProvider) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in fake.requests() {
        let messages = request.body["messages"].as_array().cloned().unwrap_or_default();
        let Some(brief) = messages.iter().find(|m| m["role"] == "user") else {
            continue;
        };
        let text = match &brief["content"] {
            Value::String(text) => text.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
            _ => String::new(),
        };
        if let Some(title) = text.lines().next().and_then(|l| l.strip_prefix("# ")) {
            *counts.entry(title.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// A config whose `openai` and `anthropic` providers are the fakes.
fn config_with(openai: &FakeProvider, anthropic: &FakeProvider) -> Config {
    let mut config = Config::default();
    for (name, fake) in [("openai", openai), ("anthropic", anthropic)] {
        let table = ProviderConfig {
            base_url: Some(fake.base_url.clone()),
            ..ProviderConfig::default()
        };
        config.providers.insert(name.to_string(), table);
    }
    config
}

/// Sums the `polpo_task_attempts_total` series of one instance's own metrics.
fn attempts_counted(state: &polpo_api::app::AppState) -> f64 {
    state
        .runtime
        .metrics
        .render(0)
        .lines()
        .filter(|l| l.starts_with("polpo_task_attempts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every task of the app, by title.
async fn tasks_by_title(app: &TestApp) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/v1/tasks?limit=1000".to_string()
        } else {
            format!("/v1/tasks?limit=1000&after={after}")
        };
        let response = app.get(&path, &app.test_key).await;
        assert_eq!(response.status, 200, "{}", response.text);
        for task in response.json().as_array().unwrap() {
            out.insert(task["title"].as_str().unwrap().to_string(), task.clone());
        }
        match response.header("x-next-cursor") {
            Some(cursor) => after = cursor.to_string(),
            None => return out,
        }
    }
}

/// A `serve` process on the database, configured by a TOML text with the openai fake's URL.
fn start_server(database: &TestDatabase, toml: &str) -> ServerProcess {
    let config_path = database.dir.0.join("polpo.toml");
    std::fs::write(&config_path, toml).unwrap();
    ServerProcess::start(
        &database.dir.0,
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("POLPO_CONFIG", config_path.to_str().unwrap()),
            ("OPENAI_API_KEY", "sk-upstream-openai-secret"),
        ],
    )
}

/// A client of a `ServerProcess` with its key.
struct Remote {
    http: reqwest::Client,
    key: String,
}

impl Remote {
    fn new(key: &str) -> Self {
        Self {
            http: crate::helpers::client(),
            key: key.to_string(),
        }
    }

    async fn post(&self, base: &str, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "POST {path}");
        response.json().await.unwrap()
    }

    async fn get(&self, base: &str, path: &str) -> (Value, Option<String>) {
        let response = self
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        let cursor = response
            .headers()
            .get("x-next-cursor")
            .map(|v| v.to_str().unwrap().to_string());
        (response.json().await.unwrap(), cursor)
    }

    /// Every task, by title.
    async fn tasks(&self, base: &str) -> BTreeMap<String, Value> {
        let (tasks, cursor) = self.get(base, "/v1/tasks?limit=1000").await;
        assert!(cursor.is_none(), "more than a page of tasks");
        tasks
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["title"].as_str().unwrap().to_string(), t.clone()))
            .collect()
    }

    /// Every event of the history matching `filter`, in order.
    async fn history(&self, base: &str, filter: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let path = format!("/v1/events/history?filter={filter}&limit=1000&after={after}");
            let (page, cursor) = self.get(base, &path).await;
            out.extend(page.as_array().unwrap().iter().cloned());
            match cursor {
                Some(cursor) => after = cursor.parse().unwrap(),
                None => return out,
            }
        }
    }
}

/// The tasks table as the database holds it while no server runs: title → (status, document).
async fn stored_tasks(database: &TestDatabase) -> BTreeMap<String, (String, Value)> {
    let db = polpo_api::store::Db::connect(Some(&database.url), 1).await.unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as("SELECT title, status, body FROM tasks")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    db.pool.close().await;
    rows.into_iter()
        .map(|(title, status, body)| (title, (status, serde_json::from_str(&body).unwrap())))
        .collect()
}

fn attempts(task: &Value) -> Vec<Value> {
    task["result"]["attempts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_while_twenty_tasks_run_loses_nothing_and_runs_nothing_twice() {
    const FAST: usize = 8;
    const SLOW: usize = 12;
    // `pace-1000`: the five words of the `ok` reply a second apart, about 4 s a stream.
    const SLOW_MODEL: &str = "pace-1000";
    let openai = FakeProvider::openai().await;
    let database = TestDatabase::new().await;
    let toml = format!(
        "[workers]\nmax_concurrent_tasks = 20\nlease_duration = \"2s\"\nheartbeat_interval = \"500ms\"\n\n\
         [providers.openai]\nbase_url = \"{}\"\n",
        openai.base_url
    );
    let mut server = start_server(&database, &toml);
    let remote = Remote::new(&server.key());
    let base = server.base_url.clone();
    remote
        .post(&base, "/v1/agents", json!({"name": "quick", "model": "openai:ok"}))
        .await;
    remote
        .post(
            &base,
            "/v1/agents",
            json!({"name": "plodder", "model": format!("openai:{SLOW_MODEL}")}),
        )
        .await;
    // Fast and slow tasks interleaved (two of every five are fast), created together so that
    // the slow ones all stream at once.
    futures_util::future::join_all((0..FAST + SLOW).map(|i| {
        let (title, agent) = if i % 5 < 2 {
            (format!("Fast {i:02}"), "quick")
        } else {
            (format!("Slow {i:02}"), "plodder")
        };
        let (remote, base) = (&remote, &base);
        async move {
            remote
                .post(base, "/v1/tasks", json!({"title": title, "assignTo": agent}))
                .await
        }
    }))
    .await;

    // Kill once the fast tasks are done and every slow one is streaming its answer.
    let ready = eventually(Duration::from_secs(20), || async {
        let tasks = remote.tasks(&base).await;
        let done = tasks.values().filter(|t| t["status"] == "done").count();
        done >= FAST && openai.in_flight(SLOW_MODEL) == SLOW
    })
    .await;
    assert!(ready, "tasks did not get going: {:#?}", remote.tasks(&base).await);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // What the dead worker left behind, read while no server runs.
    let left = stored_tasks(&database).await;
    assert_eq!(left.len(), FAST + SLOW);
    let finished_before: Vec<&String> = left.iter().filter(|(_, (s, _))| s == "done").map(|(t, _)| t).collect();
    let interrupted: Vec<&String> = left
        .iter()
        .filter(|(_, (s, _))| RUNNING.contains(&s.as_str()))
        .map(|(t, _)| t)
        .collect();
    assert!(finished_before.len() >= FAST, "{left:#?}");
    assert!(!interrupted.is_empty(), "no task was running at the kill: {left:#?}");
    assert_eq!(finished_before.len() + interrupted.len(), FAST + SLOW, "{left:#?}");

    let server = start_server(&database, &toml);
    let base = server.base_url.clone();
    let all_done = eventually(Duration::from_secs(40), || async {
        remote.tasks(&base).await.values().all(|t| t["status"] == "done")
    })
    .await;
    let tasks = remote.tasks(&base).await;
    assert!(
        all_done,
        "not every task finished after the restart: {tasks:#?}\n{}",
        server.log()
    );

    let requests = requests_by_title(&openai);
    let history = remote.history(&base, "task:transition,task:recovered").await;
    for (title, task) in &tasks {
        let id = task["id"].as_str().unwrap();
        let about: Vec<&Value> = history.iter().filter(|e| e["data"]["taskId"] == id).collect();
        let terminal: Vec<&str> = about
            .iter()
            .filter(|e| e["event"] == "task:transition")
            .filter_map(|e| e["data"]["to"].as_str())
            .filter(|to| *to == "done" || *to == "failed")
            .collect();
        assert_eq!(terminal, ["done"], "{title}: one terminal state");
        assert_eq!(task["retries"], 0, "{title}: no retry consumed: {task:#}");
        assert_eq!(task["result"]["error"], Value::Null, "{title}");
        assert_eq!(task["result"]["output"], OK_TEXT, "{title}");
        let recovered: Vec<&&Value> = about.iter().filter(|e| e["event"] == "task:recovered").collect();
        let attempts = attempts(task);
        if finished_before.contains(&title) {
            assert_eq!(requests.get(title), Some(&1), "{title} ran again after the restart");
            assert_eq!(attempts.len(), 1, "{title}: {task:#}");
            assert!(recovered.is_empty(), "{title} was recovered although it had finished");
        } else {
            let (before, _) = &left[title];
            assert_eq!(recovered.len(), 1, "{title}: one task:recovered: {about:#?}");
            assert_eq!(recovered[0]["data"]["title"], title.as_str());
            assert_eq!(recovered[0]["data"]["previousStatus"], before.as_str());
            // The interrupted attempt (the kill came while it streamed) and the one that finished.
            assert_eq!(attempts.len(), 2, "{title}: {task:#}");
            assert_eq!(attempts[0]["error"]["code"], "interrupted", "{title}: {task:#}");
            assert!(attempts[0]["finishedAt"].is_string(), "{title}");
            assert_eq!(attempts[1]["error"], Value::Null, "{title}");
            assert_eq!(attempts[1]["phase"], "execution", "{title}");
            assert_eq!(requests.get(title), Some(&2), "{title}: one request per attempt");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_two_hundred_tasks_exactly_once() {
    const TASKS: usize = 200;
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let config = config_with(&openai, &anthropic);
    let app = TestApp::spawn_with(config.clone()).await;
    if !app._database.is_postgres() {
        eprintln!("skipped on SQLite: one serve instance per database file (spec §10.3)");
        return;
    }
    let other = app.another_instance(config).await;
    // A short pause between words keeps each instance's 8 slots busy while the queue fills, so
    // that neither instance can take everything alone.
    agent(&app, "worker", "openai:pace-20").await;
    let created = futures_util::stream::iter(0..TASKS)
        .map(|i| {
            let app = &app;
            async move { task(app, json!({"title": format!("Job {i:03}"), "assignTo": "worker"})).await }
        })
        .buffer_unordered(8)
        .count()
        .await;
    assert_eq!(created, TASKS);

    let all_done = eventually(Duration::from_secs(60), || async {
        tasks_by_title(&app).await.values().all(|t| t["status"] == "done")
    })
    .await;
    let tasks = tasks_by_title(&app).await;
    assert_eq!(tasks.len(), TASKS);
    assert!(
        all_done,
        "{:?}",
        tasks.values().filter(|t| t["status"] != "done").collect::<Vec<_>>()
    );
    let requests = requests_by_title(&openai);
    for (title, task) in &tasks {
        assert_eq!(requests.get(title), Some(&1), "{title}: one request to the provider");
        assert_eq!(attempts(task).len(), 1, "{title}: {task:#}");
        assert_eq!(task["result"]["output"], OK_TEXT);
    }
    assert_eq!(requests.values().sum::<usize>(), TASKS);
    // An attempt is counted by its worker right after its last commit.
    let counted = eventually(Duration::from_secs(5), || async {
        attempts_counted(&app.state) + attempts_counted(&other) >= TASKS as f64
    })
    .await;
    let (here, there) = (attempts_counted(&app.state), attempts_counted(&other));
    assert!(counted);
    assert_eq!(here + there, TASKS as f64, "one counted attempt per task");
    assert!(
        here > 0.0 && there > 0.0,
        "both instances ran tasks: {here} and {there}"
    );
    other.runtime.drain(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_across_instances() {
    const TASKS: usize = 10;
    // The `ok` reply a tenth of a second a word: each attempt streams for about 0.4 s.
    const MODEL: &str = "pace-100";
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let config = config_with(&openai, &anthropic);
    let app = TestApp::spawn_with(config.clone()).await;
    // SQLite serves one instance per file (spec §10.3): there the cap is checked on one.
    let other = if app._database.is_postgres() {
        Some(app.another_instance(config).await)
    } else {
        eprintln!("SQLite: one serve instance per database file (spec §10.3); checking the cap on one instance");
        None
    };
    let response = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "pair", "model": format!("openai:{MODEL}"), "maxConcurrency": 2}),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.text);
    for i in 0..TASKS {
        task(&app, json!({"title": format!("Pair job {i}"), "assignTo": "pair"})).await;
    }
    let all_done = eventually(Duration::from_secs(60), || async {
        tasks_by_title(&app).await.values().all(|t| t["status"] == "done")
    })
    .await;
    let tasks = tasks_by_title(&app).await;
    assert_eq!(tasks.len(), TASKS);
    assert!(all_done, "{tasks:#?}");
    assert!(
        openai.max_in_flight(MODEL) <= 2,
        "{} attempts of the agent streamed at once",
        openai.max_in_flight(MODEL)
    );
    // Not a vacuous pass: the agent did use both of its slots.
    assert_eq!(openai.max_in_flight(MODEL), 2);
    let requests = requests_by_title(&openai);
    assert!(tasks.keys().all(|t| requests.get(t) == Some(&1)), "{requests:?}");
    if let Some(other) = other {
        other.runtime.drain(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_running_tasks_at_once() {
    const TASKS: usize = 5;
    // About 4 s a stream: SIGTERM comes while every task is in the middle of its answer.
    const MODEL: &str = "pace-1000";
    let openai = FakeProvider::openai().await;
    let database = TestDatabase::new().await;
    // A lease far longer than the test: the next start can only continue the tasks at once if
    // the stopping server handed them back.
    let toml = format!(
        "[workers]\nlease_duration = \"5m\"\nheartbeat_interval = \"1s\"\n\n[providers.openai]\nbase_url = \"{}\"\n",
        openai.base_url
    );
    let mut server = start_server(&database, &toml);
    let remote = Remote::new(&server.key());
    let base = server.base_url.clone();
    remote
        .post(
            &base,
            "/v1/agents",
            json!({"name": "talker", "model": format!("openai:{MODEL}")}),
        )
        .await;
    futures_util::future::join_all((0..TASKS).map(|i| {
        let (remote, base) = (&remote, &base);
        async move {
            let body = json!({"title": format!("Speech {i}"), "assignTo": "talker"});
            remote.post(base, "/v1/tasks", body).await
        }
    }))
    .await;
    let streaming = eventually(Duration::from_secs(20), || async { openai.in_flight(MODEL) == TASKS }).await;
    assert!(
        streaming,
        "the tasks did not all start: {:#?}",
        remote.tasks(&base).await
    );

    let asked = Instant::now();
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(20)))
        .expect("the server exited within 20 s");
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "exit took {took:?}: the tasks were waited for"
    );
    // The provider calls were cancelled, not waited for.
    let cancelled = eventually(Duration::from_secs(5), || async {
        openai.in_flight(MODEL) == 0 && openai.abandoned_streams() == TASKS
    })
    .await;
    assert!(cancelled, "{} streams abandoned", openai.abandoned_streams());

    let left = stored_tasks(&database).await;
    assert_eq!(left.len(), TASKS);
    for (title, (status, task)) in &left {
        assert_eq!(status, "pending", "{title} was not handed back: {task:#}");
        assert_eq!(task["status"], "pending");
        assert_eq!(task["retries"], 0, "{title}: a retry was consumed");
        let attempts = attempts(task);
        assert_eq!(attempts.len(), 1, "{title}: {task:#}");
        assert_eq!(attempts[0]["error"]["code"], "interrupted", "{title}: {task:#}");
        assert!(attempts[0]["finishedAt"].is_string(), "{title}");
    }

    let restarted = Instant::now();
    let server = start_server(&database, &toml);
    let base = server.base_url.clone();
    let all_done = eventually(Duration::from_secs(30), || async {
        remote.tasks(&base).await.values().all(|t| t["status"] == "done")
    })
    .await;
    let tasks = remote.tasks(&base).await;
    assert!(all_done, "{tasks:#?}\n{}", server.log());
    // Well before the 5 min lease would have run out.
    assert!(restarted.elapsed() < Duration::from_secs(30));
    let requests = requests_by_title(&openai);
    for (title, task) in &tasks {
        assert_eq!(task["retries"], 0, "{title}");
        assert_eq!(task["result"]["output"], OK_TEXT, "{title}");
        let attempts = attempts(task);
        assert_eq!(attempts.len(), 2, "{title}: {task:#}");
        assert_eq!(attempts[0]["error"]["code"], "interrupted");
        assert_eq!(attempts[1]["error"], Value::Null);
        assert_eq!(requests.get(title), Some(&2), "{title}");
    }
    let recovered = remote.history(&base, "task:recovered").await;
    assert!(recovered.is_empty(), "released tasks are not recovered: {recovered:#?}");
}
