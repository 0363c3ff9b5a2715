//! Prometheus metrics (spec §9), kept in process and rendered as text. Labels are route
//! templates, never ids, keys or project names.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<(String, String), Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner
            .requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let histogram = inner
            .durations
            .entry((method.to_string(), route.to_string()))
            .or_default();
        let seconds = elapsed.as_secs_f64();
        for (slot, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= *bound {
                *slot += 1;
            }
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }

    /// The exposition text. `key_lookups` is the number of database key lookups so far.
    pub fn render(&self, key_lookups: u64) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP polpo_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE polpo_http_requests_total counter\n");
        for ((method, route, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "polpo_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str("# HELP polpo_http_request_duration_seconds Time to answer HTTP requests.\n");
        out.push_str("# TYPE polpo_http_request_duration_seconds histogram\n");
        for ((method, route), h) in &inner.durations {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "polpo_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "polpo_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "polpo_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "polpo_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        out.push_str("# HELP polpo_auth_key_lookups_total API keys looked up in the database.\n");
        out.push_str("# TYPE polpo_auth_key_lookups_total counter\n");
        let _ = writeln!(out, "polpo_auth_key_lookups_total {key_lookups}");
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
        assert!(text.contains("polpo_auth_key_lookups_total 7"));
    }
}
