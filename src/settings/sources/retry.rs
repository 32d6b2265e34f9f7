//! Retries for the network and disk sources: at boot a metadata service or a CD-ROM may not be
//! ready yet, but a VM whose source is truly gone must still fall back to the cached settings
//! quickly, so every source gets a few attempts with a short backoff, every request and mount a
//! timeout ([`RetryPolicy`]), and all sources of one load together a deadline.

use crate::sync::lock;
use super::{Attempt, Failure, Fetched, SettingsSource};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How hard to try. The defaults keep a dead source's cost to seconds while riding out a metadata
/// service or drive that needs a moment at boot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per source per load.
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub backoff: Duration,
    /// Bound on one attempt (all its requests or its mount).
    pub attempt_timeout: Duration,
    /// Bound on one load across all the retrying sources of a list.
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(10),
            total: Duration::from_secs(60),
        }
    }
}

/// The deadline shared by the sources of one list: the first retrying source starts it on every
/// load (sources are always tried in order), the others only read it.
#[derive(Debug)]
pub(super) struct Round {
    deadline: Mutex<Instant>,
}

impl Round {
    /// A round whose deadline is `policy.total` from now (restarted by its leading source).
    pub(super) fn new(policy: RetryPolicy) -> Arc<Round> {
        Arc::new(Round { deadline: Mutex::new(Instant::now() + policy.total) })
    }
}

/// A source tried up to `policy.attempts` times, with backoff, within the list's deadline.
pub struct Retrying<A: Attempt> {
    inner: A,
    policy: RetryPolicy,
    round: Arc<Round>,
    leads: bool,
    key: Mutex<Option<String>>,
}

impl<A: Attempt> Retrying<A> {
    /// A source of a list sharing `round`'s deadline; the first of the list `leads` (restarts it).
    pub(super) fn in_round(inner: A, policy: RetryPolicy, round: Arc<Round>, leads: bool) -> Retrying<A> {
        Retrying { inner, policy, round, leads, key: Mutex::new(None) }
    }

    fn deadline(&self) -> Instant {
        let mut d = lock(&self.round.deadline);
        if self.leads {
            *d = Instant::now() + self.policy.total;
        }
        *d
    }
}

impl<A: Attempt> SettingsSource for Retrying<A> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn fetch(&self) -> Result<Value, String> {
        let deadline = self.deadline();
        let mut wait = self.policy.backoff;
        let mut last = String::from("not tried: the settings deadline had already passed");
        for n in 1..=self.policy.attempts.max(1) {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{last} (gave up: settings deadline of {:?} reached)",
                    self.policy.total
                ));
            }
            match self.inner.attempt(deadline.min(now + self.policy.attempt_timeout)) {
                Ok(fetched) => {
                    *lock(&self.key) = fetched.public_key;
                    return Ok(fetched.settings);
                }
                Err(Failure::Permanent(m)) => return Err(m),
                Err(Failure::Transient(m)) => {
                    log::info!("settings source {} attempt {n}/{}: {m}", self.name(), self.policy.attempts);
                    last = m;
                }
            }
            if n < self.policy.attempts {
                if Instant::now() + wait >= deadline {
                    return Err(format!(
                        "{last} (gave up: settings deadline of {:?} reached)",
                        self.policy.total
                    ));
                }
                std::thread::sleep(wait);
                wait = wait.saturating_mul(2);
            }
        }
        Err(format!("{last} (after {} attempts)", self.policy.attempts.max(1)))
    }

    fn public_key(&self) -> Option<String> {
        lock(&self.key).clone()
    }
}

impl Attempt for Box<dyn Attempt> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure> {
        (**self).attempt(deadline)
    }
}
