//! The answer cache: upstream responses kept as wire bytes, served with TTLs counted down.
//!
//! Owns cache entries and their lifetimes (positive from the smallest TTL, negative from the SOA
//! per RFC 2308, SERVFAIL and truncated answers only a few seconds). A hit is a copy of the
//! stored bytes plus in-place edits of ID, question case and TTLs: no parsing, no allocation
//! beyond the caller's reused buffer. It does not talk to upstreams or decide policy.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashbrown::DefaultHashBuilder;
use lru::LruCache;

use crate::dns::chain::{self, Handout};
use crate::dns::wire::{self, Query, ResponseScan};

const SHARDS: usize = 16;

/// The cache key: lower-case question name and type/class, plus the DO and CD bits, which
/// change what an upstream returns.
pub struct CacheKey {
    pub hash: u64,
    bytes: [u8; 264],
    len: usize,
}

impl CacheKey {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// One stored answer. `wire` has ID 0, a lower-case question and no OPT record.
pub struct Entry {
    key: Box<[u8]>,
    wire: Box<[u8]>,
    ttl_offsets: Box<[u16]>,
    question_end: usize,
    stored: Instant,
    expires: Instant,
    /// Addresses this answer hands out (A/AAAA on the CNAME chain, HTTPS/SVCB hints).
    handouts: Box<[Handout]>,
}

impl Entry {
    /// Builds an entry from an upstream response (any ID, OPT stripped here), scanned already.
    /// Returns `None` when the response is too short to be one.
    pub fn from_response(
        key: &CacheKey,
        qname: &[u8],
        response: &[u8],
        scan: &ResponseScan,
        question_end: usize,
        limits: &CacheLimits,
        now: Instant,
    ) -> Option<Entry> {
        // Not cacheable answers are still served once: they expire at once.
        let lifetime = limits.lifetime(scan).unwrap_or(Duration::ZERO);
        if response.len() < wire::HEADER_LEN || question_end > response.len() {
            return None;
        }
        let mut wire = response.to_vec();
        let mut offsets = scan.ttl_offsets.clone();
        if let Some((start, end)) = scan.opt {
            let removed = end - start;
            wire.drain(start..end);
            // Records after the OPT move up; nothing points into OPT (its owner is the root).
            for off in offsets.iter_mut() {
                if usize::from(*off) > start {
                    *off -= removed as u16;
                }
            }
            let ar = wire::u16_at(&wire, wire::ADDITIONAL_COUNT).saturating_sub(1);
            wire[wire::ADDITIONAL_COUNT..wire::ADDITIONAL_COUNT + 2]
                .copy_from_slice(&ar.to_be_bytes());
        }
        wire[0] = 0;
        wire[1] = 0;
        let handouts = if scan.rcode == wire::RCODE_NOERROR && scan.answers > 0 {
            chain::handouts(&wire, qname)
        } else {
            Vec::new()
        };
        Some(Entry {
            key: key.bytes().into(),
            wire: wire.into_boxed_slice(),
            ttl_offsets: offsets.into_boxed_slice(),
            question_end,
            stored: now,
            expires: now + lifetime,
            handouts: handouts.into_boxed_slice(),
        })
    }

    /// A SERVFAIL for `q`, kept for `ttl`, when no upstream gave an answer.
    pub fn servfail(key: &CacheKey, q: &Query<'_>, ttl: Duration, now: Instant) -> Entry {
        let mut wire = Vec::with_capacity(q.question_end);
        wire::start_response(&mut wire, q, wire::RCODE_SERVFAIL, false);
        wire[0] = 0;
        wire[1] = 0;
        Entry {
            key: key.bytes().into(),
            wire: wire.into_boxed_slice(),
            ttl_offsets: Box::new([]),
            question_end: q.question_end,
            stored: now,
            expires: now + ttl,
            handouts: Box::new([]),
        }
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.expires
    }

    /// Whole seconds since the answer was stored: what its TTLs have counted down.
    pub fn age(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX)
    }

    /// The addresses this answer hands out, with their TTLs as stored.
    pub fn handouts(&self) -> &[Handout] {
        &self.handouts
    }

