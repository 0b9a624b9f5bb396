//! The OCI grammar Ferry speaks, shared by every layer: content [`Digest`]s,
//! repository names ([`RepoName`]), [`Tag`]s and the [`Reference`] a manifest is asked
//! by, each validated once when parsed and trusted after; and what a manifest
//! references ([`manifest`], read with `oci-spec`'s types, and [`refs`]).
//!
//! Nothing here does I/O: the store (`ferry-storage`) keys its records by these types,
//! the API parses them from request paths, the upstream client puts them in URLs.

mod digest;
pub mod manifest;
mod name;
pub mod refs;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use name::{NameError, Reference, RepoName, Tag, TagError};
