//! Context for the agent's errors, which are `String`s from the first failure up to the reply.
//!
//! The message rule (ARCHITECTURE.md): what the director shows keeps the Go agent's words and case,
//! because operators and the director's own code match on them; context added on the way up is
//! lower case and says what was being done, `<doing what>: <cause>`, e.g. `writing
//! /var/vcap/bosh/spec.json: No space left on device (os error 28)`.

use std::fmt::Display;

/// Adds `<what>: ` in front of an error, turning it into the agent's `String` error.
pub trait Context<T> {
    /// Prefixes the error with `what`.
    fn context(self, what: impl Display) -> Result<T, String>;
    /// Prefixes the error with what `what` returns, computed only on failure.
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T, String>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T, String> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_what_was_being_done() {
        let r: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
        assert_eq!(r.context("writing spec.json").unwrap_err(), "writing spec.json: disk full");
        let r: Result<(), String> = Err("refused".into());
        assert_eq!(
            r.with_context(|| format!("connecting to {}", "h:1")).unwrap_err(),
            "connecting to h:1: refused"
        );
        assert_eq!(Ok::<_, String>(1).context("never shown"), Ok(1));
    }
}
