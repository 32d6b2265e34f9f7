//! The dispatcher: turns a request body into a reply, whichever bus it came from.
//!
//! Listener threads push [`Incoming`] requests onto one channel; a fixed pool of workers ([`pool`])
//! takes them off and calls [`Dispatcher::handle`]. Synchronous actions run on the worker; asynchronous
//! ones get a task id, their reply is sent first, and then their body runs on a task thread (reused;
//! at most [`pool::MAX_TASK_THREADS`] at once, the rest queued), so a long task never occupies a
//! worker and `ping` and `get_state` are answered at once however many tasks run (`get_task` of a
//! running task waits at most `tasks::POLL_WAIT` for it to finish).

mod envelope;
pub mod pool;

use crate::actions::{lookup, ActionSpec, Bound, Call, Context, Quick};
use crate::cancel::CancelToken;
use crate::tasks::PersistedTask;
use base64::Engine;
pub use envelope::{Request, Response};
use serde_json::json;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

/// Where a reply goes: a NATS publish to `reply_to`, or the waiting HTTPS connection.
pub trait ReplySink: Send {
    /// The largest reply this bus can carry (NATS max_payload), or `None` for no limit.
    fn limit(&self) -> Option<usize>;
    /// Delivers the encoded reply; `reply_to` is the request's, when it could be read.
    fn send(self: Box<Self>, reply_to: Option<&str>, body: Vec<u8>);
}

/// A request as a listener received it.
pub struct Incoming {
    /// The raw request body.
    pub body: Vec<u8>,
    /// Where the reply goes.
    pub reply: Box<dyn ReplySink>,
}

/// A parsed request waiting for a worker (see [`Dispatcher::accept`]).
pub struct Deferred {
    request: Request,
    spec: Option<&'static ActionSpec>,
    reply: Box<dyn ReplySink>,
    limit: Option<usize>,
    started: Instant,
}

impl Deferred {
    /// Answers with an exception instead of running the action (no worker could take it).
    pub fn refuse(self, message: String) {
        let body = Response::exception(message).encode(self.limit);
        self.reply.send(Some(&self.request.reply_to), body);
    }
}

/// Work to do after the reply has been sent (starting an async task's thread).
pub type AfterReply = Box<dyn FnOnce() + Send>;

/// Routes requests to actions.
pub struct Dispatcher {
    ctx: Arc<Context>,
    runner: pool::TaskRunner,
}

impl Dispatcher {
    /// A dispatcher over the shared context.
    pub fn new(ctx: Arc<Context>) -> Dispatcher {
        Dispatcher { ctx, runner: pool::TaskRunner::default() }
    }

    /// Parses, dispatches, replies and logs one request, all on this thread. Never panics on input:
    /// a malformed envelope gets an exception naming the problem (when there is somewhere to send it).
    pub fn handle(&self, incoming: Incoming) {
        if let Some(deferred) = self.accept(incoming) {
            self.answer(deferred);
        }
    }

    /// Parses a request and answers it at once when that is quick: a malformed envelope, an unknown
    /// method, and the actions the registry marks quick (`ping`, `info`, `get_task` of a task that
    /// is not running...). Anything else comes back to be [answered](Dispatcher::answer) on a worker,
    /// so a listener thread calling this never blocks on an action.
    pub fn accept(&self, incoming: Incoming) -> Option<Deferred> {
        let started = Instant::now();
        let limit = incoming.reply.limit();
        let request = match Request::parse(&incoming.body) {
            Ok(r) => r,
            Err(e) => {
                let reply_to = e.reply_to.as_deref().unwrap_or_default();
                log::warn!(
                    "rejected request: {} (reply_to={})",
                    loggable(&e.message, 400),
                    loggable(reply_to, MAX_LOGGED_FIELD)
                );
                let body = Response::exception(e.message).encode(limit);
                incoming.reply.send(e.reply_to.as_deref(), body);
                return None;
            }
        };
        let spec = lookup(&request.method, self.ctx.platform.offers_test_actions());
        let deferred = Deferred { request, spec, reply: incoming.reply, limit, started };
        if self.is_quick(&deferred) {
            self.answer(deferred);
            return None;
        }
        Some(deferred)
    }

    /// Whether answering `d` takes microseconds and never waits.
    fn is_quick(&self, d: &Deferred) -> bool {
        let Some(spec) = d.spec else {
            return true; // an exception naming the unknown method
        };
        match spec.quick {
            Quick::No => false,
            Quick::Yes => true,
            // A poll of a running task may wait for it (tasks::POLL_WAIT); any other answer is a
            // lookup. A task never starts running again once it has ended.
            Quick::UnlessTaskRunning => d
                .request
                .arguments
                .first()
                .and_then(serde_json::Value::as_str)
                .is_none_or(|id| !self.ctx.tasks.is_running(id)),
        }
    }

