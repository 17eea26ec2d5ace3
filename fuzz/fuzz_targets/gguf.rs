//! A GGUF file: parsed, loaded (tokenizer, config, tensors) and, if it loads, run two steps.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    turbine_fuzz::init();
    let path = turbine_fuzz::scratch().join("input.gguf");
    if std::fs::write(&path, data).is_ok() {
        turbine_fuzz::load_and_run(&path);
    }
});
