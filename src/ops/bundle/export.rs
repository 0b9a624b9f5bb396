//! `ferry export`: cached images out of the store into a bundle.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::SystemTime;

use ferry_oci::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use ferry_oci::{Digest, Hasher, Reference};

use ferry_storage::Store;

use super::layout::{BundleReader, BundleWriter, INDEX_JSON, index_json};
use super::manifest::{self, Children, Descriptor};
use super::name::{self, full_ref};
use super::signing::{self, SIGNATURE_FILE};
use super::{Error, MAX_DEPTH, open_store};
use crate::config::Config;
use crate::oci;

/// What `ferry export` was asked for.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub images: Vec<oci::ImageName>,
    pub output: PathBuf,
    pub since: Option<Since>,
    /// A PKCS#8 PEM ed25519 private key to sign `index.json` with.
    pub sign: Option<PathBuf>,
}

/// Which configs and layers an incremental bundle leaves out. Manifests are always
/// written: they are small, and they let the importer check the whole image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Blobs stored before this time.
    Time(SystemTime),
    /// Blobs an earlier bundle (a tar, or an unpacked layout directory) holds.
    Bundle(PathBuf),
}

impl FromStr for Since {
    type Err = Error;

    /// An RFC 3339 UTC timestamp (`2025-06-01T00:00:00Z`), else the path of an
    /// existing bundle.
    fn from_str(s: &str) -> Result<Since, Error> {
        if let Ok(t) = humantime::parse_rfc3339_weak(s) {
            return Ok(Since::Time(t));
        }
        let path = PathBuf::from(s);
        if path.exists() {
            return Ok(Since::Bundle(path));
        }
        Err(Error::Since {
            value: s.to_string(),
            reason: "neither an RFC 3339 UTC timestamp (e.g. 2025-06-01T00:00:00Z) nor an \
                     existing bundle"
                .into(),
        })
    }
}

/// What an export wrote.
#[derive(Debug)]
pub struct ExportReport {
    pub images: Vec<ExportedImage>,
    pub output: PathBuf,
    pub bundle_size: u64,
    pub blobs_written: usize,
    /// Configs and layers left out because of `--since`.
    pub blobs_skipped: usize,
    /// The fingerprint of the signing key.
    pub signed_by: Option<String>,
}

#[derive(Debug)]
pub struct ExportedImage {
    /// The name recorded in the bundle (`org.opencontainers.image.ref.name`).
    pub name: String,
    pub digest: Digest,
    pub media_type: String,
    /// For an index: complete platforms, of how many.
    pub platforms: Option<(usize, usize)>,
    /// Platforms of an index not (completely) cached, so not exported.
    pub missing: Vec<String>,
}

