//! Prometheus metrics (spec §9), kept in process and rendered as text. Labels are route
//! templates, provider names, stream kinds and outcomes — never ids, keys or project names.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family: its name, help text and kind.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

pub const HTTP_REQUESTS: Desc = Desc {
    name: "polpo_http_requests_total",
    help: "HTTP requests answered.",
    kind: Kind::Counter,
};
pub const HTTP_DURATION: Desc = Desc {
    name: "polpo_http_request_duration_seconds",
    help: "Time to answer HTTP requests (to the response head for streams).",
    kind: Kind::Histogram,
};
pub const SSE_STREAMS: Desc = Desc {
    name: "polpo_sse_streams",
    help: "Event-stream responses open now, by kind.",
    kind: Kind::Gauge,
};
pub const UPSTREAM_REQUESTS: Desc = Desc {
    name: "polpo_upstream_requests_total",
    help: "Model provider requests, by provider and outcome before the first chunk.",
    kind: Kind::Counter,
};
pub const UPSTREAM_FIRST_CHUNK: Desc = Desc {
    name: "polpo_upstream_first_chunk_seconds",
    help: "Time from sending a provider request to its first chunk.",
    kind: Kind::Histogram,
};
pub const TASK_ATTEMPTS: Desc = Desc {
    name: "polpo_task_attempts_total",
    help: "Task attempts by how they ended: passed, fix, retried, failed, timeout, interrupted, lost.",
    kind: Kind::Counter,
};
pub const TASKS: Desc = Desc {
    name: "polpo_tasks",
    help: "Tasks in the database by status, read at scrape time.",
    kind: Kind::Gauge,
};
pub const MISSION_RUNS_LIVE: Desc = Desc {
    name: "polpo_mission_runs_live",
    help: "Mission runs that are active or paused, in the database, read at scrape time.",
    kind: Kind::Gauge,
};
pub const GROUP_COMMITS: Desc = Desc {
    name: "polpo_group_commits_total",
    help: "Transactions of the group-commit writer (chat turns' messages and events).",
    kind: Kind::Counter,
};
pub const GROUP_COMMIT_CHANGES: Desc = Desc {
    name: "polpo_group_commit_changes_total",
    help: "Changes the group-commit writer committed; divided by its transactions, the mean batch.",
    kind: Kind::Counter,
};
pub const WEBHOOK_DELIVERIES: Desc = Desc {
    name: "polpo_webhook_deliveries_total",
    help: "Webhook delivery attempts, by outcome.",
    kind: Kind::Counter,
};

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

enum Series {
    Value(f64),
    Histogram(Histogram),
}

struct Family {
    desc: Desc,
    /// Keyed by the rendered label set, e.g. `method="GET",route="/v1/agents"`.
    series: BTreeMap<String, Series>,
}

#[derive(Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

/// Writes the rendered label set of `pairs` into `out`, e.g. `method="GET",route="/v1/agents"`.
fn write_labels(out: &mut String, pairs: &[(&str, &str)]) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_into(out, v);
        out.push('"');
    }
}

