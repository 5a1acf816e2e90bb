//! External firewall mode: the administrator's sets, named by the zones.
//!
//! Owns the start-up check of those sets (type, flags, the `nft` commands that fix them) and
//! the zones' static networks written into them once, without timeout. It never creates,
//! changes or repairs the administrator's sets.

use std::fmt::Write as _;

use ipnet::IpNet;

use super::nft::{Element, Key, KeyType, Nft, SetFlags};
use super::table::ElemKey;
use super::{FirewallError, SetRef, parse_set_label};
use crate::policy::ZoneDef;

/// The administrator's sets, as checked at start.
pub struct External {
    pub sets: Vec<SetRef>,
    /// Per zone (by `ZoneId`), the indexes of its sets.
    pub zone_sets: Vec<Vec<u16>>,
    /// Per set, the static networks written into it.
    pub covers: Vec<Vec<Cover>>,
    /// The static elements to write once, at start.
    pub statics: Vec<(SetRef, Element)>,
}

/// A static network in a set: on one `proto/port` (port sets), or on all (plain sets: 0, 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cover {
    pub net: IpNet,
    pub proto: u8,
    pub port: u16,
}

/// Whether a set's static networks already hold this element.
pub fn covered(covers: &[Cover], key: &ElemKey) -> bool {
    covers
        .iter()
        .any(|c| c.proto == key.proto && c.port == key.port && c.net.contains(&key.addr))
}

