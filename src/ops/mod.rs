//! The commands that work beside a server or without one: air-gap bundles
//! ([`bundle`]), store checks ([`maintenance`]), a node's container runtime
//! configuration ([`nodeconfig`]) and pulling images into a Ferry ([`prefetch`]).

pub mod bundle;
pub mod maintenance;
pub mod nodeconfig;
pub mod prefetch;
