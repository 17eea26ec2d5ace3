//! Recorded decode steps (CUDA graphs). A decode step queues a few hundred small kernels whose
//! launch costs dominate at small batch sizes; recorded once, it is replayed with one launch.
//!
//! A recording holds device addresses, so it is only replayed while no buffer has been
//! allocated or freed since it was made: every allocation and every free bumps the backend's
//! memory epoch ([`Epoch`]), and a recording made under another epoch is dropped. A key is run
//! as usual the first time it is seen (which sizes every buffer it needs), recorded the second
//! time, and replayed after that.
//!
//! Off unless `TURBINE_CUDA_GRAPHS=1` until a GPU run has verified it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaGraph, CudaStream};
use turbine_core::{Error, GraphStep, Result};

/// Counts allocations and frees of device memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct Epoch(Arc<AtomicU64>);

impl Epoch {
    /// Records that device addresses changed.
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A recording and the memory epoch it was made under.
struct Recorded {
    graph: CudaGraph,
    epoch: u64,
}

// SAFETY: a `CudaGraph` is a handle to driver objects that must not be used from two threads at
// once; every use goes through the `Mutex` in `Graphs`.
unsafe impl Send for Recorded {}

#[derive(Default)]
struct State {
    /// Keys run once, with the epoch they ran under.
    seen: HashMap<u64, u64>,
    recorded: HashMap<u64, Recorded>,
    /// The key being recorded and the epoch it started under.
    capturing: Option<(u64, u64)>,
}

/// The recordings of one backend.
pub(crate) struct Graphs {
    enabled: bool,
    state: Mutex<State>,
}

/// At most this many recordings are kept (batch sizes × block-table widths).
const MAX_RECORDED: usize = 64;

fn lock_err() -> Error {
    Error::Backend { backend: "cuda", msg: "graph state poisoned".into() }
}

impl Graphs {
    pub(crate) fn new() -> Self {
        let enabled = std::env::var("TURBINE_CUDA_GRAPHS").is_ok_and(|v| v == "1");
        Graphs { enabled, state: Mutex::new(State::default()) }
    }

    pub(crate) fn begin(&self, stream: &Arc<CudaStream>, epoch: &Epoch, key: u64) -> Result<GraphStep> {
        if !self.enabled {
            return Ok(GraphStep::Eager);
        }
        let now = epoch.get();
        let mut st = self.state.lock().map_err(|_| lock_err())?;
        if let Some(r) = st.recorded.get(&key) {
            if r.epoch == now {
                r.graph
                    .launch()
                    .map_err(|e| Error::Backend { backend: "cuda", msg: format!("replaying a step: {e}") })?;
                return Ok(GraphStep::Replayed);
            }
            st.recorded.remove(&key);
        }
        if st.seen.insert(key, now) != Some(now) {
            return Ok(GraphStep::Eager);
        }
        match stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) {
            Ok(()) => {
                st.capturing = Some((key, now));
                Ok(GraphStep::Capturing)
            }
            Err(e) => {
                notice(&format!("cannot record a step ({e})"));
                Ok(GraphStep::Eager)
            }
        }
    }

    pub(crate) fn end(&self, stream: &Arc<CudaStream>, epoch: &Epoch, key: u64, ok: bool) -> Result<bool> {
        let mut st = self.state.lock().map_err(|_| lock_err())?;
        let Some((k, started)) = st.capturing.take() else { return Ok(false) };
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        match graph {
            Ok(Some(graph)) if ok && k == key && epoch.get() == started => {
                graph
                    .launch()
                    .map_err(|e| Error::Backend { backend: "cuda", msg: format!("running a recorded step: {e}") })?;
                if st.recorded.len() >= MAX_RECORDED {
                    st.recorded.clear();
                }
                st.recorded.insert(key, Recorded { graph, epoch: started });
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) => {
                notice(&format!("recording a step failed ({e}); running it as usual"));
                st.seen.remove(&key);
                Ok(false)
            }
        }
    }
}

/// Says once per process why steps are not recorded.
fn notice(msg: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("turbine: CUDA graphs: {msg}");
    }
}
