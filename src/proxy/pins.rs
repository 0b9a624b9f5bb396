//! `[[pin]]` images, as the rest of the proxy sees them: which cached content they
//! keep. Status reports them, eviction spares them.

use ferry_oci::{Digest, Reference, Tag};

use ferry_storage::Repo;

use super::Proxy;

impl Proxy {
    /// Each pinned image routed to its repository, with its tag or digest.
    fn pinned(&self) -> Vec<(Repo, Reference)> {
        self.pins
            .iter()
            .flat_map(|p| &p.images)
            .filter_map(|i| Some((self.route_image(i).ok()?.repo, i.reference_or_latest())))
            .collect()
    }

    /// Whether the cached image `digest`, tagged `tags`, is one a pin keeps.
    pub fn is_pinned(&self, digest: &Digest, tags: &[(Repo, Tag)]) -> bool {
        self.pinned()
            .iter()
            .any(|(repo, reference)| match reference {
                Reference::Tag(t) => tags.iter().any(|(r, tag)| r == repo && tag == t),
                Reference::Digest(d) => d == digest,
            })
    }
}
