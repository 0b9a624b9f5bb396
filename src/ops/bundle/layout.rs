//! The bundle on disk: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`), in a tar archive or an unpacked directory.
//!
//! A tar is read in place: one pass over the headers notes where each blob's bytes
//! sit, and blobs are then read by seeking there. Nothing is unpacked to a temporary
//! directory, so importing needs no disk space beyond the store itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ferry_oci::Digest;
use ferry_oci::manifest::OCI_INDEX;

use super::Error;
use super::manifest::Descriptor;
use super::signing::SIGNATURE_FILE;

pub(crate) const OCI_LAYOUT: &str = "oci-layout";
pub(crate) const INDEX_JSON: &str = "index.json";
/// The annotation that names an image in a layout (skopeo's `oci-archive:FILE:NAME`).
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_LAYOUT_BODY: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Bounds what is read into memory from an untrusted bundle before anything verifies it.
const MAX_INDEX_JSON: u64 = 16 * 1024 * 1024;
const MAX_SIGNATURE: u64 = 4096;

/// A blob's bytes as the bundle holds them: a section of the tar, or a file.
pub(crate) type BlobReader = Box<dyn Read>;

/// One image the bundle's `index.json` lists.
#[derive(Debug, Clone)]
pub(crate) struct TopEntry {
    pub descriptor: Descriptor,
    pub ref_name: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct IndexJson {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType", skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// `index.json` listing `entries` (descriptor, full reference) in order.
pub(crate) fn index_json(entries: &[(Descriptor, String)]) -> Vec<u8> {
    let index = IndexJson {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_string()),
        manifests: entries
            .iter()
            .map(|(d, name)| IndexEntry {
                media_type: d.media_type.clone(),
                digest: d.digest.to_string(),
                size: d.size,
                annotations: BTreeMap::from([(REF_NAME.to_string(), name.clone())]),
            })
            .collect(),
    };
    serde_json::to_vec_pretty(&index).expect("index.json serializes")
}

/// A bundle opened for reading.
pub(crate) struct BundleReader {
    path: PathBuf,
    kind: Kind,
    index_json: Vec<u8>,
    signature: Option<Vec<u8>>,
}

enum Kind {
    /// Where each blob's bytes start in the archive, and how many there are.
    Tar(HashMap<Digest, (u64, u64)>),
    Dir,
}

impl BundleReader {
    /// Opens a tar archive (`dir = false`) or an unpacked layout directory.
    pub fn open(path: &Path, dir: bool) -> Result<BundleReader, Error> {
        if dir {
            Self::open_dir(path)
        } else {
            Self::open_tar(path)
        }
    }

    fn open_tar(path: &Path) -> Result<BundleReader, Error> {
        let file = File::open(path).map_err(Error::io(path))?;
        if file.metadata().map_err(Error::io(path))?.is_dir() {
            return Err(not_a_layout(
                path,
                "it is a directory (use --from-dir for an unpacked layout)",
            ));
        }
        let mut archive = tar::Archive::new(file);
        let mut blobs = HashMap::new();
        let (mut layout, mut index_json, mut signature) = (None, None, None);
        let entries = archive.entries_with_seek().map_err(Error::io(path))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| not_a_layout(path, &format!("not a tar ({e})")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(Error::io(path))?.into_owned();
            let name = name.to_string_lossy();
            let name = name.trim_start_matches("./");
            let size = entry.size();
            match name {
                OCI_LAYOUT => layout = Some(read_small(&mut entry, 4096, path, name)?),
                INDEX_JSON => {
                    index_json = Some(read_small(&mut entry, MAX_INDEX_JSON, path, name)?)
                }
                SIGNATURE_FILE => {
                    signature = Some(read_small(&mut entry, MAX_SIGNATURE, path, name)?)
                }
                _ => {
                    if let Some(d) = blob_digest(name) {
                        blobs.insert(d, (entry.raw_file_position(), size));
                    }
                }
            }
        }
        Self::checked(path, Kind::Tar(blobs), layout, index_json, signature)
    }

    fn open_dir(path: &Path) -> Result<BundleReader, Error> {
        let read = |name: &str, limit: u64| -> Result<Option<Vec<u8>>, Error> {
            let p = path.join(name);
            match File::open(&p) {
                Ok(f) => {
                    let mut buf = Vec::new();
                    f.take(limit + 1)
                        .read_to_end(&mut buf)
                        .map_err(Error::io(&p))?;
                    if buf.len() as u64 > limit {
                        return Err(not_a_layout(path, &format!("{name} is too large")));
                    }
                    Ok(Some(buf))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(&p)(e)),
            }
        };
        let layout = read(OCI_LAYOUT, 4096)?;
        let index_json = read(INDEX_JSON, MAX_INDEX_JSON)?;
        let signature = read(SIGNATURE_FILE, MAX_SIGNATURE)?;
        Self::checked(path, Kind::Dir, layout, index_json, signature)
    }

