//! fsutil (to be written).
