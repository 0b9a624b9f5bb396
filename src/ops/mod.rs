//! The commands that work beside a server or without one: air-gap bundles
//! ([`bundle`]), store checks ([`maintenance`]), a node's container runtime
//! configuration ([`nodeconfig`]), pulling images into a Ferry ([`prefetch`]) and a
//! store's offline readiness ([`status`]).

pub mod bundle;
pub mod maintenance;
pub mod nodeconfig;
pub mod prefetch;
pub mod status;

/// The URL a local client reaches a listener on: loopback for an unspecified address.
pub fn listen_url(listen: std::net::SocketAddr) -> url::Url {
    let ip = match listen.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    url::Url::parse(&format!(
        "http://{}/",
        std::net::SocketAddr::new(ip, listen.port())
    ))
    .expect("a socket address makes a URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_reached_on_loopback_when_unspecified() {
        let url = |s: &str| listen_url(s.parse().unwrap()).to_string();
        assert_eq!(url("0.0.0.0:5000"), "http://127.0.0.1:5000/");
        assert_eq!(url("[::]:5001"), "http://[::1]:5001/");
        assert_eq!(url("10.0.0.5:5000"), "http://10.0.0.5:5000/");
    }
}
