//! The threads behind the dispatcher: the request workers, and the task runner that runs async
//! action bodies. Both are a [`Pool`]: threads that come with the work and go when it is gone.
//!
//! Why pools that grow and shrink instead of fixed workers: an idle agent should hold as few
//! threads as possible (each is a kernel stack and a pid, and one host runs thousands of agents in a
//! density test), yet a burst must never wait behind a slow request or task. A pool starts a thread
//! only when every thread it has is busy, keeps one idle thread for the next burst (waiting without
//! a timeout, so an idle agent does not wake up for it), and lets the others exit after
//! [`LINGER`] without work. Each queued item wakes at most one idle thread (no convoy of threads
//! passing a lock on), and every item is handled under `catch_unwind`, so a bug costs one reply or
//! one task, not a thread.
//!
//! [`Requests`] is the listeners' side: quick requests (see `Dispatcher::accept`) are answered on
//! the listener's own thread, the rest queue for a request worker.

use super::{Deferred, Dispatcher, Incoming, Response};
use crate::sync::{lock, wait, wait_timeout};
use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How long a surplus idle thread (one beside another idle one) lingers before exiting.
pub const LINGER: Duration = Duration::from_secs(60);

/// Request workers at most: enough that a slow synchronous action (a `get_state` waiting on monit)
/// never holds up the others; beyond, requests queue.
pub const MAX_WORKERS: usize = 4;
/// Requests waiting for a worker; beyond, a request is answered at once with an exception.
pub const MAX_QUEUED_REQUESTS: usize = 10_000;

/// Idle task threads kept for reuse beyond the one that always stays; more are started whenever
/// every thread is busy, up to [`MAX_TASK_THREADS`], so a task only waits behind others when that
/// many run at once.
pub const KEEP_IDLE: usize = 4;
/// Task bodies running at once; beyond, tasks queue (still answering `get_task` as running), so a
/// flood of tasks cannot exhaust pids or memory. Far above what a director runs on one VM.
pub const MAX_TASK_THREADS: usize = 64;
/// Tasks waiting for a thread; beyond, a new task fails at once rather than queueing.
pub const MAX_QUEUED_TASKS: usize = 10_000;

/// A pool's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The threads' name.
    pub name: &'static str,
    /// Idle threads kept while they linger; a thread that finds this many idle exits at once.
    pub spare: usize,
    /// Threads at most; beyond, items queue.
    pub max_threads: usize,
    /// Queued items at most; beyond, [`Pool::run`] refuses.
    pub max_queued: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    /// Threads waiting for work.
    idle: usize,
    /// Threads alive (busy or idle).
    threads: usize,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
    limits: Limits,
    handle: Box<dyn Fn(T) + Send + Sync>,
}

/// Threads that handle items of type `T` with one handler; cheap to clone, clones share the threads.
pub struct Pool<T: Send + 'static> {
    inner: Arc<Inner<T>>,
}

impl<T: Send + 'static> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool { inner: self.inner.clone() }
    }
}

