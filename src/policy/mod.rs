//! Policy: which names are approved, by which zone, and what everyone else gets.
//!
//! Owns the enabled zones and the matcher built from them, and the decision for a query name.
//! It does not answer queries, touch the cache, the upstreams or the firewall: it only decides.

pub mod matcher;
pub mod zonefile;

use crate::config::{BlockAction, Config};
use crate::diag::{Diagnostic, Diagnostics};
pub use matcher::{Match, MatchKind, Matcher};
pub use zonefile::{Pattern, PortRule, Proto, ZoneAction, ZoneDef};

/// Index of a zone in `Policy::zones`.
pub type ZoneId = u16;

/// What the policy decided for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward; the answered addresses are opened for the target's zones.
    Allow,
    /// One of the block answers, or forward-only.
    Block(BlockAction),
}

/// The decision for a name, cheap to copy, with enough to explain it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// The zones that matched (index into `Policy::target_zones`), or `None` for the default.
    pub target: Option<u32>,
    /// How the deciding pattern matched, if one did.
    pub matched: Option<MatchKind>,
}

/// The enabled zones and the matcher over their patterns.
pub struct Policy {
    zones: Vec<ZoneDef>,
    /// Interned sets of zones sharing a pattern; a pattern's target indexes this.
    targets: Vec<Vec<ZoneId>>,
    /// The action of each target, decided once: a block in any zone beats allow.
    target_actions: Vec<Action>,
    matcher: Matcher,
    default_action: BlockAction,
}

