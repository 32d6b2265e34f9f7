//! The task table behind `get_task` and `cancel_task`: one mutex around a map, never held while an
//! action runs, so status polls are answered however many tasks run (a poll of a running task may
//! wait up to [`POLL_WAIT`] for it to finish, on a condvar beside the mutex). Every finished result
//! is kept for [`RESULT_TTL`], however many tasks end together; only their total size is bounded
//! ([`RESULT_BYTES`], oldest evicted first). The ids of evicted results are remembered (a bounded
//! number) so `get_task` can say a result expired rather than never existed. Tasks of persistent
//! actions are also recorded in `tasks.json`
//! (the Go agent's format) so they can be resumed after a restart; that file is written and fsynced
//! under the mutex, so it always matches the table, at the cost of a poll waiting out one write
//! when a persistent task (only `update_settings`) starts or ends.
//!
//! A leaf: the dispatcher starts and finishes tasks, actions read and cancel them.

use crate::cancel::CancelToken;
use crate::error::Context as _;
use crate::fsutil;
use crate::sync::{lock, wait_timeout};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a finished task's result stays answerable.
pub const RESULT_TTL: Duration = Duration::from_secs(3600);
/// How many bytes of finished results (and their ids) are kept at most; beyond, the oldest go.
pub const RESULT_BYTES: usize = 64 * 1024 * 1024;
/// How many ids of evicted results are remembered, to tell "expired" from "never existed".
pub const EXPIRED_IDS: usize = 16 * 1024;
/// What a kept result costs beyond its text and id (map entry, queue entry, timestamps).
const RESULT_OVERHEAD: usize = 96;
/// How long a `get_task` poll of a running task waits for it to finish before answering `running`.
/// bosh-cli and the director poll once at once and then every second, so a task of a few
/// milliseconds (a disk step, a no-op script) that just misses the first poll would cost a whole
/// second; a wait of tens of milliseconds catches it while keeping the worker's time bounded.
pub const POLL_WAIT: Duration = Duration::from_millis(50);

/// A task's state as `get_task` reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskState {
    /// Still running.
    Running,
    /// Finished with this value.
    Done(Value),
    /// Finished with this error.
    Failed(String),
}

/// The answer to a cancel request.
#[derive(Clone, Debug, PartialEq)]
pub enum CancelOutcome {
    /// Cancellation was requested (or the task had already finished).
    Canceled,
    /// The action cannot be cancelled.
    NotSupported,
    /// No task has this id.
    NotFound,
}

/// One persisted task, in the Go agent's `tasks.json` shape so either agent can resume the other's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PersistedTask {
    /// The task id, reused on resume so the director's polling continues.
    #[serde(rename = "TaskID")]
    pub task_id: String,
    /// The action name.
    #[serde(rename = "Method")]
    pub method: String,
    /// Base64 of the request JSON.
    #[serde(rename = "Payload")]
    pub payload: String,
}

impl PersistedTask {
    /// The request JSON, decoded.
    pub fn request_body(&self) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(self.payload.as_bytes())
            .with_context(|| format!("task {} payload is not base64", self.task_id))
    }
}

/// A task's state as stored: finished values are kept as compact JSON text rather than a `Value` tree,
/// which roughly halves what a thousand kept results cost.
#[derive(PartialEq)]
enum Stored {
    Running,
    Done(Box<str>),
    Failed(Box<str>),
}

impl Stored {
    fn bytes(&self) -> usize {
        match self {
            Stored::Running => 0,
            Stored::Done(s) | Stored::Failed(s) => s.len(),
        }
    }
}

struct Task {
    state: Stored,
    cancel: Option<CancelToken>,
    finished_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, Task>,
    finished: VecDeque<String>,
    /// What the finished results in `finished` cost, by [`result_cost`].
    finished_bytes: usize,
    /// Ids whose results were evicted, oldest first, and the same as a set.
    expired: VecDeque<String>,
    expired_set: std::collections::HashSet<String>,
    persisted: BTreeMap<String, PersistedTask>,
}

fn result_cost(id: &str, state: &Stored) -> usize {
    id.len() + state.bytes() + RESULT_OVERHEAD
}

/// Shared handle to the task table; clones see the same tasks.
#[derive(Clone)]
pub struct TaskTable {
    inner: Arc<Mutex<Inner>>,
    /// Signalled (with `inner`) whenever a task finishes, for [`TaskTable::get_waiting`].
    finished: Arc<Condvar>,
    path: Option<PathBuf>,
}

