//! Attacks and accidents, performed for real against the `ferry` binary (issue 11):
//! hostile clients, hostile or broken upstreams, a damaged store, a careless
//! operator. Each test asserts what a user would notice: other clients still served,
//! memory bounded, credentials kept, nothing wrong stored or served.
//!
//! One file per front: [`clients`] (what an anonymous client can do to others),
//! [`connections`] (idle and slow connections), [`upstreams`] (what an upstream's
//! answers can do to Ferry), [`redirects`] (where an upstream's redirects may lead),
//! [`content`] (what an upstream's content can make Ferry store and serve),
//! [`store`] (a damaged store), [`operator`] (configuration accidents).

mod clients;
mod connections;
mod content;
mod operator;
mod redirects;
mod store;
mod upstreams;
