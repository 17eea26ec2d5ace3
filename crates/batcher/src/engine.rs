//! The asynchronous engine: one dedicated thread owns the [`EngineCore`] (scheduler, KV blocks,
//! model) and runs model steps off the async runtime; callers submit requests and read each
//! request's events from its own stream.
//!
//! ```no_run
//! # async fn demo(core: turbine_batcher::EngineCore) -> Result<(), turbine_batcher::SubmitError> {
//! use turbine_batcher::{Engine, Event, Request};
//! use turbine_core::sampling::SamplingParams;
//!
//! let engine = Engine::start(core);
//! let params = SamplingParams { temperature: 0.0, ..Default::default() };
//! let req = Request::new(vec![504, 3575, 282, 4649, 314], params, 16)?.with_stop_ids(vec![2]);
//! let mut stream = engine.submit(req).await?;
//! while let Some(event) = stream.next().await {
//!     match event {
//!         Event::Token { token, .. } => println!("token {} (logprob {})", token.id, token.logprob),
//!         Event::Finished { reason, usage, .. } => println!("{} after {} tokens", reason.as_str(), usage.completion_tokens),
//!         Event::Error(e) => eprintln!("{e}"),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::request::{Event, Request, RequestId, Stats, SubmitError};
use crate::scheduler::EngineCore;

enum Cmd {
    Submit(Request, oneshot::Sender<Result<(RequestId, mpsc::UnboundedReceiver<Event>), SubmitError>>),
    Cancel(RequestId),
    CancelAll,
    Stats(oneshot::Sender<Stats>),
}

/// A running engine. Dropping it cancels what is left and stops its thread.
pub struct Engine {
    cmd: Option<mpsc::UnboundedSender<Cmd>>,
    thread: Option<JoinHandle<()>>,
}

/// The events of one request: tokens as they are sampled, then one `Finished` (or `Error`).
/// Dropping it cancels the request.
#[derive(Debug)]
pub struct RequestStream {
    /// The request's id (for [`Engine::cancel`]).
    pub id: RequestId,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl RequestStream {
    /// The next event, or `None` once the request has finished.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// [`RequestStream::next`] for synchronous callers (not from inside an async runtime).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

impl Engine {
    /// Starts the engine thread.
    pub fn start(core: EngineCore) -> Engine {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("turbine-engine".into())
            .spawn(move || run(core, rx))
            .expect("spawn the engine thread");
        Engine { cmd: Some(tx), thread: Some(thread) }
    }

    fn send(&self, c: Cmd) -> Result<(), SubmitError> {
        self.cmd.as_ref().and_then(|t| t.send(c).ok()).ok_or(SubmitError::ShutDown)
    }

    /// Queues a request; fails at once (typed) when it is invalid or can never fit.
    pub async fn submit(&self, req: Request) -> Result<RequestStream, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Submit(req, reply))?;
        let (id, events) = rx.await.map_err(|_| SubmitError::ShutDown)??;
        Ok(RequestStream { id, rx: events })
    }

    /// Cancels a request: its blocks are freed and its stream ends with `Finished { Cancelled }`.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.send(Cmd::Cancel(id));
    }

    /// Cancels every request in flight (each stream ends with `Finished { Cancelled }` and what
    /// it had generated); the engine keeps accepting new ones. For a server whose drain time is up.
    pub fn cancel_all(&self) {
        let _ = self.send(Cmd::CancelAll);
    }

    /// Stops the engine: requests still in flight end with `Finished { Cancelled }`, and later
    /// calls fail with [`SubmitError::ShutDown`].
    pub fn shutdown(&mut self) {
        self.cmd.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Counters and KV occupancy.
    pub async fn stats(&self) -> Result<Stats, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Stats(reply))?;
        rx.await.map_err(|_| SubmitError::ShutDown)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(mut core: EngineCore, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut streams: HashMap<RequestId, mpsc::UnboundedSender<Event>> = HashMap::new();
    loop {
        // Idle: wait for a command. Busy: take what has arrived, then step.
        let first = if core.has_work() {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.blocking_recv() {
                Some(c) => Some(c),
                None => break,
            }
        };
        let mut next = first;
        while let Some(cmd) = next {
            match cmd {
                Cmd::Submit(req, reply) => {
                    let res = core.add(req).map(|id| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        streams.insert(id, tx);
                        (id, rx)
                    });
                    if let Err(Ok((id, _))) = reply.send(res) {
                        // The caller went away before hearing back.
                        core.cancel(id);
                        streams.remove(&id);
                    }
                }
                Cmd::Cancel(id) => {
                    if let (Some(ev), Some(tx)) = (core.cancel(id), streams.remove(&id)) {
                        let _ = tx.send(ev);
                    }
                }
                Cmd::CancelAll => {
                    for (id, tx) in streams.drain() {
                        if let Some(ev) = core.cancel(id) {
                            let _ = tx.send(ev);
                        }
                    }
                }
                Cmd::Stats(reply) => {
                    let _ = reply.send(core.stats());
                }
            }
            next = rx.try_recv().ok();
        }
        if !core.has_work() {
            continue;
        }
        match core.step() {
            Ok(events) => {
                for (id, ev) in events {
                    let finished = matches!(ev, Event::Finished { .. });
                    let delivered = streams.get(&id).is_some_and(|tx| tx.send(ev).is_ok());
                    if finished || !delivered {
                        streams.remove(&id);
                    }
                    if !delivered && !finished {
                        // Nobody is listening: stop spending compute on it.
                        core.cancel(id);
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (id, tx) in streams.drain() {
                    core.cancel(id);
                    let _ = tx.send(Event::Error(msg.clone()));
                }
            }
        }
    }
    // Shutting down: whatever is left is cancelled.
    for (id, tx) in streams.drain() {
        if let Some(ev) = core.cancel(id) {
            let _ = tx.send(ev);
        }
    }
}
