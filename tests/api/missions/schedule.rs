//! Spec §6.8 and the statuses of §6.3: cron ticks fire exactly once across instances and
//! restarts, a tick that finds the run live is skipped, abort and `schedule: null` stop a
//! schedule, a one-shot instant fires once, and missed ticks are caught up only within
//! `schedule.catch_up_window`. The cron tests wait for real minute boundaries, so the ones
//! that can share a wait run side by side in one test.

use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::clock::{format_ms, now_ms, parse_rfc3339};
use serde_json::{Value, json};

use super::{act, agent, events, execute, get_mission, get_run, mission, task_of, until_run};
use crate::helpers::{ServerProcess, TestApp, TestDatabase, eventually};

const MINUTE: i64 = 60_000;
const EVERY_MINUTE: &str = "* * * * *";
/// How long after a boundary a tick has surely been handled: the driver looks every second.
const SETTLE: i64 = 5_000;

/// The first whole minute strictly after `ms`.
fn next_minute(ms: i64) -> i64 {
    (ms / MINUTE + 1) * MINUTE
}

/// The whole minutes in `(from, to]`: the ticks of `* * * * *` due in that span.
fn minutes_between(from: i64, to: i64) -> Vec<i64> {
    (from / MINUTE + 1..=to / MINUTE).map(|m| m * MINUTE).collect()
}

/// Waits until the wall clock reads `ms`: a moment to reach, not work to wait for. The timer
/// runs on the monotonic clock, so the wall clock is read again after each sleep.
async fn until_clock(ms: i64) {
    loop {
        let left = ms - now_ms();
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(left.unsigned_abs())).await;
    }
}

/// Waits, if needed, until the next minute boundary is at least `margin` ms away, so that what
/// a test sets up before its first tick cannot straddle it.
async fn clear_of_boundary(margin: i64) {
    let now = now_ms();
    if next_minute(now) - now < margin {
        until_clock(next_minute(now) + 500).await;
    }
}

/// Polls `check` until `by_ms` on the wall clock plus `grace`; whether it came true.
async fn eventually_by<F, Fut>(by_ms: i64, grace: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until_by = Duration::from_millis((by_ms - now_ms()).max(0).unsigned_abs());
    eventually(until_by + grace, check).await
}

/// Whether `check` stays true at every look for `span`.
async fn holds_for<F, Fut>(span: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < span {
        if !check().await {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check().await
}

fn ms_of(value: &Value) -> i64 {
    parse_rfc3339(value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}")))
        .unwrap_or_else(|| panic!("not RFC 3339: {value}"))
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))
}

/// Two echo tasks in order: a run that ends well within its minute.
fn quick_tasks() -> Value {
    json!([
        {"title": "Collect", "assignTo": "echo"},
        {"title": "Summarise", "assignTo": "echo", "dependsOn": ["Collect"]},
    ])
}

/// A mission whose runs stop at the `sign-off` checkpoint until someone resumes them.
fn held_mission(name: &str) -> Value {
    json!({
        "name": name,
        "schedule": EVERY_MINUTE,
        "tasks": [
            {"title": "Draft", "assignTo": "echo"},
            {"title": "Publish", "assignTo": "echo", "dependsOn": ["Draft"]},
        ],
        "checkpoints": [{"name": "sign-off", "afterTasks": ["Draft"], "blocksTasks": ["Publish"]}],
    })
}

async fn runs_of(app: &TestApp, id: &str) -> Vec<Value> {
    let response = app
        .get(&format!("/v1/missions/{id}/runs?limit=100"), &app.test_key)
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    response.json().as_array().unwrap().clone()
}

/// The `schedule:triggered` events of one mission, oldest first.
async fn triggered_of(app: &TestApp, id: &str) -> Vec<Value> {
    events(app, "schedule:triggered")
        .await
        .into_iter()
        .filter(|e| e["data"]["missionId"] == id)
        .collect()
}

/// Waits for the mission's `count`-th run, due by `due_ms`; returns the mission.
async fn until_executed(app: &TestApp, id: &str, count: i64, due_ms: i64) -> Value {
    let fired = eventually_by(due_ms, Duration::from_secs(20), || async {
        get_mission(app, id).await["executionCount"].as_i64() >= Some(count)
    })
    .await;
    let mission = get_mission(app, id).await;
    assert!(fired, "no run {count} by {}: {mission:#}", format_ms(due_ms));
    mission
}

