//! heartbeat (to be written).
