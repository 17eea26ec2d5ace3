//! Mutation tests of the model loaders (issue 19): thousands of mutants of a GGUF file and of a
//! safetensors checkpoint with its config and tokenizer, each loaded (and, when it loads, run
//! one step). Every mutant must load or fail with an error: no panic, abort, hang or oversized
//! allocation (the allocator below aborts on any single allocation over 1 GiB, a watchdog on any
//! mutant over 20 s). `TURBINE_MUTANTS=N` runs N per file instead of the default.

use std::path::Path;

use turbine_tests::mutate::{seeds, Bounded, Mutator, Watchdog};
use turbine_tests::{fixtures, greedy, load};

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// Loads `path` and, if it loads, generates one token; a panic is returned as its message.
fn try_load(path: &Path) -> Result<&'static str, String> {
    // With one seed chosen (reproducing a mutant), the errors are shown.
    let show = |e: &dyn std::fmt::Display| {
        if std::env::var_os("TURBINE_MUTANT_SEED").is_some() {
            eprintln!("{e}");
        }
    };
    let r = std::panic::catch_unwind(|| match load(path, 64) {
        Ok(mut m) => match greedy(&mut m, &[1, 2, 3], 1) {
            Ok(_) => "ran",
            Err(e) => {
                show(&e);
                "refused at run"
            }
        },
        Err(e) => {
            show(&e);
            "refused at load"
        }
    });
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// Where a GGUF file's tensor data starts: everything before is header, metadata and tensor
/// infos (what the mutants aim at). Found as the end of the last tensor info, rounded up.
fn gguf_header_len(bytes: &[u8]) -> usize {
    // The tiny fixtures' headers are well under this; a bound keeps the focus on them.
    bytes.len().min(64 << 10)
}

struct Tally {
    kinds: std::collections::BTreeMap<&'static str, usize>,
    panics: Vec<String>,
}

impl Tally {
    fn new() -> Self {
        Tally { kinds: Default::default(), panics: Vec::new() }
    }

    fn record(&mut self, what: String, r: Result<&'static str, String>) {
        match r {
            Ok(k) => *self.kinds.entry(k).or_default() += 1,
            Err(p) => self.panics.push(format!("{what}: {p}")),
        }
    }

    fn finish(self, name: &str) {
        eprintln!("{name}: {:?}, {} panics", self.kinds, self.panics.len());
        assert!(self.panics.is_empty(), "{name}: {} mutants panicked:\n{}", self.panics.len(), self.panics.join("\n"));
    }
}

#[test]
fn gguf_mutants_load_or_fail_cleanly() {
    let dir = std::env::temp_dir().join(format!("turbine-mutants-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tally = Tally::new();
    let cases = ["gpt2", "bloom-alibi", "falcon-new", "gptneox-partial-rope"];
    let per_case = 8000usize.div_ceil(cases.len());
    for case in cases {
        let bytes = std::fs::read(fixtures().join("gguf").join(format!("{case}.gguf"))).unwrap();
        let head = gguf_header_len(&bytes);
        for seed in seeds(per_case) {
            let path = dir.join(format!("{case}.gguf"));
            std::fs::write(&path, Mutator::new(seed).bytes(&bytes, 0..head)).unwrap();
            let what = format!("{case} seed {seed}");
            turbine_tests::mutate::trying(0, &what);
            let _dog = Watchdog::start(what.clone(), 20);
            tally.record(what, try_load(&path));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    tally.finish("GGUF mutants");
}

#[test]
fn safetensors_config_and_tokenizer_mutants_load_or_fail_cleanly() {
    let src = fixtures().join("tiny").join("llama-gqa");
    let dir = std::env::temp_dir().join(format!("turbine-mutants-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer.json")).unwrap()).unwrap();
    let mut tally = Tally::new();
    for seed in seeds(8000) {
        let mut m = Mutator::new(seed);
        // One file in three mutated, each mutant changing at least one.
        let which = 1 + m.below(7);
        let w = if which & 1 != 0 { m.bytes(&weights, 0..header) } else { weights.clone() };
        let c = if which & 2 != 0 {
            if m.below(4) == 0 {
                m.bytes(config.to_string().as_bytes(), 0..usize::MAX)
            } else {
                m.json(&config).to_string().into_bytes()
            }
        } else {
            config.to_string().into_bytes()
        };
        let t = if which & 4 != 0 {
            m.json(&tokenizer).to_string().into_bytes()
        } else {
            tokenizer.to_string().into_bytes()
        };
        std::fs::write(dir.join("model.safetensors"), &w).unwrap();
        std::fs::write(dir.join("config.json"), &c).unwrap();
        std::fs::write(dir.join("tokenizer.json"), &t).unwrap();
        let what = format!("llama-gqa seed {seed} (files {which:03b})");
        turbine_tests::mutate::trying(1, &what);
        let _dog = Watchdog::start(what.clone(), 20);
        tally.record(what, try_load(&dir));
    }
    let _ = std::fs::remove_dir_all(&dir);
    tally.finish("safetensors/config/tokenizer mutants");
}
