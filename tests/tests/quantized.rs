//! 8-bit checkpoints: `turbine quantize`'s output loads back to the same model it had in memory,
//! a checkpoint written by other code in the published FP8 layout (here: this file, with static
//! activation scales) loads and runs, and broken ones are refused with clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use turbine_core::fp8::{f32_to_e4m3, scale_for, E4M3_MAX};
use turbine_core::{Backend, HostTensor};
use turbine_kernels_ref::Cpu;
use turbine_models::precision::{Format, Policy};
use turbine_models::{CacheConfig, Logits, ModelRunner, Runner, SeqStep};
use turbine_tests::fixtures;

fn tiny(case: &str) -> PathBuf {
    fixtures().join("tiny").join(case)
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("turbine-quantized-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Logits of every position of a fixed prompt.
fn logits(m: turbine_models::LoadedModel<Cpu>) -> Vec<f32> {
    let mut r = Runner::new(Cpu::new(), m.model, CacheConfig::f32(16, 4)).unwrap();
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 500).collect();
    r.step(&[SeqStep { tokens: &ids, start: 0, blocks: &[0, 1], logits: Logits::All }]).unwrap();
    r.logits().unwrap()
}

#[test]
fn quantize_then_load_gives_the_model_that_was_in_memory() {
    let cpu = Cpu::new();
    let none = || vec!["none".to_string()];
    // (format, exceptions, static inputs, tensors kept): fp8's default keeps the last block (q, k,
    // v, o, gate, up, down: 7 tensors) of a model with no measured exceptions.
    let cases = [
        (Format::Fp8, none(), false, 0),
        (Format::Fp8, none(), true, 0),
        (Format::Fp8, vec![], false, 7),
        (Format::Fp8Weight, vec!["down".to_string()], false, 2),
        (Format::Int8Weight, vec![], false, 0),
    ];
    for (fmt, keep, static_inputs, kept) in cases {
        // Exported as `turbine quantize` does by default: without exact outlier channels.
        let policy =
            Policy { static_inputs, outliers: 0, calib_tokens: 256, ..Policy::parse(fmt.name(), &keep).unwrap() };
        let in_memory = turbine_models::load_with(&cpu, &tiny("llama-gqa"), &policy).unwrap();
        let dec = in_memory.model.decoder().unwrap();
        let out = temp(&format!("{}-{static_inputs}-{kept}", fmt.name()));
        let done = turbine_models::export::export(&cpu, dec, &tiny("llama-gqa"), &out, fmt).unwrap();
        assert_eq!(done.kept, kept, "{} {keep:?}", fmt.name());
        let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
        assert_eq!(cfg.contains("\"static\""), static_inputs, "{cfg}");
        let reloaded = turbine_models::load(&cpu, &out).unwrap();
        assert_eq!(logits(in_memory), logits(reloaded), "{}", fmt.name());
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A checkpoint's tensors by name: dtype, shape, bytes.
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn st(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> (Dtype, Vec<usize>, Vec<u8>) {
    (dtype, shape, data)
}

/// Writes an FP8 checkpoint of `case` the way published ones are laid out: E4M3 projection
/// weights, a scalar `weight_scale` and `input_scale` per projection, `activation_scheme:
/// static`. `edit` may break it.
fn external_fp8(case: &str, out: &Path, edit: &dyn Fn(&mut Tensors)) {
    let src = tiny(case);
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let proj = name.ends_with("_proj.weight") && name.contains(".layers.");
        if !proj {
            tensors.insert(name.clone(), st(view.dtype(), view.shape().to_vec(), view.data().to_vec()));
            continue;
        }
        let host = HostTensor::new(view.shape().to_vec(), turbine_core::DType::F32, view.data()).unwrap();
        let w = host.to_f32().unwrap();
        let s = scale_for(w.iter().fold(0f32, |a, v| a.max(v.abs())), E4M3_MAX);
        let codes: Vec<u8> = w.iter().map(|&v| f32_to_e4m3(v / s)).collect();
        let base = name.trim_end_matches(".weight");
        tensors.insert(name.clone(), st(Dtype::F8_E4M3, view.shape().to_vec(), codes));
        tensors.insert(format!("{base}.weight_scale"), st(Dtype::F32, vec![], s.to_le_bytes().to_vec()));
        // A calibrated-looking activation scale: inputs of these layers stay within ±8.
        tensors.insert(format!("{base}.input_scale"), st(Dtype::F32, vec![], (8.0f32 / 448.0).to_le_bytes().to_vec()));
    }
    edit(&mut tensors);
    std::fs::create_dir_all(out).unwrap();
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["quantization_config"] = serde_json::json!({"quant_method": "fp8", "activation_scheme": "static"});
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
}

#[test]
fn a_published_layout_fp8_checkpoint_loads_and_runs() {
    let cpu = Cpu::new();
    let out = temp("external");
    external_fp8("llama-gqa", &out, &|_| {});
    let q = logits(turbine_models::load(&cpu, &out).unwrap());
    let f = logits(turbine_models::load(&cpu, &tiny("llama-gqa")).unwrap());
    assert!(q.iter().all(|v| v.is_finite()));
    // Close to the f32 model: most positions keep their most likely token.
    let vocab = q.len() / 20;
    let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b });
    let same = q.chunks(vocab).zip(f.chunks(vocab)).filter(|(a, b)| argmax(a) == argmax(b)).count();
    assert!(same >= 14, "only {same} of 20 positions agree");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn broken_fp8_checkpoints_are_refused_clearly() {
    let cpu = Cpu::new();
    let key = "model.layers.0.self_attn.q_proj";
    type Edit = Box<dyn Fn(&mut Tensors)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "missing-scale",
            Box::new(move |t| {
                t.remove(&format!("{key}.weight_scale"));
            }),
            "weight_scale is missing",
        ),
        (
            "bad-scale",
            Box::new(move |t| {
                t.insert(format!("{key}.weight_scale"), st(Dtype::F32, vec![3], vec![0; 12]));
            }),
            "weight_scale",
        ),
        (
            "missing-input-scale",
            Box::new(move |t| {
                t.remove(&format!("{key}.input_scale"));
            }),
            "input_scale is missing",
        ),
        (
            "zero-scale",
            Box::new(move |t| {
                t.insert(format!("{key}.weight_scale"), st(Dtype::F32, vec![], 0f32.to_le_bytes().to_vec()));
            }),
            "positive",
        ),
    ];
    for (name, edit, needle) in cases {
        let out = temp(name);
        external_fp8("llama-gqa", &out, edit.as_ref());
        let err = turbine_models::load(&cpu, &out).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(needle), "{name}: {err:?} does not say {needle:?}");
        let _ = std::fs::remove_dir_all(&out);
    }
    // An unknown quantisation method.
    let out = temp("method");
    external_fp8("llama-gqa", &out, &|_| {});
    let cfg = out.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"fp8\"", "\"awq\"");
    std::fs::write(&cfg, text).unwrap();
    let err = turbine_models::load(&cpu, &out).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("awq"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn policy_errors_name_the_problem() {
    let cpu = Cpu::new();
    assert!(Policy::parse("fp4", &[]).unwrap_err().to_string().contains("fp4"));
    assert!(Policy::parse("fp8", &["attn".into()]).unwrap_err().to_string().contains("attn"));
    let short = Policy {
        rounding: turbine_models::precision::Rounding::Gptq,
        calib_text: Some("Too short.".into()),
        ..Policy::parse("fp8", &[]).unwrap()
    };
    let err =
        turbine_models::load_with(&cpu, &tiny("llama-gqa"), &short).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("calibration text") && err.contains("at least"), "{err}");
    // GPTQ with enough text runs and keeps the model close.
    let gptq = Policy {
        rounding: turbine_models::precision::Rounding::Gptq,
        calib_tokens: 256,
        ..Policy::parse("int8-weight", &[]).unwrap()
    };
    let q = logits(turbine_models::load_with(&cpu, &tiny("llama-gqa"), &gptq).unwrap());
    assert!(q.iter().all(|v| v.is_finite()));
}

