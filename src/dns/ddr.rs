//! DDR (RFC 9462): the SVCB records that answer `_dns.resolver.arpa` with pinhole's own
//! encrypted endpoints. Built once at start from the bound listeners.

use std::net::IpAddr;

use crate::dns::wire;

/// One encrypted endpoint to advertise.
pub struct Endpoint<'a> {
    /// `dot` or `h2`.
    pub alpn: &'a str,
    pub port: u16,
    /// DoH only: the path, advertised as the URI template `path{?dns}`.
    pub doh_path: Option<&'a str>,
    pub addrs: &'a [IpAddr],
}

/// The RDATA of one ServiceMode SVCB record per endpoint, priorities 1, 2, ... in order.
pub fn records(target: &str, endpoints: &[Endpoint<'_>]) -> Vec<Vec<u8>> {
    endpoints
        .iter()
        .zip(1u16..)
        .map(|(e, priority)| {
            let mut rdata = Vec::new();
            rdata.extend_from_slice(&priority.to_be_bytes());
            wire::encode_name(target, &mut rdata);
            let mut param = |key: u16, value: &[u8]| {
                rdata.extend_from_slice(&key.to_be_bytes());
                rdata.extend_from_slice(&(value.len() as u16).to_be_bytes());
                rdata.extend_from_slice(value);
            };
            // Keys in increasing order (RFC 9460 section 2.2).
            let mut alpn = vec![e.alpn.len() as u8];
            alpn.extend_from_slice(e.alpn.as_bytes());
            param(wire::SVC_ALPN, &alpn);
            param(wire::SVC_PORT, &e.port.to_be_bytes());
            let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = e.addrs.iter().partition(|a| a.is_ipv4());
            for (key, addrs) in [(wire::SVC_IPV4HINT, v4), (wire::SVC_IPV6HINT, v6)] {
                let value: Vec<u8> = addrs
                    .iter()
                    .flat_map(|a| match a {
                        IpAddr::V4(a) => a.octets().to_vec(),
                        IpAddr::V6(a) => a.octets().to_vec(),
                    })
                    .collect();
                if !value.is_empty() {
                    param(key, &value);
                }
            }
            if let Some(path) = e.doh_path {
                param(wire::SVC_DOHPATH, format!("{path}{{?dns}}").as_bytes());
            }
            rdata
        })
        .collect()
}
