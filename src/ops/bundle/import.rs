//! `ferry import`: a bundle into the store, verified, then published.
//!
//! Two phases keep a bad or interrupted import invisible:
//! 1. Content: every manifest and blob an image needs is hashed as it is read from
//!    the bundle and stored through the store's verifying ingest (staged, published
//!    only if it matches its digest). Content stored here is not served yet: Ferry
//!    serves a digest only once the index links it to a repository.
//! 2. Index: only when every image of the bundle is complete are manifests recorded,
//!    linked to their repositories, and finally tagged.
//!
//! A corrupt blob therefore fails the import in phase 1, naming its digest, before any
//! tag or link is written. A crash in phase 2 can leave links without their tag, but
//! never a tag whose content is incomplete.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use ferry_oci::manifest::MAX_MANIFEST_SIZE;
use ferry_oci::{Digest, Reference};
use ferry_storage::index::now_secs;
use ferry_storage::{ManifestRecord, Repo, Store, TagRecord};

use super::export::{human_size, kind};
use super::layout::{BundleReader, TopEntry};
use super::manifest::{self, Children, Descriptor};
use super::name::{self, full_ref};
use super::signing::{self, SIGNATURE_FILE};
use super::{Error, MAX_DEPTH, open_store};
use crate::config::Config;
use crate::image::ImageName;

/// Blobs are copied from the bundle into the store in pieces of this size.
const COPY_CHUNK: usize = 1024 * 1024;

/// What `ferry import` was asked for.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// A tar archive, or (with `from_dir`) an unpacked OCI layout directory.
    pub bundle: PathBuf,
    pub from_dir: bool,
    /// An ed25519 public key (PEM): refuse bundles it did not sign.
    pub trust: Option<PathBuf>,
    /// `<registry>/<repository>` for images whose name in the bundle says no
    /// registry (skopeo's `oci-archive:FILE:TAG`).
    pub name: Option<String>,
}

/// What an import loaded.
#[derive(Debug)]
pub struct ImportReport {
    pub images: Vec<ImportedImage>,
    /// Blobs (manifests included) written to the store.
    pub blobs_loaded: usize,
    pub bytes_loaded: u64,
    /// Blobs the store already held (the bundle's copy, if any, still verified).
    pub blobs_present: usize,
    /// The fingerprint of the key whose signature was checked.
    pub verified_by: Option<String>,
    /// A signature was present but not checked (no `--trust`).
    pub unchecked_signature: bool,
}

#[derive(Debug)]
pub struct ImportedImage {
    /// `<registry>/<repository>:<tag>` (or `@digest`).
    pub name: String,
    /// Where Ferry serves it: the upstream's short name and the repository.
    pub upstream: String,
    pub repo: String,
    pub digest: Digest,
    pub media_type: String,
    pub platforms: Option<(usize, usize)>,
    /// Platforms of an index the bundle does not hold.
    pub missing: Vec<String>,
    /// The digest the tag pointed to before, when the import moved it.
    pub replaced: Option<Digest>,
}

/// One image to load: where it goes, and what the bundle says it is.
struct Planned {
    entry: TopEntry,
    repo: Repo,
    name: ImageName,
    full: String,
}

