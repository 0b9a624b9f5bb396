//! The benchmark's own harness (a small, self-contained cousin of `tests/harness/`):
//! processes, servers, the load generator's HTTP client, images and the report.
#![allow(dead_code)]

pub mod http;
pub mod images;
pub mod proc;
pub mod report;
pub mod servers;
