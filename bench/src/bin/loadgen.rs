//! `loadgen`: load for `POST /v1/chat/completions` over pooled keep-alive HTTP/1.1, in three
//! modes: open loop at a fixed rate (`--rate`), closed loop at saturation (`--concurrency`), and
//! `--hold N` concurrent streams kept open while the server's RSS is read from /proc.
//!
//! Prints one `RESULT key=value ...` line: counts, errors by kind, throughput, and p50/p90/p99/max
//! latency in ms (the full response; for streams also `ttft_*`, the first non-empty content chunk).
//! With `--by-status` (meant for an open loop above saturation) the line also counts the answers by
//! status, the rejections that carried `Retry-After`, timeouts and connection errors, gives the
//! rejections' latency apart from the successes', and the server's VmRSS/VmHWM at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use polpo_bench::{machine_ticks, memory_kb, parse_duration, percentiles};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(args_override_self = true)]
struct Args {
    /// Label printed on the RESULT line.
    #[arg(long, default_value = "run")]
    label: String,
    /// Full URL of the endpoint (loopback only).
    #[arg(long)]
    url: hyper::Uri,
    /// Sent as `Authorization: Bearer <key>` when given.
    #[arg(long)]
    key: Option<String>,
    #[arg(long, default_value = "gpt-bench")]
    model: String,
    /// Ask for a streamed completion.
    #[arg(long)]
    stream: bool,
    /// Open loop: requests per second.
    #[arg(long, conflicts_with_all = ["concurrency", "hold"])]
    rate: Option<f64>,
    /// Closed loop: this many workers, each sending its next request when the last one ends.
    #[arg(long, conflicts_with = "hold")]
    concurrency: Option<usize>,
    /// Open this many streams at once and keep them open until the upstream ends them.
    #[arg(long)]
    hold: Option<usize>,
    /// The server's pid: its CPU time over the run is reported, and its VmRSS/VmHWM while the
    /// held streams are open.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Length of the measured run (`20s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Same load first, not measured.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Limit for one request (whole stream included).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Open loop: most requests in flight at once; a request due while this many are still
    /// running is not sent and counts as `dropped`, so the generator never queues without bound.
    #[arg(long, default_value_t = 20000)]
    max_in_flight: usize,
    /// Report answers by status (200, 429, 503, other), `Retry-After` on rejections, the
    /// rejections' latency, and the server's memory at the end (overload runs).
    #[arg(long)]
    by_status: bool,
}