impl<T: Send + 'static> Pool<T> {
    /// A pool with no thread yet; `handle` runs each item on one of its threads.
    pub fn new(limits: Limits, handle: impl Fn(T) + Send + Sync + 'static) -> Pool<T> {
        let state = State { queue: VecDeque::new(), idle: 0, threads: 0 };
        let inner =
            Inner { state: Mutex::new(state), wake: Condvar::new(), limits, handle: Box::new(handle) };
        Pool { inner: Arc::new(inner) }
    }

    /// Hands `item` to an idle thread, to a new one when none is idle and fewer than the limit run,
    /// or queues it for the next free thread. Gives the item back when the queue is full or no
    /// thread at all can be started.
    pub fn run(&self, item: T) -> Result<(), (T, io::Error)> {
        let limits = self.inner.limits;
        let mut s = lock(&self.inner.state);
        if s.queue.len() >= limits.max_queued {
            let why = io::Error::other(format!(
                "{} items already wait for a {} thread",
                s.queue.len(),
                limits.name
            ));
            return Err((item, why));
        }
        s.queue.push_back(item);
        // Every idle thread may already have been woken for an earlier item: only a queue no longer
        // than the idle threads is sure to be taken without a new one.
        if s.queue.len() <= s.idle {
            self.inner.wake.notify_one();
            return Ok(());
        }
        if s.threads >= limits.max_threads {
            if s.queue.len() == 1 {
                log::warn!("{} {} threads busy: new work waits for one to be free", s.threads, limits.name);
            }
            return Ok(());
        }
        s.threads += 1;
        drop(s);
        let pool = self.clone();
        match std::thread::Builder::new().name(limits.name.into()).spawn(move || pool.work()) {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut s = lock(&self.inner.state);
                s.threads -= 1;
                if s.threads > 0 {
                    return Ok(()); // a running thread takes it when it is done
                }
                // No thread could take it: give it back so the caller can fail it.
                match s.queue.pop_back() {
                    Some(item) => Err((item, e)),
                    None => Ok(()), // taken meanwhile after all
                }
            }
        }
    }

    fn work(&self) {
        let inner = &*self.inner;
        let mut s = lock(&inner.state);
        loop {
            if let Some(item) = s.queue.pop_front() {
                drop(s);
                if catch_unwind(AssertUnwindSafe(|| (inner.handle)(item))).is_err() {
                    log::error!(
                        "a {} thread's work panicked outside its guard; the thread goes on",
                        inner.limits.name
                    );
                }
                s = lock(&inner.state);
                continue;
            }
            if s.idle >= inner.limits.spare {
                break;
            }
            s.idle += 1;
            let timed_out = if s.idle == 1 {
                // The only idle thread waits for the next item without waking up meanwhile.
                s = wait(&inner.wake, s);
                false
            } else {
                let (guard, timed_out) = wait_timeout(&inner.wake, s, LINGER);
                s = guard;
                timed_out
            };
            s.idle -= 1;
            if timed_out && s.queue.is_empty() && s.idle >= 1 {
                break; // another idle thread stays for the next item
            }
        }
        s.threads -= 1;
    }

    /// (idle threads, threads, queued items), for the tests.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let s = lock(&self.inner.state);
        (s.idle, s.threads, s.queue.len())
    }
}

/// A unit of background work (an async action's body).
pub type Job = Box<dyn FnOnce() + Send>;

/// Runs async action bodies on reusable threads: creating a thread per task costs latency and, with
/// glibc, a malloc arena per short-lived thread; reuse keeps memory flat under many small tasks.
#[derive(Clone)]
pub struct TaskRunner(Pool<Job>);

impl Default for TaskRunner {
    fn default() -> TaskRunner {
        TaskRunner::with_limit(MAX_TASK_THREADS)
    }
}

impl TaskRunner {
    /// A runner running at most `max_threads` task bodies at once.
    pub fn with_limit(max_threads: usize) -> TaskRunner {
        let limits = Limits {
            name: "task",
            spare: KEEP_IDLE,
            max_threads: max_threads.max(1),
            max_queued: MAX_QUEUED_TASKS,
        };
        TaskRunner(Pool::new(limits, |job: Job| job()))
    }

    /// Starts `job` on an idle thread, on a new one when none is idle and fewer than the limit run,
    /// or queues it for the next free thread. Fails only when the queue is full or no thread at all
    /// can be started.
    pub fn run(&self, job: Job) -> io::Result<()> {
        self.0.run(job).map_err(|(_, e)| e)
    }
}

/// What a request worker is handed: a request the dispatcher has parsed and left for a worker, or a
/// raw one that arrived before the dispatcher was ready.
enum Work {
    Deferred(Deferred),
    Raw(Incoming),
}

/// Where the listeners (NATS, HTTPS) hand their requests; cheap to clone. Created before the
/// dispatcher exists (the bus is part of its context); requests that arrive before
/// [`Requests::start`] wait, so none is served before persisted tasks have resumed.
#[derive(Clone)]
pub struct Requests {
    dispatcher: Arc<OnceLock<Arc<Dispatcher>>>,
    /// Requests that arrived before the dispatcher; `None` once it has started.
    early: Arc<Mutex<Option<Vec<Incoming>>>>,
    workers: Pool<Work>,
}

impl Default for Requests {
    fn default() -> Requests {
        Requests::new()
    }
}