    fn checked(
        path: &Path,
        kind: Kind,
        layout: Option<Vec<u8>>,
        index_json: Option<Vec<u8>>,
        signature: Option<Vec<u8>>,
    ) -> Result<BundleReader, Error> {
        #[derive(Deserialize)]
        struct Layout {
            #[serde(rename = "imageLayoutVersion")]
            _version: String,
        }
        let layout = layout.ok_or_else(|| not_a_layout(path, "no oci-layout file"))?;
        serde_json::from_slice::<Layout>(&layout)
            .map_err(|e| not_a_layout(path, &format!("oci-layout: {e}")))?;
        let index_json = index_json.ok_or_else(|| not_a_layout(path, "no index.json"))?;
        Ok(BundleReader {
            path: path.to_path_buf(),
            kind,
            index_json,
            signature,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The exact bytes of `index.json`: what a signature covers.
    pub fn index_json(&self) -> &[u8] {
        &self.index_json
    }

    pub fn signature(&self) -> Option<&[u8]> {
        self.signature.as_deref()
    }

    /// The images `index.json` lists.
    pub fn entries(&self) -> Result<Vec<TopEntry>, Error> {
        let bad = |reason: String| not_a_layout(&self.path, &format!("index.json: {reason}"));
        let index: IndexJson =
            serde_json::from_slice(&self.index_json).map_err(|e| bad(e.to_string()))?;
        index
            .manifests
            .into_iter()
            .map(|e| {
                let digest = e.digest.parse().map_err(|err| bad(format!("{err}")))?;
                Ok(TopEntry {
                    descriptor: Descriptor {
                        media_type: e.media_type,
                        digest,
                        size: e.size,
                        platform: None,
                    },
                    ref_name: e.annotations.get(REF_NAME).cloned(),
                })
            })
            .collect()
    }

    /// The bundle's copy of blob `d` (unverified) and its size, if it has one.
    pub fn blob(&self, d: &Digest) -> Result<Option<(BlobReader, u64)>, Error> {
        match &self.kind {
            Kind::Tar(blobs) => {
                let Some(&(offset, size)) = blobs.get(d) else {
                    return Ok(None);
                };
                let mut file = File::open(&self.path).map_err(Error::io(&self.path))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(Error::io(&self.path))?;
                Ok(Some((Box::new(file.take(size)), size)))
            }
            Kind::Dir => {
                let p = self.path.join(blob_path(d));
                match File::open(&p) {
                    Ok(f) => {
                        let size = f.metadata().map_err(Error::io(&p))?.len();
                        Ok(Some((Box::new(f), size)))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(&p)(e)),
                }
            }
        }
    }

    /// Every blob the bundle holds (by name; nothing is hashed here).
    pub fn blob_digests(&self) -> Result<BTreeSet<Digest>, Error> {
        match &self.kind {
            Kind::Tar(blobs) => Ok(blobs.keys().cloned().collect()),
            Kind::Dir => {
                let mut out = BTreeSet::new();
                let blobs_dir = self.path.join("blobs");
                let algs = match std::fs::read_dir(&blobs_dir) {
                    Ok(a) => a,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(Error::io(&blobs_dir)(e)),
                };
                for alg in algs {
                    let alg = alg.map_err(Error::io(&blobs_dir))?;
                    let Ok(files) = std::fs::read_dir(alg.path()) else {
                        continue;
                    };
                    for f in files.flatten() {
                        let name = format!(
                            "blobs/{}/{}",
                            alg.file_name().to_string_lossy(),
                            f.file_name().to_string_lossy()
                        );
                        out.extend(blob_digest(&name));
                    }
                }
                Ok(out)
            }
        }
    }
}

fn read_small(r: &mut impl Read, limit: u64, path: &Path, name: &str) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    r.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(Error::io(path))?;
    if buf.len() as u64 > limit {
        return Err(not_a_layout(path, &format!("{name} is too large")));
    }
    Ok(buf)
}

fn not_a_layout(path: &Path, reason: &str) -> Error {
    Error::NotALayout {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// `blobs/<alg>/<hex>` → the digest, for algorithms Ferry can verify.
fn blob_digest(name: &str) -> Option<Digest> {
    let rest = name.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().name(), d.hex())
}

/// A bundle being written. It goes to a temporary file beside the destination and
/// is renamed into place only when complete, so a failed export leaves no bundle
/// that looks whole.
pub(crate) struct BundleWriter {
    builder: Option<tar::Builder<BufWriter<File>>>,
    partial: PathBuf,
    dest: PathBuf,
    mtime: u64,
}

impl BundleWriter {
    pub fn create(dest: &Path) -> Result<BundleWriter, Error> {
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Io {
                path: dest.display().to_string(),
                error: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
            })?
            .to_string_lossy();
        let partial = dest.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let file = File::create(&partial).map_err(Error::io(dest))?;
        let mut w = BundleWriter {
            builder: Some(tar::Builder::new(BufWriter::with_capacity(1 << 20, file))),
            partial,
            dest: dest.to_path_buf(),
            mtime: ferry_storage::index::now_secs(),
        };
        w.add_file(OCI_LAYOUT, OCI_LAYOUT_BODY)?;
        Ok(w)
    }

    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        self.append(name, bytes.len() as u64, bytes)
    }

    pub fn add_blob(&mut self, d: &Digest, size: u64, bytes: impl Read) -> Result<(), Error> {
        self.append(&blob_path(d), size, bytes)
    }

    fn append(&mut self, name: &str, size: u64, bytes: impl Read) -> Result<(), Error> {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        header.set_entry_type(tar::EntryType::Regular);
        // `take` guards the archive's framing against a file that grew meanwhile.
        let builder = self.builder.as_mut().expect("writer not finished");
        builder
            .append_data(&mut header, name, bytes.take(size))
            .map_err(Error::io(&self.partial))
    }

    /// Completes the archive, makes it durable and moves it into place. Returns its size.
    pub fn finish(mut self) -> Result<u64, Error> {
        let builder = self.builder.take().expect("writer not finished");
        let file = builder
            .into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(Error::io(&self.partial))?;
        file.sync_all().map_err(Error::io(&self.partial))?;
        let size = file.metadata().map_err(Error::io(&self.partial))?.len();
        std::fs::rename(&self.partial, &self.dest).map_err(Error::io(&self.dest))?;
        Ok(size)
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if self.builder.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}
