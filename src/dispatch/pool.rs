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

/// Idle task threads kept for reuse; more are started whenever every thread is busy, up to
/// [`MAX_TASK_THREADS`], so a task only waits behind others when that many run at once.
pub const KEEP_IDLE: usize = 4;
/// How long a surplus idle task thread lingers before exiting.
pub const IDLE_LINGER: std::time::Duration = std::time::Duration::from_secs(60);
/// Task bodies running at once; beyond, tasks queue (still answering `get_task` as running), so a
/// flood of tasks cannot exhaust pids or memory. Far above what a director runs on one VM.
pub const MAX_TASK_THREADS: usize = 64;
/// Tasks waiting for a thread; beyond, a new task fails at once rather than queueing.
pub const MAX_QUEUED_TASKS: usize = 10_000;

#[derive(Default)]
struct RunnerState {
    queue: std::collections::VecDeque<Job>,
    idle: usize,
    /// Task threads alive (busy or idle).
    threads: usize,
}

/// Runs async action bodies on reusable threads: creating a thread per task costs latency and, with
/// glibc, a malloc arena per short-lived thread; reuse keeps memory flat under many small tasks.
#[derive(Clone)]
pub struct TaskRunner {
    shared: Arc<(Mutex<RunnerState>, std::sync::Condvar)>,
    max_threads: usize,
}

impl Default for TaskRunner {
    fn default() -> TaskRunner {
        TaskRunner::with_limit(MAX_TASK_THREADS)
    }
}

impl TaskRunner {
    /// A runner running at most `max_threads` task bodies at once.
    pub fn with_limit(max_threads: usize) -> TaskRunner {
        TaskRunner { shared: Arc::default(), max_threads: max_threads.max(1) }
    }

    /// Starts `job` on an idle thread, on a new one when none is idle and fewer than the limit run,
    /// or queues it for the next free thread. Fails only when the queue is full or no thread at all
    /// can be started.
    pub fn run(&self, job: Job) -> std::io::Result<()> {
        let (state, cv) = &*self.shared;
        let mut s = lock(state);
        if s.queue.len() >= MAX_QUEUED_TASKS {
            return Err(std::io::Error::other(format!("{MAX_QUEUED_TASKS} tasks are already waiting")));
        }
        s.queue.push_back(job);
        if s.queue.len() <= s.idle {
            cv.notify_one();
            return Ok(());
        }
        if s.threads >= self.max_threads {
            if s.queue.len() == 1 {
                log::warn!("{} tasks running: new tasks wait for one to end", s.threads);
            }
            return Ok(());
        }
        s.threads += 1;
        drop(s);
        let runner = self.clone();
        std::thread::Builder::new().name("task".into()).spawn(move || runner.work()).map(|_| ()).or_else(
            |e| {
                let mut s = lock(state);
                s.threads -= 1;
                if s.threads > 0 {
                    return Ok(()); // a running thread takes it when it is done
                }
                // No thread could take it: hand the job back so the caller can fail the task.
                s.queue.pop_back();
                Err(e)
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
                break;
            }
            s.idle += 1;
            let (guard, timed_out) = wait_timeout(cv, s, IDLE_LINGER);
            s = guard;
            s.idle -= 1;
            if timed_out && s.queue.is_empty() && s.idle >= 1 {
                break; // one idle thread always stays for the next task
            }
        }
        s.threads -= 1;
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

    /// Beyond the limit tasks queue instead of getting threads, and run as others end.
    #[test]
    fn bounds_the_threads_and_queues_the_rest() {
        let runner = TaskRunner::with_limit(3);
        let (started_tx, started) = mpsc::channel();
        let release = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        for i in 0..10 {
            let (tx, release) = (started_tx.clone(), release.clone());
            runner
                .run(Box::new(move || {
                    tx.send(i).unwrap();
                    let (open, cv) = &*release;
                    let mut g = lock(open);
                    while !*g {
                        g = cv.wait(g).unwrap();
                    }
                }))
                .unwrap();
        }
        for _ in 0..3 {
            started.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert!(started.recv_timeout(Duration::from_millis(300)).is_err(), "a fourth ran at once");
        assert_eq!(lock(&runner.shared.0).threads, 3);
        assert_eq!(lock(&runner.shared.0).queue.len(), 7);
        *lock(&release.0) = true;
        release.1.notify_all();
        for _ in 3..10 {
            started.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&runner.shared.0).threads > 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(lock(&runner.shared.0).threads <= 3);
    }
}
