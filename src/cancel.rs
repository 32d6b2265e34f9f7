//! Cooperative cancellation of a running task: the action checks or waits on its token, so a
//! cancelled task still finishes with a normal result (the director collects an errand's output after
//! cancelling it). A leaf: the task table hands tokens out, actions and job scripts honour them.

use crate::sync::{lock, wait_timeout};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Cooperative cancellation for a running action: it checks or waits on the token, so a cancelled task
/// still finishes with a normal result (the director collects an errand's output after cancelling).
#[derive(Clone, Default)]
pub struct CancelToken(Arc<(Mutex<bool>, Condvar)>);

impl CancelToken {
    /// Asks the action to stop.
    pub fn cancel(&self) {
        let (flag, cv) = &*self.0;
        *lock(flag) = true;
        cv.notify_all();
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        *lock(&self.0 .0)
    }
    /// Sleeps up to `d`, waking early on cancellation; returns whether the task was cancelled.
    pub fn wait(&self, d: Duration) -> bool {
        let (flag, cv) = &*self.0;
        let deadline = Instant::now() + d;
        let mut g = lock(flag);
        while !*g {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = wait_timeout(cv, g, deadline - now).0;
        }
        *g
    }
}
