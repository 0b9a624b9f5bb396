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

/// `(VmRSS, VmHWM)` of `pid` in MiB.
pub(crate) fn memory_mib(pid: u32) -> (u64, u64) {
    let field = |key: &str| {
        ferry_testkit::process::status_bytes(pid, key)
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            / (1024 * 1024)
    };
    (field("VmRSS"), field("VmHWM"))
}