/// SmoothQuant moves input outliers into the weights, and centring moves the inputs' means into
/// the bias, without changing what the product computes: the FP8 model stays as close to the f32
/// model as the plain FP8 one (a change applied to one side only would not). The FP8 checkpoint
/// layout has no place for the factors or the shifts, so exporting such a model is refused.
#[test]
fn smoothing_and_centring_keep_the_product_and_are_not_exported() {
    let cpu = Cpu::new();
    let load = |p: &Policy| turbine_models::load_with(&cpu, &tiny("llama-gqa"), p).unwrap();
    let reference = logits(load(&Policy::parse("f32", &[]).unwrap()));
    let fp8 = Policy { outliers: 0, calib_tokens: 256, default_keep: false, ..Policy::parse("fp8", &[]).unwrap() };
    let plain = logits(load(&fp8));
    let dist = |a: &[f32]| a.iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (policy, flag) in [
        (Policy { smooth: Some(0.5), ..fp8.clone() }, "--smooth"),
        (Policy { center: true, ..fp8.clone() }, "--center"),
    ] {
        let changed = load(&policy);
        let dec = changed.model.decoder().unwrap();
        let has = |l: &turbine_models::layers::Linear<Cpu>| {
            if policy.center {
                l.shift.is_some() && l.b.is_some()
            } else {
                l.smooth.is_some()
            }
        };
        assert!(dec.layers.iter().all(|l| has(&l.qkv) && has(&l.down)), "{flag}");
        let out = temp("changed");
        let err =
            turbine_models::export::export(&cpu, dec, &tiny("llama-gqa"), &out, Format::Fp8).unwrap_err().to_string();
        assert!(err.contains(flag), "{err}");
        let changed = logits(changed);
        assert!(dist(&changed) < 3.0 * dist(&plain) + 1e-3 * scale, "{flag}: {} vs {}", dist(&changed), dist(&plain));
        assert!(dist(&changed) > 0.0);
    }
    let bad = Policy { smooth: Some(1.5), calib_tokens: 256, ..Policy::parse("fp8", &[]).unwrap() };
    let err =
        turbine_models::load_with(&cpu, &tiny("llama-gqa"), &bad).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("0..=1"), "{err}");
}

