//! The commands that work beside a server or without one: air-gap bundles
//! ([`bundle`]), store checks ([`maintenance`]), a node's container runtime
//! configuration ([`nodeconfig`]), pulling images into a Ferry ([`prefetch`]) and a
//! store's offline readiness ([`status`]).

pub mod bundle;
pub mod maintenance;
pub mod nodeconfig;
pub mod prefetch;
pub mod status;
