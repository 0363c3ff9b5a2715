//! `taskbench`: how fast polpo-api's task runner claims, runs and completes tasks, through the
//! public API only, against one or more instances sharing a database.
//!
//! 1. Throughput: `--tasks N` tasks that all depend on one gate task are created (not yet
//!    runnable); queueing the gate makes them all runnable the moment it is done. The rate is N
//!    over the time from the gate's `finishedAt` to the last task's `finishedAt`.
//! 2. Latency: `--latency-tasks M` runnable tasks created one at a time at `--latency-rate` per
//!    second; for each, the time from `createdAt` to its attempt's `startedAt` (both set by the
//!    server, in milliseconds).
//!
//! Prints `RESULT key=value ...` lines.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Base URL of an instance (repeat for several; requests alternate between them).
    #[arg(long = "base", required = true)]
    bases: Vec<String>,
    #[arg(long)]
    key: String,
    #[arg(long, default_value_t = 2000)]
    tasks: usize,
    #[arg(long, default_value_t = 200)]
    latency_tasks: usize,
    #[arg(long, default_value_t = 20.0)]
    latency_rate: f64,
    /// Concurrent requests while creating the throughput tasks.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value = "mock/echo")]
    model: String,
    #[arg(long, default_value = "run")]
    label: String,
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(http: &Http, method: &str, url: &str, key: &str, body: Option<Value>) -> Result<Value, String> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let response = http.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    if !status.is_success() {
        return Err(format!("{method} {url}: {status} {text}"));
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}"))
}

fn time_ms(value: &Value) -> Option<i64> {
    let text = value.as_str()?;
    // `2026-01-01T00:00:00.000Z`: days since the epoch from the civil date, then the clock.
    let (date, clock) = text.trim_end_matches('Z').split_once('T')?;
    let mut parts = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    let (hms, millis) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis.parse::<i64>().ok()?)
}

/// Every task of `group`, by pages.
async fn group_tasks(http: &Http, base: &str, key: &str, group: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let mut url = format!("{base}/v1/tasks?group={group}&limit=1000");
        if !after.is_empty() {
            url.push_str(&format!("&after={after}"));
        }
        let page = call(http, "GET", &url, key, None).await?;
        let items = page.as_array().cloned().unwrap_or_default();
        let full = items.len() == 1000;
        if let Some(last) = items.last().and_then(|t| t["id"].as_str()) {
            after = last.to_string();
        }
        out.extend(items);
        if !full {
            return Ok(out);
        }
    }
}

async fn wait_done(http: &Http, base: &str, key: &str, group: &str, count: usize) -> Result<Vec<Value>, String> {
    let start = Instant::now();
    loop {
        let tasks = group_tasks(http, base, key, group).await?;
        let finished = tasks
            .iter()
            .filter(|t| t["status"] == "done" || t["status"] == "failed")
            .count();
        if finished >= count {
            return Ok(tasks);
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!("only {finished} of {count} tasks finished in 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let base = &args.bases[0];
    let run = format!("{}", std::process::id());
    let agent = format!("bench-{run}");
    call(
        &http,
        "POST",
        &format!("{base}/v1/agents"),
        &args.key,
        Some(json!({"name": agent, "model": args.model})),
    )
    .await?;

    // Throughput.
    let group = format!("tp-{run}");
    let gate = call(
        &http,
        "POST",
        &format!("{base}/v1/tasks"),
        &args.key,
        Some(json!({"title": "gate", "assignTo": agent, "group": group, "draft": true})),
    )
    .await?;
    let gate_id = gate["id"].as_str().ok_or("no gate id")?.to_string();
    let created = Instant::now();
    let mut next = 0usize;
    while next < args.tasks {
        let mut batch = Vec::new();
        for _ in 0..args.concurrency.min(args.tasks - next) {
            let base = &args.bases[next % args.bases.len()];
            let body = json!({"title": format!("t{next}"), "assignTo": agent, "group": group, "dependsOn": [gate_id]});
            let (http, key) = (http.clone(), args.key.clone());
            let url = format!("{base}/v1/tasks");
            batch.push(tokio::spawn(async move {
                call(&http, "POST", &url, &key, Some(body)).await
            }));
            next += 1;
        }
        for handle in batch {
            handle.await.map_err(|e| e.to_string())??;
        }
    }
    let creation = created.elapsed();
    call(
        &http,
        "POST",
        &format!("{base}/v1/tasks/{gate_id}/queue"),
        &args.key,
        Some(json!({})),
    )
    .await?;
    let tasks = wait_done(&http, base, &args.key, &group, args.tasks + 1).await?;
    let gate_done = tasks
        .iter()
        .find(|t| t["id"] == gate_id.as_str())
        .and_then(|t| time_ms(&t["finishedAt"]))
        .ok_or("gate not finished")?;
    let others: Vec<&Value> = tasks.iter().filter(|t| t["id"] != gate_id.as_str()).collect();
    let failed = others.iter().filter(|t| t["status"] != "done").count();
    let last = others
        .iter()
        .filter_map(|t| time_ms(&t["finishedAt"]))
        .max()
        .unwrap_or(gate_done);
    let mut waits: Vec<i64> = others
        .iter()
        .filter_map(|t| time_ms(&t["result"]["attempts"][0]["startedAt"]))
        .map(|s| s - gate_done)
        .collect();
    waits.sort_unstable();
    let span_ms = (last - gate_done).max(1);
    #[allow(clippy::cast_precision_loss)]
    let rate = others.len() as f64 * 1000.0 / span_ms as f64;
    println!(
        "RESULT label={} kind=throughput tasks={} failed={} instances={} span_ms={} tasks_per_s={:.1} create_s={:.1} first_start_ms={} last_start_ms={}",
        args.label,
        others.len(),
        failed,
        args.bases.len(),
        span_ms,
        rate,
        creation.as_secs_f64(),
        waits.first().copied().unwrap_or(0),
        waits.last().copied().unwrap_or(0),
    );

    // Latency from runnable to started, at a low rate.
    let group = format!("lat-{run}");
    let interval = Duration::from_secs_f64(1.0 / args.latency_rate.max(0.1));
    let mut tick = tokio::time::interval(interval);
    for i in 0..args.latency_tasks {
        tick.tick().await;
        let base = &args.bases[i % args.bases.len()];
        call(
            &http,
            "POST",
            &format!("{base}/v1/tasks"),
            &args.key,
            Some(json!({"title": format!("l{i}"), "assignTo": agent, "group": group})),
        )
        .await?;
    }
    let tasks = wait_done(&http, base, &args.key, &group, args.latency_tasks).await?;
    let mut latencies: Vec<i64> = tasks
        .iter()
        .filter_map(|t| Some(time_ms(&t["result"]["attempts"][0]["startedAt"])? - time_ms(&t["createdAt"])?))
        .collect();
    latencies.sort_unstable();
    println!(
        "RESULT label={} kind=latency tasks={} rate={} p50_ms={} p90_ms={} p99_ms={} max_ms={}",
        args.label,
        latencies.len(),
        args.latency_rate,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
    );
    Ok(())
}