/// Outlier channels: each 8-bit projection keeps its calibrated outlier input channels exact (f32
/// weights beside the 8-bit ones, whose columns there are zero, and left out of the quantised
/// input), alone and with centring, GPTQ and smoothing; the model stays close to the f32 one;
/// the FP8 checkpoint layout cannot hold them.
#[test]
fn outlier_channels_are_multiplied_exactly() {
    let cpu = Cpu::new();
    let load = |p: &Policy| turbine_models::load_with(&cpu, &tiny("llama-gqa"), p).unwrap();
    let reference = logits(load(&Policy::parse("f32", &[]).unwrap()));
    let dist = |a: &[f32]| a.iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
    let base =
        |f: &str| Policy { outliers: 4, calib_tokens: 256, default_keep: false, ..Policy::parse(f, &[]).unwrap() };
    let gptq = turbine_models::precision::Rounding::Gptq;
    for policy in [
        base("fp8"),
        Policy { center: true, rounding: gptq, ..base("fp8") },
        Policy { smooth: Some(0.5), ..base("fp8") },
        Policy { rounding: gptq, ..base("int8-weight") },
        base("fp8-weight"),
    ] {
        let what = format!("{policy:?}");
        let plain = logits(load(&Policy { outliers: 0, ..policy.clone() }));
        let changed = load(&policy);
        let dec = changed.model.decoder().unwrap();
        for lin in dec.layers.iter().flat_map(|l| [&l.qkv, &l.o, &l.up, &l.down]) {
            let e = lin.exact.as_ref().expect("exact channels");
            let idx = cpu.download(&e.idx).unwrap();
            let idx: Vec<u32> = idx.bytes().chunks(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
            assert_eq!(idx.len(), 4, "{what}");
            assert_eq!(cpu.download(&e.w).unwrap().shape().dims(), &[lin.w.rows(), 4]);
            let k = lin.w.cols();
            let codes = cpu.download(&lin.w).unwrap();
            assert!(codes.bytes().chunks(k).all(|row| idx.iter().all(|&c| row[c as usize] == 0)), "{what}");
            if policy.format == Format::Fp8 {
                let mask = cpu.download(lin.smooth.as_ref().unwrap()).unwrap().to_f32().unwrap();
                assert!((0..k as u32).all(|c| (mask[c as usize] == 0.0) == idx.contains(&c)), "{what}");
            } else {
                assert!(lin.smooth.is_none() && lin.quant_x.is_none(), "{what}");
            }
        }
        let out = temp("outliers");
        let err =
            turbine_models::export::export(&cpu, dec, &tiny("llama-gqa"), &out, policy.format).unwrap_err().to_string();
        assert!(err.contains("--outliers 0"), "{err}");
        let changed = logits(changed);
        assert!(dist(&changed) < 3.0 * dist(&plain) + 1e-3 * scale, "{what}: {} vs {}", dist(&changed), dist(&plain));
    }
    // More channels than a quarter of a projection's inputs: a quarter.
    let many = load(&Policy { outliers: 100_000, ..base("fp8") });
    for lin in many.model.decoder().unwrap().layers.iter().flat_map(|l| [&l.qkv, &l.down]) {
        assert_eq!(lin.exact.as_ref().unwrap().idx.shape().numel(), lin.w.cols() / 4);
    }
}

/// One calibration run at load serves both the projections and 8-bit KV pages (their key
/// shifts); a KV cache alone gets a short run; an f32 cache keeps no statistics.
#[test]
fn the_calibration_run_serves_the_kv_key_shifts_too() {
    use turbine_models::precision::KvFormat;
    let cpu = Cpu::new();
    let both = Policy { calib_tokens: 128, kv: KvFormat::Fp8, ..Policy::parse("fp8", &[]).unwrap() };
    assert!(both.needs_calibration());
    let kv_only = Policy { kv: KvFormat::Int8, ..Policy::default() };
    assert!(!kv_only.needs_calibration());
    for policy in [both, kv_only] {
        let m = turbine_models::load_with(&cpu, &tiny("llama-gqa"), &policy).unwrap();
        let spec = m.model.spec().clone();
        let stats = m.kv_stats.clone().expect("the calibration run's key statistics");
        assert_eq!(stats.len(), spec.layers);
        assert!(stats.iter().all(|s| s.k_mean.len() == spec.kv_heads * spec.head_dim));
        assert!(stats.iter().flat_map(|s| &s.k_mean).any(|&v| v != 0.0), "mean keys were measured");
        let cache = CacheConfig { kv_dtype: policy.kv.dtype(), ..CacheConfig::f32(16, 4) };
        let mut r = Runner::new(Cpu::new(), m.model, cache).unwrap();
        r.set_key_shifts(&stats).unwrap();
    }
    let fp8_f32_kv = Policy { calib_tokens: 128, ..Policy::parse("fp8", &[]).unwrap() };
    assert!(turbine_models::load_with(&cpu, &tiny("llama-gqa"), &fp8_f32_kv).unwrap().kv_stats.is_none());
}

/// A policy that needs no calibration converts each projection on the host from the
/// checkpoint's bytes and uploads it once (`Staging::Defer`); one whose model runs first keeps a
/// host copy to convert from (`Staging::Keep`). Both give, bit for bit, the model that converting
/// the uploaded weights after loading gives, in every family, kept projections included.
#[test]
fn weights_converted_on_the_host_are_the_weights_converted_on_the_device() {
    use turbine_models::precision::KvFormat;
    let cpu = Cpu::new();
    let families = std::fs::read_dir(fixtures().join("tiny")).unwrap();
    let mut seen = 0;
    for dir in families.map(|e| e.unwrap().path()).filter(|p| p.join("config.json").exists()) {
        for (fmt, keep) in [("fp8-weight", vec!["down".to_string()]), ("int8-weight", vec![]), ("fp8", vec![])] {
            let policy = Policy { outliers: 0, ..Policy::parse(fmt, &keep).unwrap() };
            assert!(!policy.needs_calibration());
            let mut after = turbine_models::load(&cpu, &dir).unwrap();
            policy.apply(&cpu, after.model.decoder_mut().unwrap(), None).unwrap();
            let deferred = turbine_models::load_with(&cpu, &dir, &policy).unwrap();
            let dec = deferred.model.decoder().unwrap();
            assert!(dec.layers.iter().all(|l| [&l.qkv, &l.o, &l.up, &l.down].iter().all(|p| p.host.is_none())));
            assert!(dec.layers.iter().all(|l| l.down.w.shape().numel() > 0), "kept projections are uploaded");
            let kept = Policy { kv: KvFormat::Int8, ..policy.clone() };
            let kept = turbine_models::load_with(&cpu, &dir, &kept).unwrap();
            let want = logits(after);
            assert_eq!(want, logits(deferred), "{} {fmt}: deferred", dir.display());
            assert_eq!(want, logits(kept), "{} {fmt}: kept", dir.display());
            seen += 1;
        }
    }
    assert_eq!(seen, 30, "ten families, three policies");
}
