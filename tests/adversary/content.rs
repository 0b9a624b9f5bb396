//! (issue 11: filled in by the work on this front)
