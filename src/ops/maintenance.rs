//! `ferry fsck` and `ferry gc`: store maintenance with the server stopped.
//!
//! Both open the store directly (sled allows one process per database); while `ferry
//! serve` has it open they fail with a message saying so. The work is the storage
//! crate's ([`Store::fsck`], [`Store::gc`]); this module opens, prints and decides the
//! outcome.

use std::path::Path;
use std::time::Duration;

use ferry_storage::{FsckReport, GcReport, Store};

use crate::bytesize::Human;

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("there is no store at {path} (check [storage] root)")]
    NoStore { path: String },
    // Not `source`: the message holds the cause already, and `{:#}` would repeat it.
    #[error("cannot open the store at {path}: {error}")]
    Open {
        path: String,
        error: ferry_storage::Error,
    },
    #[error("{0}")]
    Storage(#[from] ferry_storage::Error),
    #[error(
        "{0} problem(s) found in the store; `ferry fsck --repair` drops what is damaged (it is fetched again on the next pull)"
    )]
    Problems(usize),
    #[error("--shared checks [storage.shared], which the configuration does not have")]
    NoSharedStore,
    #[error("{0}")]
    SharedStore(#[from] crate::shared_store::OpenError),
    #[error(
        "{0} problem(s) found in the shared store; replicas verify what they read from it (a damaged object is fetched again from the upstream, never served), and records without objects are dropped by the shared eviction; delete a damaged object's blob by hand to have it fetched again"
    )]
    SharedProblems(usize),
    #[error(
        "ferry gc does not run on the shared store: the replicas keep it within [storage] max_size themselves, one at a time under the maintenance lease, sparing what was used within eviction_grace; a gc from outside could not tell a blob a replica has just uploaded, and not yet recorded or linked, from garbage. `ferry fsck --shared` checks it (read-only, while replicas run); `ferry gc` without --shared cleans this replica's local tier, with the server stopped"
    )]
    SharedGc,
}

fn open(root: &Path, as_found: bool) -> Result<Store, MaintenanceError> {
    // Opening would create an empty store: a mistyped root should not look healthy.
    if !ferry_storage::Layout::new(root).index_dir().exists() {
        return Err(MaintenanceError::NoStore {
            path: root.display().to_string(),
        });
    }
    let opened = if as_found {
        Store::open_as_found(root)
    } else {
        Store::open(root)
    };
    opened.map_err(|error| MaintenanceError::Open {
        path: root.display().to_string(),
        error,
    })
}

/// Checks (and with `repair`, repairs) the store at `root`, printing the report on
/// stdout. An error when problems were found and not repaired.
pub fn fsck(root: &Path, repair: bool) -> Result<FsckReport, MaintenanceError> {
    // As found: leftovers in staging/ are part of what fsck reports.
    let store = open(root, true)?;
    let report = store.fsck(repair)?;
    print!("{report}");
    if !report.is_clean() && !report.repaired {
        return Err(MaintenanceError::Problems(report.problems()));
    }
    Ok(report)
}

/// Removes blobs no manifest references, older than `grace`, printing what it did.
pub fn gc(root: &Path, grace: Duration) -> Result<GcReport, MaintenanceError> {
    let store = open(root, false)?;
    let report = store.gc(grace)?;
    for (d, size) in &report.removed {
        println!("removed {d} ({})", Human(*size));
    }
    println!(
        "gc: removed {} unreferenced blob(s), {} freed; kept {} referenced, {} younger than {}, {} in use",
        report.removed.len(),
        Human(report.bytes_freed),
        report.live,
        report.kept_young,
        humantime::format_duration(grace),
        report.kept_in_use,
    );
    Ok(report)
}

/// Checks the shared store (read-only; replicas may run meanwhile), printing the
/// report. An error when problems were found.
pub async fn fsck_shared(
    shared: Option<&crate::config::SharedStore>,
    rehash: bool,
) -> Result<ferry_storage::backend::SharedFsckReport, MaintenanceError> {
    let shared = shared.ok_or(MaintenanceError::NoSharedStore)?;
    let store = crate::shared_store::open(shared)?;
    let report = store
        .fsck_shared(rehash, ferry_storage::now_millis())
        .await?;
    print!("{report}");
    if !report.is_clean() {
        return Err(MaintenanceError::SharedProblems(report.problems()));
    }
    Ok(report)
}
