//! Raw bytes as an HTTP/1.1 connection's request to the server of the tiny model: an answer or
//! a close within 10 s, never a 500 or a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    turbine_fuzz::init();
    turbine_fuzz::send(data);
});
