//! dirs (to be written).
