//! DDR (RFC 9462): the SVCB records that answer `_dns.resolver.arpa` with pinhole's own
//! encrypted endpoints. Built once at start from the bound listeners.

use std::net::IpAddr;

use crate::dns::wire;

/// SvcParamKeys (RFC 9460 section 14.3.2, RFC 9461).
const KEY_ALPN: u16 = 1;
const KEY_PORT: u16 = 3;
const KEY_IPV4HINT: u16 = 4;
const KEY_IPV6HINT: u16 = 6;
const KEY_DOHPATH: u16 = 7;

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
            param(KEY_ALPN, &alpn);
            param(KEY_PORT, &e.port.to_be_bytes());
            let v4: Vec<u8> = e
                .addrs
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V4(a) => Some(a.octets()),
                    IpAddr::V6(_) => None,
                })
                .flatten()
                .collect();
            if !v4.is_empty() {
                param(KEY_IPV4HINT, &v4);
            }
            let v6: Vec<u8> = e
                .addrs
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V6(a) => Some(a.octets()),
                    IpAddr::V4(_) => None,
                })
                .flatten()
                .collect();
            if !v6.is_empty() {
                param(KEY_IPV6HINT, &v6);
            }
            if let Some(path) = e.doh_path {
                param(KEY_DOHPATH, format!("{path}{{?dns}}").as_bytes());
            }
            rdata
        })
        .collect()
}
