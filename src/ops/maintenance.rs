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