impl Policy {
    /// Loads the zone files of the config's zones folder and enables those the config names.
    pub fn load(config: &Config) -> Result<Policy, Diagnostics> {
        let dir = config.zones_dir();
        let mut problems = Vec::new();
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                return Err(Diagnostics(vec![Diagnostic::file(
                    &dir,
                    format!("cannot read the zones folder: {e}"),
                    "set [policy] zones_dir to the folder holding the zone files (relative to config.toml)",
                )]));
            }
        };
        files.sort();
        let mut all = Vec::new();
        for file in &files {
            match std::fs::read_to_string(file) {
                Ok(text) => all.extend(zonefile::parse_file(file, &text, &mut problems)),
                Err(e) => problems.push(Diagnostic::file(
                    file,
                    format!("cannot read the zone file: {e}"),
                    "check its permissions, or remove it from the zones folder",
                )),
            }
        }
        let mut seen: std::collections::HashMap<&str, &ZoneDef> = Default::default();
        for z in all.iter().filter(|z| z.part == 0) {
            if let Some(first) = seen.insert(&z.name, z) {
                problems.push(Diagnostic {
                    file: z.file.clone(),
                    line: z.line,
                    column: 1,
                    what: format!(
                        "zone {:?} is defined twice (first in {}:{})",
                        z.name,
                        first.file.display(),
                        first.line
                    ),
                    fix: "give each zone its own name".into(),
                });
            }
        }
        let config_text = std::fs::read_to_string(&config.path).unwrap_or_default();
        let enabled: Vec<ZoneDef> = match &config.policy.enable {
            None => all.clone(),
            Some(names) => {
                for n in names {
                    if !seen.contains_key(n.get_ref().as_str()) {
                        let known: Vec<&str> = all
                            .iter()
                            .filter(|z| z.part == 0)
                            .map(|z| z.name.as_str())
                            .collect();
                        problems.push(Diagnostic::at(
                            &config.path,
                            &config_text,
                            config.enable_span(n.get_ref()),
                            format!(
                                "[policy] enable names zone {:?}, which no file in {} defines",
                                n.get_ref(),
                                dir.display()
                            ),
                            format!("use one of: {}", known.join(", ")),
                        ));
                    }
                }
                all.iter()
                    .filter(|z| names.iter().any(|n| n.get_ref() == &z.name))
                    .cloned()
                    .collect()
            }
        };
        if !problems.is_empty() {
            return Err(Diagnostics(problems));
        }
        if enabled.len() > usize::from(ZoneId::MAX) {
            return Err(Diagnostics(vec![Diagnostic::file(
                &dir,
                "more than 65535 zones are enabled",
                "merge zones",
            )]));
        }
        let mut builder = PolicyBuilder::new(config.policy.default_action);
        for z in enabled {
            builder.add_zone(z);
        }
        Ok(builder.build())
    }

    /// The decision for a lower-case dotted name without trailing dot.
    pub fn decide(&self, name: &[u8]) -> Verdict {
        match self.matcher.lookup(name) {
            Some(m) => Verdict {
                action: self.target_actions[m.target as usize],
                target: Some(m.target),
                matched: Some(m.kind),
            },
            None => Verdict {
                action: Action::Block(self.default_action),
                target: None,
                matched: None,
            },
        }
    }

    /// The zones behind a verdict's target.
    pub fn target_zones(&self, target: u32) -> impl Iterator<Item = &ZoneDef> {
        self.targets
            .get(target as usize)
            .into_iter()
            .flatten()
            .filter_map(|&z| self.zones.get(usize::from(z)))
    }

    /// The zone ids behind a verdict's target.
    pub fn target_zone_ids(&self, target: u32) -> &[ZoneId] {
        self.targets
            .get(target as usize)
            .map_or(&[], |v| v.as_slice())
    }

    /// The action of a target (allow unless one of its zones blocks).
    pub fn target_action(&self, target: u32) -> Action {
        self.target_actions
            .get(target as usize)
            .copied()
            .unwrap_or(Action::Allow)
    }

    pub fn zones(&self) -> &[ZoneDef] {
        &self.zones
    }

    pub fn default_action(&self) -> BlockAction {
        self.default_action
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

/// Builds a policy zone by zone; used by loading and by benchmarks that make large zones.
pub struct PolicyBuilder {
    zones: Vec<ZoneDef>,
    targets: Vec<Vec<ZoneId>>,
    interned: std::collections::HashMap<Vec<ZoneId>, u32>,
    matcher: Matcher,
    default_action: BlockAction,
}

impl PolicyBuilder {
    pub fn new(default_action: BlockAction) -> Self {
        PolicyBuilder {
            zones: Vec::new(),
            targets: Vec::new(),
            interned: Default::default(),
            matcher: Matcher::new(),
            default_action,
        }
    }

    fn intern(&mut self, set: Vec<ZoneId>) -> u32 {
        if let Some(&t) = self.interned.get(&set) {
            return t;
        }
        let t = self.targets.len() as u32;
        self.targets.push(set.clone());
        self.interned.insert(set, t);
        t
    }

    /// Adds a zone and its patterns. Patterns listed by several zones get the union of zones.
    pub fn add_zone(&mut self, zone: ZoneDef) {
        let id = self.zones.len() as ZoneId;
        let own = self.intern(vec![id]);
        let patterns = zone.patterns.clone();
        self.zones.push(zone);
        for p in &patterns {
            // Merging needs the interner; collect merges via a small closure state.
            let mut merged: Option<(u32, u32)> = None;
            self.matcher.insert(&p.name, p.wildcard, own, |old, new| {
                merged = Some((old, new));
                old
            });
            if let Some((old, _)) = merged {
                let mut set = self.targets[old as usize].clone();
                if !set.contains(&id) {
                    set.push(id);
                    let t = self.intern(set);
                    self.matcher.insert(&p.name, p.wildcard, t, |_, t| t);
                }
            }
        }
    }

    pub fn build(mut self) -> Policy {
        self.matcher.shrink_to_fit();
        let target_actions = self
            .targets
            .iter()
            .map(|set| {
                set.iter()
                    .filter_map(|&z| self.zones[usize::from(z)].action.block())
                    .next()
                    .map_or(Action::Allow, Action::Block)
            })
            .collect();
        Policy {
            zones: self.zones,
            targets: self.targets,
            target_actions,
            matcher: self.matcher,
            default_action: self.default_action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn zone(name: &str, action: ZoneAction, hosts: &[&str]) -> ZoneDef {
        ZoneDef {
            name: name.into(),
            description: String::new(),
            action,
            ports: vec![],
            patterns: hosts
                .iter()
                .map(|h| zonefile::parse_pattern(h).expect("pattern"))
                .collect(),
            sets: vec![],
            statics: vec![],
            file: PathBuf::from("zones/t.toml"),
            line: 1,
            part: 0,
        }
    }

    #[test]
    fn block_beats_allow_on_the_same_pattern_and_specific_beats_general() {
        let mut b = PolicyBuilder::new(BlockAction::Refuse);
        b.add_zone(zone("apple", ZoneAction::Allow, &["*.apple.com", "x.test"]));
        b.add_zone(zone(
            "doh",
            ZoneAction::Nxdomain,
            &["doh.dns.apple.com", "x.test"],
        ));
        b.add_zone(zone("apple2", ZoneAction::Allow, &["*.apple.com"]));
        let p = b.build();
        assert_eq!(p.decide(b"mesu.apple.com").action, Action::Allow);
        let v = p.decide(b"mesu.apple.com");
        let names: Vec<_> = p
            .target_zones(v.target.expect("t"))
            .map(|z| z.name.as_str())
            .collect();
        assert_eq!(names, ["apple", "apple2"]);
        assert_eq!(
            p.decide(b"doh.dns.apple.com").action,
            Action::Block(BlockAction::Nxdomain)
        );
        assert_eq!(
            p.decide(b"x.test").action,
            Action::Block(BlockAction::Nxdomain)
        );
        assert_eq!(
            p.decide(b"example.org").action,
            Action::Block(BlockAction::Refuse)
        );
        assert_eq!(p.decide(b"example.org").target, None);
    }
}