    /// Dispatches, replies and logs a request [`Dispatcher::accept`] left for a worker.
    pub fn answer(&self, deferred: Deferred) {
        let Deferred { request, spec, reply, limit, started } = deferred;
        if spec.is_none_or(|s| s.loggable) && log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "request {} arguments {}",
                loggable(&request.method, MAX_LOGGED_FIELD),
                redacted(&json!(request.arguments))
            );
        }
        let (response, after) = self.dispatch(&request, spec);
        let outcome = match &response {
            Response::Value(v) if v.get("agent_task_id").is_some() && v.get("state").is_some() => "task",
            Response::Value(_) => "value",
            Response::Exception(_) => "exception",
        };
        let body = response.encode(limit);
        reply.send(Some(&request.reply_to), body);
        // A poll of a task that is still running says nothing new: only the answer that ends it is
        // worth an INFO line (one per task, not one per second).
        let level = if request.method == "get_task" && outcome == "task" {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "request method={} reply_to={} protocol={} outcome={} duration={:.1}ms",
            loggable(&request.method, MAX_LOGGED_FIELD),
            loggable(&request.reply_to, MAX_LOGGED_FIELD),
            request.protocol,
            outcome,
            started.elapsed().as_secs_f64() * 1000.0
        );
        if let Response::Exception(m) = &response {
            log::info!(
                "request {} failed: {}",
                loggable(&request.method, MAX_LOGGED_FIELD),
                loggable(first_line(m), 300)
            );
        }
        if let Some(after) = after {
            after();
        }
    }

    /// Decides the reply for a parsed request; for an async action also returns the task to start once
    /// the reply is on its way.
    pub fn dispatch(
        &self,
        request: &Request,
        spec: Option<&'static ActionSpec>,
    ) -> (Response, Option<AfterReply>) {
        let Some(spec) = spec else {
            return (Response::exception(format!("unknown message {}", request.method)), None);
        };
        let bound = match spec.bind(&request.arguments) {
            Ok(b) => b,
            Err(e) => return (Response::exception(format!("Action Failed {}: {e}", spec.name)), None),
        };
        if !spec.is_async(request.protocol) {
            let token = CancelToken::default();
            let call = Call { ctx: &self.ctx, protocol: request.protocol, cancel: &token };
            return match run_guarded(bound, &call, false) {
                Ok(v) => (Response::Value(v), None),
                Err(e) => (Response::exception(format!("Action Failed {}: {e}", spec.name)), None),
            };
        }
        let id = crate::ids::uuid_v4();
        let token = spec.cancelable.then(CancelToken::default);
        let persist = spec.persistent.then(|| PersistedTask {
            task_id: id.clone(),
            method: spec.name.to_string(),
            payload: base64::engine::general_purpose::STANDARD.encode(request_json(request)),
        });
        if let Err(e) = self.ctx.tasks.start(&id, token.clone(), persist) {
            return (Response::exception(format!("Action Failed {}: {e}", spec.name)), None);
        }
        let handle = json!({ "agent_task_id": id, "state": "running" });
        let (ctx, runner) = (self.ctx.clone(), self.runner.clone());
        let protocol = request.protocol;
        let after: AfterReply =
            Box::new(move || spawn_task(&runner, ctx, spec.name, id, protocol, token, bound, false));
        (Response::Value(handle), Some(after))
    }

    /// Restarts the tasks of persistent actions that were running when the agent stopped, under their
    /// old ids, so the director's `get_task` polling carries on. Runs before any new request.
    pub fn resume_persisted(&self) {
        for p in self.ctx.tasks.persisted() {
            let parsed =
                p.request_body().and_then(|b| Request::parse(&b).map_err(|e| e.message)).and_then(|r| {
                    match lookup(&r.method, self.ctx.platform.offers_test_actions()) {
                        Some(spec) if spec.persistent => spec.bind(&r.arguments).map(|b| (r, spec, b)),
                        _ => Err(format!("method {} cannot be resumed", r.method)),
                    }
                });
            match parsed {
                Ok((r, spec, bound)) => {
                    log::info!("resuming task {} ({})", p.task_id, spec.name);
                    let token = spec.cancelable.then(CancelToken::default);
                    if let Err(e) = self.ctx.tasks.start(&p.task_id, token.clone(), None) {
                        log::error!("resuming task {}: {e}", p.task_id);
                        continue;
                    }
                    spawn_task(
                        &self.runner,
                        self.ctx.clone(),
                        spec.name,
                        p.task_id,
                        r.protocol,
                        token,
                        bound,
                        true,
                    );
                }
                Err(e) => {
                    log::warn!("dropping persisted task {}: {e}", p.task_id);
                    self.ctx.tasks.start(&p.task_id, None, None).ok();
                    self.ctx.tasks.finish(&p.task_id, Err(e));
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site per path; a struct would only rename them
fn spawn_task(
    runner: &pool::TaskRunner,
    ctx: Arc<Context>,
    method: &'static str,
    id: String,
    protocol: u64,
    token: Option<CancelToken>,
    bound: Bound,
    resume: bool,
) {
    let tasks = ctx.tasks.clone();
    let task_id = id.clone();
    let spawned = runner.run(Box::new(move || {
        let started = Instant::now();
        let token = token.unwrap_or_default();
        let call = Call { ctx: &ctx, protocol, cancel: &token };
        let result = run_guarded(bound, &call, resume);
        log::info!(
            "task {task_id} ({method}) {} after {:.1}s",
            if result.is_ok() { "done" } else { "failed" },
            started.elapsed().as_secs_f64()
        );
        ctx.tasks.finish(&task_id, result);
        if ctx.tasks.running() == 0 {
            crate::memory::release_free();
        }
    }));
    if let Err(e) = spawned {
        tasks.finish(&id, Err(format!("starting task thread: {e}")));
    }
}

/// Runs an action, turning a panic into an error so one bad action never takes the agent down.
fn run_guarded(bound: Bound, call: &Call, resume: bool) -> Result<serde_json::Value, String> {
    match catch_unwind(AssertUnwindSafe(|| bound(call, resume))) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("action panicked: {what}");
            Err(format!("internal error: {what}"))
        }
    }
}

fn request_json(r: &Request) -> Vec<u8> {
    json!({ "protocol": r.protocol, "method": r.method, "arguments": r.arguments, "reply_to": r.reply_to })
        .to_string()
        .into_bytes()
}

/// Keys whose values are credentials even inside loggable arguments, whatever else they match:
/// signed URLs carry their signature, blobstore headers carry encryption keys.
const SECRET_KEYS: &[&str] =
    &["signed_url", "upload_signed_url", "package_get_signed_url", "blobstore_headers", "payload"];

/// Parts of key names whose values are credentials (`db_password`, `credentials`, `api_token`,
/// `private_key`, `ca_cert`...), matched case-insensitively anywhere in the key.
const SECRET_KEY_PARTS: &[&str] = &["password", "secret", "credential", "token", "key", "cert"];

fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&key.as_str()) || SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// A copy of `v` with the values of secret-looking keys replaced at any depth, for debug logging.
pub fn redacted(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let hidden = secret_key(k) && !v.is_null();
                    (k.clone(), if hidden { Value::String("<redacted>".into()) } else { redacted(v) })
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

/// How much of a request's `method` or `reply_to` a log line carries.
const MAX_LOGGED_FIELD: usize = 200;

/// `s` as one safe log field: control characters escaped (a CR or LF cannot forge a log line) and at
/// most `max` characters, the cut marked with the full length. Formats straight into the line.
pub fn loggable(s: &str, max: usize) -> Loggable<'_> {
    Loggable { s, max }
}

/// A log field that escapes itself as it is written; see [`loggable`].
pub struct Loggable<'a> {
    s: &'a str,
    max: usize,
}