thread_local! {
    /// The label set being looked up: every request updates several series, and only a series
    /// seen for the first time needs a key of its own.
    static LABELS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Metrics {
    fn with_series(&self, desc: Desc, pairs: &[(&str, &str)], update: impl FnOnce(&mut Series)) {
        LABELS.with_borrow_mut(|key| {
            key.clear();
            write_labels(key, pairs);
            let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
            let family = families.entry(desc.name).or_insert_with(|| Family {
                desc,
                series: BTreeMap::new(),
            });
            if !family.series.contains_key(key.as_str()) {
                let fresh = match desc.kind {
                    Kind::Histogram => Series::Histogram(Histogram::default()),
                    Kind::Counter | Kind::Gauge => Series::Value(0.0),
                };
                family.series.insert(key.clone(), fresh);
            }
            if let Some(series) = family.series.get_mut(key.as_str()) {
                update(series);
            }
        });
    }

    /// Adds `delta` to a counter or gauge.
    pub fn add(&self, desc: Desc, pairs: &[(&str, &str)], delta: f64) {
        self.with_series(desc, pairs, |series| {
            if let Series::Value(v) = series {
                *v += delta;
            }
        });
    }

    /// Sets a gauge.
    pub fn set(&self, desc: Desc, pairs: &[(&str, &str)], value: f64) {
        self.with_series(desc, pairs, |series| {
            if let Series::Value(v) = series {
                *v = value;
            }
        });
    }

    pub fn observe(&self, desc: Desc, pairs: &[(&str, &str)], elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.with_series(desc, pairs, |series| {
            if let Series::Histogram(h) = series {
                for (slot, bound) in h.counts.iter_mut().zip(BUCKETS) {
                    if seconds <= *bound {
                        *slot += 1;
                    }
                }
                h.sum += seconds;
                h.count += 1;
            }
        });
    }

    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut digits = [0u8; 5];
        let status = decimal(status, &mut digits);
        self.add(
            HTTP_REQUESTS,
            &[("method", method), ("route", route), ("status", status)],
            1.0,
        );
        self.observe(HTTP_DURATION, &[("method", method), ("route", route)], elapsed);
    }

    /// Counts an open stream of `kind` until the returned guard is dropped.
    pub fn open_stream(self: &std::sync::Arc<Self>, kind: &'static str) -> StreamGuard {
        self.add(SSE_STREAMS, &[("kind", kind)], 1.0);
        StreamGuard {
            metrics: std::sync::Arc::clone(self),
            kind,
        }
    }

    /// The exposition text. `key_lookups` is the number of database key lookups so far.
    pub fn render(&self, key_lookups: u64) -> String {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for family in families.values() {
            let Desc { name, help, kind } = family.desc;
            let kind_name = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind_name}");
            for (labels, series) in &family.series {
                match series {
                    Series::Value(v) if labels.is_empty() => {
                        let _ = writeln!(out, "{name} {v}");
                    }
                    Series::Value(v) => {
                        let _ = writeln!(out, "{name}{{{labels}}} {v}");
                    }
                    Series::Histogram(h) => {
                        let sep = if labels.is_empty() { "" } else { "," };
                        for (bound, n) in BUCKETS.iter().zip(h.counts) {
                            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
                        }
                        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
                        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
                        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
                    }
                }
            }
        }
        out.push_str("# HELP polpo_auth_key_lookups_total API keys looked up in the database.\n");
        out.push_str("# TYPE polpo_auth_key_lookups_total counter\n");
        let _ = writeln!(out, "polpo_auth_key_lookups_total {key_lookups}");
        out
    }
}

/// Decrements the open-stream gauge when the stream ends (however it ends).
pub struct StreamGuard {
    metrics: std::sync::Arc<Metrics>,
    kind: &'static str,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.add(SSE_STREAMS, &[("kind", self.kind)], -1.0);
    }
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: u16, buf: &mut [u8; 5]) -> &str {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[start..]).unwrap_or_default()
}

/// Appends `label` to `out` as the exposition format quotes it.
fn escape_into(out: &mut String, label: &str) {
    for c in label.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_template_and_status() {
        let metrics = Metrics::default();
        metrics.record_request("GET", "/v1/agents/{idOrName}", 200, Duration::from_millis(3));
        metrics.record_request("GET", "/v1/agents/{idOrName}", 200, Duration::from_millis(30));
        metrics.record_request("GET", "/v1/agents/{idOrName}", 404, Duration::from_millis(1));
        let text = metrics.render(7);
        assert!(
            text.contains("polpo_http_requests_total{method=\"GET\",route=\"/v1/agents/{idOrName}\",status=\"200\"} 2")
        );
        assert!(
            text.contains("polpo_http_requests_total{method=\"GET\",route=\"/v1/agents/{idOrName}\",status=\"404\"} 1")
        );
        assert!(text.contains(
            "polpo_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/agents/{idOrName}\",le=\"0.005\"} 2"
        ));
        assert!(
            text.contains(
                "polpo_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/agents/{idOrName}\"} 3"
            )
        );
        assert!(text.contains("# TYPE polpo_http_request_duration_seconds histogram"));
        assert!(text.contains("polpo_auth_key_lookups_total 7"));
    }

    #[test]
    fn label_values_are_escaped_and_statuses_written_whole() {
        let metrics = Metrics::default();
        metrics.add(WEBHOOK_DELIVERIES, &[("outcome", "a\"b\\c\nd")], 1.0);
        metrics.record_request("GET", "/", 7, Duration::from_millis(1));
        metrics.record_request("GET", "/", 65535, Duration::from_millis(1));
        let text = metrics.render(0);
        assert!(
            text.contains("polpo_webhook_deliveries_total{outcome=\"a\\\"b\\\\c\\nd\"} 1"),
            "{text}"
        );
        assert!(text.contains("status=\"7\"} 1"), "{text}");
        assert!(text.contains("status=\"65535\"} 1"), "{text}");
    }

    #[test]
    fn stream_gauges_fall_when_the_guard_drops() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let a = metrics.open_stream("events");
        let b = metrics.open_stream("events");
        assert!(metrics.render(0).contains("polpo_sse_streams{kind=\"events\"} 2"));
        drop(a);
        drop(b);
        let text = metrics.render(0);
        assert!(text.contains("polpo_sse_streams{kind=\"events\"} 0"));
        assert!(text.contains("# TYPE polpo_sse_streams gauge"));
    }
}