/// A client of `ServerProcess`es holding one key.
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
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {body:#}");
        body
    }

    async fn get(&self, base: &str, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body:#}");
        body
    }

    async fn runs(&self, base: &str, id: &str) -> Vec<Value> {
        let runs = self.get(base, &format!("/v1/missions/{id}/runs?limit=100")).await;
        runs.as_array().unwrap().clone()
    }

    /// Every event of the history matching `filter`, in order.
    async fn history(&self, base: &str, filter: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let path = format!("/v1/events/history?filter={filter}&limit=1000&after={after}");
            let page = self.get(base, &path).await.as_array().unwrap().clone();
            let Some(last) = page.last() else { return out };
            after = last["id"].as_i64().unwrap();
            out.extend(page);
        }
    }
}

/// Starts `serve` on the database with the given TOML settings.
async fn start_server(database: &TestDatabase, toml: &str) -> ServerProcess {
    let dir = database.dir.0.clone();
    let url = database.url.clone();
    let config_path = dir.join("polpo.toml");
    std::fs::write(&config_path, toml).unwrap();
    tokio::task::spawn_blocking(move || {
        ServerProcess::start(
            &dir,
            &[
                ("DATABASE_URL", url.as_str()),
                ("POLPO_CONFIG", config_path.to_str().unwrap()),
            ],
        )
    })
    .await
    .unwrap()
}

