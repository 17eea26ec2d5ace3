//! A small deterministic mutator for the mutation tests (model files, HTTP requests): byte-level
//! edits aimed at a file's structure (headers, sizes, offsets) and JSON-aware edits (a value
//! replaced by an edge case, removed, or duplicated). Seeded, so a failing mutant is named by its
//! seed and reproduced exactly. The `cargo fuzz` targets under `fuzz/` cover the same surfaces
//! with coverage guidance for long runs.

use std::ops::Range;

use serde_json::{json, Value};
use turbine_core::sampling::Rng;

/// Integers that break size and offset arithmetic, written little-endian as 4 or 8 bytes.
const EDGE_INTS: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    31,
    32,
    255,
    0x7f,
    0x80,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// JSON values that break configs and requests.
fn edge_json(rng: &mut Rng) -> Value {
    let pick = [
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(1e9),
        json!(1e300),
        json!(-1e300),
        json!(4_294_967_296u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(-0.0),
        json!(""),
        json!("x"),
        json!("\u{0}\u{ffff}<|im_end|>"),
        json!(null),
        json!(true),
        json!([]),
        json!({}),
        json!([1, 2, 3]),
        json!({"a": 1}),
    ];
    pick[(rng.next_u64() % pick.len() as u64) as usize].clone()
}

/// A seeded mutator.
pub struct Mutator {
    rng: Rng,
}

impl Mutator {
    /// The mutator of one seed.
    pub fn new(seed: u64) -> Self {
        Mutator { rng: Rng::new(seed) }
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.rng.next_u64() % n as u64) as usize
        }
    }

    /// 1 to 4 byte edits of `data`, three in four of them inside `focus` (the header, where
    /// sizes and offsets live): a bit flip, an edge byte, an edge integer over 4 or 8 bytes, an
    /// insertion, a deletion, a duplicated run, or a truncation.
    pub fn bytes(&mut self, data: &[u8], focus: Range<usize>) -> Vec<u8> {
        let mut out = data.to_vec();
        for _ in 0..1 + self.below(4) {
            if out.is_empty() {
                out.push(self.below(256) as u8);
                continue;
            }
            let end = focus.end.min(out.len());
            let start = focus.start.min(end);
            let at =
                if end > start && self.below(4) != 0 { start + self.below(end - start) } else { self.below(out.len()) };
            match self.below(8) {
                0 => out[at] ^= 1 << self.below(8),
                1 => out[at] = [0, 1, 0x7f, 0x80, 0xff][self.below(5)],
                2 | 3 => {
                    let v = EDGE_INTS[self.below(EDGE_INTS.len())];
                    let width = if self.below(2) == 0 { 4 } else { 8 };
                    let bytes = v.to_le_bytes();
                    for (i, b) in bytes[..width].iter().enumerate() {
                        if let Some(x) = out.get_mut(at + i) {
                            *x = *b;
                        }
                    }
                }
                4 => {
                    let n = 1 + self.below(16);
                    let ins: Vec<u8> = (0..n).map(|_| self.below(256) as u8).collect();
                    out.splice(at..at, ins);
                }
                5 => {
                    let n = (1 + self.below(16)).min(out.len() - at);
                    out.drain(at..at + n);
                }
                6 => {
                    let n = (1 + self.below(64)).min(out.len() - at);
                    let run = out[at..at + n].to_vec();
                    out.splice(at..at, run);
                }
                _ => out.truncate(at),
            }
        }
        out
    }

    /// 1 to 3 edits of a JSON document: a value replaced by an edge case, a number scaled, a
    /// member or element removed or duplicated under another key.
    pub fn json(&mut self, v: &Value) -> Value {
        let mut out = v.clone();
        for _ in 0..1 + self.below(3) {
            let mut paths = Vec::new();
            collect_paths(&out, &mut Vec::new(), &mut paths);
            if paths.is_empty() {
                return edge_json(&mut self.rng);
            }
            let path = paths[self.below(paths.len())].clone();
            let action = self.below(5);
            let edge = edge_json(&mut self.rng);
            let scale = [0.0, -1.0, 2.0, 1000.0, 1e-9][self.below(5)];
            let Some((last, parent_path)) = path.split_last() else {
                out = edge;
                continue;
            };
            let Some(parent) = pointer_mut(&mut out, parent_path) else { continue };
            match (parent, last, action) {
                (Value::Object(m), Key::Name(k), 0) => {
                    m.remove(k);
                }
                (Value::Array(a), Key::Index(i), 0) if *i < a.len() => {
                    a.remove(*i);
                }
                (Value::Object(m), Key::Name(k), 1) => {
                    if let Some(x) = m.get(k).cloned() {
                        m.insert(format!("{k}_"), x);
                    }
                }
                (Value::Array(a), Key::Index(i), 1) if *i < a.len() => {
                    let x = a[*i].clone();
                    a.insert(*i, x);
                }
                (parent, key, 2) => {
                    if let Some(Value::Number(n)) = child(parent, key) {
                        let scaled = n.as_f64().map(|f| f * scale).and_then(serde_json::Number::from_f64);
                        if let Some(s) = scaled {
                            set(parent, key, Value::Number(s));
                        }
                    } else {
                        set(parent, key, edge);
                    }
                }
                (parent, key, _) => set(parent, key, edge),
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
enum Key {
    Name(String),
    Index(usize),
}

fn collect_paths(v: &Value, at: &mut Vec<Key>, out: &mut Vec<Vec<Key>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push(Key::Name(k.clone()));
                out.push(at.clone());
                collect_paths(x, at, out);
                at.pop();
            }
        }
        // Long arrays (vocabularies, merges) are sampled, not enumerated.
        Value::Array(a) => {
            let step = (a.len() / 64).max(1);
            for i in (0..a.len()).step_by(step) {
                at.push(Key::Index(i));
                out.push(at.clone());
                collect_paths(&a[i], at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn pointer_mut<'a>(v: &'a mut Value, path: &[Key]) -> Option<&'a mut Value> {
    let mut cur = v;
    for k in path {
        cur = match (cur, k) {
            (Value::Object(m), Key::Name(n)) => m.get_mut(n)?,
            (Value::Array(a), Key::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn child<'a>(parent: &'a Value, key: &Key) -> Option<&'a Value> {
    match (parent, key) {
        (Value::Object(m), Key::Name(k)) => m.get(k),
        (Value::Array(a), Key::Index(i)) => a.get(*i),
        _ => None,
    }
}

fn set(parent: &mut Value, key: &Key, v: Value) {
    match (parent, key) {
        (Value::Object(m), Key::Name(k)) => {
            m.insert(k.clone(), v);
        }
        (Value::Array(a), Key::Index(i)) if *i < a.len() => a[*i] = v,
        _ => {}
    }
}

/// How many mutants a mutation test runs: `TURBINE_MUTANTS` if set (for longer runs), else
/// `default`.
pub fn count(default: usize) -> usize {
    std::env::var("TURBINE_MUTANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The seeds a mutation test runs: `0..count(default)`, or only `TURBINE_MUTANT_SEED` when set
/// (to reproduce one).
pub fn seeds(default: usize) -> Vec<u64> {
    match std::env::var("TURBINE_MUTANT_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(s) => vec![s],
        None => (0..count(default) as u64).collect(),
    }
}

/// A guard that aborts the process, naming `what`, if it is not dropped within `secs` seconds:
/// a mutant that hangs fails the run instead of stalling it.
pub struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    /// Starts the clock for `what`.
    pub fn start(what: String, secs: u64) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while t0.elapsed().as_secs() < secs {
                std::thread::sleep(std::time::Duration::from_millis(50));
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
            }
            eprintln!("mutation test: {what} hung for {secs} s");
            std::process::abort();
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A global allocator that aborts on any single allocation over `LIMIT` bytes, naming its size:
/// what a mutated size field must never cause. Install it in a test binary with
/// `#[global_allocator] static A: turbine_tests::mutate::Bounded = turbine_tests::mutate::Bounded;`.
pub struct Bounded;

/// The largest single allocation [`Bounded`] allows (the tiny fixtures need a few MB).
pub const LIMIT: usize = 1 << 30;

// SAFETY: forwards to the system allocator; only refuses (by aborting) oversized requests.
unsafe impl std::alloc::GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: same layout contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: same layout contract as the caller's.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// The mutants being tried now, one per test thread (named in the abort message).
static CURRENT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Names the mutant this thread tries next (for [`Bounded`]'s abort message); call with the
/// same `slot` (0 or 1…) from one test each.
pub fn trying(slot: usize, what: &str) {
    let mut c = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    while c.len() <= slot {
        c.push(String::with_capacity(256));
    }
    c[slot].clear();
    c[slot].push_str(what);
}

fn write_err(b: &[u8]) {
    // SAFETY: writes a valid buffer to fd 2.
    unsafe { libc_write(2, b.as_ptr(), b.len()) };
}

fn check(size: usize) {
    if size > LIMIT {
        // No allocation here: fixed text and the labels already stored.
        write_err(
            b"mutation test: a single allocation over 1 GiB was requested (an unbounded size from the input); trying: ",
        );
        if let Ok(c) = CURRENT.try_lock() {
            for w in c.iter() {
                write_err(w.as_bytes());
                write_err(b"; ");
            }
        }
        write_err(b"\n");
        std::process::abort();
    }
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_are_reproducible_and_differ() {
        let data: Vec<u8> = (0..=255).collect();
        let a = Mutator::new(7).bytes(&data, 0..64);
        assert_eq!(a, Mutator::new(7).bytes(&data, 0..64));
        let changed = (0..100).filter(|&s| Mutator::new(s).bytes(&data, 0..64) != data).count();
        assert!(changed >= 95, "{changed} of 100 mutants differ from the input");
        let v = json!({"a": 1, "b": [1, 2, {"c": "x"}]});
        let changed = (0..100).filter(|&s| Mutator::new(s).json(&v) != v).count();
        assert!(changed >= 80, "{changed} of 100 JSON mutants differ");
    }
}
