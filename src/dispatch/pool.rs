//! The fixed worker pool that consumes the request channel. Workers share one receiver behind a mutex
//! (std's mpsc has a single consumer); each request is handled under `catch_unwind` so a bug costs one
//! reply, not a worker.

use crate::sync::{lock, wait_timeout};
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
                let next = lock(&rx).recv();
                let Ok(incoming) = next else { break };
                if catch_unwind(AssertUnwindSafe(|| dispatcher.handle(incoming))).is_err() {
                    log::error!("worker {i}: request handling panicked; continuing");
                }
            })
        })
        .collect()
}

/// A unit of background work (an async action's body).
pub type Job = Box<dyn FnOnce() + Send>;

/// Idle task threads kept for reuse; more are started whenever every thread is busy, so a task never
/// waits behind another one (a drain must not queue behind a compile).
pub const KEEP_IDLE: usize = 4;
/// How long a surplus idle task thread lingers before exiting.
pub const IDLE_LINGER: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Default)]
struct RunnerState {
    queue: std::collections::VecDeque<Job>,
    idle: usize,
}

/// Runs async action bodies on reusable threads: creating a thread per task costs latency and, with
/// glibc, a malloc arena per short-lived thread; reuse keeps memory flat under many small tasks.
#[derive(Clone, Default)]
pub struct TaskRunner {
    shared: Arc<(Mutex<RunnerState>, std::sync::Condvar)>,
}

impl TaskRunner {
    /// Starts `job` on an idle thread, or on a new one when none is idle.
    pub fn run(&self, job: Job) -> std::io::Result<()> {
        let (state, cv) = &*self.shared;
        let mut s = lock(state);
        s.queue.push_back(job);
        if s.queue.len() <= s.idle {
            cv.notify_one();
            return Ok(());
        }
        drop(s);
        let runner = self.clone();
        std::thread::Builder::new().name("task".into()).spawn(move || runner.work()).map(|_| ()).inspect_err(
            |_| {
                // No thread could take it: hand the job back so the caller can fail the task.
                lock(state).queue.pop_back();
            },
        )
    }

    fn work(&self) {
        let (state, cv) = &*self.shared;
        let mut s = lock(state);
        loop {
            if let Some(job) = s.queue.pop_front() {
                drop(s);
                if catch_unwind(AssertUnwindSafe(job)).is_err() {
                    log::error!("a task body panicked outside its guard");
                }
                s = lock(state);
                continue;
            }
            if s.idle >= KEEP_IDLE {
                return;
            }
            s.idle += 1;
            let (guard, timed_out) = wait_timeout(cv, s, IDLE_LINGER);
            s = guard;
            s.idle -= 1;
            if timed_out && s.queue.is_empty() && s.idle >= 1 {
                return; // one idle thread always stays for the next task
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn runs_jobs_concurrently_and_reuses_threads() {
        let runner = TaskRunner::default();
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(std::sync::Barrier::new(6));
        for i in 0..6 {
            let (tx, gate) = (tx.clone(), gate.clone());
            // All six must run at once to pass the barrier: none may queue behind another.
            runner
                .run(Box::new(move || {
                    gate.wait();
                    tx.send(i).unwrap();
                }))
                .unwrap();
        }
        let mut got: Vec<i32> = (0..6).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&runner.shared.0).idle < KEEP_IDLE && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lock(&runner.shared.0).idle, KEEP_IDLE, "surplus threads exit, KEEP_IDLE stay");
        runner.run(Box::new(move || tx.send(9).unwrap())).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 9);
    }
}