struct Target {
    client: Client<HttpConnector, Full<Bytes>>,
    url: hyper::Uri,
    auth: Option<String>,
    body: Bytes,
    stream: bool,
    timeout: Duration,
    /// Streams that have seen their first content chunk (hold mode).
    opened: AtomicUsize,
    /// Open loop: requests sent and not yet answered, and the most seen at once.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// The first connection error, with its causes (shown with `--by-status`).
    first_transport_error: std::sync::OnceLock<String>,
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Outcome {
    /// Full time, time to first content chunk (streams), lateness against the schedule.
    Ok {
        total: Duration,
        ttft: Option<Duration>,
        lag: Duration,
    },
    /// A non-2xx answer: its status, whether it carried `Retry-After`, and the time to its end.
    Status {
        code: u16,
        retry_after: bool,
        total: Duration,
    },
    Failed(&'static str),
}

async fn one(t: &Target, scheduled: Instant) -> Outcome {
    let start = Instant::now();
    let lag = start.saturating_duration_since(scheduled);
    match tokio::time::timeout(t.timeout, exchange(t, start)).await {
        Ok(Ok((total, ttft))) => Outcome::Ok { total, ttft, lag },
        Ok(Err(o)) => o,
        Err(_) => Outcome::Failed("timeout"),
    }
}

async fn exchange(t: &Target, start: Instant) -> Result<(Duration, Option<Duration>), Outcome> {
    let mut req = Request::post(t.url.clone()).header("content-type", "application/json");
    if let Some(auth) = &t.auth {
        req = req.header("authorization", auth);
    }
    let req = req
        .body(Full::new(t.body.clone()))
        .map_err(|_| Outcome::Failed("request"))?;
    let resp = t.client.request(req).await.map_err(|e| {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text += &format!(": {c}");
            cause = c.source();
        }
        let _ = t.first_transport_error.set(text);
        Outcome::Failed("transport")
    })?;
    let status = resp.status();
    let retry_after = resp.headers().contains_key("retry-after");
    let mut body = resp.into_body();
    if !status.is_success() {
        let _ = body.collect().await;
        return Err(Outcome::Status {
            code: status.as_u16(),
            retry_after,
            total: start.elapsed(),
        });
    }
    if !t.stream {
        let bytes = body.collect().await.map_err(|_| Outcome::Failed("body"))?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| Outcome::Failed("json"))?;
        if v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(Outcome::Failed("no content"));
        }
        return Ok((start.elapsed(), None));
    }
    let (mut buf, mut ttft, mut done) = (Vec::<u8>::new(), None, false);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| Outcome::Failed("body"))?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            for line in event.split(|&b| b == b'\n') {
                let Some(payload) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let payload = payload.strip_prefix(b" ").unwrap_or(payload);
                if payload == b"[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_slice(payload).map_err(|_| Outcome::Failed("json"))?;
                if v.get("error").is_some() {
                    return Err(Outcome::Failed("error frame"));
                }
                let content = v.pointer("/choices/0/delta/content").and_then(Value::as_str);
                if ttft.is_none() && content.is_some_and(|c| !c.is_empty()) {
                    ttft = Some(start.elapsed());
                    t.opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    match (done, ttft) {
        (true, Some(_)) => Ok((start.elapsed(), ttft)),
        (false, _) => Err(Outcome::Failed("no [DONE]")),
        (true, None) => Err(Outcome::Failed("no content")),
    }
}

/// Open loop: request i is sent at `start + i / rate`, whatever the answers do, unless
/// `max_in_flight` requests are still running (then it counts as `dropped`). Also returns when
/// the last request was due, for the offered rate.
async fn open_loop(
    t: &Arc<Target>,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> (Vec<Outcome>, Duration, Duration) {
    let n = (rate * duration.as_secs_f64()).round() as u64;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n as usize);
    let mut dropped = 0;
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let now_in_flight = t.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        if now_in_flight > max_in_flight {
            t.in_flight.fetch_sub(1, Ordering::Relaxed);
            dropped += 1;
            continue;
        }
        t.peak_in_flight.fetch_max(now_in_flight, Ordering::Relaxed);
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            let _counted = InFlight(&t.in_flight);
            one(&t, at).await
        }));
    }
    let sent_for = start.elapsed();
    let mut out = Vec::with_capacity(handles.len() + dropped);
    for h in handles {
        out.push(h.await.unwrap_or(Outcome::Failed("panic")));
    }
    out.extend((0..dropped).map(|_| Outcome::Failed("dropped")));
    (out, start.elapsed(), sent_for)
}

/// Closed loop: `workers` tasks, each sending back to back until `duration` has passed.
async fn closed_loop(t: &Arc<Target>, workers: usize, duration: Duration) -> (Vec<Outcome>, Duration) {
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                while Instant::now() < deadline {
                    let now = Instant::now();
                    out.push(one(&t, now).await);
                }
                out
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.extend(h.await.unwrap_or_default());
    }
    (out, start.elapsed())
}

/// The server's CPU time in ticks, 0 without a pid.
fn cpu_ticks(pid: Option<u32>) -> u64 {
    pid.map_or(0, |pid| polpo_bench::cpu_ticks(&format!("/proc/{pid}/stat")))
}

