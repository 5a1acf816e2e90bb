//! Special names that pinhole answers itself and never forwards: `resolver.arpa` (RFC 9462),
//! iCloud Private Relay's opt-out names, and the `use-application-dns.net` canary.
//!
//! Owns the list of these names and which setting switches each. It does not write answers.

use crate::config::{SpecialAnswer, SpecialConfig};

/// Which special name a query is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `resolver.arpa` or a name below it.
    ResolverArpa,
    /// `mask.icloud.com` or `mask-h2.icloud.com`.
    PrivateRelay,
    /// `use-application-dns.net`.
    ApplicationDnsCanary,
}

/// The local answer for a special name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialReply {
    Nxdomain,
    Nodata,
    Refuse,
    Servfail,
    /// No answer at all.
    Drop,
    /// `_dns.resolver.arpa`: the DDR answer (SVCB of pinhole's encrypted endpoints) for type
    /// SVCB when `[tls]` listeners exist; NODATA otherwise.
    Ddr,
}

impl Special {
    /// The special name `name` (lower case, dotted) is, if it is one and its switch is on.
    pub fn classify(name: &[u8], config: &SpecialConfig) -> Option<(Special, SpecialReply)> {
        let (special, setting, usual) =
            if name == b"resolver.arpa" || name.ends_with(b".resolver.arpa") {
                let usual = if name == b"_dns.resolver.arpa" {
                    SpecialReply::Ddr
                } else {
                    SpecialReply::Nodata
                };
                (Special::ResolverArpa, config.resolver_arpa, usual)
            } else if name == b"mask.icloud.com" || name == b"mask-h2.icloud.com" {
                (
                    Special::PrivateRelay,
                    config.private_relay,
                    SpecialReply::Nxdomain,
                )
            } else if name == b"use-application-dns.net" {
                (
                    Special::ApplicationDnsCanary,
                    config.application_dns_canary,
                    SpecialReply::Nxdomain,
                )
            } else {
                return None;
            };
        let reply = match setting {
            SpecialAnswer::Off => return None,
            SpecialAnswer::Usual => usual,
            SpecialAnswer::Nxdomain => SpecialReply::Nxdomain,
            SpecialAnswer::Nodata => SpecialReply::Nodata,
            SpecialAnswer::Refuse => SpecialReply::Refuse,
            SpecialAnswer::Servfail => SpecialReply::Servfail,
            SpecialAnswer::Drop => SpecialReply::Drop,
        };
        Some((special, reply))
    }

    /// Why the name is special, for `explain` and EDE texts.
    pub fn describe(self) -> &'static str {
        match self {
            Special::ResolverArpa => {
                "resolver.arpa (RFC 9462 discovery of designated resolvers, DDR): answered locally, never forwarded"
            }
            Special::PrivateRelay => {
                "iCloud Private Relay opt-out: this network does not allow Private Relay"
            }
            Special::ApplicationDnsCanary => {
                "use-application-dns.net canary: browsers keep using this resolver instead of their own DoH"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_switches() {
        let on = SpecialConfig::default();
        assert_eq!(
            Special::classify(b"_dns.resolver.arpa", &on),
            Some((Special::ResolverArpa, SpecialReply::Ddr))
        );
        assert_eq!(
            Special::classify(b"x.resolver.arpa", &on),
            Some((Special::ResolverArpa, SpecialReply::Nodata))
        );
        assert_eq!(
            Special::classify(b"mask-h2.icloud.com", &on).map(|s| s.1),
            Some(SpecialReply::Nxdomain)
        );
        assert_eq!(Special::classify(b"xresolver.arpa", &on), None);
        let off = SpecialConfig {
            resolver_arpa: SpecialAnswer::Off,
            private_relay: SpecialAnswer::Off,
            application_dns_canary: SpecialAnswer::Off,
        };
        let failing = SpecialConfig {
            resolver_arpa: SpecialAnswer::Drop,
            private_relay: SpecialAnswer::Servfail,
            application_dns_canary: SpecialAnswer::Refuse,
        };
        assert_eq!(
            Special::classify(b"_dns.resolver.arpa", &failing).map(|s| s.1),
            Some(SpecialReply::Drop)
        );
        assert_eq!(
            Special::classify(b"mask.icloud.com", &failing).map(|s| s.1),
            Some(SpecialReply::Servfail)
        );
        assert_eq!(
            Special::classify(b"use-application-dns.net", &failing).map(|s| s.1),
            Some(SpecialReply::Refuse)
        );
        assert_eq!(Special::classify(b"resolver.arpa", &off), None);
        assert_eq!(Special::classify(b"mask.icloud.com", &off), None);
        assert_eq!(Special::classify(b"use-application-dns.net", &off), None);
    }
}
