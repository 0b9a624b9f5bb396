//! OCI and Docker media types, and `Accept` negotiation for manifests.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest types Ferry asks for when a client names none.
pub const ALL_MANIFESTS: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Manifests larger than this are refused (the spec asks registries to take at least
/// 4 MB; containerd refuses more than about 4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// The media types a client accepts, from every `Accept` header it sent (skopeo
/// sends one type per header line), without parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept(Vec<String>);

impl Accept {
    pub fn from_headers(headers: &http::HeaderMap) -> Accept {
        let types = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(media_type)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        Accept(types)
    }

    pub fn of(types: &[&str]) -> Accept {
        Accept(types.iter().map(|t| t.to_string()).collect())
    }

    /// Whether a manifest of `media_type` may be served to this client. A client
    /// that sends no `Accept`, or `*/*`, takes anything.
    pub fn allows(&self, media_type: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|t| t == media_type || t == "*/*")
    }

    /// The `Accept` to send upstream: the client's own list, so the upstream
    /// negotiates as it would for the client, or every manifest type if it sent none.
    pub fn upstream_header(&self) -> String {
        if self.0.is_empty() {
            ALL_MANIFESTS.join(", ")
        } else {
            self.0.join(", ")
        }
    }
}

/// A `Content-Type` value without parameters, lowercased.
pub fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_reads_every_header_and_ignores_parameters() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::ACCEPT, OCI_MANIFEST.parse().unwrap());
        h.append(
            http::header::ACCEPT,
            format!("{DOCKER_MANIFEST}; q=0.5, {DOCKER_LIST}")
                .parse()
                .unwrap(),
        );
        let a = Accept::from_headers(&h);
        assert!(a.allows(OCI_MANIFEST) && a.allows(DOCKER_MANIFEST) && a.allows(DOCKER_LIST));
        assert!(!a.allows(OCI_INDEX));
        assert!(Accept::default().allows(OCI_INDEX));
        assert!(Accept::of(&[OCI_MANIFEST, "*/*"]).allows(OCI_INDEX));
    }
}
