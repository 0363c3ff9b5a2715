//! Spec §1.7: every authenticated request takes a token from its key's bucket; past the burst
//! the answer is `429` with when to retry; streams are capped per key; live, test and other
//! projects are counted apart; a project may have its own limits; on Postgres the limit holds
//! for the key across instances.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use polpo_api::config::{Config, ProjectConfig, RateLimitConfig};
use polpo_api::scope::Environment;
use tower::ServiceExt;

use crate::helpers::{TestApp, TestResponse, client};

fn limited(requests_per_second: f64, burst: u32, max_concurrent_streams: u32) -> Config {
    Config {
        rate_limit: RateLimitConfig {
            requests_per_second,
            burst,
            max_concurrent_streams,
        },
        ..Config::default()
    }
}

async fn burst_of(app: &TestApp, key: &str, n: usize) -> Vec<TestResponse> {
    futures_util::future::join_all((0..n).map(|_| app.get("/v1/agents", key))).await
}

#[tokio::test]
async fn thirty_requests_at_once_on_a_ten_per_second_key_get_429s_with_when_to_retry() {
    let app = TestApp::spawn_limited(limited(10.0, 20, 5)).await;
    let answers = burst_of(&app, &app.test_key, 30).await;
    let refused: Vec<&TestResponse> = answers
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    let admitted = answers.iter().filter(|r| r.status == StatusCode::OK).count();
    assert!(refused.len() >= 10, "only {} of 30 refused", refused.len());
    assert_eq!(admitted + refused.len(), 30);
    for answer in &refused {
        assert_eq!(answer.json()["code"], "rate_limited");
        let seconds: u64 = answer.header("retry-after").unwrap().parse().unwrap();
        let ms: u64 = answer.header("retry-after-ms").unwrap().parse().unwrap();
        assert!((1..=1000).contains(&ms), "retry-after-ms {ms}");
        assert_eq!(seconds, ms.div_ceil(1000));
        assert_eq!(answer.header("x-ratelimit-limit-requests"), Some("20"));
        assert_eq!(answer.header("x-ratelimit-remaining-requests"), Some("0"));
    }

    // The other environment of the project and another project have buckets of their own.
    let answers = burst_of(&app, &app.live_key, 15).await;
    assert!(
        answers.iter().all(|r| r.status == StatusCode::OK),
        "the live key was limited"
    );
    let other = app.key_of("globex", Environment::Test).await;
    let answers = burst_of(&app, &other, 15).await;
    assert!(
        answers.iter().all(|r| r.status == StatusCode::OK),
        "another project was limited"
    );

    // Waiting as long as told is enough.
    let wait: u64 = refused
        .iter()
        .map(|r| r.header("retry-after-ms").unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let again = app.get("/v1/agents", &app.test_key).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
}

#[tokio::test]
async fn every_authenticated_answer_says_what_is_left_and_refusals_take_nothing() {
    let app = TestApp::spawn_limited(limited(1.0, 5, 5)).await;
    let first = app.get("/v1/agents", &app.test_key).await;
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("5"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("4"));
    let reset = first.header("x-ratelimit-reset-requests").unwrap();
    assert!(reset.ends_with('s') && reset != "0s", "reset {reset}");
    // A 404 is an authenticated answer: it takes a token and carries the headers.
    let missing = app.get("/v1/agents/nobody", &app.test_key).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("x-ratelimit-remaining-requests"), Some("3"));
    // Public routes and refused keys take nothing and say nothing.
    for _ in 0..10 {
        let health = app.call("GET", "/health", None, None).await;
        assert!(health.header("x-ratelimit-remaining-requests").is_none());
        let refused = app.get("/v1/agents", "sk_test_not-a-real-key").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(refused.header("x-ratelimit-remaining-requests").is_none());
    }
    let next = app.get("/v1/agents", &app.test_key).await;
    assert_eq!(next.header("x-ratelimit-remaining-requests"), Some("2"));
}

#[tokio::test]
async fn a_key_holds_at_most_its_stream_limit_open() {
    let app = TestApp::spawn_limited(limited(100.0, 100, 2)).await;
    let base = app.serve().await;
    let open = || async {
        client()
            .get(format!("{base}/v1/events"))
            .bearer_auth(&app.test_key)
            .send()
            .await
            .unwrap()
    };
    let first = open().await;
    let second = open().await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = open().await;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "1");
    assert_eq!(third.headers()["retry-after-ms"], "1000");
    // Another key of the project is not affected.
    let live = client()
        .get(format!("{base}/v1/events"))
        .bearer_auth(&app.live_key)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    // Closing one frees its slot.
    drop(first);
    let freed = crate::helpers::eventually(Duration::from_secs(5), || async { open().await.status() == 200 }).await;
    assert!(freed, "a closed stream kept its slot");
}

