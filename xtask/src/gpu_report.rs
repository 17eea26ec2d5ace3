//! `xtask gpu-report REPORT_DIR`: the targets of the CUDA issue, read from the logs `run.sh`
//! leaves in `REPORT_DIR/logs` (with `steps.tsv` and `device.txt` beside them), written as `report.json` (every step and measurement) and `targets.md`
//! (a table `run.sh` puts at the top of `report.md`).
//!
//! The targets (H100 figures; the report says which device ran):
//! - batch-1 decode reads its weights at ≥ 80% of the measured device-to-device copy bandwidth
//!   (weight bytes one decode step reads × tokens/s, from `turbine bench --workload speed`, at
//!   the shallowest context measured; every configuration run is listed, the best is judged);
//! - FP8 E4M3 GEMM ≥ 1.6× FP16 TFLOP/s at M = 4096 (`gpu_bench`);
//! - in-flight batching ≥ 2× static batching in output tokens/s (`turbine bench --compare`).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Decode bandwidth as a fraction of the copy bandwidth.
pub const DECODE_BW_TARGET: f64 = 0.8;
/// FP8 over FP16 GEMM TFLOP/s at M = 4096.
pub const FP8_GEMM_TARGET: f64 = 1.6;
/// In-flight over static output tokens/s.
pub const INFLIGHT_TARGET: f64 = 2.0;

/// The last line of `text` that parses as a JSON object (the logs mix progress lines and JSON).
fn last_json(text: &str) -> Option<Value> {
    text.lines().rev().filter(|l| l.trim_start().starts_with('{')).find_map(|l| serde_json::from_str(l).ok())
}

fn read_json(dir: &Path, step: &str) -> Option<Value> {
    last_json(&std::fs::read_to_string(dir.join("logs").join(format!("{step}.log"))).ok()?)
}

/// One target: its value (if it was measured), the threshold, and where the value came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// What is measured.
    pub name: &'static str,
    /// The measured value, or `None` when its steps did not produce one.
    pub value: Option<f64>,
    /// The threshold (`value >= target` meets it).
    pub target: f64,
    /// The step (configuration) the value came from, or why there is none.
    pub source: String,
}

impl Target {
    /// Whether the value was measured and reaches the threshold.
    pub fn met(&self) -> bool {
        self.value.is_some_and(|v| v >= self.target)
    }
}

/// Decode bandwidth fraction of one `--workload speed` result: the shallowest context's
/// `decode_tok_s` × `decode_read_bytes` over the copy bandwidth.
fn decode_fraction(speed: &Value, copy_gb_s: f64) -> Option<f64> {
    let bytes = speed["decode_read_bytes"].as_f64()?;
    let rows = speed["decode"].as_array()?;
    let first = rows.iter().min_by_key(|r| r["context"].as_u64().unwrap_or(u64::MAX))?;
    let tok_s = first["decode_tok_s"].as_f64()?;
    (copy_gb_s > 0.0).then(|| bytes * tok_s / (copy_gb_s * 1e9))
}

fn gemm_tflops(bench: &Value, dtype: &str, m: u64) -> Option<f64> {
    bench["gemm"].as_array()?.iter().find(|r| r["dtype"] == dtype && r["m"].as_u64() == Some(m))?["tflops"].as_f64()
}

