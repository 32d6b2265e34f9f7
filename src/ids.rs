//! ids (to be written).