/// Writes the images `opts` names, from the store under `config`, to a bundle.
pub fn export(config: &Config, opts: &ExportOptions) -> Result<ExportReport, Error> {
    let key = opts
        .sign
        .as_deref()
        .map(signing::load_signing_key)
        .transpose()?;
    let names = &opts.images;
    let skip = match &opts.since {
        Some(Since::Bundle(path)) => {
            let dir = path.is_dir();
            Skip::Digests(BundleReader::open(path, dir)?.blob_digests()?)
        }
        Some(Since::Time(t)) => Skip::Before(*t),
        None => Skip::Nothing,
    };
    let store = &open_store(config, false)?;

    let mut plan = Plan::default();
    let mut entries: Vec<(Descriptor, String)> = Vec::new();
    let mut images = Vec::new();
    for name in names {
        let (repo, registry) = name::route(name, config)?;
        let reference = name.reference_or_latest();
        let full = full_ref(&registry, &repo.name, &reference);
        if images.iter().any(|i: &ExportedImage| i.name == full) {
            continue;
        }
        let not_cached = || Error::NotCached {
            image: full.clone(),
        };
        let digest = match &reference {
            Reference::Tag(tag) => store.index.tag(&repo, tag)?.ok_or_else(not_cached)?.digest,
            Reference::Digest(d) if store.index.is_linked(&repo, d)? => d.clone(),
            Reference::Digest(_) => return Err(not_cached()),
        };
        let node = match collect(store, &digest, None, 0)?.ok_or_else(not_cached)? {
            Walk::Complete(node) => node,
            Walk::Incomplete {
                is_index: false,
                missing,
            } => {
                return Err(Error::MissingBlob {
                    image: full,
                    digest: missing.into_iter().next().expect("something is missing"),
                });
            }
            Walk::Incomplete {
                is_index: true,
                missing,
            } => {
                return Err(Error::NoCompletePlatform {
                    image: full,
                    digest,
                    missing: missing
                        .iter()
                        .map(Digest::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        };
        let descriptor = Descriptor {
            media_type: Some(node.media_type.clone()),
            digest: digest.clone(),
            size: node.size,
            platform: None,
        };
        entries.push((descriptor, full.clone()));
        images.push(ExportedImage {
            name: full,
            digest,
            media_type: node.media_type.clone(),
            platforms: node.platforms,
            missing: node.missing.clone(),
        });
        plan.merge(node);
    }

    let index = index_json(&entries);
    let mut writer = BundleWriter::create(&opts.output)?;
    writer.add_file(INDEX_JSON, &index)?;
    let signed_by = match &key {
        Some(key) => {
            writer.add_file(SIGNATURE_FILE, &signing::sign(key, &index))?;
            Some(signing::fingerprint(&key.verifying_key()))
        }
        None => None,
    };
    let (mut written, mut skipped) = (0, 0);
    for d in plan.manifests.keys() {
        copy_blob(store, d, &mut writer)?;
        written += 1;
    }
    for d in plan.blobs.keys() {
        if skip.skips(store, d)? {
            skipped += 1;
            continue;
        }
        copy_blob(store, d, &mut writer)?;
        written += 1;
    }
    let bundle_size = writer.finish()?;
    Ok(ExportReport {
        images,
        output: opts.output.clone(),
        bundle_size,
        blobs_written: written,
        blobs_skipped: skipped,
        signed_by,
    })
}

enum Skip {
    Nothing,
    Digests(BTreeSet<Digest>),
    Before(SystemTime),
}

impl Skip {
    fn skips(&self, store: &Store, d: &Digest) -> Result<bool, Error> {
        match self {
            Skip::Nothing => Ok(false),
            Skip::Digests(set) => Ok(set.contains(d)),
            Skip::Before(t) => {
                // When a blob was stored is its file's mtime: an ingest writes the
                // file and renames it into place, and nothing rewrites it after.
                let path = store.layout().blob(d);
                let stored = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .map_err(Error::io(&path))?;
                Ok(stored < *t)
            }
        }
    }
}

/// Everything the exported images need: manifests (with media types) and blobs.
#[derive(Default)]
struct Plan {
    manifests: BTreeMap<Digest, String>,
    blobs: BTreeMap<Digest, u64>,
}

impl Plan {
    fn merge(&mut self, node: Node) {
        self.manifests.extend(node.plan.manifests);
        self.blobs.extend(node.plan.blobs);
    }
}

/// A manifest whose content is all in the store.
struct Node {
    media_type: String,
    size: u64,
    platforms: Option<(usize, usize)>,
    missing: Vec<String>,
    plan: Plan,
}

enum Walk {
    Complete(Node),
    /// What is missing: blobs of an image, or every platform of an index.
    Incomplete {
        is_index: bool,
        missing: Vec<Digest>,
    },
}

/// Walks manifest `d` in the store. `None`: the manifest itself is not stored.
fn collect(
    store: &Store,
    d: &Digest,
    declared: Option<&str>,
    depth: usize,
) -> Result<Option<Walk>, Error> {
    let Some(bytes) = store.blobs.read(d)? else {
        return Ok(None);
    };
    let recorded = store.index.manifest(d)?.map(|r| r.media_type);
    let parsed = manifest::parse(d, &bytes, recorded.as_deref().or(declared))?;
    let mut plan = Plan::default();
    let (platforms, missing) = match parsed.children {
        Children::Blobs(blobs) => {
            let mut absent = Vec::new();
            for b in blobs {
                match store.blobs.stat(&b.digest)? {
                    Some(size) => {
                        plan.blobs.insert(b.digest, size);
                    }
                    None => absent.push(b.digest),
                }
            }
            if !absent.is_empty() {
                return Ok(Some(Walk::Incomplete {
                    is_index: false,
                    missing: absent,
                }));
            }
            (None, Vec::new())
        }
        Children::Manifests(children) => {
            if depth >= MAX_DEPTH {
                return Err(Error::BadManifest {
                    digest: d.clone(),
                    reason: format!("indexes nested more than {MAX_DEPTH} deep"),
                });
            }
            let total = children.len();
            let (mut complete, mut missing, mut absent) = (0, Vec::new(), Vec::new());
            for child in children {
                match collect(store, &child.digest, child.media_type.as_deref(), depth + 1)? {
                    Some(Walk::Complete(node)) => {
                        complete += 1;
                        missing.extend(node.missing.iter().cloned());
                        plan.merge(node);
                    }
                    _ => {
                        missing.push(describe(&child));
                        absent.push(child.digest);
                    }
                }
            }
            if complete == 0 {
                return Ok(Some(Walk::Incomplete {
                    is_index: true,
                    missing: absent,
                }));
            }
            (Some((complete, total)), missing)
        }
    };
    plan.manifests.insert(d.clone(), parsed.media_type.clone());
    Ok(Some(Walk::Complete(Node {
        media_type: parsed.media_type,
        size: bytes.len() as u64,
        platforms,
        missing,
        plan,
    })))
}

fn describe(child: &Descriptor) -> String {
    match &child.platform {
        Some(p) => format!("{p} {}", child.digest),
        None => child.digest.to_string(),
    }
}

/// Copies stored blob `d` into the bundle, hashing it on the way: a store file
/// damaged on disk is caught here rather than at the far site.
fn copy_blob(store: &Store, d: &Digest, writer: &mut BundleWriter) -> Result<(), Error> {
    let (file, size) = store.blobs.open(d)?.ok_or_else(|| Error::MissingBlob {
        image: "bundle".into(),
        digest: d.clone(),
    })?;
    let mut reader = Hashing {
        inner: file,
        hasher: d.algorithm().hasher(),
        read: 0,
    };
    writer.add_blob(d, size, &mut reader)?;
    let actual = reader.hasher.finish();
    if reader.read != size || actual != *d {
        return Err(Error::Storage(ferry_storage::Error::DigestMismatch {
            expected: d.clone(),
            actual,
        }));
    }
    Ok(())
}

struct Hashing<R> {
    inner: R,
    hasher: Hasher,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.images {
            write!(
                f,
                "exported {} {} ({}",
                i.name,
                i.digest,
                kind(&i.media_type)
            )?;
            if let Some((n, total)) = i.platforms {
                write!(f, ", {n} of {total} platforms")?;
            }
            writeln!(f, ")")?;
            for m in &i.missing {
                writeln!(f, "  not cached, left out: {m}")?;
            }
        }
        write!(
            f,
            "wrote {} ({}, {} blobs",
            self.output.display(),
            human_size(self.bundle_size),
            self.blobs_written
        )?;
        if self.blobs_skipped > 0 {
            write!(
                f,
                "; {} left out by --since: the importing store must hold them already",
                self.blobs_skipped
            )?;
        }
        match &self.signed_by {
            Some(k) => writeln!(f, "; signed by key {k})"),
            None => writeln!(f, "; unsigned)"),
        }
    }
}

/// A short word for a manifest media type, for summaries.
pub(crate) fn kind(media_type: &str) -> &str {
    match media_type {
        OCI_INDEX | DOCKER_LIST => "index",
        OCI_MANIFEST | DOCKER_MANIFEST => "image",
        other => other,
    }
}

pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