/// The three targets from the logs in `dir` (`speed` names the bf16 decode steps to judge).
pub fn targets(dir: &Path, speed: &[&str]) -> Vec<Target> {
    let bench = read_json(dir, "gemm-and-copy");
    let copy = bench.as_ref().and_then(|b| b["copy_gb_s"].as_f64());
    let mut decode = Target {
        name: "batch-1 decode bandwidth / copy bandwidth",
        value: None,
        target: DECODE_BW_TARGET,
        source: "no speed or copy measurement".into(),
    };
    if let Some(copy) = copy {
        for step in speed {
            let Some(f) = read_json(dir, step).and_then(|s| decode_fraction(&s, copy)) else { continue };
            if decode.value.is_none_or(|v| f > v) {
                decode.value = Some(f);
                decode.source = format!("{step} (copy {copy:.0} GB/s)");
            }
        }
    }
    // Judged on the FP8 product the backend runs (f32 accumulation); fast accumulation is shown.
    let at_4096 = |d: &str| bench.as_ref().and_then(|b| gemm_tflops(b, d, 4096));
    let (f8, f16, fast) = (at_4096("f8e4m3"), at_4096("f16"), at_4096("f8e4m3-fast-accum"));
    let gemm = Target {
        name: "FP8 / FP16 GEMM TFLOP/s at M = 4096",
        value: f8.zip(f16).map(|(a, b)| a / b),
        target: FP8_GEMM_TARGET,
        source: match (f8, f16) {
            (Some(a), Some(b)) => {
                let fast = fast.map_or(String::new(), |f| format!("; FP8 fast accumulation {f:.0}, {:.2}x", f / b));
                format!("gemm-and-copy ({a:.0} / {b:.0} TFLOP/s{fast})")
            }
            _ => "gemm-and-copy has no FP8 and FP16 rows at M = 4096".into(),
        },
    };
    let compare = read_json(dir, "compare-1b-bf16");
    // The step counts say how much of the ratio is batching alone (equal step times).
    let steps = compare.as_ref().and_then(|c| Some((c["static"]["steps"].as_f64()?, c["inflight"]["steps"].as_f64()?)));
    let inflight = Target {
        name: "in-flight / static output tokens/s",
        value: compare.as_ref().and_then(|c| c["inflight_over_static"].as_f64()),
        target: INFLIGHT_TARGET,
        source: match steps {
            Some((s, i)) if i > 0.0 => format!("compare-1b-bf16 (static takes {:.2}x the steps)", s / i),
            _ => "compare-1b-bf16".into(),
        },
    };
    vec![decode, gemm, inflight]
}

/// The steps `run.sh` recorded in `steps.tsv` (name, exit status, seconds; exit -1: skipped,
/// the time budget spent).
fn steps(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("steps.tsv")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, rc, secs) = (f.next()?, f.next()?.parse::<i64>().ok()?, f.next()?.parse::<u64>().ok()?);
            Some(json!({"step": name, "exit": rc, "pass": rc == 0, "skipped": rc < 0, "seconds": secs}))
        })
        .collect()
}

/// The targets as a Markdown table.
pub fn markdown(targets: &[Target]) -> String {
    let met = targets.iter().filter(|t| t.met()).count();
    let mut s = format!(
        "## Targets: {met} of {} met\n\n| target | measured | needed | from |\n|---|---:|---:|---|\n",
        targets.len()
    );
    for t in targets {
        let v = t.value.map_or("not measured".to_string(), |v| format!("{v:.2}"));
        let mark = if t.met() { "met" } else { "MISSED" };
        s += &format!("| {} | {v} ({mark}) | ≥ {:.2} | {} |\n", t.name, t.target, t.source);
    }
    s
}

