//! `xtask gpu-report REPORT_DIR`: the GPU issue's targets, read from the logs `run.sh` leaves in
//! `REPORT_DIR/logs` (with `steps.tsv` and `device.txt` beside them), written as `report.json`
//! (device, driver, date, every target with the command behind it, every step, every
//! measurement) and `targets.md` (a table `run.sh` puts at the top of `report.md`).
//!
//! Each target compares a Turbine figure with a reference measured in the same run: the copy
//! bandwidth (`gpu_bench`), or PyTorch and transformers on the same checkpoint
//! (`bench/gpu/anchors.py`), on synthetic checkpoints of Llama 3.2 1B and Llama 3.1 8B shapes:
//! - batch-1 decode: weight bytes read per step × tokens/s ≥ 80% of the copy bandwidth, and
//!   ≥ 3× transformers `generate`'s tokens/s (1B and 8B);
//! - prefill of 2,048 tokens: TFLOP/s (2 × block parameters × tokens ÷ time) ≥ 0.5× PyTorch's
//!   bf16 products of the same shapes (1B and 8B);
//! - the mixed workload at `--max-batch 64`: in-flight ≥ 2× static batching, and ≥ 5×
//!   transformers `generate` in static batches of 64 (1B);
//! - FP8 (`--dtype fp8`): prefill ≥ 1.5× and batch-1 decode ≥ 1.6× bf16 (1B).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The last line of `text` that parses as a JSON object (the logs mix progress lines and JSON).
fn last_json(text: &str) -> Option<Value> {
    text.lines().rev().filter(|l| l.trim_start().starts_with('{')).find_map(|l| serde_json::from_str(l).ok())
}

fn read_json(dir: &Path, step: &str) -> Option<Value> {
    last_json(&std::fs::read_to_string(dir.join("logs").join(format!("{step}.log"))).ok()?)
}

/// One target: Turbine's figure over a reference, against a threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// Turbine's figure (in `unit`), if measured.
    pub ours: Option<f64>,
    /// The reference figure, if measured.
    pub reference: Option<f64>,
    /// The unit of both figures.
    pub unit: &'static str,
    /// What the reference is.
    pub against: &'static str,
    /// The threshold on `ours / reference`.
    pub target: f64,
    /// The steps (and their commands) the figures came from.
    pub how: String,
}

impl Target {
    /// `ours / reference`, when both were measured.
    pub fn value(&self) -> Option<f64> {
        match (self.ours, self.reference) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    }

    /// Whether the ratio was measured and reaches the threshold.
    pub fn met(&self) -> bool {
        self.value().is_some_and(|v| v >= self.target)
    }
}

/// The step names, exit statuses, seconds and commands in `steps.tsv`.
struct Steps(Vec<(String, i64, u64, String)>);

impl Steps {
    fn read(dir: &Path) -> Steps {
        let text = std::fs::read_to_string(dir.join("steps.tsv")).unwrap_or_default();
        Steps(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split('\t');
                    let name = f.next()?.to_string();
                    let rc = f.next()?.parse().ok()?;
                    let secs = f.next()?.parse().ok()?;
                    Some((name, rc, secs, f.next().unwrap_or_default().trim().to_string()))
                })
                .collect(),
        )
    }

    /// `step: command` for each of `names` (the command run.sh recorded, if any).
    fn how(&self, names: &[&str]) -> String {
        let one = |n: &&str| match self.0.iter().find(|s| s.0 == *n) {
            Some((_, _, _, cmd)) if !cmd.is_empty() => format!("{n}: `{cmd}`"),
            _ => format!("{n}: not run"),
        };
        names.iter().map(one).collect::<Vec<_>>().join("; ")
    }
}

/// The figures the targets read, from the logs in `dir`.
struct Logs<'a> {
    dir: &'a Path,
}

