//! Talking to upstream registries: one [`Client`] per configured upstream, with its
//! own connection pool, timeouts and credentials.
//!
//! The client never follows a redirect with credentials to another origin, and no
//! credential appears in an error it returns.

mod acr;
mod auth;
mod body;
mod client;
pub(crate) mod entra;
mod error;
mod health;
mod redact;
mod token;

pub use client::{Client, Reach, Response, http_builder};
pub use error::Error;
