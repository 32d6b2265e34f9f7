//! Vitals from /proc and statvfs (owned by the vitals helper).