impl Logs<'_> {
    fn get(&self, step: &str) -> Option<Value> {
        read_json(self.dir, step)
    }

    /// Copy bandwidth (GB/s, bytes read + written) from `gpu_bench`.
    fn copy(&self) -> Option<f64> {
        self.get("gemm-and-copy")?["copy_gb_s"].as_f64()
    }

    /// A `--workload speed` run's decode tokens/s at its shallowest context.
    fn decode_tok_s(&self, step: &str) -> Option<f64> {
        let s = self.get(step)?;
        let first = s["decode"].as_array()?.iter().min_by_key(|r| r["context"].as_u64().unwrap_or(u64::MAX))?.clone();
        first["decode_tok_s"].as_f64()
    }

    /// Weight GB/s of a speed run's batch-1 decode (bytes read per step × tokens/s).
    fn decode_gb_s(&self, step: &str) -> Option<f64> {
        Some(self.get(step)?["decode_read_bytes"].as_f64()? * self.decode_tok_s(step)? / 1e9)
    }

    fn prefill_tok_s(&self, step: &str) -> Option<f64> {
        self.get(step)?["prefill_tok_s"].as_f64()
    }

    /// Block parameters of a checkpoint (from its anchors run).
    fn block_params(&self, anchors: &str) -> Option<f64> {
        self.get(anchors)?["products"]["block_params"].as_f64()
    }
}

/// The targets from the logs in `dir`.
pub fn targets(dir: &Path) -> Vec<Target> {
    let logs = Logs { dir };
    let steps = Steps::read(dir);
    let mut t = Vec::new();
    let copy = logs.copy();
    for size in ["1b", "8b"] {
        let (speed, anchors) = (format!("speed-{size}-bf16"), format!("anchors-{size}"));
        let model = size.to_uppercase();
        t.push(Target {
            name: format!("{model} batch-1 decode, weight bandwidth"),
            ours: logs.decode_gb_s(&speed),
            reference: copy,
            unit: "GB/s",
            against: "device-to-device copy",
            target: 0.8,
            how: steps.how(&[&speed, "gemm-and-copy"]),
        });
        t.push(Target {
            name: format!("{model} batch-1 decode"),
            ours: logs.decode_tok_s(&speed),
            reference: logs.get(&anchors).and_then(|a| a["hf"]["decode_b1_tok_s"].as_f64()),
            unit: "tok/s",
            against: "transformers generate",
            target: 3.0,
            how: steps.how(&[&speed, &anchors]),
        });
        let tflops = |tok_s: Option<f64>| Some(2.0 * logs.block_params(&anchors)? * tok_s? / 1e12);
        t.push(Target {
            name: format!("{model} prefill of 2048 tokens"),
            ours: tflops(logs.prefill_tok_s(&speed)),
            reference: logs.get(&anchors).and_then(|a| a["products"]["bf16_tflops"].as_f64()),
            unit: "TFLOP/s",
            against: "PyTorch bf16 products, same shapes",
            target: 0.5,
            how: steps.how(&[&speed, &anchors]),
        });
    }
    let compare = logs.get("compare-1b-bf16");
    let figure = |mode: &str| compare.as_ref().and_then(|c| c[mode]["output_tok_s"].as_f64());
    t.push(Target {
        name: "1B mixed workload, max batch 64: in-flight over static".into(),
        ours: figure("inflight"),
        reference: figure("static"),
        unit: "output tok/s",
        against: "Turbine, static batches",
        target: 2.0,
        how: steps.how(&["compare-1b-bf16"]),
    });
    t.push(Target {
        name: "1B mixed workload, max batch 64: in-flight".into(),
        ours: figure("inflight"),
        reference: logs.get("anchors-1b").and_then(|a| a["hf"]["static_output_tok_s"].as_f64()),
        unit: "output tok/s",
        against: "transformers generate, static batches of 64",
        target: 5.0,
        how: steps.how(&["compare-1b-bf16", "anchors-1b"]),
    });
    t.push(Target {
        name: "1B prefill of 2048 tokens, fp8 over bf16".into(),
        ours: logs.prefill_tok_s("speed-1b-fp8"),
        reference: logs.prefill_tok_s("speed-1b-bf16"),
        unit: "tok/s",
        against: "Turbine bf16",
        target: 1.5,
        how: steps.how(&["speed-1b-fp8", "speed-1b-bf16"]),
    });
    t.push(Target {
        name: "1B batch-1 decode, fp8 over bf16".into(),
        ours: logs.decode_tok_s("speed-1b-fp8"),
        reference: logs.decode_tok_s("speed-1b-bf16"),
        unit: "tok/s",
        against: "Turbine bf16",
        target: 1.6,
        how: steps.how(&["speed-1b-fp8", "speed-1b-bf16"]),
    });
    t
}