impl Requests {
    /// Requests held until [`Requests::start`].
    pub fn new() -> Requests {
        let dispatcher: Arc<OnceLock<Arc<Dispatcher>>> = Arc::default();
        let handler = dispatcher.clone();
        let limits = Limits {
            name: "worker",
            spare: MAX_WORKERS,
            max_threads: MAX_WORKERS,
            max_queued: MAX_QUEUED_REQUESTS,
        };
        let workers = Pool::new(limits, move |work: Work| {
            // Work is queued only once the dispatcher is set.
            if let Some(dispatcher) = handler.get() {
                match work {
                    Work::Deferred(deferred) => dispatcher.answer(deferred),
                    Work::Raw(incoming) => dispatcher.handle(incoming),
                }
            }
        });
        Requests { dispatcher, early: Arc::new(Mutex::new(Some(Vec::new()))), workers }
    }

    /// Starts serving with `dispatcher`, the requests that arrived meanwhile first.
    pub fn start(&self, dispatcher: Arc<Dispatcher>) {
        let early = {
            let mut early = lock(&self.early);
            let _ = self.dispatcher.set(dispatcher);
            early.take().unwrap_or_default()
        };
        for incoming in early {
            self.queue(Work::Raw(incoming));
        }
    }

    /// Takes one request: answers it on this thread when it is quick, else queues it for a worker.
    pub fn submit(&self, incoming: Incoming) {
        let dispatcher = match self.dispatcher.get() {
            Some(d) => d,
            None => {
                let mut early = lock(&self.early);
                match (self.dispatcher.get(), early.as_mut()) {
                    (Some(d), _) => d,
                    (None, Some(held)) => return held.push(incoming),
                    (None, None) => return, // unreachable: `early` is taken only after the set
                }
            }
        };
        match catch_unwind(AssertUnwindSafe(|| dispatcher.accept(incoming))) {
            Ok(None) => {}
            Ok(Some(deferred)) => self.queue(Work::Deferred(deferred)),
            Err(_) => log::error!("request handling panicked; continuing"),
        }
    }

    fn queue(&self, work: Work) {
        if let Err((work, e)) = self.workers.run(work) {
            log::warn!("request refused: {e}");
            let refusal = format!("the agent cannot take more requests now: {e}");
            match work {
                Work::Deferred(deferred) => deferred.refuse(refusal),
                Work::Raw(incoming) => {
                    incoming.reply.send(None, Response::exception(refusal).encode(None));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

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
        wait_for("surplus threads exit, KEEP_IDLE stay", || runner.0.counts() == (KEEP_IDLE, KEEP_IDLE, 0));
        runner.run(Box::new(move || tx.send(9).unwrap())).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 9);
    }

    /// Beyond the limit tasks queue instead of getting threads, and run as others end.
    #[test]
    fn bounds_the_threads_and_queues_the_rest() {
        let runner = TaskRunner::with_limit(3);
        let (started_tx, started) = mpsc::channel();
        let release = Arc::new((Mutex::new(false), Condvar::new()));
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
        assert_eq!(runner.0.counts(), (0, 3, 7));
        *lock(&release.0) = true;
        release.1.notify_all();
        for _ in 3..10 {
            started.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        wait_for("the three threads go idle", || runner.0.counts() == (3, 3, 0));
    }

    /// One item at a time is handled by the one thread that stays, with no second thread started;
    /// a full queue gives the item back.
    #[test]
    fn one_thread_serves_a_sequence_and_a_full_queue_refuses() {
        let (tx, rx) = mpsc::channel();
        let limits = Limits { name: "t", spare: 2, max_threads: 1, max_queued: 2 };
        let pool = Pool::new(limits, move |n: u32| {
            if n == 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            tx.send((n, std::thread::current().id())).unwrap();
        });
        let mut threads = Vec::new();
        for n in 1..=5 {
            pool.run(n).unwrap();
            let (got, thread) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, n);
            threads.push(thread);
            wait_for("the thread goes idle", || pool.counts() == (1, 1, 0));
        }
        threads.dedup();
        assert_eq!(threads.len(), 1, "one thread served all five");
        pool.run(0).unwrap();
        wait_for("the slow item is taken", || pool.counts() == (0, 1, 0));
        pool.run(6).unwrap();
        pool.run(7).unwrap();
        let (refused, _) = pool.run(8).expect_err("a third queued item is refused");
        assert_eq!(refused, 8);
        let order: Vec<u32> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap().0).collect();
        assert_eq!(order, vec![0, 6, 7]);
    }
}