impl TaskTable {
    /// A table persisting to `path` (`<base>/bosh/tasks.json`), or purely in memory.
    pub fn new(path: Option<PathBuf>) -> TaskTable {
        let persisted = path
            .as_ref()
            .and_then(|p| match fsutil::read_json::<BTreeMap<String, PersistedTask>>(p) {
                Ok(v) => v,
                Err(e) => {
                    log::error!("ignoring unreadable {}: {e}", p.display());
                    None
                }
            })
            .unwrap_or_default();
        TaskTable {
            inner: Arc::new(Mutex::new(Inner { persisted, ..Default::default() })),
            finished: Arc::default(),
            path,
        }
    }

    /// Tasks that were running when the agent last stopped, to be resumed under their ids.
    pub fn persisted(&self) -> Vec<PersistedTask> {
        lock(&self.inner).persisted.values().cloned().collect()
    }

    /// Registers a running task under `id`. A persistent task is written to `tasks.json` before this
    /// returns, so it is never started without being resumable.
    pub fn start(
        &self,
        id: &str,
        cancel: Option<CancelToken>,
        persist: Option<PersistedTask>,
    ) -> Result<(), String> {
        let mut inner = lock(&self.inner);
        if let Some(p) = persist {
            inner.persisted.insert(id.to_string(), p);
            self.save(&inner)?;
        }
        inner.tasks.insert(id.to_string(), Task { state: Stored::Running, cancel, finished_at: None });
        Ok(())
    }

    /// Records a task's result and forgets its persisted entry.
    pub fn finish(&self, id: &str, result: Result<Value, String>) {
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        if inner.persisted.remove(id).is_some() {
            if let Err(e) = self.save(&inner) {
                log::error!("{e}");
            }
        }
        // A task finishes once; its cost is counted once.
        if let Some(t) = inner.tasks.get_mut(id).filter(|t| t.state == Stored::Running) {
            t.state = match result {
                Ok(v) => Stored::Done(v.to_string().into_boxed_str()),
                Err(e) => Stored::Failed(e.into_boxed_str()),
            };
            t.cancel = None;
            t.finished_at = Some(now);
            let cost = result_cost(id, &t.state);
            inner.finished_bytes += cost;
            inner.finished.push_back(id.to_string());
        }
        prune(&mut inner, now);
        self.finished.notify_all();
    }

    /// The state of a task, if it is known.
    #[cfg(test)]
    pub fn get(&self, id: &str) -> Option<TaskState> {
        self.get_waiting(id, Duration::ZERO)
    }

    /// The state of a task, waiting up to `wait` for a running one to finish first: a poll that
    /// arrives while a quick task is finishing gets its result instead of `running`.
    pub fn get_waiting(&self, id: &str, wait: Duration) -> Option<TaskState> {
        let deadline = Instant::now() + wait;
        let mut inner = lock(&self.inner);
        while inner.tasks.get(id)?.state == Stored::Running {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                break;
            };
            inner = wait_timeout(&self.finished, inner, left).0;
        }
        let state = &inner.tasks.get(id)?.state;
        Some(match state {
            Stored::Running => TaskState::Running,
            // The text was produced by serialising a Value, so it parses back; Null is unreachable.
            Stored::Done(json) => TaskState::Done(serde_json::from_str(json).unwrap_or(Value::Null)),
            Stored::Failed(e) => TaskState::Failed(e.to_string()),
        })
    }

    /// Whether `id` was a task whose result has since been evicted (expired or crowded out).
    pub fn expired(&self, id: &str) -> bool {
        lock(&self.inner).expired_set.contains(id)
    }

    /// Requests cancellation of a task; only tasks started with a token can be cancelled.
    pub fn cancel(&self, id: &str) -> CancelOutcome {
        let inner = lock(&self.inner);
        match inner.tasks.get(id) {
            None => CancelOutcome::NotFound,
            Some(t) if t.state != Stored::Running => CancelOutcome::Canceled,
            Some(Task { cancel: Some(c), .. }) => {
                c.cancel();
                CancelOutcome::Canceled
            }
            Some(_) => CancelOutcome::NotSupported,
        }
    }

    /// Whether `id` is a task that is still running.
    pub fn is_running(&self, id: &str) -> bool {
        lock(&self.inner).tasks.get(id).is_some_and(|t| t.state == Stored::Running)
    }

    /// How many tasks are still running.
    pub fn running(&self) -> usize {
        lock(&self.inner).tasks.values().filter(|t| t.state == Stored::Running).count()
    }

    fn save(&self, inner: &Inner) -> Result<(), String> {
        match &self.path {
            Some(p) => fsutil::write_json_atomic(p, &inner.persisted, 0o600)
                .with_context(|| format!("writing {}", p.display())),
            None => Ok(()),
        }
    }
}

