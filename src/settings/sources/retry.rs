//! Retries for the network and disk sources: at boot a metadata service may not answer yet (the
//! NIC is still getting its DHCP lease, the service is slow), a CD-ROM may not be ready. As the Go
//! agent does, every source gets 10 tries 1 s apart; unlike it, every try has a timeout, so a
//! black-holed address costs 10 × (timeout + 1 s) rather than minutes per request, and all the
//! sources of one pass share a deadline ([`RetryPolicy`]), so the cached settings win after a
//! bounded wait. What happens between passes is the settings service's (`service.rs`).

use super::{Attempt, Failure, Fetched, SettingsSource};
use crate::sync::lock;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How hard to try within one pass over the sources. The defaults are the Go agent's (10 tries, 1 s
/// apart), plus the per-try timeout and the pass deadline it lacks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Tries per source per pass.
    pub attempts: u32,
    /// The pause after a failed try.
    pub interval: Duration,
    /// Bound on one try (all its requests or its mount).
    pub attempt_timeout: Duration,
    /// Bound on one pass across all the retrying sources of a list.
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            interval: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(10),
            total: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The defaults with what `agent.json`'s `Infrastructure.Settings.Retry` overrides.
    pub fn from_config(retry: &crate::config::RetryConfig) -> RetryPolicy {
        let d = RetryPolicy::default();
        let ms = |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
        RetryPolicy {
            attempts: retry.attempts.unwrap_or(d.attempts).max(1),
            interval: ms(retry.interval_ms, d.interval),
            attempt_timeout: ms(retry.attempt_timeout_ms, d.attempt_timeout),
            total: ms(retry.pass_ms, d.total),
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

/// A source tried up to `policy.attempts` times, `policy.interval` apart, within the list's deadline.
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
        let wait = self.policy.interval;
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
                    let next = if n < self.policy.attempts {
                        format!("; trying again in {wait:?}")
                    } else {
                        String::new()
                    };
                    log::info!(
                        "settings source {} try {n}/{} failed: {m}{next}",
                        self.name(),
                        self.policy.attempts
                    );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are the Go agent's 10 tries 1 s apart, each try bounded, and a pass bounded so
    /// that even a black-holed service gives way to the cached settings within two minutes.
    #[test]
    fn defaults_are_the_go_agents_tries_with_bounds() {
        let d = RetryPolicy::default();
        assert_eq!((d.attempts, d.interval), (10, Duration::from_secs(1)));
        assert_eq!((d.attempt_timeout, d.total), (Duration::from_secs(10), Duration::from_secs(120)));
        let black_hole = (d.attempt_timeout + d.interval) * d.attempts;
        assert!(black_hole <= d.total, "{black_hole:?}: one black-holed source must fit a pass");
        let cfg =
            crate::config::RetryConfig { attempts: Some(0), interval_ms: Some(5), ..Default::default() };
        let p = RetryPolicy::from_config(&cfg);
        assert_eq!((p.attempts, p.interval, p.total), (1, Duration::from_millis(5), d.total));
    }
}