/// A figure with its unit, or "not measured".
fn fig(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.1} {unit}"),
        None => "not measured".into(),
    }
}

/// The targets as a Markdown table.
pub fn markdown(targets: &[Target]) -> String {
    let met = targets.iter().filter(|t| t.met()).count();
    let mut s = format!(
        "## Targets: {met} of {} met\n\n| target | Turbine | reference | ratio | needed | |\n|---|---:|---:|---:|---:|---|\n",
        targets.len()
    );
    for t in targets {
        let ratio = t.value().map_or("-".to_string(), |v| format!("{v:.2}"));
        let mark = if t.met() { "met" } else { "MISSED" };
        s += &format!(
            "| {} | {} | {} ({}) | {ratio} | ≥ {:.2} | {mark} |\n",
            t.name,
            fig(t.ours, t.unit),
            fig(t.reference, t.unit),
            t.against,
            t.target
        );
    }
    s += "\nCommands (paths relative to the unpacked pack):\n\n";
    for t in targets {
        s += &format!("- {}: {}\n", t.name, t.how);
    }
    s
}

/// Turbine's paged attention (gpu_bench) beside PyTorch's `scaled_dot_product_attention`
/// (anchors-1b) on the same shapes, as a Markdown table; empty when either is missing or the
/// shapes differ.
fn attention_markdown(logs: &Logs<'_>) -> String {
    let (Some(ours), Some(anchors)) = (logs.get("gemm-and-copy"), logs.get("anchors-1b")) else {
        return String::new();
    };
    let (ours, theirs) = (&ours["attention"], &anchors["attention"]);
    let keys = ["q_heads", "kv_heads", "head_dim", "prefill_tokens", "decode_batch", "decode_context"];
    if ours.is_null() || keys.iter().any(|k| ours[k].is_null() || ours[k] != theirs[k]) {
        return String::new();
    }
    let f = |v: &Value, k: &str| v[k].as_f64();
    // The CUDA-core kernels (TURBINE_CUDA_MMA=off) on the same shapes, where that step ran.
    let cores = logs
        .get("attention-cuda-cores")
        .map(|v| v["attention"].clone())
        .filter(|c| !c.is_null() && keys.iter().all(|k| c[k] == ours[k]));
    let mut s = format!(
        "\n## Attention ({} query heads, {} KV heads of {}; Turbine: f32 paged cache)\n\n\
         | step | Turbine (tensor cores) | Turbine (CUDA cores) | SDPA bf16 | SDPA f32 | Turbine / SDPA bf16 time |\n\
         |---|---:|---:|---:|---:|---:|\n",
        ours["q_heads"], ours["kv_heads"], ours["head_dim"]
    );
    for (label, key, unit, theirs_key) in [
        (format!("prefill, {} tokens", ours["prefill_tokens"]), "prefill_ms", "ms", "prefill_ms"),
        (
            format!("decode, {} rows at context {}", ours["decode_batch"], ours["decode_context"]),
            "decode_us",
            "µs",
            "decode_us",
        ),
    ] {
        let (o, b, w) =
            (f(ours, key), f(theirs, &format!("{theirs_key}_bf16")), f(theirs, &format!("{theirs_key}_f32")));
        let ratio = o.zip(b).map_or("-".to_string(), |(o, b)| format!("{:.2}", o / b));
        let c = cores.as_ref().and_then(|c| f(c, key));
        s += &format!(
            "| {label} | {} | {} | {} | {} | {ratio} |\n",
            fig(o, unit),
            fig(c, unit),
            fig(b, unit),
            fig(w, unit)
        );
    }
    s
}

