//! `fanout`: how fast one committed event reaches many live subscribers of `GET /v1/events`.
//!
//! Opens `--subscribers` SSE streams (spread round-robin over the `--sub` instances), waits until
//! every one has received its first frame (the server sends `retry:` once it has subscribed),
//! then a writer creates `--writes` missions at `--write-rate` on the `--write` instance. Each
//! creation commits exactly one `mission:saved` event whose payload carries the mission's name,
//! `fan-<run>-<i>`, which is the marker the subscribers look for.
//!
//! The commit happens between the write's send (t0) and its answer (t1). For every (event,
//! subscriber) pair the arrival is timed when the frame's bytes come in (before any parsing), and
//! reported as arrival − t1 (clamped at 0; `before_t1` counts the pairs that came earlier) and
//! as arrival − t0 (an upper bound). Prints one `RESULT key=value ...` line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use polpo_bench::{cpu_ticks, machine_ticks, memory_kb, parse_duration, percentiles};
use serde_json::json;
use tokio::sync::{Semaphore, watch};

#[derive(Parser)]
#[command(args_override_self = true)]
struct Args {
    /// Label printed on the RESULT line.
    #[arg(long, default_value = "fanout")]
    label: String,
    /// Base URL of an instance the subscribers connect to (loopback only); repeat it to spread
    /// the subscribers round-robin over several instances.
    #[arg(long = "sub", required = true)]
    subs: Vec<hyper::Uri>,
    /// Base URL of the instance the writer sends to.
    #[arg(long)]
    write: hyper::Uri,
    /// The API key (`Authorization: Bearer <key>`) of subscribers and writer.
    #[arg(long)]
    key: String,
    /// Live subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Missions created, one event each.
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Writes per second (one at a time, on a fixed schedule).
    #[arg(long, default_value_t = 20.0)]
    write_rate: f64,
    /// Existing agent the missions' single task is assigned to.
    #[arg(long, default_value = "bench")]
    agent: String,
    /// Subscribers connecting at the same time.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Longest wait for every subscriber to be connected.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// After the last write's answer, how long missing deliveries are still waited for.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    grace: Duration,
    /// Tokio worker threads of this client.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The servers' pids (repeat): their CPU time during the writes and their memory with every
    /// subscriber connected.
    #[arg(long)]
    server_pid: Vec<u32>,
}

struct Shared {
    /// `"name":"fan-<run>-`: what precedes the write's number in an event of this run.
    marker: Vec<u8>,
    writes: usize,
    key: String,
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    delivered: AtomicUsize,
    /// Refused subscribers so far (the first one's answer is shown).
    refused_shown: AtomicUsize,
}

/// How a subscriber's stream ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Told to stop after the writes (the normal end).
    Stopped,
    /// Never connected: the reason.
    Connect(&'static str),
    /// Never connected: the server answered with this status.
    Refused(u16),
    /// The server closed the stream early, or it broke.
    Closed,
    BodyError,
}

