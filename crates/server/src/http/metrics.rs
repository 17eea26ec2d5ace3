//! Prometheus metrics: requests by endpoint and status, tokens, latency histograms, and the
//! engine's occupancy.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use turbine_batcher::Stats;

/// A latency histogram in seconds.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, secs: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Ordering::Relaxed));
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

const LATENCY: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const PER_TOKEN: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The server's counters.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY),
            tpot: Histogram::new(PER_TOKEN),
            e2e: Histogram::new(LATENCY),
        }
    }
}

impl Metrics {
    /// Counts a finished HTTP request.
    pub fn request(&self, endpoint: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint.to_string(), status)).or_insert(0) += 1;
    }

    /// Records one finished choice: its token counts and timings (seconds from submission).
    pub fn choice(&self, prompt_tokens: usize, generated: usize, first_token: Option<f64>, end: f64) {
        self.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        if let Some(f) = first_token {
            self.ttft.observe(f);
            if generated > 1 {
                self.tpot.observe((end - f) / (generated - 1) as f64);
            }
        }
        self.e2e.observe(end);
    }

    /// The Prometheus text exposition, with the engine's current state.
    pub fn render(&self, s: &Stats) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP turbine_requests_total HTTP requests by endpoint and status.\n# TYPE turbine_requests_total counter");
        for ((e, st), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "turbine_requests_total{{endpoint=\"{e}\",status=\"{st}\"}} {n}");
        }
        let counters = [
            (
                "turbine_prompt_tokens_total",
                "Prompt tokens of finished choices.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "turbine_generated_tokens_total",
                "Generated tokens, those of cancelled requests included.",
                s.generated_tokens,
            ),
            ("turbine_preemptions_total", "Requests preempted for KV memory.", s.preemptions),
            (
                "turbine_prefix_cache_hit_tokens_total",
                "Prompt tokens served from the prefix cache.",
                s.prefix_cache_hit_tokens,
            ),
            (
                "turbine_spec_decode_drafted_tokens_total",
                "Tokens drafted by the speculative proposer and checked by the model.",
                s.drafted_tokens,
            ),
            ("turbine_spec_decode_accepted_tokens_total", "Drafted tokens the model accepted.", s.accepted_tokens),
            (
                "turbine_constrained_requests_total",
                "Requests (choices) with an output constraint (JSON Schema, regex, choice, grammar).",
                s.constrained_requests,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let name = "turbine_constraint_seconds_total";
        let _ = writeln!(
            out,
            "# HELP {name} Time spent compiling output constraints and computing their token masks.\n# TYPE {name} counter\n{name} {}",
            s.constraint_seconds
        );
        let usage = if s.blocks_total > 0 { s.blocks_in_use as f64 / s.blocks_total as f64 } else { 0.0 };
        let gauges = [
            ("turbine_requests_running", "Requests being computed.", s.running as f64),
            ("turbine_requests_waiting", "Requests waiting to start or resume.", s.waiting as f64),
            ("turbine_kv_cache_usage_ratio", "Fraction of KV blocks in use.", usage),
            ("turbine_kv_blocks_in_use", "KV blocks in use.", s.blocks_in_use as f64),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "turbine_spec_decode_acceptance_rate";
        let _ = writeln!(
            out,
            "# HELP {name} Fraction of a request's drafts accepted, per verification step.\n# TYPE {name} histogram"
        );
        let mut seen = 0;
        for (le, n) in ["0", "0.25", "0.5", "0.75", "0.999", "1"].iter().zip(s.acceptance) {
            seen += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {seen}");
        }
        let _ =
            writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {seen}\n{name}_sum {}\n{name}_count {seen}", s.acceptance_sum);
        self.ttft.render(&mut out, "turbine_time_to_first_token_seconds", "Time to first token.");
        self.tpot.render(&mut out, "turbine_time_per_output_token_seconds", "Time per output token after the first.");
        self.e2e.render(&mut out, "turbine_e2e_request_latency_seconds", "End-to-end latency of a choice.");
        out
    }
}
