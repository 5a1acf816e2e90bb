//! The allowlist table: pinhole's own record of every live set element (address, protocol,
//! port, zone, the name that brought it, expiry).
//!
//! Owns the decision which kernel writes can be skipped (the element already lives long enough)
//! and the element lifetimes. It never talks to the kernel itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::Proto;

/// One set element: an address open on one protocol and port, in one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ElemKey {
    /// Index of the set in the firewall's set list.
    pub set: u16,
    pub addr: IpAddr,
    /// IP protocol number (6 tcp, 17 udp); 0 for sets of plain addresses.
    pub proto: u8,
    /// 0 for sets of plain addresses.
    pub port: u16,
}

/// The IP protocol number nftables stores (`meta l4proto`).
pub fn proto_number(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

/// An element pinhole wants live, and for how long from now.
#[derive(Debug, Clone)]
pub struct Want {
    pub key: ElemKey,
    /// Element timeout to write if a write is needed (milliseconds).
    pub timeout_ms: u64,
    /// The element must live at least this much longer (milliseconds), or it is written again.
    pub needed_ms: u64,
    pub zone: Arc<str>,
    pub name: Arc<str>,
}

/// What pinhole knows of one live element.
#[derive(Debug, Clone)]
pub struct Live {
    /// Unix time in milliseconds when the kernel drops the element.
    pub expires_ms: u64,
    pub zone: Arc<str>,
    pub name: Arc<str>,
}

/// Element lifetimes from TTLs: timeout = TTL handed out + grace, within floor and ceiling.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub grace_s: u32,
    pub floor_s: u32,
    pub ceiling_s: u32,
}

impl Lifetimes {
    /// The largest TTL a client may be given: its element must outlive it by the grace.
    pub fn ttl_cap(&self) -> u32 {
        self.ceiling_s.saturating_sub(self.grace_s)
    }

    /// How long an element must still live when an answer with `ttl` is handed out: the TTL
    /// plus half the grace. Between that and the full timeout no write is needed, so a busy
    /// name refreshes its elements at most once per half grace period.
    pub fn needed_ms(&self, ttl: u32) -> u64 {
        u64::from(ttl.min(self.ttl_cap())) * 1000 + u64::from(self.grace_s) * 500
    }

    /// Element timeout in milliseconds for an answer handed out with `ttl`.
    pub fn timeout_ms(&self, ttl: u32) -> u64 {
        let secs = ttl
            .min(self.ttl_cap())
            .saturating_add(self.grace_s)
            .clamp(self.floor_s, self.ceiling_s);
        u64::from(secs) * 1000
    }
}

/// Every live element pinhole wrote, keyed by element.
#[derive(Debug, Default)]
pub struct AllowTable {
    live: HashMap<ElemKey, Live>,
}

impl AllowTable {
    /// The wants whose element would expire before `now + needed`: those need a kernel write.
    /// Elements that live long enough already cost nothing.
    pub fn missing<'a>(&self, wants: &'a [Want], now_ms: u64) -> Vec<&'a Want> {
        wants
            .iter()
            .filter(|w| {
                self.live
                    .get(&w.key)
                    .is_none_or(|l| l.expires_ms < now_ms + w.needed_ms)
            })
            .collect()
    }

    /// Whether pinhole's record says the kernel holds this element now.
    pub fn is_live(&self, key: &ElemKey, now_ms: u64) -> bool {
        self.live.get(key).is_some_and(|l| l.expires_ms > now_ms)
    }

    /// Records elements the kernel acknowledged, written at `now_ms`. An element's life is the
    /// longest any name gave it.
    pub fn commit<'a>(&mut self, written: impl IntoIterator<Item = &'a Want>, now_ms: u64) {
        for w in written {
            let expires_ms = now_ms + w.timeout_ms;
            match self.live.get_mut(&w.key) {
                Some(l) if l.expires_ms >= expires_ms => {}
                _ => {
                    self.live.insert(
                        w.key,
                        Live {
                            expires_ms,
                            zone: Arc::clone(&w.zone),
                            name: Arc::clone(&w.name),
                        },
                    );
                }
            }
        }
    }

    /// Restores an element (from the journal); keeps the later expiry.
    pub fn restore(&mut self, key: ElemKey, live: Live) {
        match self.live.get(&key) {
            Some(l) if l.expires_ms >= live.expires_ms => {}
            _ => {
                self.live.insert(key, live);
            }
        }
    }

    /// Drops elements the kernel has dropped too.
    pub fn expire(&mut self, now_ms: u64) {
        self.live.retain(|_, l| l.expires_ms > now_ms);
    }

    /// Live elements, sorted by address, for `status`, the journal and replays.
    pub fn snapshot(&self, now_ms: u64) -> Vec<(ElemKey, Live)> {
        let mut v: Vec<(ElemKey, Live)> = self
            .live
            .iter()
            .filter(|(_, l)| l.expires_ms > now_ms)
            .map(|(k, l)| (*k, l.clone()))
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// Unix time now in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(addr: &str, timeout_ms: u64) -> Want {
        Want {
            key: ElemKey {
                set: 0,
                addr: addr.parse().expect("ip"),
                proto: 6,
                port: 443,
            },
            timeout_ms,
            needed_ms: timeout_ms,
            zone: "z".into(),
            name: "n.test".into(),
        }
    }

    #[test]
    fn fresh_elements_need_no_write() {
        let mut t = AllowTable::default();
        let w = [want("192.0.2.1", 120_000)];
        assert_eq!(t.missing(&w, 1_000).len(), 1);
        t.commit(&w, 1_000);
        assert!(t.missing(&w, 1_000).is_empty());
        // 10 s later an answer with the same TTL needs the element 10 s longer.
        assert_eq!(t.missing(&w, 11_000).len(), 1);
        // A shorter TTL is covered by the longer life.
        assert!(t.missing(&[want("192.0.2.1", 60_000)], 11_000).is_empty());
        t.commit(&[want("192.0.2.1", 1_000)], 11_000);
        assert_eq!(
            t.snapshot(11_000)[0].1.expires_ms,
            121_000,
            "longest life kept"
        );
        t.expire(121_001);
        assert!(t.is_empty());
    }

    #[test]
    fn lifetimes_clamp_and_cap() {
        let l = Lifetimes {
            grace_s: 60,
            floor_s: 120,
            ceiling_s: 3600,
        };
        assert_eq!(l.timeout_ms(0), 120_000, "floor");
        assert_eq!(l.timeout_ms(300), 360_000, "ttl + grace");
        assert_eq!(l.ttl_cap(), 3540);
        assert_eq!(l.timeout_ms(86_400), 3_600_000, "ceiling");
    }
}