fn prune(inner: &mut Inner, now: Instant) {
    while let Some(id) = inner.finished.front().cloned() {
        let task = inner.tasks.get(&id);
        let expired = task.and_then(|t| t.finished_at).is_none_or(|at| now.duration_since(at) > RESULT_TTL);
        if !expired && inner.finished_bytes <= RESULT_BYTES {
            break;
        }
        inner.finished.pop_front();
        if let Some(t) = inner.tasks.remove(&id) {
            inner.finished_bytes = inner.finished_bytes.saturating_sub(result_cost(&id, &t.state));
        }
        if inner.expired_set.insert(id.clone()) {
            inner.expired.push_back(id);
        }
        while inner.expired.len() > EXPIRED_IDS {
            if let Some(old) = inner.expired.pop_front() {
                inner.expired_set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lifecycle_and_cancel() {
        let t = TaskTable::new(None);
        let c = CancelToken::default();
        t.start("a", Some(c.clone()), None).unwrap();
        t.start("b", None, None).unwrap();
        assert_eq!(t.get("a"), Some(TaskState::Running));
        assert_eq!(t.cancel("a"), CancelOutcome::Canceled);
        assert!(c.is_cancelled() && c.wait(Duration::from_secs(5)));
        assert_eq!(t.cancel("b"), CancelOutcome::NotSupported);
        assert_eq!(t.cancel("zz"), CancelOutcome::NotFound);
        t.finish("a", Ok(json!(0)));
        t.finish("b", Err("boom".into()));
        assert_eq!(t.get("a"), Some(TaskState::Done(json!(0))));
        assert_eq!(t.get("b"), Some(TaskState::Failed("boom".into())));
        assert_eq!(t.cancel("b"), CancelOutcome::Canceled, "finished tasks cancel quietly");
        assert_eq!(t.running(), 0);
    }

    #[test]
    fn a_poll_waits_a_bounded_time_for_a_running_task_to_finish() {
        let t = TaskTable::new(None);
        t.start("quick", None, None).unwrap();
        let finisher = t.clone();
        let done = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            finisher.finish("quick", Ok(json!("ok")));
        });
        // Without the wait this poll would answer `running`: the task finishes 100 ms later.
        assert_eq!(t.get_waiting("quick", Duration::from_secs(60)), Some(TaskState::Done(json!("ok"))));
        done.join().unwrap();
        t.start("slow", None, None).unwrap();
        assert_eq!(t.get_waiting("slow", Duration::from_millis(1)), Some(TaskState::Running), "bounded");
        assert_eq!(t.get_waiting("nope", Duration::from_secs(60)), None, "unknown ids do not wait");
    }

    /// A thousand tasks ending together all stay answerable; only bytes crowd results out, oldest
    /// first, and an evicted one is told apart from one that never existed.
    #[test]
    fn keeps_every_result_bounded_by_bytes_and_knows_what_expired() {
        let t = TaskTable::new(None);
        for i in 0..1000 {
            t.start(&i.to_string(), None, None).unwrap();
        }
        for i in 0..1000 {
            t.finish(&i.to_string(), Ok(json!(i)));
        }
        assert!((0..1000).all(|i| t.get(&i.to_string()) == Some(TaskState::Done(json!(i)))));
        let big = "x".repeat(RESULT_BYTES / 4);
        for i in 0..5 {
            let id = format!("big{i}");
            t.start(&id, None, None).unwrap();
            t.finish(&id, Err(big.clone()));
        }
        assert_eq!(t.get("0"), None, "the oldest went first");
        assert!(t.expired("0") && t.expired("999") && t.expired("big0"));
        assert!(t.get("big4").is_some() && !t.expired("big4"));
        assert!(!t.expired("never-was"));
        assert!(lock(&t.inner).finished_bytes <= RESULT_BYTES);
    }

    #[test]
    fn persistent_tasks_survive_a_new_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.json");
        let t = TaskTable::new(Some(path.clone()));
        let body = br#"{"method":"update_settings","arguments":[{}]}"#;
        let p = PersistedTask {
            task_id: "id1".into(),
            method: "update_settings".into(),
            payload: base64::engine::general_purpose::STANDARD.encode(body),
        };
        t.start("id1", None, Some(p)).unwrap();
        let again = TaskTable::new(Some(path.clone()));
        assert_eq!(again.persisted().len(), 1);
        assert_eq!(again.persisted()[0].request_body().unwrap(), body);
        let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["id1"]["Method"], "update_settings");
        t.finish("id1", Ok(json!("ok")));
        assert!(TaskTable::new(Some(path)).persisted().is_empty());
    }
}
