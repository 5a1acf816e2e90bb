//! The name matcher: exact and `*.suffix` patterns in one suffix hash.
//!
//! Owns the compact storage of patterns. A name with n labels costs at most n hash probes (the
//! whole name for exact patterns, then each proper suffix from the longest for wildcards), so the
//! most specific pattern wins without a trie walk. Names are kept in one byte arena and the table
//! holds 16-byte slots, so a million patterns cost tens of megabytes, not hundreds.
//! It knows nothing of zones or actions: a pattern maps to an opaque `u32` target.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// No target: the slot has no pattern of this kind.
const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Slot {
    offset: u32,
    len: u32,
    exact: u32,
    wild: u32,
}

/// How a name was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// The pattern is the name itself.
    Exact,
    /// The pattern is `*.` + the suffix that starts at this byte offset of the name.
    Wildcard { suffix_start: usize },
}

/// A matched pattern: its target and how it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub target: u32,
    pub kind: MatchKind,
}

/// Exact and wildcard patterns over lower-case dotted names without the trailing dot.
#[derive(Default)]
pub struct Matcher {
    arena: Vec<u8>,
    table: HashTable<Slot>,
    hasher: DefaultHashBuilder,
    patterns: usize,
}

impl Matcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of patterns inserted (an exact and a wildcard on one name count twice).
    pub fn len(&self) -> usize {
        self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns == 0
    }

    /// Bytes of heap this matcher holds (arena plus table), for the benchmark's memory figure.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.table.allocation_size()
    }

    /// Releases spare capacity once all patterns are in.
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        let hasher = &self.hasher;
        let arena = &self.arena;
        self.table.shrink_to_fit(|s| {
            hasher.hash_one(&arena[s.offset as usize..(s.offset + s.len) as usize])
        });
    }

    /// Inserts a normalized name (lower case, no trailing dot) as exact or wildcard pattern.
    /// `merge` combines the target already present with the new one (zones sharing a pattern).
    pub fn insert(
        &mut self,
        name: &str,
        wildcard: bool,
        target: u32,
        merge: impl FnOnce(u32, u32) -> u32,
    ) {
        let key = name.as_bytes();
        let hash = self.hasher.hash_one(key);
        let arena = &self.arena;
        let found = self.table.find_mut(hash, |s| {
            arena.get(s.offset as usize..(s.offset + s.len) as usize) == Some(key)
        });
        let slot = match found {
            Some(slot) => slot,
            None => {
                let offset = self.arena.len() as u32;
                self.arena.extend_from_slice(key);
                let hasher = &self.hasher;
                let arena = &self.arena;
                self.table
                    .insert_unique(
                        hash,
                        Slot {
                            offset,
                            len: key.len() as u32,
                            exact: NONE,
                            wild: NONE,
                        },
                        |s| hasher.hash_one(&arena[s.offset as usize..(s.offset + s.len) as usize]),
                    )
                    .into_mut()
            }
        };
        let place = if wildcard {
            &mut slot.wild
        } else {
            &mut slot.exact
        };
        if *place == NONE {
            *place = target;
            self.patterns += 1;
        } else {
            *place = merge(*place, target);
        }
    }

    fn slot(&self, key: &[u8]) -> Option<&Slot> {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |s| {
            self.arena
                .get(s.offset as usize..(s.offset + s.len) as usize)
                == Some(key)
        })
    }

    /// The most specific pattern for `name` (lower case, dotted, no trailing dot): an exact
    /// pattern first, then the wildcard with the longest suffix. `*.example.com` does not match
    /// `example.com` itself.
    pub fn lookup(&self, name: &[u8]) -> Option<Match> {
        if let Some(slot) = self.slot(name)
            && slot.exact != NONE
        {
            return Some(Match {
                target: slot.exact,
                kind: MatchKind::Exact,
            });
        }
        let mut start = 0;
        while let Some(dot) = name[start..].iter().position(|&b| b == b'.') {
            start += dot + 1;
            if let Some(slot) = self.slot(&name[start..])
                && slot.wild != NONE
            {
                return Some(Match {
                    target: slot.wild,
                    kind: MatchKind::Wildcard {
                        suffix_start: start,
                    },
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Matcher {
        let mut m = Matcher::new();
        m.insert("push.apple.com", true, 1, |_, n| n);
        m.insert("apple.com", true, 2, |_, n| n);
        m.insert("mesu.apple.com", false, 3, |_, n| n);
        m.insert("apple.com", false, 4, |_, n| n);
        m
    }

    #[test]
    fn most_specific_wins() {
        let m = m();
        assert_eq!(
            m.lookup(b"1-courier.push.apple.com").map(|x| x.target),
            Some(1)
        );
        assert_eq!(m.lookup(b"a.b.push.apple.com").map(|x| x.target), Some(1));
        assert_eq!(m.lookup(b"mesu.apple.com").map(|x| x.target), Some(3));
        assert_eq!(m.lookup(b"x.apple.com").map(|x| x.target), Some(2));
        assert_eq!(m.lookup(b"apple.com").map(|x| x.target), Some(4));
        // The wildcard does not cover its own apex.
        assert_eq!(m.lookup(b"push.apple.com").map(|x| x.target), Some(2));
        assert_eq!(m.lookup(b"apple.com.evil.net"), None);
        assert_eq!(m.lookup(b"notapple.com"), None);
        assert_eq!(m.lookup(b""), None);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn wildcard_reports_suffix() {
        let m = m();
        let hit = m.lookup(b"x.push.apple.com").expect("match");
        assert_eq!(hit.kind, MatchKind::Wildcard { suffix_start: 2 });
    }

    #[test]
    fn merge_combines_targets() {
        let mut m = Matcher::new();
        m.insert("a.test", false, 1, |a, b| a * 10 + b);
        m.insert("a.test", false, 2, |a, b| a * 10 + b);
        assert_eq!(m.lookup(b"a.test").map(|x| x.target), Some(12));
        assert_eq!(m.len(), 1);
    }
}
