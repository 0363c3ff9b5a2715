//! What the bench tools share: reading durations, the CPU and memory figures of /proc,
//! percentiles in the `key=value` form of their RESULT lines, and the HTTP/1.1 accept loop of
//! the servers among them.

use std::time::Duration;

/// `10s`, `500ms`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad unit in {s:?}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// User + system CPU time of a process, in clock ticks (USER_HZ, 100 a second on Linux), from
/// its `stat` file (`/proc/<pid>/stat` or `/proc/self/stat`).
pub fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Machine-wide (busy, total) ticks over all cores, from the `cpu` line of /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// VmRSS and VmHWM of a process, in kB.
pub fn memory_kb(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// ` <name>_p50_ms=… <name>_p90_ms=… <name>_p99_ms=… <name>_max_ms=…`, or nothing for no values.
pub fn percentiles(name: &str, v: &mut [Duration]) -> String {
    if v.is_empty() {
        return String::new();
    }
    v.sort_unstable();
    let at = |p: f64| v[((p / 100.0) * (v.len() - 1) as f64).round() as usize];
    format!(
        " {name}_p50_ms={} {name}_p90_ms={} {name}_p99_ms={} {name}_max_ms={}",
        ms(at(50.0)),
        ms(at(90.0)),
        ms(at(99.0)),
        ms(at(100.0))
    )
}

/// Serves HTTP/1.1 on `listener`, `TCP_NODELAY` on every connection and `service()` for each,
/// until `max` has passed.
pub async fn serve_http1<F, S, B>(listener: tokio::net::TcpListener, service: F, max: Duration) -> std::io::Result<()>
where
    F: Fn() -> S,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let accept = async {
        loop {
            let (socket, _) = listener.accept().await?;
            socket.set_nodelay(true)?;
            let service = service();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    };
    tokio::select! {
        r = accept => r,
        _ = tokio::time::sleep(max) => Ok(()),
    }
}