struct Subscriber {
    base: usize,
    /// (write number, arrival) for each first delivery of an event of this run.
    arrivals: Vec<(u32, Instant)>,
    duplicates: usize,
    /// Complete frames with an `event:` line that are not this run's (other events).
    other_events: usize,
    end: End,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn frame_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

async fn subscribe(
    base: usize,
    uri: hyper::Uri,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Subscriber {
    let mut sub = Subscriber {
        base,
        arrivals: Vec::with_capacity(shared.writes),
        duplicates: 0,
        other_events: 0,
        end: End::Stopped,
    };
    let permit = gate.acquire_owned().await.ok();
    let fail = |sub: &mut Subscriber, why| {
        shared.connect_failed.fetch_add(1, Ordering::Relaxed);
        sub.end = End::Connect(why);
    };
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let Ok(stream) = tokio::net::TcpStream::connect(&authority).await else {
        fail(&mut sub, "connect");
        return sub;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        fail(&mut sub, "handshake");
        return sub;
    };
    tokio::spawn(conn);
    let req = Request::get(uri)
        .header("host", authority)
        .header("authorization", format!("Bearer {}", shared.key))
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = match sender.send_request(req).await {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => {
            let status = resp.status();
            fail(&mut sub, "");
            sub.end = End::Refused(status.as_u16());
            if shared.refused_shown.fetch_add(1, Ordering::Relaxed) == 0 {
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                eprintln!(
                    "fanout: a subscriber was refused: HTTP {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            return sub;
        }
        Err(_) => {
            fail(&mut sub, "transport");
            return sub;
        }
    };
    let mut body = resp.into_body();
    let mut permit = permit;
    let mut seen = vec![false; shared.writes];
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            _ = stop.changed() => break,
        };
        // Timed before anything else is done with the bytes.
        let now = Instant::now();
        let data = match frame {
            None => {
                sub.end = End::Closed;
                break;
            }
            Some(Err(_)) => {
                sub.end = End::BodyError;
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        if permit.take().is_some() {
            // The first frame (`retry:`) is sent once the stream has subscribed.
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        buf.extend_from_slice(&data);
        while let Some(end) = frame_end(&buf) {
            let text = &buf[..end];
            if let Some(at) = find(text, &shared.marker) {
                let digits = &text[at + shared.marker.len()..];
                let n = digits
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .fold(0usize, |n, b| n * 10 + usize::from(b - b'0'));
                match seen.get_mut(n) {
                    Some(s) if !*s => {
                        *s = true;
                        sub.arrivals.push((n as u32, now));
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => sub.duplicates += 1,
                }
            } else if text.starts_with(b"event:") || find(text, b"\nevent:").is_some() {
                sub.other_events += 1;
            }
            buf.drain(..end + 2);
        }
    }
    if permit.is_some() {
        // Ended before its first frame.
        fail(&mut sub, "no_first_frame");
    }
    sub
}

struct Write {
    t0: Instant,
    t1: Instant,
    status: Option<u16>,
}

async fn writer(args: &Args, run: &str) -> Vec<Write> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let url: hyper::Uri = format!("{}/v1/missions", args.write.to_string().trim_end_matches('/'))
        .parse()
        .expect("writer url");
    let auth = format!("Bearer {}", args.key);
    let start = Instant::now();
    let mut out = Vec::with_capacity(args.writes);
    for i in 0..args.writes {
        let at = start + Duration::from_secs_f64(i as f64 / args.write_rate);
        tokio::time::sleep_until(at.into()).await;
        let body = json!({"name": format!("fan-{run}-{i}"),
                          "tasks": [{"title": "t", "assignTo": args.agent}]});
        let req = Request::post(url.clone())
            .header("content-type", "application/json")
            .header("authorization", &auth)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let t0 = Instant::now();
        let (status, t1) = match client.request(req).await {
            Ok(resp) => {
                let t1 = Instant::now();
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if !status.is_success() && out.iter().all(|w: &Write| w.status.is_some_and(|s| s < 300)) {
                    eprintln!("fanout: write {i}: HTTP {status} {}", String::from_utf8_lossy(&bytes));
                }
                (Some(status.as_u16()), t1)
            }
            Err(e) => {
                eprintln!("fanout: write {i}: {e}");
                (None, Instant::now())
            }
        };
        out.push(Write { t0, t1, status });
    }
    out
}

fn servers_ticks(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_ticks(&format!("/proc/{p}/stat"))).sum()
}

/// Summed VmRSS and VmHWM of the servers, in kB.
fn servers_kb(pids: &[u32]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(rss, hwm), pid| {
        let (r, h) = memory_kb(*pid);
        (rss + r, hwm + h)
    })
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    for uri in args.subs.iter().chain([&args.write]) {
        let host = uri.host().unwrap_or_default();
        assert!(
            host == "localhost" || host.starts_with("127.") || host == "[::1]",
            "fanout sends traffic to loopback only"
        );
    }
    assert!(
        args.writes > 0 && args.write_rate > 0.0,
        "--writes and --write-rate must be positive"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let line = runtime.block_on(run(&args));
    println!("{line}");
    Ok(())
}

async fn run(args: &Args) -> String {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let run = format!("{:x}{:x}", stamp.as_millis(), std::process::id());
    let shared = Arc::new(Shared {
        marker: format!("\"name\":\"fan-{run}-").into_bytes(),
        writes: args.writes,
        key: args.key.clone(),
        connected: AtomicUsize::new(0),
        connect_failed: AtomicUsize::new(0),
        delivered: AtomicUsize::new(0),
        refused_shown: AtomicUsize::new(0),
    });
    let events: Vec<hyper::Uri> = args
        .subs
        .iter()
        .map(|b| {
            format!("{}/v1/events", b.to_string().trim_end_matches('/'))
                .parse()
                .expect("events url")
        })
        .collect();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let connect_start = Instant::now();
    let subs: Vec<_> = (0..args.subscribers)
        .map(|i| {
            let base = i % events.len();
            tokio::spawn(subscribe(
                base,
                events[base].clone(),
                shared.clone(),
                gate.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let connect_deadline = connect_start + args.connect_timeout;
    while shared.connected.load(Ordering::Relaxed) + shared.connect_failed.load(Ordering::Relaxed) < args.subscribers
        && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_time = connect_start.elapsed();
    let connected = shared.connected.load(Ordering::Relaxed);
    let (rss_connected, _) = servers_kb(&args.server_pid);
    eprintln!(
        "fanout: {connected}/{} subscribers connected in {:.2} s; writing",
        args.subscribers,
        connect_time.as_secs_f64()
    );

    let self_stat = "/proc/self/stat";
    let before = (cpu_ticks(self_stat), servers_ticks(&args.server_pid), machine_ticks());
    let measure_start = Instant::now();
    let writes = writer(args, &run).await;
    let ok_writes = writes.iter().filter(|w| w.status.is_some_and(|s| s < 300)).count();
    let wanted = connected * ok_writes;
    let last_t1 = writes.iter().map(|w| w.t1).max().unwrap_or_else(Instant::now);
    while shared.delivered.load(Ordering::Relaxed) < wanted && last_t1.elapsed() < args.grace {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = measure_start.elapsed();
    let after = (cpu_ticks(self_stat), servers_ticks(&args.server_pid), machine_ticks());
    let (_, hwm) = servers_kb(&args.server_pid);
    let _ = stop_tx.send(true);

    // A subscriber still connecting (a server that never answered) is given up on: it is counted
    // as lost, and its task ends with the runtime.
    let mut results = Vec::with_capacity(subs.len());
    let join_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for h in subs {
        if let Ok(Ok(s)) = tokio::time::timeout_at(join_deadline, h).await {
            results.push(s);
        }
    }

    let n_bases = events.len();
    let (mut from_t1, mut from_t0) = (Vec::new(), Vec::new());
    let mut per_base: Vec<Vec<Duration>> = vec![Vec::new(); n_bases];
    let (mut before_t1, mut duplicates, mut other_events) = (0usize, 0usize, 0usize);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for sub in &results {
        duplicates += sub.duplicates;
        other_events += sub.other_events;
        match sub.end {
            End::Stopped => {}
            End::Connect(why) => *errors.entry(format!("sub_{why}")).or_default() += 1,
            End::Refused(status) => *errors.entry(format!("sub_http_{status}")).or_default() += 1,
            End::Closed => *errors.entry("sub_closed".into()).or_default() += 1,
            End::BodyError => *errors.entry("sub_body".into()).or_default() += 1,
        }
        for &(n, arrival) in &sub.arrivals {
            let w = &writes[n as usize];
            let d1 = match arrival.checked_duration_since(w.t1) {
                Some(d) => d,
                None => {
                    before_t1 += 1;
                    Duration::ZERO
                }
            };
            from_t1.push(d1);
            per_base[sub.base].push(d1);
            from_t0.push(arrival.saturating_duration_since(w.t0));
        }
    }
    if results.len() < args.subscribers {
        errors.insert("sub_lost".into(), args.subscribers - results.len());
    }
    for w in &writes {
        match w.status {
            Some(s) if s < 300 => {}
            Some(s) => *errors.entry(format!("write_http_{s}")).or_default() += 1,
            None => *errors.entry("write_transport".into()).or_default() += 1,
        }
    }
    let expected = args.subscribers * args.writes;
    let delivered = from_t1.len();
    let missing = expected.saturating_sub(delivered);
    if missing > 0 {
        errors.insert("missing".into(), missing);
    }
    let kinds: Vec<String> = errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let error_count = missing
        + errors
            .iter()
            .filter(|(k, _)| k.starts_with("write_"))
            .map(|(_, v)| v)
            .sum::<usize>();

    let secs = wall.as_secs_f64().max(1e-9);
    let client_cpu = 100.0 * after.0.saturating_sub(before.0) as f64 / 100.0 / secs;
    let server_cpu = 100.0 * after.1.saturating_sub(before.1) as f64 / 100.0 / secs;
    let machine =
        100.0 * after.2.0.saturating_sub(before.2.0) as f64 / after.2.1.saturating_sub(before.2.1).max(1) as f64;
    let mut write_lat: Vec<Duration> = writes.iter().map(|w| w.t1.saturating_duration_since(w.t0)).collect();

    let mut line = format!(
        "RESULT label={} mode=fanout subscribers={} instances={n_bases} writes={} write_rate={} \
         connected={connected} connect_s={:.2} writes_ok={ok_writes} expected={expected} \
         delivered={delivered} missing={missing} errors={error_count} error_kinds={} \
         duplicates={duplicates} other_events={other_events} before_t1={before_t1} wall_s={:.2}",
        args.label,
        args.subscribers,
        args.writes,
        args.write_rate,
        connect_time.as_secs_f64(),
        if kinds.is_empty() { "-".into() } else { kinds.join(",") },
        secs
    );
    line += &percentiles("t1", &mut from_t1);
    line += &percentiles("t0", &mut from_t0);
    line += &percentiles("write", &mut write_lat);
    if n_bases > 1 {
        for (i, v) in per_base.iter_mut().enumerate() {
            line += &format!(" base{i}_delivered={}", v.len());
            line += &percentiles(&format!("base{i}_t1"), v);
        }
    }
    line += &format!(
        " client_threads={} client_cpu_pct={client_cpu:.0} machine_cpu_pct={machine:.0}",
        args.threads
    );
    if !args.server_pid.is_empty() {
        line += &format!(" server_cpu_pct={server_cpu:.0} server_vmrss_kb={rss_connected} server_vmhwm_kb={hwm}");
    }
    line
}