impl std::fmt::Display for Loggable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        // Printable ASCII (nearly every field) is checked by bytes, without decoding characters.
        let printable = |s: &str| {
            s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) || !s.chars().any(char::is_control)
        };
        let safe = self.s.len() <= self.max && printable(self.s);
        if safe {
            return f.write_str(self.s);
        }
        for (i, c) in self.s.chars().enumerate() {
            if i == self.max {
                return write!(f, "...[{} bytes]", self.s.len());
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    &line[..line.len().min(line.char_indices().nth(300).map_or(line.len(), |(i, _)| i))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_at_any_depth() {
        let args = json!([{"packages": {"a": {"signed_url": "https://x?sig=1", "blobstore_headers": {"k": "v"}, "name": "a"}},
                           "options": {"password": "p", "user": "u"}}]);
        let r = redacted(&args).to_string();
        assert!(!r.contains("sig=1") && !r.contains("\"v\"") && !r.contains("\"p\""), "{r}");
        assert!(r.contains("\"name\":\"a\"") && r.contains("\"user\":\"u\""));
    }

    /// Secrets are found by what their key says, at any depth, in any case.
    #[test]
    fn redacts_by_key_pattern() {
        let planted = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"];
        let args = json!([{"properties": {"db_password": "s1", "nested": {"credentials": {"u": "s2"}},
            "API_TOKEN": "s3", "tls": {"private_key": "s4", "ca_cert": "s5", "certificate": "s6"}},
            "list": [{"client_secret": "s7"}, {"ssh_keys": ["s8"]}], "AwsSecretAccessKey": "s9",
            "name": "keep-me"}]);
        let r = redacted(&args).to_string();
        for s in planted {
            assert!(!r.contains(&format!("\"{s}\"")), "{s} leaked: {r}");
        }
        assert!(r.contains("keep-me"), "{r}");
    }

    #[test]
    fn log_fields_are_bounded_and_cannot_forge_lines() {
        let forged = loggable("director.x\r\nINFO request method=apply", 200).to_string();
        assert!(!forged.contains('\n') && !forged.contains('\r') && forged.contains("\\r\\n"), "{forged}");
        let long = loggable(&"x".repeat(900_000), 200).to_string();
        assert!(long.len() < 250 && long.ends_with("...[900000 bytes]"), "{}", long.len());
        assert_eq!(loggable("director.a.b.c", 200).to_string(), "director.a.b.c");
        assert_eq!(loggable("ab\tcd", 3).to_string(), "ab\\t...[5 bytes]");
    }
}