/// Verifies and loads the bundle `opts` names into the store under `config`.
pub fn import(config: &Config, opts: &ImportOptions) -> Result<ImportReport, Error> {
    let trusted = opts
        .trust
        .as_deref()
        .map(signing::load_verifying_key)
        .transpose()?;
    let override_name = opts
        .name
        .as_deref()
        .map(|n| parse_override(n, config))
        .transpose()?;
    let bundle = BundleReader::open(&opts.bundle, opts.from_dir)?;
    let path = || bundle.path().display().to_string();
    let verified_by = match &trusted {
        Some(key) => {
            let sig = bundle.signature().ok_or_else(|| Error::Unsigned {
                path: path(),
                file: SIGNATURE_FILE,
            })?;
            if !signing::verifies(key, bundle.index_json(), sig) {
                return Err(Error::BadSignature {
                    path: path(),
                    fingerprint: signing::fingerprint(key),
                });
            }
            Some(signing::fingerprint(key))
        }
        None => None,
    };
    let entries = bundle.entries()?;
    if entries.is_empty() {
        return Err(Error::NotALayout {
            path: path(),
            reason: "index.json lists no images".into(),
        });
    }

    let store = &open_store(config, true)?;
    let mut planned = Vec::new();
    for entry in entries {
        let name = destination(&entry, override_name.as_ref(), config)?;
        let (repo, registry) = name::route(&name, config)?;
        let full = match &name.reference {
            Some(r) => full_ref(&registry, &repo.name, r),
            None => full_ref(
                &registry,
                &repo.name,
                &Reference::Digest(entry.descriptor.digest.clone()),
            ),
        };
        planned.push(Planned {
            entry,
            repo,
            name,
            full,
        });
    }

    // Phase 1: content.
    let mut loader = Loader {
        store,
        bundle: &bundle,
        done: HashMap::new(),
        loaded: 0,
        bytes: 0,
        present: 0,
    };
    let mut loaded = Vec::new();
    for p in &planned {
        let node = loader
            .manifest(&p.full, &p.entry.descriptor, 0)?
            .ok_or_else(|| Error::Incomplete {
                image: p.full.clone(),
                digest: p.entry.descriptor.digest.clone(),
            })?;
        loaded.push(node);
    }

    // Phase 2: index. Content first, each image's tag last.
    let index = &store.index;
    let mut images = Vec::new();
    for (p, node) in planned.iter().zip(loaded) {
        for (d, size) in &node.blobs {
            index.blob_stored_in(&p.repo, d, *size)?;
        }
        for (d, media_type, size) in &node.manifests {
            index.manifest_stored_in(
                &p.repo,
                d,
                &ManifestRecord {
                    media_type: media_type.clone(),
                    size: *size,
                },
                None,
            )?;
        }
        let mut replaced = None;
        if let Some(Reference::Tag(tag)) = &p.name.reference {
            replaced = index
                .tag(&p.repo, tag)?
                .map(|r| r.digest)
                .filter(|d| *d != node.digest);
            index.set_tag(
                &p.repo,
                tag,
                &TagRecord {
                    digest: node.digest.clone(),
                    media_type: node.media_type.clone(),
                    fetched_at: now_secs(),
                },
            )?;
        }
        images.push(ImportedImage {
            name: p.full.clone(),
            upstream: p.repo.upstream.clone(),
            repo: p.repo.name.to_string(),
            digest: node.digest,
            media_type: node.media_type,
            platforms: node.platforms,
            missing: node.missing,
            replaced,
        });
    }
    index.flush()?;
    Ok(ImportReport {
        images,
        blobs_loaded: loader.loaded,
        bytes_loaded: loader.bytes,
        blobs_present: loader.present,
        verified_by,
        unchecked_signature: trusted.is_none() && bundle.signature().is_some(),
    })
}

/// `--name`: a registry and repository, maybe a tag for images the bundle names
/// not at all.
fn parse_override(s: &str, config: &Config) -> Result<ImageName, Error> {
    let name: ImageName = s.parse()?;
    if !crate::proxy::names_registry(config, &name) {
        return Err(Error::ImageName {
            name: s.to_string(),
            reason: "--name must start with a registry (or an upstream's short name)".into(),
        });
    }
    Ok(name)
}

/// Where an entry of the bundle goes. A name with a registry is taken as it is;
/// anything shorter (a tag, `repo:tag`, or no name) takes `--name`'s registry and
/// repository, keeping its own tag.
fn destination(
    entry: &TopEntry,
    over: Option<&ImageName>,
    config: &Config,
) -> Result<ImageName, Error> {
    let ref_name = entry.ref_name.as_deref();
    let parsed = ref_name.and_then(|r| r.parse::<ImageName>().ok());
    if let Some(name) = &parsed
        && crate::proxy::names_registry(config, name)
    {
        if let Some(Reference::Digest(d)) = name.reference.as_ref()
            && d != &entry.descriptor.digest
        {
            return Err(Error::BadManifest {
                digest: entry.descriptor.digest.clone(),
                reason: format!("index.json names it `{}`", ref_name.unwrap_or("")),
            });
        }
        return Ok(name.clone());
    }
    let Some(over) = over else {
        return Err(Error::NeedsName {
            ref_name: ref_name.unwrap_or("(no name)").to_string(),
        });
    };
    let reference = match (ref_name, &parsed) {
        (None, _) => over.reference.clone(),
        (Some(r), _) if r.parse::<ferry_oci::Tag>().is_ok() => {
            Some(Reference::Tag(r.parse().expect("checked")))
        }
        (Some(_), Some(p)) if matches!(p.reference, Some(Reference::Tag(_))) => p.reference.clone(),
        (Some(r), _) => {
            return Err(Error::ImageName {
                name: r.to_string(),
                reason: "neither a tag nor a name with a registry".into(),
            });
        }
    };
    // A digest reference is the entry's own digest, never a tag to set.
    let reference = reference.filter(|r| matches!(r, Reference::Tag(_)));
    Ok(ImageName {
        registry: over.registry.clone(),
        repo: over.repo.clone(),
        reference,
    })
}

