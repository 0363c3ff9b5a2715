//! Spec §8: webhook endpoints, URL rules, signed at-least-once delivery in order, retries and
//! restarts.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use polpo_api::config::Config;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{TestApp, eventually};

/// A webhook receiver on loopback that answers with scripted statuses (then 200, with a short
/// body) and records every request and the connection it came on.
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<(HeaderMap, String, u16)>>>,
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
}

impl Receiver {
    pub async fn start(script: Vec<u16>) -> Self {
        Self::answering(script, false).await
    }

    /// A receiver whose answers (`200`) send the first bytes of their body and never end it.
    pub async fn keeping_its_answers_open() -> Self {
        Self::answering(vec![], true).await
    }

    async fn answering(script: Vec<u16>, open: bool) -> Self {
        let received: Arc<Mutex<Vec<(HeaderMap, String, u16)>>> = Arc::default();
        let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
        let script = Arc::new(Mutex::new(script));
        let (log, plan, seen) = (received.clone(), script.clone(), peers.clone());
        let router = Router::new().route(
            "/hook",
            axum::routing::post(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, body: String| {
                    let (log, plan, seen) = (log.clone(), plan.clone(), seen.clone());
                    async move {
                        let status = {
                            let mut plan = plan.lock().unwrap();
                            if plan.is_empty() { 200 } else { plan.remove(0) }
                        };
                        log.lock().unwrap().push((headers, body, status));
                        seen.lock().unwrap().insert(peer);
                        let body = if open {
                            let answer = futures_util::stream::once(async { Ok::<_, Infallible>("received") });
                            Body::from_stream(answer.chain(futures_util::stream::pending()))
                        } else {
                            Body::from("received")
                        };
                        (StatusCode::from_u16(status).unwrap(), body)
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
        Self {
            url: format!("http://{addr}/hook"),
            received,
            peers,
        }
    }

    pub fn requests(&self) -> Vec<(HeaderMap, String, u16)> {
        self.received.lock().unwrap().clone()
    }

    /// How many connections the requests came on.
    pub fn connections(&self) -> usize {
        self.peers.lock().unwrap().len()
    }
}

pub fn loopback_config() -> Config {
    let mut config = Config::default();
    config.webhooks.allow_http_hosts = vec!["127.0.0.1".into()];
    config.webhooks.allow_private_networks = true;
    config.webhooks.retry_base = Duration::from_millis(200);
    config
}

fn verify(secret: &str, headers: &HeaderMap, body: &str) {
    let signature = headers["polpo-signature"].to_str().unwrap();
    let (t, v1) = signature.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, expected, "signature does not verify");
    let age = polpo_api::clock::now_ms() / 1000 - t.parse::<i64>().unwrap();
    assert!((0..300).contains(&age), "timestamp is not fresh");
}

/// Creates a webhook of `receiver` for `events`; returns it as created (its secret included).
async fn subscribe(app: &TestApp, receiver: &Receiver, events: Value) -> Value {
    let created = app
        .post(
            "/v1/webhooks",
            &app.test_key,
            json!({"url": receiver.url, "events": events}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    created.json()
}

/// The deliveries of `hook` as the API lists them.
async fn deliveries(app: &TestApp, hook: &Value) -> Vec<Value> {
    let path = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    let list = app.get(&path, &app.test_key).await.json();
    list.as_array().cloned().unwrap_or_default()
}

fn all_succeeded(deliveries: &[Value]) -> bool {
    deliveries.iter().all(|d| d["status"] == "succeeded")
}

async fn chat(app: &TestApp) {
    chat_as(app, &app.test_key).await;
}

async fn chat_as(app: &TestApp, key: &str) {
    let response = app
        .post(
            "/v1/chat/completions",
            key,
            json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn webhooks_are_created_read_listed_and_deleted() {
    let app = TestApp::spawn_with(loopback_config()).await;
    let created = app
        .post(
            "/v1/webhooks",
            &app.test_key,
            json!({"url": "http://127.0.0.1:9/hook", "events": ["task:*", "session:created"], "description": "ops"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let webhook = created.json();
    let secret = webhook["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() == 38);
    let id = webhook["id"].as_str().unwrap();
    assert!(id.starts_with("wh_"));
    let read = app.get(&format!("/v1/webhooks/{id}"), &app.test_key).await.json();
    assert!(read.get("secret").is_none(), "the secret is shown once");
    assert_eq!(read["events"], json!(["task:*", "session:created"]));
    assert_eq!(
        app.get("/v1/webhooks", &app.test_key)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(app.get("/v1/webhooks", &app.live_key).await.json(), json!([]));
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}"), &app.live_key).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/v1/webhooks/{id}"), &app.test_key).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}"), &app.test_key).await.status,
        StatusCode::NOT_FOUND
    );

    for body in [
        json!({"events": ["*"]}),
        json!({"url": "http://127.0.0.1:9/hook", "events": []}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["Bad"]}),
        json!({"url": "ftp://example.com/hook", "events": ["*"]}),
        json!({"url": "http://169.254.169.254/latest", "events": ["*"]}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["*"], "secret": "mine"}),
    ] {
        assert_eq!(
            app.post("/v1/webhooks", &app.test_key, body.clone()).await.status,
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
    for i in 0..20 {
        let response = app
            .post(
                "/v1/webhooks",
                &app.test_key,
                json!({"url": format!("http://127.0.0.1:9/h{i}"), "events": ["*"]}),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED);
    }
    let over = app
        .post(
            "/v1/webhooks",
            &app.test_key,
            json!({"url": "http://127.0.0.1:9/h", "events": ["*"]}),
        )
        .await;
    assert_eq!(over.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn loopback_destinations_need_the_configuration_to_allow_them() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/v1/webhooks",
            &app.test_key,
            json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.json()["details"]["fields"]["url"].is_string());
    let response = app
        .post(
            "/v1/webhooks",
            &app.test_key,
            json!({"url": "https://127.0.0.1:9/hook", "events": ["*"]}),
        )
        .await;
    assert_eq!(
        response.status,
        StatusCode::BAD_REQUEST,
        "https does not make loopback acceptable"
    );
}

#[tokio::test]
async fn deliveries_are_signed_retried_and_recorded() {
    let receiver = Receiver::start(vec![500, 503]).await;
    let app = TestApp::spawn_with(loopback_config()).await;
    // Events before the webhook exists are not delivered.
    chat(&app).await;
    let webhook = subscribe(&app, &receiver, json!(["completion:*"])).await;
    let (id, secret) = (
        webhook["id"].as_str().unwrap().to_string(),
        webhook["secret"].as_str().unwrap().to_string(),
    );
    chat(&app).await;

    let delivered = eventually(Duration::from_secs(15), || async {
        receiver.requests().iter().any(|r| r.2 == 200)
    })
    .await;
    assert!(
        delivered,
        "never delivered: {:?}",
        receiver.requests().iter().map(|r| r.2).collect::<Vec<_>>()
    );
    let requests = receiver.requests();
    assert_eq!(
        requests.iter().map(|r| r.2).collect::<Vec<_>>(),
        [500, 503, 200],
        "succeeds on the third attempt"
    );
    let (headers, body, _) = &requests[2];
    verify(&secret, headers, body);
    assert_eq!(headers["polpo-event"], "completion:finished");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["user-agent"].to_str().unwrap().starts_with("polpo-webhooks/"));
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        headers["polpo-delivery"].to_str().unwrap(),
        payload["id"].as_str().unwrap()
    );
    assert_eq!(
        payload["id"], "evt_8",
        "the 8th event of the scope (the first turn's 4 came before the webhook)"
    );
    assert_eq!(payload["event"], "completion:finished");
    assert_eq!(payload["data"]["model"], "mock/echo");
    assert!(body.starts_with(r#"{"id":"evt_8","event":"completion:finished","timestamp":"#));
    assert!(
        requests.iter().all(|r| r.0["polpo-delivery"] == "evt_8"),
        "the same delivery id on every attempt"
    );

    let recorded = eventually(Duration::from_secs(5), || async {
        let list = app
            .get(&format!("/v1/webhooks/{id}/deliveries"), &app.test_key)
            .await
            .json();
        list[0]["status"] == "succeeded"
    })
    .await;
    assert!(recorded);
    let list = app
        .get(&format!("/v1/webhooks/{id}/deliveries"), &app.test_key)
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["eventId"], "evt_8");
    assert_eq!(list[0]["attempts"], 3);
    assert_eq!(list[0]["lastStatusCode"], 200);
    assert!(list[0]["nextAttemptAt"].is_null());
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}/deliveries?status=failed"), &app.test_key)
            .await
            .json(),
        json!([])
    );
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}/deliveries?after=evt_8"), &app.test_key)
            .await
            .json(),
        json!([])
    );
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}/deliveries?after=8"), &app.test_key)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

/// The deliveries to one endpoint, one after another, all go over one connection instead of
/// opening one each (over https, with a TLS handshake each).
#[tokio::test]
async fn deliveries_to_one_endpoint_share_a_connection() {
    let app = TestApp::spawn_with(loopback_config()).await;
    let receiver = Receiver::start(vec![]).await;
    let hook = subscribe(&app, &receiver, json!(["*"])).await;
    for _ in 0..3 {
        chat(&app).await;
    }
    let delivered = eventually(Duration::from_secs(10), || async {
        let list = deliveries(&app, &hook).await;
        list.len() >= 3 && all_succeeded(&list)
    })
    .await;
    assert!(delivered, "the deliveries did not all succeed within 10 s");
    let requests = receiver.requests().len();
    assert!(requests >= 3, "{requests} requests");
    assert_eq!(receiver.connections(), 1, "{requests} deliveries");
}

/// A receiver that answers `200` and keeps the answer's body open does not hold its webhook's
/// next delivery for the whole delivery timeout (a minute here): each delivery is a success
/// once its head has come, and the next one follows.
#[tokio::test]
async fn an_answer_whose_body_never_ends_does_not_hold_the_next_delivery() {
    let mut config = loopback_config();
    config.webhooks.timeout = Duration::from_secs(60);
    let app = TestApp::spawn_with(config).await;
    let receiver = Receiver::keeping_its_answers_open().await;
    let hook = subscribe(&app, &receiver, json!(["session:created"])).await;
    chat(&app).await;
    chat(&app).await;
    let delivered = eventually(Duration::from_secs(20), || async {
        let list = deliveries(&app, &hook).await;
        list.len() == 2 && all_succeeded(&list)
    })
    .await;
    assert!(
        delivered,
        "both deliveries did not succeed within 20 s: {:?}",
        deliveries(&app, &hook).await
    );
    assert_eq!(receiver.requests().len(), 2);
}

#[tokio::test]
async fn a_failing_delivery_holds_back_later_ones() {
    let receiver = Receiver::start(vec![500, 500]).await;
    let app = TestApp::spawn_with(loopback_config()).await;
    subscribe(&app, &receiver, json!(["session:created"])).await;
    chat(&app).await;
    chat(&app).await;
    let both = eventually(Duration::from_secs(15), || async {
        receiver.requests().iter().filter(|r| r.2 == 200).count() == 2
    })
    .await;
    assert!(both);
    let ids: Vec<(String, u16)> = receiver
        .requests()
        .iter()
        .map(|r| (r.0["polpo-delivery"].to_str().unwrap().to_string(), r.2))
        .collect();
    assert_eq!(
        ids,
        [
            ("evt_1".into(), 500),
            ("evt_1".into(), 500),
            ("evt_1".into(), 200),
            ("evt_5".into(), 200)
        ]
    );
}

/// The give-up period runs from the event's time, not from the first attempt (spec §8.3): an
/// event held back behind a failing delivery for most of the period gets one attempt, where a
/// fresh one is retried.
#[tokio::test]
async fn the_give_up_clock_starts_at_the_event() {
    let receiver = Receiver::start(vec![500; 10]).await;
    let mut config = loopback_config();
    // Waits of 1.2–1.8 s; a delivery is given up when its next try would be 2 s past its event.
    config.webhooks.retry_base = Duration::from_millis(1500);
    config.webhooks.give_up_after = Duration::from_secs(2);
    let app = TestApp::spawn_with(config).await;
    let webhook = subscribe(&app, &receiver, json!(["session:created"])).await;
    let id = webhook["id"].as_str().unwrap().to_string();
    chat(&app).await;
    chat(&app).await;
    let deliveries = || async {
        app.get(&format!("/v1/webhooks/{id}/deliveries"), &app.test_key)
            .await
            .json()
            .as_array()
            .unwrap()
            .clone()
    };
    let settled = eventually(Duration::from_secs(15), || async {
        let rows = deliveries().await;
        rows.len() == 2 && rows.iter().all(|d| d["status"] == "failed")
    })
    .await;
    assert!(settled, "{:?}", deliveries().await);
    let rows = deliveries().await;
    // The first event was tried at once: 1.8 s at most to its retry, within the period; the
    // retry failed with 2 s past the event.
    assert_eq!(rows[0]["attempts"], 2, "{rows:?}");
    // The second waited behind it for 1.2 s or more, so no retry fits before 2 s past its
    // event: it is given up on its first failure, not retried for 2 s from that attempt.
    assert_eq!(rows[1]["attempts"], 1, "{rows:?}");
    let sent: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.0["polpo-delivery"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[2], rows[1]["eventId"].as_str().unwrap());
}

#[tokio::test]
async fn a_restart_between_attempts_loses_nothing() {
    let receiver = Receiver::start(vec![500]).await;
    let mut config = loopback_config();
    config.webhooks.retry_base = Duration::from_secs(1);
    let app = TestApp::spawn_with(config.clone()).await;
    let webhook = subscribe(&app, &receiver, json!(["session:created"])).await;
    let id = webhook["id"].as_str().unwrap().to_string();
    chat(&app).await;
    assert!(eventually(Duration::from_secs(10), || async { receiver.requests().len() == 1 }).await);
    // The instance stops before its retry; a new one on the same database carries on.
    app.state.runtime.shutdown.cancel();
    let restarted = app.another_instance(config).await;
    assert!(
        eventually(Duration::from_secs(15), || async { receiver.requests().len() == 2 }).await,
        "the retry never came"
    );
    assert_eq!(receiver.requests()[1].2, 200);
    assert_eq!(receiver.requests()[1].0["polpo-delivery"], "evt_1");
    let scope = polpo_api::scope::Scope {
        project: "acme".into(),
        environment: polpo_api::scope::Environment::Test,
    };
    let rows = polpo_api::store::webhooks::list_deliveries(&restarted.runtime.db.pool, &scope, &id, "", 0, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let rows = polpo_api::store::webhooks::list_deliveries(&restarted.runtime.db.pool, &scope, &id, "", 0, 10)
                .await
                .unwrap();
            rows[0].status == "succeeded" && rows[0].attempts == 2
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_cannot_pass_the_limit() {
    let app = TestApp::spawn_with(loopback_config()).await;
    let base = app.serve().await;
    let http = crate::helpers::client();
    let attempts = (0..30).map(|i| {
        let request = http
            .post(format!("{base}/v1/webhooks"))
            .bearer_auth(&app.test_key)
            .json(&json!({"url": format!("http://127.0.0.1:9/race{i}"), "events": ["*"]}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let count = |wanted: u16| answers.iter().filter(|(status, _)| *status == wanted).count();
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    let unexpected: Vec<&String> = answers
        .iter()
        .filter(|(status, _)| ![201, 409].contains(status))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        (count(201), count(409)),
        (20, 10),
        "30 concurrent creations against a limit of 20: {statuses:?} {unexpected:?}"
    );
    let listed = app.get("/v1/webhooks?limit=100", &app.test_key).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.json().as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn an_endpoint_that_never_answers_does_not_delay_another_projects_deliveries() {
    // Accepts connections and never answers: each delivery to it waits out the 10 s timeout.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/hook", hanging.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hanging.accept().await {
            held.lock().unwrap().push(socket);
        }
    });
    let receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn_with(loopback_config()).await;
    let other_key = app.key_of("globex", polpo_api::scope::Environment::Test).await;
    for (key, url) in [(&app.test_key, &hanging_url), (&other_key, &receiver.url)] {
        let response = app
            .post("/v1/webhooks", key, json!({"url": url, "events": ["session:created"]}))
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    }
    chat(&app).await;
    let hanging_now = eventually(Duration::from_secs(5), || async {
        !accepted.lock().unwrap().is_empty()
    })
    .await;
    assert!(hanging_now, "the hanging endpoint was never called");

    // While that delivery hangs, the other project's event is delivered well within the
    // hanging one's 10 s timeout.
    chat_as(&app, &other_key).await;
    let delivered = eventually(Duration::from_secs(3), || async { !receiver.requests().is_empty() }).await;
    assert!(
        delivered,
        "the other project's delivery waited behind the hanging endpoint"
    );
}

#[tokio::test]
async fn a_retry_comes_due_while_another_environment_commits_without_pause() {
    let receiver = Receiver::start(vec![500]).await;
    let app = TestApp::spawn_with(loopback_config()).await;
    subscribe(&app, &receiver, json!(["completion:*"])).await;
    chat(&app).await;
    let failed_once = eventually(Duration::from_secs(5), || async { !receiver.requests().is_empty() }).await;
    assert!(failed_once, "the first attempt was never made");

    // The live environment, which has no webhook, commits turn after turn while the test
    // environment's retry waits out its backoff: the retry is still sent.
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    let others_commit = async {
        while tokio::time::Instant::now() < until {
            chat_as(&app, &app.live_key).await;
        }
    };
    let retried = eventually(Duration::from_secs(15), || async {
        receiver.requests().iter().any(|r| r.2 == 200)
    });
    let retried = tokio::select! {
        retried = retried => retried,
        () = others_commit => receiver.requests().iter().any(|r| r.2 == 200),
    };
    assert!(retried, "the retry was never sent");
    assert_eq!(receiver.requests().iter().map(|r| r.2).collect::<Vec<_>>(), [500, 200]);
}