fn cpu_line(pid: Option<u32>, before: (u64, (u64, u64)), wall: Duration, ok: usize) -> String {
    let (m_busy, m_total) = machine_ticks();
    let machine = 100.0 * m_busy.saturating_sub(before.1.0) as f64 / m_total.saturating_sub(before.1.1).max(1) as f64;
    let mut line = format!(" machine_cpu_pct={machine:.0}");
    if pid.is_some() {
        let cpu_s = cpu_ticks(pid).saturating_sub(before.0) as f64 / 100.0;
        line += &format!(
            " server_cpu_pct={:.0} server_cpu_ms_per_req={:.2}",
            100.0 * cpu_s / wall.as_secs_f64(),
            1000.0 * cpu_s / ok.max(1) as f64
        );
    }
    line
}

/// Opens `n` streams (one a millisecond), waits until all show content, samples RSS while they
/// are all open, then lets them finish.
async fn hold(t: &Arc<Target>, n: usize, pid: Option<u32>) -> (Vec<Outcome>, Duration, String) {
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let t = t.clone();
            let at = start + Duration::from_millis(i as u64);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                one(&t, at).await
            })
        })
        .collect();
    let wait_until = start + Duration::from_secs(30);
    while t.opened.load(Ordering::Relaxed) < n && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_after = start.elapsed();
    let (mut rss, mut hwm, mut samples) = (0, 0, 0);
    for _ in 0..5 {
        if handles.iter().any(|h| h.is_finished()) {
            break; // some streams already ended: no longer all open
        }
        if let Some(pid) = pid {
            let (r, h) = memory_kb(pid);
            (rss, hwm) = (rss.max(r), hwm.max(h));
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opened = t.opened.load(Ordering::Relaxed);
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or(Outcome::Failed("panic")));
    }
    let extra = format!(
        "held={opened} all_open_after_ms={} rss_samples={samples} server_vmrss_kb={rss} server_vmhwm_kb={hwm}",
        open_after.as_millis()
    );
    (out, start.elapsed(), extra)
}

fn ok_count(out: &[Outcome]) -> usize {
    out.iter().filter(|o| matches!(o, Outcome::Ok { .. })).count()
}

fn report(label: &str, outcomes: Vec<Outcome>, wall: Duration, extra: &str, show_lag: bool) -> String {
    let (mut total, mut ttft, mut lag) = (Vec::new(), Vec::new(), Vec::new());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for o in outcomes {
        match o {
            Outcome::Ok {
                total: d,
                ttft: f,
                lag: l,
            } => {
                total.push(d);
                ttft.extend(f);
                lag.push(l);
            }
            Outcome::Status { code, .. } => *errors.entry(format!("http_{code}")).or_default() += 1,
            Outcome::Failed(why) => *errors.entry(why.replace([' ', '[', ']'], "")).or_default() += 1,
        }
    }
    let err_count: u64 = errors.values().sum();
    let kinds: Vec<String> = errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let ok = total.len();
    let mut line = format!(
        "RESULT label={label} ok={ok} errors={err_count} error_kinds={} wall_s={:.2} rps={:.1}",
        if kinds.is_empty() { "-".into() } else { kinds.join(",") },
        wall.as_secs_f64(),
        ok as f64 / wall.as_secs_f64()
    );
    line += &percentiles("lat", &mut total);
    line += &percentiles("ttft", &mut ttft);
    if show_lag {
        line += &percentiles("lag", &mut lag);
    }
    if !extra.is_empty() {
        line = format!("{line} {extra}");
    }
    line
}