/// SIGKILL: no shutdown, no hand-back; whatever the process held is simply gone.
fn kill_nine(server: &mut ServerProcess) {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// Short leases, so that a task whose worker was killed is taken up again within seconds.
const SERVER_TOML: &str = "[workers]\nlease_duration = \"2s\"\nheartbeat_interval = \"500ms\"\n";

/// Acceptance: `* * * * *` on two instances of the binary sharing Postgres, one of them killed
/// with SIGKILL ten seconds before a boundary and started again after it, for three minute
/// boundaries: exactly one run per due minute, numbered without a gap; the peer fires the tick
/// on time meanwhile. SQLite serves one instance per file (spec §10.3), so there the one
/// instance is killed and started again, and the tick it missed is caught up on start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_minute_fires_exactly_once_per_minute_across_instances_and_a_kill_nine() {
    let database = TestDatabase::new().await;
    let mut first = start_server(&database, SERVER_TOML).await;
    let remote = Remote::new(&first.key());
    let second = if database.is_postgres() {
        Some(start_server(&database, SERVER_TOML).await)
    } else {
        eprintln!("SQLite: one serve instance per database file (spec §10.3); restarting the one instance");
        None
    };
    let base = first.base_url.clone();
    remote
        .post(&base, "/v1/agents", json!({"name": "echo", "model": "mock/echo"}))
        .await;
    let created = remote
        .post(
            &base,
            "/v1/missions",
            json!({"name": "minutely", "schedule": EVERY_MINUTE, "tasks": quick_tasks()}),
        )
        .await;
    assert_eq!(created["status"], "recurring");
    let id = str_of(&created["id"]).to_string();
    let since = ms_of(&created["createdAt"]);
    let first_tick = next_minute(since);
    let down_tick = first_tick + MINUTE;
    let last_tick = down_tick + MINUTE;

    // Run 1 at the first boundary, before anything is killed.
    let fired = eventually_by(first_tick, Duration::from_secs(20), || async {
        !remote.runs(&base, &id).await.is_empty()
    })
    .await;
    assert!(fired, "no run at {}\n{}", format_ms(first_tick), first.log());

    // Down from 10 s before the second boundary to 5 s after it. The margin before is wide
    // because a loaded machine may wake this test late; a kill that still came after the
    // boundary is reported as such, since the instance then fired the tick itself.
    until_clock(down_tick - 10_000).await;
    kill_nine(&mut first);
    let killed_at = now_ms();
    assert!(
        killed_at < down_tick,
        "the kill came {} ms after the boundary it was to precede",
        killed_at - down_tick
    );
    until_clock(down_tick + 5_000).await;
    let restarted_at = now_ms();
    let first = start_server(&database, SERVER_TOML).await;
    let observer = second.as_ref().map_or(first.base_url.clone(), |s| s.base_url.clone());
    let logs = || {
        format!(
            "{}\n{}",
            first.log(),
            second.as_ref().map(ServerProcess::log).unwrap_or_default()
        )
    };

    // Observe until just past the third boundary and until no run is live.
    until_clock(last_tick + SETTLE).await;
    let settled = eventually(Duration::from_secs(30), || async {
        remote
            .runs(&observer, &id)
            .await
            .iter()
            .all(|r| r["status"] != "active" && r["status"] != "paused")
    })
    .await;
    let before = now_ms();
    let runs = remote.runs(&observer, &id).await;
    let triggered = remote.history(&observer, "schedule:triggered").await;
    let mission = remote.get(&observer, &format!("/v1/missions/{id}")).await;
    let after = now_ms();
    assert!(settled, "a run never ended: {runs:#?}\n{}", logs());

    // The minutes due between creation and the end of observation (the same at both ends).
    let due = minutes_between(since, before);
    assert_eq!(due, minutes_between(since, after), "observation straddled a boundary");
    assert!(due.len() >= 3, "{due:?}: fewer than three boundaries observed");
    assert!(due.contains(&down_tick), "the restart was not inside the observation");

    let numbers: Vec<i64> = runs.iter().map(|r| r["number"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=i64::try_from(due.len()).unwrap()).collect();
    assert_eq!(
        numbers,
        expected,
        "one run per due minute, numbered without a gap: {runs:#?}\n{}",
        logs()
    );
    for run in &runs {
        assert_eq!(run["trigger"], "schedule", "{run:#}");
        assert_eq!(run["status"], "completed", "{run:#}");
    }
    assert_eq!(mission["executionCount"], due.len(), "{mission:#}");
    assert_eq!(mission["status"], "recurring", "{mission:#}");

    // One `schedule:triggered` per boundary, each naming its whole minute and its own run, in
    // run order.
    let fired_for: Vec<(i64, &str)> = triggered
        .iter()
        .map(|e| (ms_of(&e["data"]["scheduledFor"]), str_of(&e["data"]["runId"])))
        .collect();
    let instants: Vec<i64> = fired_for.iter().map(|(at, _)| *at).collect();
    assert_eq!(instants, due, "{triggered:#?}");
    for (run, (at, run_id)) in runs.iter().zip(&fired_for) {
        assert_eq!(
            run["id"],
            *run_id,
            "run {} was started by the tick of {}",
            run["number"],
            format_ms(*at)
        );
        assert!(ms_of(&run["startedAt"]) >= *at, "run started before its tick: {run:#}");
    }
    assert!(triggered.iter().all(|e| e["data"]["schedule"] == EVERY_MINUTE));

    // The tick due while one instance was down: fired on time by the peer, or, with no peer,
    // caught up by the instance as it started.
    let (_, down_run) = fired_for[due.iter().position(|m| *m == down_tick).unwrap()];
    let started = ms_of(&runs.iter().find(|r| r["id"] == down_run).unwrap()["startedAt"]);
    if second.is_some() {
        assert!(
            started < restarted_at,
            "the peer did not fire {}: {runs:#?}",
            format_ms(down_tick)
        );
    } else {
        assert!(started >= restarted_at, "{runs:#?}");
    }
}

/// A one-shot instant: `scheduled` until it passes, then one run (trigger `schedule`) whose
/// `schedule:triggered` comes right before `mission:executed`; the mission then shows the run's
/// outcome and never fires again.
#[tokio::test]
async fn a_one_shot_instant_fires_once_and_the_mission_shows_the_outcome() {
    let app = TestApp::spawn().await;
    agent(&app, "echo", "mock/echo").await;
    // A whole second three to four seconds ahead, written as a user would.
    let at = (now_ms() / 1000 + 4) * 1000;
    let instant = format_ms(at).replace(".000Z", "Z");
    let created = mission(
        &app,
        json!({"name": "launch", "schedule": instant, "tasks": quick_tasks()}),
    )
    .await;
    assert_eq!(created["status"], "scheduled");
    assert_eq!(created["executionCount"], 0);
    assert_eq!(created["currentRunId"], Value::Null);
    let id = str_of(&created["id"]);

    let fired = until_executed(&app, id, 1, at).await;
    let run_id = str_of(&fired["currentRunId"]);
    let run = until_run(&app, id, run_id, "completed", Duration::from_secs(20)).await;
    assert_eq!(run["trigger"], "schedule");
    assert_eq!(run["number"], 1);
    assert!(ms_of(&run["startedAt"]) >= at, "fired before its instant: {run:#}");

    let log = events(&app, "*").await;
    let triggered: Vec<usize> = (0..log.len())
        .filter(|&i| log[i]["event"] == "schedule:triggered")
        .collect();
    assert_eq!(triggered.len(), 1, "{log:#?}");
    let (fire, next) = (&log[triggered[0]], &log[triggered[0] + 1]);
    assert_eq!(fire["data"]["missionId"], id);
    assert_eq!(fire["data"]["runId"], run_id);
    assert_eq!(fire["data"]["schedule"], instant.as_str());
    assert_eq!(ms_of(&fire["data"]["scheduledFor"]), at);
    assert_eq!(
        next["event"], "mission:executed",
        "right after schedule:triggered: {log:#?}"
    );
    assert_eq!(next["data"]["runId"], run_id);
    assert_eq!(next["data"]["trigger"], "schedule");

    let shown = get_mission(&app, id).await;
    assert_eq!(shown["status"], "completed", "{shown:#}");
    assert_eq!(shown["schedule"], instant.as_str());
    // Never again: three seconds of driver passes change nothing.
    let quiet = holds_for(Duration::from_secs(3), || async {
        let m = get_mission(&app, id).await;
        m["executionCount"] == 1 && m["status"] == "completed"
    })
    .await;
    assert!(quiet, "{:#}", get_mission(&app, id).await);
    assert_eq!(runs_of(&app, id).await.len(), 1);
}

/// The binary stopped (SIGKILL) across a one-shot instant and started 2 s after it, well inside
/// the default 5-minute catch-up window: the tick fires once on start, and a second restart
/// does not fire it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_missed_within_the_catch_up_window_fires_once_on_start() {
    let database = TestDatabase::new().await;
    let mut server = start_server(&database, "").await;
    let remote = Remote::new(&server.key());
    let base = server.base_url.clone();
    remote
        .post(&base, "/v1/agents", json!({"name": "echo", "model": "mock/echo"}))
        .await;
    let at = (now_ms() / 1000 + 4) * 1000;
    let created = remote
        .post(
            &base,
            "/v1/missions",
            json!({"name": "missed", "schedule": format_ms(at), "tasks": quick_tasks()}),
        )
        .await;
    assert_eq!(created["status"], "scheduled");
    let id = str_of(&created["id"]).to_string();
    kill_nine(&mut server);
    assert!(now_ms() < at, "the server was not stopped before the instant");

    until_clock(at + 2_000).await;
    let mut server = start_server(&database, "").await;
    let base = server.base_url.clone();
    let completed = eventually(Duration::from_secs(20), || async {
        remote.get(&base, &format!("/v1/missions/{id}")).await["status"] == "completed"
    })
    .await;
    let runs = remote.runs(&base, &id).await;
    assert!(completed, "{runs:#?}\n{}", server.log());
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["trigger"], "schedule");
    assert!(
        ms_of(&runs[0]["startedAt"]) >= at + 2_000,
        "fired by the restarted instance: {:#}",
        runs[0]
    );
    let triggered = remote.history(&base, "schedule:triggered").await;
    assert_eq!(triggered.len(), 1, "{triggered:#?}");
    assert_eq!(ms_of(&triggered[0]["data"]["scheduledFor"]), at);

    kill_nine(&mut server);
    let server = start_server(&database, "").await;
    let base = server.base_url.clone();
    let once = holds_for(Duration::from_secs(3), || async {
        remote.get(&base, &format!("/v1/missions/{id}")).await["executionCount"] == 1
    })
    .await;
    assert!(once, "{:#?}", remote.runs(&base, &id).await);
    assert_eq!(remote.runs(&base, &id).await.len(), 1);
}

