//! `TestApp`: the real router on a fresh database (a SQLite file, or a new database on the
//! Postgres named by `TEST_DATABASE_URL`), plus `ServerProcess` for tests that need the binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use polpo_api::app::{self, AppState};
use polpo_api::auth::admin;
use polpo_api::config::{Config, ProviderConfig};
use polpo_api::providers::Providers;
use polpo_api::scope::Environment;
use polpo_api::store::{self, Db};
use serde_json::Value;
use tower::ServiceExt;

use crate::fakes::FakeProvider;

/// Provider keys the tests pretend to have, so that `openai:` and `anthropic:` models are usable.
pub fn fake_provider_env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-upstream-openai-secret".into()),
        "ANTHROPIC_API_KEY" => Some("sk-ant-upstream-secret".into()),
        _ => None,
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(polpo_api::ids::new_id("polpo-test-"));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tests send requests as fast as they can: the per-key limits (spec §1.7) are lifted unless a
/// test sets its own.
fn unlimited_unless_set(config: &mut Config) {
    if config.rate_limit == polpo_api::config::RateLimitConfig::default() {
        config.rate_limit = polpo_api::config::RateLimitConfig {
            requests_per_second: 1_000_000.0,
            burst: 1_000_000,
            max_concurrent_streams: 100_000,
        };
    }
}

/// A fresh, empty database for one test: its URL, and the directory holding it for SQLite.
pub struct TestDatabase {
    pub url: String,
    pub dir: TempDir,
}

impl TestDatabase {
    pub async fn new() -> Self {
        let dir = TempDir::new();
        let url = match std::env::var("TEST_DATABASE_URL") {
            Ok(admin) if !admin.is_empty() => {
                let name = polpo_api::ids::new_id("polpo_t_");
                let db = Db::connect(Some(&admin), 1)
                    .await
                    .expect("TEST_DATABASE_URL must be reachable");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&db.pool)
                    .await
                    .unwrap();
                db.pool.close().await;
                let (base, _) = admin.rsplit_once('/').unwrap();
                format!("{base}/{name}")
            }
            _ => format!("sqlite://{}", dir.0.join("polpo.db").display()),
        };
        Self { url, dir }
    }

    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }
}

pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub db: Db,
    /// Kept so the database files live as long as the app.
    pub _database: TestDatabase,
    /// A `test` key of project `acme`.
    pub test_key: String,
    /// A `live` key of project `acme`.
    pub live_key: String,
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Config::default()).await
    }

    pub async fn spawn_with(mut config: Config) -> Self {
        unlimited_unless_set(&mut config);
        Self::spawn_limited(config).await
    }

    /// An app whose per-key limits are exactly the configuration's, defaults included.
    pub async fn spawn_limited(config: Config) -> Self {
        Self::build(config, true).await
    }

    /// An app whose background work (purge, workers, checkpoints) does not run: a test calls
    /// what it examines itself.
    pub async fn spawn_idle() -> Self {
        let mut config = Config::default();
        unlimited_unless_set(&mut config);
        Self::build(config, false).await
    }

    async fn build(mut config: Config, background: bool) -> Self {
        let database = TestDatabase::new().await;
        config.database.url = Some(database.url.clone());
        let db = Db::connect(Some(&database.url), 5).await.unwrap();
        store::migrate::run(&db).await.unwrap();
        let providers = Providers::from_config(&config.providers, &fake_provider_env).unwrap();
        let state = AppState::new(db.clone(), config, providers).unwrap();
        let router = app::router(state.clone());
        if background {
            state.runtime.start_background();
        }
        admin::create_project(&db, "acme").await.unwrap();
        let test_key = admin::create_key(&db, "acme", Environment::Test, None, None)
            .await
            .unwrap()
            .plaintext;
        let live_key = admin::create_key(&db, "acme", Environment::Live, None, None)
            .await
            .unwrap()
            .plaintext;
        Self {
            router,
            state,
            db,
            _database: database,
            test_key,
            live_key,
        }
    }

    /// An app whose `openai` and `anthropic` providers are the given fakes.
    pub async fn with_fakes(openai: &FakeProvider, anthropic: &FakeProvider, mut config: Config) -> Self {
        for (name, fake) in [("openai", openai), ("anthropic", anthropic)] {
            let table = ProviderConfig {
                base_url: Some(fake.base_url.clone()),
                ..ProviderConfig::default()
            };
            config.providers.insert(name.to_string(), table);
        }
        Self::spawn_with(config).await
    }

    /// A second instance on the same database (a restart, or a peer behind the load balancer),
    /// with its background work running.
    pub async fn another_instance(&self, config: Config) -> AppState {
        let mut config = config;
        // A peer has this instance's limits unless the test gives it others.
        if config.rate_limit == polpo_api::config::RateLimitConfig::default() {
            config.rate_limit = self.state.runtime.config.rate_limit;
        }
        config.database.url = Some(self._database.url.clone());
        let db = Db::connect(Some(&self._database.url), 5).await.unwrap();
        let providers = Providers::from_config(&config.providers, &fake_provider_env).unwrap();
        let state = AppState::new(db, config, providers).unwrap();
        state.runtime.start_background();
        state
    }

    /// Serves the router on a real listener (for streams and disconnects); returns its base URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(app::serve(listener, self.state.clone()));
        format!("http://{addr}")
    }

    /// The scope of `test_key`.
    pub fn state_scope(&self) -> polpo_api::scope::Scope {
        polpo_api::scope::Scope {
            project: "acme".into(),
            environment: Environment::Test,
        }
    }

    /// A key of another project (created on first use).
    pub async fn key_of(&self, project: &str, environment: Environment) -> String {
        let _ = admin::create_project(&self.db, project).await;
        admin::create_key(&self.db, project, environment, None, None)
            .await
            .unwrap()
            .plaintext
    }

    /// Sends a request through the real router. `body` is sent as JSON when given.
    pub async fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> TestResponse {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let request = match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        }
        .unwrap();
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        // An event stream never ends by itself: callers that want one use a real listener.
        if headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        {
            return TestResponse {
                status,
                headers,
                text: String::new(),
            };
        }
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        TestResponse {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, path: &str, key: &str) -> TestResponse {
        self.call("GET", path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> TestResponse {
        self.call("POST", path, Some(key), Some(body)).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> TestResponse {
        self.call("PATCH", path, Some(key), Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> TestResponse {
        self.call("DELETE", path, Some(key), None).await
    }

    /// Creates an agent and returns its JSON.
    pub async fn create_agent(&self, key: &str, name: &str) -> Value {
        let response = self
            .post(
                "/v1/agents",
                key,
                serde_json::json!({"name": name, "model": "mock/echo"}),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        response.json()
    }

    /// The value of an unlabelled metric line, e.g. `polpo_auth_key_lookups_total`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.call("GET", "/metrics", None, None).await.text;
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} missing"))
            .parse()
            .unwrap()
    }
}

/// Polls `check` until it returns true or `deadline` passes; returns whether it succeeded.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `polpo-api` binary running `serve` on a free port, its stdout lines and its log file.
pub struct ServerProcess {
    pub child: Child,
    pub base_url: String,
    pub log_path: PathBuf,
    /// Lines of stdout as its reader thread reads them; closed when the process's stdout is.
    stdout: std::sync::mpsc::Receiver<String>,
    printed: Vec<String>,
}

impl ServerProcess {
    /// Starts `serve` in `cwd` with the given extra environment (and `DATABASE_URL` only when
    /// given there). Waits until it listens.
    pub fn start(cwd: &Path, env: &[(&str, &str)]) -> Self {
        // As in-process apps, the per-key limits are lifted unless the test's configuration
        // sets them.
        if let Some((_, path)) = env.iter().find(|(k, _)| *k == "POLPO_CONFIG") {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if !text.contains("[rate_limit]") {
                let lifted =
                    "\n[rate_limit]\nrequests_per_second = 1000000\nburst = 1000000\nmax_concurrent_streams = 100000\n";
                std::fs::write(path, format!("{text}{lifted}")).unwrap();
            }
        }
        let log_path = cwd.join(format!("{}.log", polpo_api::ids::new_id("server-")));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_polpo-api"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .current_dir(cwd)
            .env_remove("DATABASE_URL")
            .env_remove("POLPO_CONFIG")
            .env("POLPO_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let start = Instant::now();
        let addr = loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(addr) = log.lines().find_map(|l| l.split("listening addr=").nth(1)) {
                break addr.trim().to_string();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited with {status} before listening:\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server did not listen:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            base_url: format!("http://{addr}"),
            log_path,
            stdout: rx,
            printed: Vec::new(),
        }
    }

    /// The sandbox key a first start prints on stdout, waited for at most 10 s.
    pub fn key(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.printed.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => self.printed.push(line),
                Err(_) => panic!("no sandbox key on stdout within 10 s:\n{}", self.log()),
            }
        }
        self.printed[0].clone()
    }

    /// The first line printed so far, without waiting.
    pub fn printed_key(&mut self) -> Option<String> {
        self.printed.extend(self.stdout.try_iter());
        self.printed.first().cloned()
    }

    /// Everything the process printed on stdout, read to its end: only once it has exited.
    pub fn printed_at_exit(&mut self) -> Vec<String> {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "the process is still running"
        );
        loop {
            match self.stdout.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => self.printed.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return self.printed.clone(),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("stdout stayed open after exit"),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a CLI command of the binary; returns (exit code, stdout, stderr).
pub fn cli(cwd: &Path, database_url: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_polpo-api"));
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env_remove("POLPO_CONFIG");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An HTTP client for tests against a `ServerProcess`.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Every (method, path) pair of the OpenAPI document.
pub fn documented_operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// Fills `{param}` segments with a plausible value.
pub fn concrete_path(template: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') { "sample" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The `data:` payloads of a task or mission stream (chat-chunk frames without `id:` or
/// `event:` lines), read as they come.
pub struct SseFrames {
    response: reqwest::Response,
    buffer: String,
}

impl SseFrames {
    /// Posts `{"stream": true}` to `path` and checks that a stream answers.
    pub async fn post(base: &str, key: &str, path: &str) -> Self {
        let response = client()
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&serde_json::json!({"stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next payload (`None` when the stream ended), within 10 s.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                for line in block.lines() {
                    assert!(!line.starts_with("id:") && !line.starts_with("event:"), "{line}");
                    if let Some(data) = line.strip_prefix("data: ") {
                        return Some(data.to_string());
                    }
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("the stream went silent");
            match chunk {
                Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The first frame, parsed.
    pub async fn first(&mut self) -> Value {
        serde_json::from_str(&self.next().await.expect("a first frame")).unwrap()
    }

    /// Every payload until the stream ends.
    pub async fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(data) = self.next().await {
            out.push(data);
        }
        out
    }
}

/// Whether `TEST_DATABASE_URL` names a Postgres server (the suite's other backend).
pub fn postgres_under_test() -> bool {
    std::env::var("TEST_DATABASE_URL").is_ok_and(|url| url.starts_with("postgres"))
}

/// `POST {base}{path}` with a JSON body and a key, as a client of a running server would.
pub async fn post_json(base: &str, path: &str, key: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of the complete frames of an SSE text (a frame cut by the closing
/// connection is left out).
pub fn complete_frames(text: &str) -> Vec<String> {
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    // The piece after the last separator is either empty or an unfinished frame.
    blocks.pop();
    blocks
        .iter()
        .flat_map(|block| block.lines())
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// `count` chat streams of agent `talker` opened together on a running server, each watched in
/// the background; returns once every one has received some text (within 30 s). A stream stays
/// open until the server ends it, so the client's own timeout is two minutes.
pub async fn talking_streams(base: &str, key: &str, count: usize) -> Vec<WatchedStream> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // Opened together: each answer starts only once the provider's first word arrives.
    let opened = futures_util::future::join_all((0..count).map(|i| {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&serde_json::json!({
                "model": "talker", "stream": true,
                "messages": [{"role": "user", "content": format!("client {i}, keep talking")}],
            }))
            .send()
    }))
    .await;
    let streams: Vec<WatchedStream> = opened.into_iter().map(|r| WatchedStream::watch(r.unwrap())).collect();
    let talking = eventually(Duration::from_secs(30), || async {
        streams.iter().all(|s| s.content().contains("tick"))
    })
    .await;
    assert!(talking, "not every stream received content");
    streams
}

/// What one chat streaming client saw: the session it was given and every byte of its stream,
/// read in the background until the stream ends or the connection closes.
pub struct WatchedStream {
    pub session: String,
    pub text: std::sync::Arc<std::sync::Mutex<String>>,
    pub done: tokio::task::JoinHandle<()>,
}

impl WatchedStream {
    /// Starts reading an answered `200` chat stream.
    pub fn watch(mut response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        let session = response.headers()["x-session-id"].to_str().unwrap().to_string();
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        let done = tokio::spawn(async move {
            // A connection closed by the stopping server ends the loop like a finished body.
            while let Ok(Some(bytes)) = response.chunk().await {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&bytes));
            }
        });
        Self { session, text, done }
    }

    /// Everything received so far.
    pub fn received(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// The assistant text of the complete chunks received so far.
    pub fn content(&self) -> String {
        complete_frames(&self.received())
            .iter()
            .filter_map(|f| serde_json::from_str::<Value>(f).ok())
            .filter_map(|f| f["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect()
    }
}
