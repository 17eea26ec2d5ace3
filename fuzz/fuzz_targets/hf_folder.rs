//! A Hugging Face folder (config.json, tokenizer.json, model.safetensors packed in one input):
//! loaded and, if it loads, run two steps.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    turbine_fuzz::init();
    let dir = turbine_fuzz::scratch().join("folder");
    let _ = std::fs::create_dir_all(&dir);
    if turbine_fuzz::unpack_folder(data, &dir) {
        turbine_fuzz::load_and_run(&dir);
    }
});
