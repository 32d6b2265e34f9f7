//! The fixed worker pool that consumes the request channel. Workers share one receiver behind a mutex
//! (std's mpsc has a single consumer); each request is handled under `catch_unwind` so a bug costs one
//! reply, not a worker.

use super::{Dispatcher, Incoming};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Starts `workers` threads taking requests from `rx` until every sender is gone.
pub fn start(
    workers: usize,
    rx: Receiver<Incoming>,
    dispatcher: Arc<Dispatcher>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..workers.max(1))
        .map(|i| {
            let rx = rx.clone();
            let dispatcher = dispatcher.clone();
            std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || loop {
                let next = match rx.lock() {
                    Ok(guard) => guard.recv(),
                    Err(poisoned) => poisoned.into_inner().recv(),
                };
                let Ok(incoming) = next else { break };
                if catch_unwind(AssertUnwindSafe(|| dispatcher.handle(incoming))).is_err() {
                    log::error!("worker {i}: request handling panicked; continuing");
                }
            })
        })
        .collect()
}