/// The `--by-status` fields: answers by status, `Retry-After` on rejections, timeouts and
/// connection errors apart from other failures, and the rejections' latency.
fn by_status(outcomes: &[Outcome]) -> String {
    let (mut s200, mut s429, mut s503, mut other, mut retry_after) = (0, 0, 0, 0, 0);
    let (mut timeouts, mut conn, mut dropped, mut failed) = (0, 0, 0, 0);
    let mut rejected = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Ok { .. } => s200 += 1,
            Outcome::Status {
                code,
                retry_after: ra,
                total,
            } => {
                match code {
                    429 => s429 += 1,
                    503 => s503 += 1,
                    _ => other += 1,
                }
                retry_after += usize::from(*ra);
                rejected.push(*total);
            }
            Outcome::Failed("timeout") => timeouts += 1,
            Outcome::Failed("transport") => conn += 1,
            Outcome::Failed("dropped") => dropped += 1,
            Outcome::Failed(_) => failed += 1,
        }
    }
    let sent = outcomes.len() - dropped;
    let mut line = format!(
        " sent={sent} status_200={s200} status_429={s429} status_503={s503} status_other={other} \
         rejected={} retry_after={retry_after} timeouts={timeouts} conn_errors={conn} \
         failed_other={failed} dropped={dropped}",
        rejected.len()
    );
    line += &percentiles("rej", &mut rejected);
    line
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let host = args.url.host().unwrap_or_default();
    assert!(
        host == "localhost" || host.starts_with("127.") || host == "[::1]",
        "loadgen sends traffic to loopback only"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let body = json!({"model": args.model, "stream": args.stream,
                          "messages": [{"role": "user", "content": "hello"}]});
        let t = Arc::new(Target {
            client,
            url: args.url.clone(),
            auth: args.key.as_ref().map(|k| format!("Bearer {k}")),
            body: body.to_string().into(),
            stream: args.stream,
            timeout: args.timeout,
            opened: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            first_transport_error: std::sync::OnceLock::new(),
        });
        let line = if let Some(n) = args.hold {
            let (out, wall, extra) = hold(&t, n, args.server_pid).await;
            report(&args.label, out, wall, &extra, true)
        } else if let Some(rate) = args.rate {
            if !args.warmup.is_zero() {
                open_loop(&t, rate, args.warmup, args.max_in_flight).await;
            }
            t.peak_in_flight.store(0, Ordering::Relaxed);
            let before = (cpu_ticks(args.server_pid), machine_ticks());
            let (out, wall, sent_for) = open_loop(&t, rate, args.duration, args.max_in_flight).await;
            let mut cpu = cpu_line(args.server_pid, before, wall, ok_count(&out));
            if args.by_status {
                let statuses = by_status(&out);
                let sent = out.iter().filter(|o| !matches!(o, Outcome::Failed("dropped"))).count();
                cpu += &format!(
                    " offered_rps={:.1} peak_in_flight={} max_in_flight={} timeout_s={}{statuses}",
                    sent as f64 / sent_for.max(args.duration).as_secs_f64(),
                    t.peak_in_flight.load(Ordering::Relaxed),
                    args.max_in_flight,
                    args.timeout.as_secs_f64()
                );
                if let Some(e) = t.first_transport_error.get() {
                    eprintln!("loadgen {}: first connection error: {e}", args.label);
                }
                if let Some(pid) = args.server_pid {
                    let (rss, hwm) = memory_kb(pid);
                    cpu += &format!(" server_vmrss_kb={rss} server_vmhwm_kb={hwm}");
                }
            }
            report(
                &args.label,
                out,
                wall,
                &format!("mode=rate target_rps={rate}{cpu}"),
                true,
            )
        } else {
            let workers = args.concurrency.unwrap_or(1);
            if !args.warmup.is_zero() {
                closed_loop(&t, workers, args.warmup).await;
            }
            let before = (cpu_ticks(args.server_pid), machine_ticks());
            let (out, wall) = closed_loop(&t, workers, args.duration).await;
            let cpu = cpu_line(args.server_pid, before, wall, ok_count(&out));
            report(
                &args.label,
                out,
                wall,
                &format!("mode=closed concurrency={workers}{cpu}"),
                false,
            )
        };
        println!("{line}");
        Ok(())
    })
}