/// Scenarios that each wait for the same two minute boundaries, run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_skip_a_live_run_stop_after_abort_or_unschedule_and_drop_stale_misses() {
    let app = TestApp::spawn().await;
    agent(&app, "echo", "mock/echo").await;
    let database = TestDatabase::new().await;
    let server = start_server(&database, "[schedule]\ncatch_up_window = \"1s\"\n").await;
    // Everything is set up at least 10 s before the first boundary.
    clear_of_boundary(10_000).await;
    tokio::join!(
        a_tick_that_finds_the_run_live_is_skipped(&app),
        abort_stops_the_schedule(&app),
        unscheduling_returns_the_mission_to_draft(&app),
        ticks_older_than_the_catch_up_window_are_not_replayed(&database, server),
    );
}

/// A run paused at a checkpoint outlives its minute: the next tick starts no second run; once
/// the run ends the mission is `recurring` again and the skipped tick is not replayed.
async fn a_tick_that_finds_the_run_live_is_skipped(app: &TestApp) {
    let created = mission(app, held_mission("held-over")).await;
    assert_eq!(created["status"], "recurring");
    let id = str_of(&created["id"]);
    let first_tick = next_minute(ms_of(&created["createdAt"]));
    let skipped_tick = first_tick + MINUTE;

    let fired = until_executed(app, id, 1, first_tick).await;
    let run_id = str_of(&fired["currentRunId"]);
    let run = until_run(app, id, run_id, "paused", Duration::from_secs(20)).await;
    assert_eq!(run["trigger"], "schedule");

    until_clock(skipped_tick + SETTLE).await;
    let shown = get_mission(app, id).await;
    assert_eq!(shown["executionCount"], 1, "{shown:#}");
    assert_eq!(shown["status"], "paused", "{shown:#}");
    assert_eq!(shown["currentRunId"], run_id);
    assert_eq!(runs_of(app, id).await.len(), 1);
    let held = get_run(app, id, run_id).await;
    assert_eq!(held["status"], "paused", "{held:#}");
    assert_eq!(task_of(&held, "Publish")["status"], "pending", "{held:#}");
    // The tick was seen and skipped, not merely missed: it is claimed without a run.
    let seen = eventually(Duration::from_secs(10), || async {
        claimed_ticks(app, id).await.len() == 2
    })
    .await;
    let claims = claimed_ticks(app, id).await;
    assert!(seen, "{claims:?}");
    assert_eq!(claims, [(first_tick, Some(run_id.to_string())), (skipped_tick, None)]);

    let resumed = act(app, id, "checkpoints/sign-off/resume", json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    until_run(app, id, run_id, "completed", Duration::from_secs(20)).await;
    assert_eq!(get_mission(app, id).await["status"], "recurring");
    let not_replayed = holds_for(Duration::from_secs(3), || async {
        get_mission(app, id).await["executionCount"] == 1
    })
    .await;
    assert!(not_replayed, "{:#?}", runs_of(app, id).await);
    assert_eq!(triggered_of(app, id).await.len(), 1);
}

/// The schedule ticks a mission has claimed: (instant, run started), oldest first.
async fn claimed_ticks(app: &TestApp, id: &str) -> Vec<(i64, Option<String>)> {
    sqlx::query_as("SELECT scheduled_for, run_id FROM schedule_ticks WHERE mission_id = $1 ORDER BY scheduled_for")
        .bind(id)
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

/// Abort of a scheduled run: `cancelled`, and the next boundary starts nothing.
async fn abort_stops_the_schedule(app: &TestApp) {
    let created = mission(app, held_mission("aborted")).await;
    let id = str_of(&created["id"]);
    let first_tick = next_minute(ms_of(&created["createdAt"]));

    let fired = until_executed(app, id, 1, first_tick).await;
    let run_id = str_of(&fired["currentRunId"]);
    until_run(app, id, run_id, "paused", Duration::from_secs(20)).await;
    let aborted = act(app, id, "abort", json!({})).await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.text);
    assert_eq!(aborted.json()["status"], "cancelled");
    assert!(now_ms() < first_tick + MINUTE, "aborted too late to test the next tick");
    assert_eq!(get_mission(app, id).await["status"], "cancelled");

    until_clock(first_tick + MINUTE + SETTLE).await;
    let shown = get_mission(app, id).await;
    assert_eq!(shown["status"], "cancelled", "{shown:#}");
    assert_eq!(shown["executionCount"], 1, "{shown:#}");
    assert_eq!(runs_of(app, id).await.len(), 1);
    assert_eq!(get_run(app, id, run_id).await["status"], "cancelled");
    assert_eq!(triggered_of(app, id).await.len(), 1);
}

/// PATCH `schedule: null` on a recurring mission that has fired: `draft`, no further run.
async fn unscheduling_returns_the_mission_to_draft(app: &TestApp) {
    let created = mission(
        app,
        json!({"name": "unscheduled", "schedule": EVERY_MINUTE, "tasks": quick_tasks()}),
    )
    .await;
    let id = str_of(&created["id"]);
    let first_tick = next_minute(ms_of(&created["createdAt"]));

    let fired = until_executed(app, id, 1, first_tick).await;
    let run_id = str_of(&fired["currentRunId"]);
    until_run(app, id, run_id, "completed", Duration::from_secs(20)).await;
    assert_eq!(get_mission(app, id).await["status"], "recurring");

    let patched = app
        .patch(&format!("/v1/missions/{id}"), &app.test_key, json!({"schedule": null}))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.json()["status"], "draft");
    assert_eq!(patched.json()["schedule"], Value::Null);
    assert!(
        now_ms() < first_tick + MINUTE,
        "unscheduled too late to test the next tick"
    );

    until_clock(first_tick + MINUTE + SETTLE).await;
    let shown = get_mission(app, id).await;
    assert_eq!(shown["status"], "draft", "{shown:#}");
    assert_eq!(shown["executionCount"], 1, "{shown:#}");
    assert_eq!(runs_of(app, id).await.len(), 1);
    // A draft still runs by hand.
    let by_hand = execute(app, id).await;
    assert_eq!(by_hand["trigger"], "api");
    assert_eq!(by_hand["number"], 2);
}