#[tokio::test]
async fn a_project_can_have_limits_of_its_own() {
    let mut config = limited(10.0, 20, 5);
    config.projects.insert(
        "acme".into(),
        ProjectConfig {
            rate_limit: Some(RateLimitConfig {
                requests_per_second: 100.0,
                burst: 100,
                max_concurrent_streams: 5,
            }),
            ..ProjectConfig::default()
        },
    );
    let app = TestApp::spawn_limited(config).await;
    let answers = burst_of(&app, &app.test_key, 60).await;
    assert!(
        answers.iter().all(|r| r.status == StatusCode::OK),
        "acme's own limit was not applied"
    );
    assert_eq!(answers[0].header("x-ratelimit-limit-requests"), Some("100"));
    let other = app.key_of("globex", Environment::Test).await;
    let answers = burst_of(&app, &other, 30).await;
    assert!(
        answers.iter().any(|r| r.status == StatusCode::TOO_MANY_REQUESTS),
        "globex got acme's limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_admit_no_more_than_the_key_allows_plus_one_burst() {
    let config = limited(10.0, 20, 5);
    let app = TestApp::spawn_limited(config.clone()).await;
    if !app._database.is_postgres() {
        // One SQLite file serves one instance (spec §10.3): its bucket is in memory.
        return;
    }
    let peer = polpo_api::app::router(app.another_instance(config).await);
    let routers = [app.router.clone(), peer];
    let key = app.test_key.clone();
    let window = Duration::from_secs(3);
    let started = Instant::now();
    // Both instances hammer the key for three seconds, eight requests in flight on each.
    let workers = (0..16).map(|i| {
        let router = routers[i % 2].clone();
        let key = key.clone();
        async move {
            let mut admitted = 0u32;
            while started.elapsed() < window {
                let request = axum::http::Request::get("/v1/agents?limit=1")
                    .header("authorization", format!("Bearer {key}"))
                    .body(axum::body::Body::empty())
                    .unwrap();
                if router.clone().oneshot(request).await.unwrap().status() == StatusCode::OK {
                    admitted += 1;
                }
            }
            admitted
        }
    });
    let admitted: u32 = futures_util::future::join_all(workers).await.into_iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    // The bucket starts full (20) and refills 10 a second; one more burst is the allowed race.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ceiling = (20.0 + 10.0 * elapsed + 20.0).ceil() as u32;
    assert!(
        admitted <= ceiling,
        "{admitted} admitted in {elapsed:.1} s, over {ceiling}"
    );
    assert!(
        admitted >= 30,
        "only {admitted} admitted in {elapsed:.1} s: the instances starved the key"
    );
}

/// Requests arriving together on a fresh key, within its burst, are all admitted: on Postgres
/// they wait for one lease from the shared bucket instead of each draining it with its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_together_within_the_burst_are_all_admitted_on_every_instance() {
    // A burst of 100 and hardly any refill: exactly the burst may pass, and all of it must.
    let config = limited(1.0, 100, 5);
    let app = TestApp::spawn_limited(config.clone()).await;
    let mut routers = vec![app.router.clone()];
    if app._database.is_postgres() {
        routers.push(polpo_api::app::router(app.another_instance(config).await));
    }
    let requests = (0..100).map(|i| {
        let router = routers[i % routers.len()].clone();
        let request = axum::http::Request::get("/v1/agents?limit=1")
            .header("authorization", format!("Bearer {}", app.test_key))
            .body(axum::body::Body::empty())
            .unwrap();
        async move { router.oneshot(request).await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let refused = statuses.iter().filter(|s| **s != StatusCode::OK).count();
    assert_eq!(refused, 0, "{refused} of 100 refused: {statuses:?}");
}

/// On Postgres a key's stream limit counts the streams its other instances hold open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_on_one_instance_counts_against_the_limit_on_another() {
    let config = limited(100.0, 100, 1);
    let app = TestApp::spawn_limited(config.clone()).await;
    if !app._database.is_postgres() {
        // One SQLite file serves one instance (spec §10.3).
        return;
    }
    let peer = polpo_api::app::router(app.another_instance(config).await);
    let open = |router: axum::Router| {
        let request = axum::http::Request::get("/v1/events")
            .header("authorization", format!("Bearer {}", app.test_key))
            .body(axum::body::Body::empty())
            .unwrap();
        async move { router.oneshot(request).await.unwrap() }
    };
    let held = open(app.router.clone()).await;
    assert_eq!(held.status(), StatusCode::OK);
    let refused = open(peer.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(held);
    let freed = crate::helpers::eventually(Duration::from_secs(5), || async {
        open(peer.clone()).await.status() == StatusCode::OK
    })
    .await;
    assert!(freed, "a closed stream kept its slot on the other instance");
}