/// The kernel variants run.sh timed (`speed-1b-bf16-NAME` beside `speed-1b-bf16`, with their
/// `same-bits-NAME` check) as a Markdown table: decode tok/s at each context and prefill tok/s,
/// each with its ratio to the default.
fn variants_markdown(dir: &Path, steps: &Steps) -> String {
    let logs = Logs { dir };
    let Some(base) = logs.get("speed-1b-bf16") else { return String::new() };
    let figures = |v: &Value| -> Vec<(String, f64)> {
        let mut f: Vec<(String, f64)> = v["decode"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| {
                        Some((format!("decode at {}", r["context"].as_u64()?), r["decode_tok_s"].as_f64()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        f.extend(v["prefill_tok_s"].as_f64().map(|p| ("prefill".to_string(), p)));
        f
    };
    let base_f = figures(&base);
    let mut s = String::new();
    for (name, ..) in &steps.0 {
        let Some(variant) = name.strip_prefix("speed-1b-bf16-").filter(|v| *v != "fast-products") else { continue };
        let same = steps.0.iter().find(|st| st.0 == format!("same-bits-{variant}")).map_or("not checked", |st| {
            if st.1 == 0 {
                "same bits"
            } else {
                "DIFFERENT BITS"
            }
        });
        let Some(v) = logs.get(name) else { continue };
        if s.is_empty() {
            s += "\n## Kernel variants (1B bf16, tok/s; ratio to the default)\n\n| variant | bits |";
            for (what, _) in &base_f {
                s += &format!(" {what} |");
            }
            s += "\n|---|---|";
            s += &"---:|".repeat(base_f.len());
            s += "\n";
        }
        s += &format!("| {variant} | {same} |");
        for (what, b) in &base_f {
            match figures(&v).iter().find(|(w, _)| w == what) {
                Some((_, x)) if *b > 0.0 => s += &format!(" {x:.0} ({:.2}x) |", x / b),
                _ => s += " - |",
            }
        }
        s += "\n";
    }
    s
}

/// Writes `report.json` and `targets.md` into `dir`; returns the targets. The date is
/// `TURBINE_GPU_CHECK_DATE` (run.sh sets it).
pub fn write(dir: &Path) -> Result<Vec<Target>> {
    let t = targets(dir);
    let steps = Steps::read(dir);
    let mut logs = serde_json::Map::new();
    for (name, ..) in &steps.0 {
        if let Some(v) = read_json(dir, name) {
            logs.insert(name.clone(), v);
        }
    }
    // device.txt: nvidia-smi's "name, driver_version, memory.total, compute_cap".
    let device = std::fs::read_to_string(dir.join("device.txt")).unwrap_or_default();
    let fields: Vec<&str> = device.lines().next().unwrap_or_default().split(',').map(str::trim).collect();
    let report = json!({
        "device": fields.first().copied().unwrap_or_default(),
        "driver": fields.get(1).copied().unwrap_or_default(),
        "memory": fields.get(2).copied().unwrap_or_default(),
        "compute_capability": fields.get(3).copied().unwrap_or_default(),
        "date": std::env::var("TURBINE_GPU_CHECK_DATE").unwrap_or_else(|_| "unknown".into()),
        "targets": t.iter().map(|t| json!({
            "name": t.name, "value": t.value(), "target": t.target, "met": t.met(), "how": t.how,
            "turbine": t.ours, "reference": t.reference, "unit": t.unit, "against": t.against,
        })).collect::<Vec<_>>(),
        "steps": steps.0.iter().map(|(name, rc, secs, cmd)| json!({
            "name": name, "passed": *rc == 0, "skipped": *rc < 0, "exit": rc, "seconds": secs, "command": cmd,
        })).collect::<Vec<_>>(),
        "measurements": logs,
    });
    let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
    std::fs::write(dir.join("report.json"), text).with_context(|| format!("writing {}/report.json", dir.display()))?;
    let attention = attention_markdown(&Logs { dir });
    std::fs::write(dir.join("targets.md"), markdown(&t) + &variants_markdown(dir, &steps) + &attention)
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

    fn target<'a>(t: &'a [Target], name: &str) -> &'a Target {
        t.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no target {name:?} in {t:?}"))
    }

    #[test]
    fn targets_are_read_from_the_logs() {
        let d = dir_with(&[
            ("device.txt", "NVIDIA H200, 580.159.04, 143771 MiB, 9.0\n"),
            (
                "steps.tsv",
                "gemm-and-copy\t0\t12\tgpu_bench --json\nspeed-1b-bf16\t0\t30\tturbine bench -m m1b\n\
                 anchors-1b\t0\t60\tpython3 bench/gpu/anchors.py --model m1b --static\n\
                 compare-1b-bf16\t1\t60\tturbine bench --compare\nspeed-1b-fp8\t0\t40\tturbine bench --dtype fp8\n\
                 speed-8b-bf16\t-1\t0\tturbine bench -m m8b\nsame-bits-gemv-unroll8\t0\t5\tbash same-bits.sh\n\
                 speed-1b-bf16-gemv-unroll8\t0\t20\tturbine bench\n",
            ),
            ("gemm-and-copy.log", "warming up\n{\"device\":\"H100\",\"copy_gb_s\":3000,\"gemm\":[]}\n"),
            // 2.5 GB a token: 960 tok/s at the shallowest context is 2400 GB/s, 0.8 of the copy.
            (
                "speed-1b-bf16.log",
                "turbine bench: decode\n{\"decode_read_bytes\":2.5e9,\"prefill_tok_s\":50000,\
                 \"decode\":[{\"context\":1000,\"decode_tok_s\":500},{\"context\":16,\"decode_tok_s\":960}]}\n",
            ),
            (
                "speed-1b-bf16-gemv-unroll8.log",
                "{\"decode_read_bytes\":2.5e9,\"prefill_tok_s\":50000,\
                 \"decode\":[{\"context\":16,\"decode_tok_s\":1200},{\"context\":1000,\"decode_tok_s\":500}]}\n",
            ),
            (
                "speed-1b-fp8.log",
                "{\"decode_read_bytes\":1.5e9,\"prefill_tok_s\":70000,\"decode\":[{\"context\":16,\"decode_tok_s\":1600}]}\n",
            ),
            (
                "anchors-1b.log",
                "| anchor | value |\n{\"products\":{\"block_params\":1e9,\"bf16_tflops\":700},\
                 \"hf\":{\"decode_b1_tok_s\":80,\"static_output_tok_s\":130}}\n",
            ),
            (
                "compare-1b-bf16.log",
                "{\"inflight_over_static\":2.4,\"inflight\":{\"output_tok_s\":1200},\"static\":{\"output_tok_s\":500}}\n",
            ),
        ]);
        std::env::set_var("TURBINE_GPU_CHECK_DATE", "2026-12-04T15:00Z");
        let t = write(&d).unwrap();
        let bw = target(&t, "1B batch-1 decode, weight bandwidth");
        assert!((bw.value().unwrap() - 0.8).abs() < 1e-9 && bw.met(), "{bw:?}");
        assert!(bw.how.contains("speed-1b-bf16: `turbine bench -m m1b`"), "{}", bw.how);
        assert!((target(&t, "1B batch-1 decode").value().unwrap() - 12.0).abs() < 1e-9);
        // 2 x 1e9 x 50000 = 100 TFLOP/s against 700.
        let pf = target(&t, "1B prefill of 2048 tokens");
        assert!((pf.ours.unwrap() - 100.0).abs() < 1e-9 && !pf.met(), "{pf:?}");
        assert!(
            (target(&t, "1B mixed workload, max batch 64: in-flight over static").value().unwrap() - 2.4).abs() < 1e-9
        );
        assert!(target(&t, "1B mixed workload, max batch 64: in-flight").met());
        assert!((target(&t, "1B prefill of 2048 tokens, fp8 over bf16").value().unwrap() - 1.4).abs() < 1e-9);
        assert!(target(&t, "1B batch-1 decode, fp8 over bf16").met());
        // Skipped and missing steps: not measured, so missed.
        let eight = target(&t, "8B batch-1 decode");
        assert!(eight.value().is_none() && !eight.met());
        let report: Value = serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["device"], "NVIDIA H200");
        assert_eq!(report["driver"], "580.159.04");
        assert_eq!(report["date"], "2026-12-04T15:00Z");
        assert_eq!(report["steps"].as_array().unwrap().len(), 8);
        assert_eq!(report["steps"][3]["passed"], false);
        assert_eq!(report["steps"][5]["skipped"], true);
        assert_eq!(report["measurements"]["gemm-and-copy"]["copy_gb_s"], 3000);
        assert_eq!(report["targets"][0]["met"], true);
        assert!(report["targets"][0]["how"].as_str().unwrap().contains("gpu_bench --json"));
        let md = std::fs::read_to_string(d.join("targets.md")).unwrap();
        assert!(md.contains("5 of 10 met"), "{md}");
        assert!(md.contains("| gemv-unroll8 | same bits | 500 (1.00x) | 1200 (1.25x) | 50000 (1.00x) |"), "{md}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_measurements_are_reported_as_missed() {
        let d = dir_with(&[("gemm-and-copy.log", "gpu bench: no usable GPU here\n")]);
        let t = write(&d).unwrap();
        assert!(t.iter().all(|t| t.value().is_none() && !t.met()), "{t:?}");
        let md = std::fs::read_to_string(d.join("targets.md")).unwrap();
        assert!(md.contains("0 of 10 met") && md.contains("not measured"), "{md}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn attention_is_set_beside_sdpa_on_the_same_shapes() {
        let d = std::env::temp_dir().join(format!("turbine-gpu-report-attention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let shape = "\"q_heads\":32,\"kv_heads\":8,\"head_dim\":64,\"prefill_tokens\":2048,\"decode_batch\":64,\"decode_context\":1024";
        let ours = format!(
            "{{\"copy_gb_s\":4000,\"gemm\":[],\"attention\":{{{shape},\"prefill_ms\":2.0,\"decode_us\":300}}}}\n"
        );
        let theirs = format!(
            "{{\"attention\":{{{shape},\"prefill_ms_bf16\":0.5,\"prefill_ms_f32\":4.0,\"decode_us_bf16\":100,\"decode_us_f32\":400}}}}\n"
        );
        std::fs::write(d.join("logs/gemm-and-copy.log"), &ours).unwrap();
        std::fs::write(d.join("logs/anchors-1b.log"), &theirs).unwrap();
        let md = attention_markdown(&Logs { dir: &d });
        assert!(md.contains("| prefill, 2048 tokens | 2.0 ms | not measured | 0.5 ms | 4.0 ms | 4.00 |"), "{md}");
        assert!(
            md.contains("| decode, 64 rows at context 1024 | 300 µs | not measured | 100 µs | 400 µs | 3.00 |"),
            "{md}"
        );
        // The CUDA-core kernels beside them when that step ran.
        std::fs::write(d.join("logs/attention-cuda-cores.log"), ours.replace("2.0", "9.0")).unwrap();
        let md = attention_markdown(&Logs { dir: &d });
        assert!(md.contains("| prefill, 2048 tokens | 2.0 ms | 9.0 ms | 0.5 ms | 4.0 ms | 4.00 |"), "{md}");
        // Other shapes are not compared.
        std::fs::write(d.join("logs/anchors-1b.log"), theirs.replace("\"head_dim\":64", "\"head_dim\":128")).unwrap();
        assert_eq!(attention_markdown(&Logs { dir: &d }), "");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