/// Writes `report.json` and `targets.md` into `dir`; returns the targets.
pub fn write(dir: &Path) -> Result<Vec<Target>> {
    const SPEED: [&str; 3] = ["speed-1b-bf16", "speed-1b-bf16-graphs", "speed-1b-bf16-fast-products"];
    let t = targets(dir, &SPEED);
    let steps = steps(dir);
    let mut logs = serde_json::Map::new();
    for step in &steps {
        let name = step["step"].as_str().unwrap_or_default().to_string();
        if let Some(v) = read_json(dir, &name) {
            logs.insert(name, v);
        }
    }
    let report = json!({
        "device": std::fs::read_to_string(dir.join("device.txt")).unwrap_or_default().trim(),
        "steps": steps,
        "measurements": logs,
        "targets": t.iter().map(|t| json!({
            "name": t.name, "value": t.value, "target": t.target, "met": t.met(), "source": t.source,
        })).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
    std::fs::write(dir.join("report.json"), text).with_context(|| format!("writing {}/report.json", dir.display()))?;
    std::fs::write(dir.join("targets.md"), markdown(&t))
        .with_context(|| format!("writing {}/targets.md", dir.display()))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("turbine-gpu-report-{}-{}", std::process::id(), files.len()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("logs")).unwrap();
        for (name, text) in files {
            // Step logs go under logs/, as run.sh writes them.
            let at = if name.ends_with(".log") { d.join("logs").join(name) } else { d.join(name) };
            std::fs::write(at, text).unwrap();
        }
        d
    }

    #[test]
    fn targets_are_read_from_the_logs() {
        let d = dir_with(&[
            (
                "steps.tsv",
                "gemm-and-copy\t0\t12\nspeed-1b-bf16\t0\t30\nspeed-1b-bf16-graphs\t0\t28\ncompare-1b-bf16\t1\t60\n\
                 batch-1b-bf16\t-1\t0\n",
            ),
            (
                "gemm-and-copy.log",
                "warming up\n{\"device\":\"H100\",\"copy_gb_s\":3000,\"gemm\":[\
                 {\"dtype\":\"f16\",\"m\":4096,\"tflops\":600.0},{\"dtype\":\"f8e4m3\",\"m\":4096,\"tflops\":1100.0},\
                 {\"dtype\":\"f8e4m3-fast-accum\",\"m\":4096,\"tflops\":1320.0},{\"dtype\":\"f8e4m3\",\"m\":16,\"tflops\":20.0}]}\n",
            ),
            // 2.5 GB a token: 800 tok/s is 2000 GB/s (2/3 of the copy), 1000 tok/s is 2500 GB/s.
            (
                "speed-1b-bf16.log",
                "turbine bench: decode\n{\"decode_read_bytes\":2.5e9,\"decode\":[{\"context\":256,\"decode_tok_s\":900},{\"context\":16,\"decode_tok_s\":800}]}\n",
            ),
            (
                "speed-1b-bf16-graphs.log",
                "{\"decode_read_bytes\":2.5e9,\"decode\":[{\"context\":16,\"decode_tok_s\":1000}]}\n",
            ),
            (
                "compare-1b-bf16.log",
                "{\"inflight_over_static\":2.4,\"inflight\":{\"steps\":500},\"static\":{\"steps\":1500}}\n",
            ),
        ]);
        let t = write(&d).unwrap();
        assert!((t[0].value.unwrap() - 2500.0 / 3000.0).abs() < 1e-9, "{t:?}");
        assert!(t[0].source.starts_with("speed-1b-bf16-graphs"), "{}", t[0].source);
        assert!(t[0].met());
        assert!((t[1].value.unwrap() - 1100.0 / 600.0).abs() < 1e-9);
        assert!(t[1].met());
        assert!(t[1].source.contains("fast accumulation 1320, 2.20x"), "{}", t[1].source);
        assert_eq!(t[2].value, Some(2.4));
        assert!(t[2].source.contains("3.00x the steps"), "{}", t[2].source);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["steps"].as_array().unwrap().len(), 5);
        assert_eq!(report["steps"][3]["pass"], false);
        assert_eq!(report["steps"][3]["skipped"], false);
        // Exit -1: run.sh skipped the step, its time budget spent.
        assert_eq!(report["steps"][4]["skipped"], true);
        assert_eq!(report["measurements"]["gemm-and-copy"]["copy_gb_s"], 3000);
        assert_eq!(report["targets"][2]["met"], true);
        let md = std::fs::read_to_string(d.join("targets.md")).unwrap();
        assert!(md.contains("3 of 3 met"), "{md}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_measurements_are_reported_as_missed() {
        let d = dir_with(&[("gemm-and-copy.log", "gpu bench: no usable GPU here\n")]);
        let t = write(&d).unwrap();
        assert!(t.iter().all(|t| t.value.is_none() && !t.met()), "{t:?}");
        let md = std::fs::read_to_string(d.join("targets.md")).unwrap();
        assert!(md.contains("0 of 3 met") && md.contains("not measured"), "{md}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