/// `schedule.catch_up_window = 1s` and the binary stopped across a one-shot instant and a
/// cron boundary, started 3 s after both: neither is replayed; the one-shot mission, with
/// nothing left to fire, is `draft`; the cron fires again at its next boundary.
async fn ticks_older_than_the_catch_up_window_are_not_replayed(database: &TestDatabase, mut server: ServerProcess) {
    let remote = Remote::new(&server.key());
    let base = server.base_url.clone();
    remote
        .post(&base, "/v1/agents", json!({"name": "echo", "model": "mock/echo"}))
        .await;
    let at = (now_ms() / 1000 + 4) * 1000;
    let once = remote
        .post(
            &base,
            "/v1/missions",
            json!({"name": "stale-once", "schedule": format_ms(at), "tasks": quick_tasks()}),
        )
        .await;
    let cron = remote
        .post(
            &base,
            "/v1/missions",
            json!({"name": "stale-cron", "schedule": EVERY_MINUTE, "tasks": quick_tasks()}),
        )
        .await;
    let (once_id, cron_id) = (str_of(&once["id"]), str_of(&cron["id"]));
    let missed_tick = next_minute(ms_of(&cron["createdAt"]));
    kill_nine(&mut server);
    let killed = now_ms();
    assert!(
        killed < at && killed < missed_tick,
        "the server was not stopped in time"
    );

    until_clock(at.max(missed_tick) + 3_000).await;
    let server = start_server(database, "[schedule]\ncatch_up_window = \"1s\"\n").await;
    let base = server.base_url.clone();
    let handled = eventually(Duration::from_secs(10), || async {
        remote.get(&base, &format!("/v1/missions/{once_id}")).await["status"] != "scheduled"
    })
    .await;
    let shown = remote.get(&base, &format!("/v1/missions/{once_id}")).await;
    assert!(handled, "{shown:#}\n{}", server.log());
    assert_eq!(shown["status"], "draft", "{shown:#}");
    assert_eq!(shown["executionCount"], 0, "{shown:#}");
    assert!(remote.runs(&base, once_id).await.is_empty());
    let shown = remote.get(&base, &format!("/v1/missions/{cron_id}")).await;
    assert_eq!(shown["status"], "recurring", "{shown:#}");
    assert_eq!(shown["executionCount"], 0, "{shown:#}");

    let next_tick = missed_tick + MINUTE;
    // Fired and finished: the run ends in the same commit that returns the mission to
    // `recurring`.
    let fired = eventually_by(next_tick, Duration::from_secs(20), || async {
        let runs = remote.runs(&base, cron_id).await;
        !runs.is_empty() && runs.iter().all(|r| r["status"] == "completed")
    })
    .await;
    let shown = remote.get(&base, &format!("/v1/missions/{cron_id}")).await;
    assert_eq!(shown["status"], "recurring", "{shown:#}");
    let runs = remote.runs(&base, cron_id).await;
    assert!(fired, "{runs:#?}\n{}", server.log());
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["trigger"], "schedule");
    assert_eq!(runs[0]["status"], "completed");
    let triggered = remote.history(&base, "schedule:triggered").await;
    let instants: Vec<(&str, i64)> = triggered
        .iter()
        .map(|e| (str_of(&e["data"]["missionId"]), ms_of(&e["data"]["scheduledFor"])))
        .collect();
    assert_eq!(instants, [(cron_id, next_tick)], "only the cron's next tick fired");
}
