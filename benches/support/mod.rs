//! The benchmark's own pieces: the load generator's HTTP client, images pushed with it,
//! `/proc` readings, nginx and Ferry as the benchmark runs them, and the report.
//! Processes, Distribution, skopeo and Ferry's config come from the test kit
//! (`testkit/`, crate `ferry_testkit`), shared with the integration tests.
#![allow(dead_code)]

pub mod http;
pub mod images;
pub mod proc;
pub mod report;
pub mod servers;