/// External mode: the sets the zones name must exist with a fitting type and `flags timeout`
/// (and `flags interval` where a zone has static networks). Every problem is reported at
/// once, each with the `nft` command that fixes it.
pub fn check_sets(nft: &mut Nft, zones: &[ZoneDef]) -> Result<External, FirewallError> {
    let mut sets: Vec<SetRef> = Vec::new();
    let mut zone_sets = Vec::with_capacity(zones.len());
    let mut problems = String::new();
    for z in zones {
        let mut mine = Vec::new();
        for label in &z.sets {
            let Some((family, table, name)) = parse_set_label(label) else {
                let _ = writeln!(
                    problems,
                    "zone {} ({}): set {label:?} is not \"family table set\"",
                    z.name,
                    z.file.display()
                );
                continue;
            };
            if let Some(i) = sets
                .iter()
                .position(|s| s.family == family && s.table == table && s.name == name)
            {
                mine.push(i as u16);
                continue;
            }
            let fix_create = format!(
                "nft add table {family} {table}; nft add set {family} {table} {name} '{{ type ipv4_addr . inet_proto . inet_service; flags timeout; }}'  (or ipv6_addr for IPv6, or a plain ipv4_addr/ipv6_addr set without ports)"
            );
            match nft.get_set(family, &table, &name) {
                Ok(None) => {
                    let _ = writeln!(
                        problems,
                        "zone {}: set {family} {table} {name} does not exist\n  fix: {fix_create}",
                        z.name
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        problems,
                        "zone {}: cannot read set {family} {table} {name}: {e}",
                        z.name
                    );
                }
                Ok(Some(info)) => {
                    let kind = match info.key {
                        Some(KeyType::V4Port) => Some((false, true)),
                        Some(KeyType::V6Port) => Some((true, true)),
                        Some(KeyType::V4Net) => Some((false, false)),
                        Some(KeyType::V6Net) => Some((true, false)),
                        None => None,
                    };
                    let interval = info.flags.contains(SetFlags::INTERVAL);
                    match kind {
                        None => {
                            let _ = writeln!(
                                problems,
                                "zone {}: set {family} {table} {name} has a type pinhole cannot write (it needs ipv4_addr . inet_proto . inet_service, ipv6_addr . inet_proto . inet_service, or a plain ipv4_addr/ipv6_addr set)\n  fix: nft delete set {family} {table} {name}; {fix_create}",
                                z.name
                            );
                        }
                        Some(_) if !info.flags.contains(SetFlags::TIMEOUT) => {
                            let _ = writeln!(
                                problems,
                                "zone {}: set {family} {table} {name} lacks `flags timeout`, so its elements could never expire\n  fix: recreate it with flags timeout: nft delete set {family} {table} {name}; {fix_create}",
                                z.name
                            );
                        }
                        Some((v6, ports)) => {
                            mine.push(sets.len() as u16);
                            sets.push(SetRef {
                                family,
                                table,
                                name,
                                v6,
                                ports,
                                interval,
                            });
                        }
                    }
                }
            }
        }
        zone_sets.push(mine);
    }
    let mut covers = vec![Vec::new(); sets.len()];
    for (z, mine) in zones.iter().zip(&zone_sets) {
        for net in &z.statics {
            let homes: Vec<u16> = mine
                .iter()
                .copied()
                .filter(|&i| sets[usize::from(i)].v6 == matches!(net, IpNet::V6(_)))
                .collect();
            if homes.is_empty() {
                let _ = writeln!(
                    problems,
                    "zone {}: static network {net} has no {} set among the zone's sets\n  fix: add one to the zone's sets = [...] (with flags interval, timeout)",
                    z.name,
                    if matches!(net, IpNet::V6(_)) {
                        "IPv6"
                    } else {
                        "IPv4"
                    }
                );
            }
            for i in homes {
                let set = &sets[usize::from(i)];
                if !set.interval {
                    let _ = writeln!(
                        problems,
                        "zone {}: static network {net} needs set {} to have `flags interval` (a set without it holds single addresses only)\n  fix: nft delete set {2}; nft add set {2} '{{ type {3}; flags interval, timeout; }}'  (or list the network in a rule of your own and remove it from the zone)",
                        z.name,
                        set.label(),
                        set.label(),
                        set_type(set),
                    );
                    continue;
                }
                let on: Vec<(u8, u16)> = if set.ports {
                    z.ports
                        .iter()
                        .map(|p| (super::table::proto_number(p.proto), p.port))
                        .collect()
                } else {
                    vec![(0, 0)]
                };
                for (proto, port) in on {
                    covers[usize::from(i)].push(Cover {
                        net: *net,
                        proto,
                        port,
                    });
                }
            }
        }
    }
    // An interval set refuses overlapping elements: keep the widest network of each port.
    let mut statics = Vec::new();
    for (i, list) in covers.iter_mut().enumerate() {
        list.sort_by_key(|c| (c.proto, c.port, c.net.prefix_len()));
        let mut kept: Vec<Cover> = Vec::with_capacity(list.len());
        for c in list.drain(..) {
            let inside = kept
                .iter()
                .any(|o| o.proto == c.proto && o.port == c.port && o.net.contains(&c.net));
            if !inside {
                kept.push(c);
            }
        }
        *list = kept;
        let set = &sets[i];
        for c in list.iter() {
            let key = if set.ports {
                Key::PortRange {
                    first: c.net.network(),
                    last: c.net.broadcast(),
                    proto: c.proto,
                    port: c.port,
                }
            } else {
                Key::Net {
                    addr: c.net.network(),
                    prefix_len: c.net.prefix_len(),
                }
            };
            statics.push((
                set.clone(),
                Element {
                    key,
                    timeout: None,
                    expires: None,
                },
            ));
        }
    }
    if problems.is_empty() {
        Ok(External {
            sets,
            zone_sets,
            covers,
            statics,
        })
    } else {
        Err(FirewallError::Check(format!(
            "external firewall sets are not usable:\n{problems}"
        )))
    }
}

/// The nft type of a set pinhole can write, for fix commands.
fn set_type(set: &SetRef) -> &'static str {
    match (set.v6, set.ports) {
        (false, true) => "ipv4_addr . inet_proto . inet_service",
        (true, true) => "ipv6_addr . inet_proto . inet_service",
        (false, false) => "ipv4_addr",
        (true, false) => "ipv6_addr",
    }
}

/// Writes the static networks (no timeout), one batch per table. Networks already there are
/// left as they are.
pub fn write_statics(
    nft: &mut Nft,
    statics: &[(SetRef, Element)],
) -> Result<(), super::nft::NftError> {
    for (family, table) in super::tables(statics.iter().map(|(s, _)| s)) {
        let elems: Vec<(&str, Element)> = statics
            .iter()
            .filter(|(s, _)| s.family == family && s.table == table)
            .map(|(s, e)| (s.name.as_str(), *e))
            .collect();
        for chunk in elems.chunks(4000) {
            nft.add_elements(family, table, chunk)?;
        }
    }
    Ok(())
}
