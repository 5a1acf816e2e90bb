//! `pinhole explain`: which stage, zone and rule decide a name, and what a client would get.
//!
//! Owns the wording of explanations. It asks the same functions the request path asks
//! (special names, policy), so what it says is what the server does.

use std::fmt::Write;

use crate::config::{BlockAction, Config};
use crate::dns::special::{Special, SpecialReply};
use crate::policy::{Action, MatchKind, Policy};

/// What a client gets under a block action, in words.
fn block_answer(action: BlockAction, qtype: &str, config: &Config) -> String {
    match action {
        BlockAction::Refuse => {
            "REFUSED (with Extended DNS Error 15 Blocked for EDNS clients)".into()
        }
        BlockAction::Nxdomain => {
            "NXDOMAIN with pinhole's SOA (Extended DNS Error 15 Blocked)".into()
        }
        BlockAction::Nodata => {
            "NOERROR with no records and pinhole's SOA (NODATA, Extended DNS Error 15 Blocked)"
                .into()
        }
        BlockAction::Sinkhole => match qtype {
            "A" => format!("A {} (sinkhole)", config.policy.sinkhole_ipv4),
            "AAAA" => format!("AAAA {} (sinkhole)", config.policy.sinkhole_ipv6),
            _ => "NODATA with pinhole's SOA (the sinkhole answers only A and AAAA)".into(),
        },
        BlockAction::Forward => "the upstream's answer; nothing is opened in the firewall".into(),
        BlockAction::Servfail => {
            "SERVFAIL (a simulated resolver failure, Extended DNS Error 15 Blocked)".into()
        }
        BlockAction::Drop => "no answer at all (a simulated timeout)".into(),
    }
}

/// Explains the decision for `name` (any case, trailing dot optional) and query type `qtype`.
pub fn explain(config: &Config, policy: &Policy, name: &str, qtype: &str) -> String {
    let norm = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let qtype = qtype.to_ascii_uppercase();
    let mut out = String::new();
    let _ = writeln!(out, "name:     {norm}.");
    let _ = writeln!(out, "type:     {qtype}");
    if let Some((special, reply)) = Special::classify(norm.as_bytes(), &config.special) {
        let answer = match reply {
            SpecialReply::Nxdomain => "NXDOMAIN with pinhole's SOA",
            SpecialReply::Nodata => "NOERROR with no records (NODATA) and pinhole's SOA",
            SpecialReply::Refuse => "REFUSED (a simulated failure)",
            SpecialReply::Servfail => "SERVFAIL (a simulated failure)",
            SpecialReply::Drop => "no answer at all (a simulated timeout)",
            SpecialReply::Ddr if config.tls.enabled() && qtype == "SVCB" => {
                "SVCB records naming pinhole's DoT/DoH endpoints ([tls]: DDR, RFC 9462)"
            }
            SpecialReply::Ddr => {
                "NOERROR with no records (NODATA): no [tls] listeners, so no designated resolver"
            }
        };
        let _ = writeln!(
            out,
            "decided:  special name, [special] in {}",
            config.path.display()
        );
        let _ = writeln!(out, "why:      {}", special.describe());
        let _ = writeln!(out, "answer:   {answer}; never forwarded");
        return out;
    }
    let verdict = policy.decide(norm.as_bytes());
    match (verdict.target, verdict.matched) {
        (Some(target), Some(kind)) => {
            let rule = match kind {
                MatchKind::Exact => format!("{norm} (exact)"),
                MatchKind::Wildcard { suffix_start } => {
                    format!("*.{} (wildcard)", &norm[suffix_start.min(norm.len())..])
                }
            };
            for zone in policy.target_zones(target) {
                let ports: Vec<String> = zone.ports.iter().map(|p| p.to_string()).collect();
                let _ = writeln!(
                    out,
                    "zone:     {} ({}:{})",
                    zone.name,
                    zone.file.display(),
                    zone.line
                );
                if !zone.description.is_empty() {
                    let _ = writeln!(out, "          {}", zone.description);
                }
                let _ = writeln!(out, "rule:     {rule}, action {}", zone.action.as_str());
                let _ = writeln!(
                    out,
                    "ports:    {}",
                    if ports.is_empty() {
                        "(none listed)".to_string()
                    } else {
                        ports.join(", ")
                    }
                );
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "zone:     none lists this name; [policy] default_action = \"{}\"",
                policy.default_action().as_str()
            );
        }
    }
    let answer = match verdict.action {
        Action::Allow if qtype == "ANY" => "a minimal HINFO answer (RFC 8482)".to_string(),
        Action::Allow => "the upstream's answer (forwarded, cached by TTL)".to_string(),
        Action::Block(b) => block_answer(b, &qtype, config),
    };
    let _ = writeln!(out, "answer:   {answer}");
    out
}