/// A verified, stored manifest and everything it needs.
struct Node {
    digest: Digest,
    media_type: String,
    platforms: Option<(usize, usize)>,
    missing: Vec<String>,
    /// Children before parents, this manifest last.
    manifests: Vec<(Digest, String, u64)>,
    blobs: Vec<(Digest, u64)>,
}

struct Loader<'a> {
    store: &'a Store,
    bundle: &'a BundleReader,
    /// Blobs already made present by this import, with their sizes.
    done: HashMap<Digest, u64>,
    loaded: usize,
    bytes: u64,
    present: usize,
}

impl Loader<'_> {
    /// Makes manifest `desc` and all it needs present and verified in the store.
    /// `None`: the manifest is neither in the bundle nor in the store.
    fn manifest(
        &mut self,
        image: &str,
        desc: &Descriptor,
        depth: usize,
    ) -> Result<Option<Node>, Error> {
        let Some(bytes) = self.manifest_bytes(desc)? else {
            return Ok(None);
        };
        let parsed = manifest::parse(&desc.digest, &bytes, desc.media_type.as_deref())?;
        let mut node = Node {
            digest: desc.digest.clone(),
            media_type: parsed.media_type.clone(),
            platforms: None,
            missing: Vec::new(),
            manifests: Vec::new(),
            blobs: Vec::new(),
        };
        match parsed.children {
            Children::Blobs(blobs) => {
                for b in blobs {
                    let size = self.blob(image, &b)?;
                    node.blobs.push((b.digest, size));
                }
            }
            Children::Manifests(children) => {
                if depth >= MAX_DEPTH {
                    return Err(Error::BadManifest {
                        digest: desc.digest.clone(),
                        reason: format!("indexes nested more than {MAX_DEPTH} deep"),
                    });
                }
                let total = children.len();
                let mut complete = 0;
                for child in &children {
                    // A platform the exporting site never cached is left out of the
                    // bundle; the index is still the upstream's, byte for byte.
                    match self.manifest(image, child, depth + 1)? {
                        Some(c) => {
                            complete += 1;
                            node.missing.extend(c.missing);
                            node.manifests.extend(c.manifests);
                            node.blobs.extend(c.blobs);
                        }
                        None => node.missing.push(match &child.platform {
                            Some(p) => format!("{p} {}", child.digest),
                            None => child.digest.to_string(),
                        }),
                    }
                }
                if complete == 0 {
                    return Err(Error::Incomplete {
                        image: image.to_string(),
                        digest: children
                            .first()
                            .map_or_else(|| desc.digest.clone(), |c| c.digest.clone()),
                    });
                }
                node.platforms = Some((complete, total));
            }
        }
        node.manifests
            .push((desc.digest.clone(), parsed.media_type, bytes.len() as u64));
        Ok(Some(node))
    }

    /// The manifest's bytes, verified and stored: the bundle's copy, else the store's.
    fn manifest_bytes(&mut self, desc: &Descriptor) -> Result<Option<Vec<u8>>, Error> {
        let d = &desc.digest;
        let corrupt = |reason: String| Error::Corrupt {
            digest: d.clone(),
            reason,
        };
        let Some((reader, size)) = self.bundle.blob(d)? else {
            let bytes = self.store.blobs.read(d)?;
            if let Some(b) = &bytes
                && self.done.insert(d.clone(), b.len() as u64).is_none()
            {
                self.present += 1;
            }
            return Ok(bytes);
        };
        if size != desc.size || size > MAX_MANIFEST_SIZE as u64 {
            return Err(corrupt(format!(
                "{size} bytes, its descriptor says {} (manifests are at most {} bytes)",
                desc.size, MAX_MANIFEST_SIZE
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(Error::io(self.bundle.path()))?;
        if !d.verify(&bytes) {
            return Err(corrupt("its bytes do not hash to that digest".into()));
        }
        if !self.done.contains_key(d) {
            if self.store.blobs.stat(d)?.is_some() {
                self.present += 1;
            } else {
                self.store.blobs.put(d, &bytes)?;
                self.loaded += 1;
                self.bytes += size;
            }
            self.done.insert(d.clone(), size);
        }
        Ok(Some(bytes))
    }

    /// Makes blob `desc` present: ingested from the bundle (verified), or already in
    /// the store. Returns its size.
    fn blob(&mut self, image: &str, desc: &Descriptor) -> Result<u64, Error> {
        let d = &desc.digest;
        if let Some(&size) = self.done.get(d) {
            return Ok(size);
        }
        let stored = self.store.blobs.stat(d)?;
        let Some((mut reader, size)) = self.bundle.blob(d)? else {
            return match stored {
                Some(size) => {
                    self.present += 1;
                    self.done.insert(d.clone(), size);
                    Ok(size)
                }
                None => Err(Error::Incomplete {
                    image: image.to_string(),
                    digest: d.clone(),
                }),
            };
        };
        let corrupt = |reason: String| Error::Corrupt {
            digest: d.clone(),
            reason,
        };
        if size != desc.size {
            return Err(corrupt(format!(
                "{size} bytes, its descriptor says {}",
                desc.size
            )));
        }
        let path = self.bundle.path();
        if stored.is_some() {
            // Already stored (and so verified once): still check the bundle's copy,
            // so a damaged bundle is reported, not silently half-used.
            let mut hasher = d.algorithm().hasher();
            copy_chunks(&mut reader, path, |chunk| {
                hasher.update(chunk);
                Ok(())
            })?;
            if hasher.finish() != *d {
                return Err(corrupt("its bytes do not hash to that digest".into()));
            }
            self.present += 1;
        } else {
            let mut ingest = self.store.blobs.ingest(d, Some(size))?;
            copy_chunks(&mut reader, path, |chunk| {
                ingest.write(chunk).map_err(|e| storage_or_corrupt(e, d))
            })?;
            ingest.commit().map_err(|e| storage_or_corrupt(e, d))?;
            self.loaded += 1;
            self.bytes += size;
        }
        self.done.insert(d.clone(), size);
        Ok(size)
    }
}

/// Hands what `reader` (a blob in the bundle at `path`) holds to `sink`, in pieces
/// of [`COPY_CHUNK`].
fn copy_chunks(
    reader: &mut impl Read,
    path: &Path,
    mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = reader.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            return Ok(());
        }
        sink(&buf[..n])?;
    }
}

/// A verification failure of the bundle's bytes is the bundle's fault; anything
/// else the store's.
fn storage_or_corrupt(e: ferry_storage::Error, d: &Digest) -> Error {
    match e {
        ferry_storage::Error::DigestMismatch { actual, .. } => Error::Corrupt {
            digest: d.clone(),
            reason: format!("its bytes hash to {actual}"),
        },
        ferry_storage::Error::SizeMismatch {
            expected, actual, ..
        } => Error::Corrupt {
            digest: d.clone(),
            reason: format!("{actual} bytes where {expected} were expected"),
        },
        other => Error::Storage(other),
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verified_by {
            Some(k) => writeln!(f, "signature verified: signed by trusted key {k}")?,
            None if self.unchecked_signature => writeln!(
                f,
                "bundle is signed, but the signature was not checked (no --trust)"
            )?,
            None => {}
        }
        for i in &self.images {
            write!(f, "loaded {} {} ({}", i.name, i.digest, kind(&i.media_type))?;
            if let Some((n, total)) = i.platforms {
                write!(f, ", {n} of {total} platforms")?;
            }
            write!(f, ") as {}/{}", i.upstream, i.repo)?;
            if let Some(old) = &i.replaced {
                write!(f, "; tag moved from {old}")?;
            }
            writeln!(f)?;
            for m in &i.missing {
                writeln!(f, "  not in the bundle: {m}")?;
            }
        }
        writeln!(
            f,
            "stored {} blobs ({}); {} already in the store",
            self.blobs_loaded,
            human_size(self.bytes_loaded),
            self.blobs_present
        )
    }
}