    /// Writes this answer for `q` into `out`: the client's ID, RD bit and question case, and
    /// every TTL reduced by the whole seconds the entry has been stored and capped at
    /// `ttl_cap` (so that no client holds an address longer than its set element lives).
    pub fn write_answer(&self, q: &Query<'_>, now: Instant, ttl_cap: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.wire);
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        out[2] = (out[2] & !0x01) | u8::from(q.rd);
        let qe = self.question_end.min(q.question_end).min(out.len());
        out[wire::HEADER_LEN..qe].copy_from_slice(&q.packet[wire::HEADER_LEN..qe]);
        let age = self.age(now);
        for &off in self.ttl_offsets.iter() {
            let off = usize::from(off);
            let ttl = u32::from_be_bytes([out[off], out[off + 1], out[off + 2], out[off + 3]]);
            let served = ttl.saturating_sub(age).min(ttl_cap);
            if served != ttl {
                out[off..off + 4].copy_from_slice(&served.to_be_bytes());
            }
        }
    }

    pub fn question_end(&self) -> usize {
        self.question_end
    }
}

/// How long answers may be kept.
#[derive(Debug, Clone)]
pub struct CacheLimits {
    pub max_ttl: u32,
    pub negative_max_ttl: u32,
    pub servfail_ttl: u32,
}

impl CacheLimits {
    /// How long `scan`'s response may be cached, or `None` for "not at all".
    pub fn lifetime(&self, scan: &ResponseScan) -> Option<Duration> {
        let secs = if scan.truncated {
            // A truncated answer is incomplete; keep it only briefly (TCP to upstream failed).
            self.servfail_ttl
        } else {
            match scan.rcode {
                wire::RCODE_NOERROR if scan.answers > 0 => scan.min_ttl?.min(self.max_ttl),
                wire::RCODE_NOERROR | wire::RCODE_NXDOMAIN => scan
                    .negative_ttl
                    .map_or(self.servfail_ttl, |t| t.min(self.negative_max_ttl)),
                _ => self.servfail_ttl,
            }
        };
        (secs > 0).then(|| Duration::from_secs(u64::from(secs)))
    }
}

/// A sharded LRU of answers.
pub struct Cache {
    shards: Vec<Mutex<LruCache<u64, Arc<Entry>>>>,
    hasher: DefaultHashBuilder,
    pub limits: CacheLimits,
    enabled: bool,
}

impl Cache {
    pub fn new(max_entries: usize, limits: CacheLimits) -> Cache {
        let per_shard =
            NonZeroUsize::new(max_entries.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        Cache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: DefaultHashBuilder::default(),
            limits,
            enabled: max_entries > 0,
        }
    }

    /// The key for `q`: lower-case wire name, type, class, DO, CD.
    pub fn key(&self, q: &Query<'_>) -> CacheKey {
        let mut key = CacheKey {
            hash: 0,
            bytes: [0; 264],
            len: 0,
        };
        let question = q.question();
        let n = question.len().min(259);
        for (dst, src) in key.bytes[..n].iter_mut().zip(question) {
            *dst = src.to_ascii_lowercase();
        }
        let flags = u8::from(q.edns.is_some_and(|e| e.dnssec_ok)) | (u8::from(q.cd) << 1);
        key.bytes[n] = flags;
        key.len = n + 1;
        key.hash = self.hasher.hash_one(key.bytes());
        key
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<LruCache<u64, Arc<Entry>>> {
        &self.shards[(key.hash >> 56) as usize % SHARDS]
    }

    /// A fresh entry for `key`, if any. Expired entries are dropped on the way.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Arc<Entry>> {
        if !self.enabled {
            return None;
        }
        let mut shard = self.shard(key).lock().ok()?;
        let entry = shard.get(&key.hash)?;
        if *entry.key != *key.bytes() {
            return None;
        }
        if entry.is_fresh(now) {
            return Some(entry.clone());
        }
        shard.pop(&key.hash);
        None
    }

    pub fn insert(&self, key: &CacheKey, entry: Arc<Entry>) {
        if !self.enabled {
            return;
        }
        if let Ok(mut shard) = self.shard(key).lock() {
            shard.put(key.hash, entry);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
