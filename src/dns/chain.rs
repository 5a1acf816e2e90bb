//! The addresses an answer hands out for its question: every A/AAAA record reachable from the
//! query name through the answer's CNAME chain, and the `ipv4hint`/`ipv6hint` of HTTPS/SVCB
//! records on that chain (RFC 9460). Records not reachable from the query name are ignored, so
//! an upstream cannot open addresses for names the client did not ask for.
//!
//! Owns reading names and record data out of an answer. It decides nothing about policy and
//! writes nothing to the firewall.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::dns::wire::{self, HEADER_LEN, TYPE_CNAME, TYPE_HTTPS, TYPE_SVCB, u16_at};

/// CNAME hops followed at most.
const MAX_CHAIN: usize = 16;

/// One address handed out, with the TTL of the record that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handout {
    pub addr: IpAddr,
    pub ttl: u32,
}

/// A lower-case dotted name read from the wire (root = empty).
#[derive(Clone, PartialEq, Eq)]
struct NameBuf {
    buf: [u8; 256],
    len: usize,
}

/// Reads a possibly compressed name at `pos`. Returns the name and the position after it in
/// the record (not after the pointer target).
fn read_name(msg: &[u8], mut pos: usize) -> Option<(NameBuf, usize)> {
    let mut name = NameBuf {
        buf: [0; 256],
        len: 0,
    };
    let mut end = None;
    let mut hops = 0;
    loop {
        let len = *msg.get(pos)? as usize;
        if len & 0xc0 == 0xc0 {
            let target = ((len & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            hops += 1;
            if hops > 64 || target >= pos {
                return None;
            }
            pos = target;
            continue;
        }
        if len == 0 {
            return Some((name, end.unwrap_or(pos + 1)));
        }
        if len > 63 {
            return None;
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        if name.len + len + 1 > 255 {
            return None;
        }
        if name.len > 0 {
            name.buf[name.len] = b'.';
            name.len += 1;
        }
        for &b in label {
            name.buf[name.len] = b.to_ascii_lowercase();
            name.len += 1;
        }
        pos += 1 + len;
    }
}

struct Rr {
    owner: NameBuf,
    rtype: u16,
    ttl: u32,
    rdata: (usize, usize),
}

/// The addresses `answer` hands out for `qname` (lower-case dotted, as `Query::name`), in
/// answer order, duplicates removed (the smaller TTL kept last wins: the larger is kept).
pub fn handouts(answer: &[u8], qname: &[u8]) -> Vec<Handout> {
    let mut out = Vec::new();
    let Some(records) = answer_records(answer) else {
        return out;
    };
    // Names reachable from the query name through CNAMEs in the answer.
    let mut reachable: Vec<NameBuf> = Vec::with_capacity(4);
    let mut q = NameBuf {
        buf: [0; 256],
        len: qname.len().min(255),
    };
    q.buf[..q.len].copy_from_slice(&qname[..q.len]);
    reachable.push(q);
    for _ in 0..MAX_CHAIN {
        let mut grew = false;
        for r in records.iter().filter(|r| r.rtype == TYPE_CNAME) {
            if reachable.contains(&r.owner)
                && let Some((target, _)) = read_name(answer, r.rdata.0)
                && !reachable.contains(&target)
            {
                reachable.push(target);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    for r in &records {
        if !reachable.contains(&r.owner) {
            continue;
        }
        let data = &answer[r.rdata.0..r.rdata.1];
        match r.rtype {
            wire::TYPE_A if data.len() == 4 => push(
                &mut out,
                IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                r.ttl,
            ),
            wire::TYPE_AAAA if data.len() == 16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                push(&mut out, IpAddr::V6(Ipv6Addr::from(b)), r.ttl);
            }
            TYPE_HTTPS | TYPE_SVCB => {
                for addr in svcb_hints(data) {
                    push(&mut out, addr, r.ttl);
                }
            }
            _ => {}
        }
    }
    out
}

fn push(out: &mut Vec<Handout>, addr: IpAddr, ttl: u32) {
    match out.iter_mut().find(|h| h.addr == addr) {
        Some(h) => h.ttl = h.ttl.max(ttl),
        None => out.push(Handout { addr, ttl }),
    }
}

fn answer_records(msg: &[u8]) -> Option<Vec<Rr>> {
    if msg.len() < HEADER_LEN {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..u16_at(msg, 4) {
        let (_, next) = read_name(msg, pos)?;
        pos = next + 4;
    }
    let mut records = Vec::new();
    for _ in 0..u16_at(msg, 6) {
        let (owner, fixed) = read_name(msg, pos)?;
        let head = msg.get(fixed..fixed + 10)?;
        let rdlen = usize::from(u16::from_be_bytes([head[8], head[9]]));
        let start = fixed + 10;
        let end = start + rdlen;
        if end > msg.len() {
            return None;
        }
        records.push(Rr {
            owner,
            rtype: u16::from_be_bytes([head[0], head[1]]),
            ttl: u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
            rdata: (start, end),
        });
        pos = end;
    }
    Some(records)
}

/// `ipv4hint` and `ipv6hint` values of one SVCB/HTTPS RDATA (none if it is malformed).
fn svcb_hints(rdata: &[u8]) -> Vec<IpAddr> {
    let mut hints = Vec::new();
    for p in wire::svc_params(rdata).unwrap_or_default() {
        let value = &rdata[p.value];
        match p.key {
            wire::SVC_IPV4HINT => hints.extend(
                value
                    .chunks_exact(4)
                    .map(|c| IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3]))),
            ),
            wire::SVC_IPV6HINT => hints.extend(value.chunks_exact(16).map(|c| {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                IpAddr::V6(Ipv6Addr::from(b))
            })),
            _ => {}
        }
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{ANSWER_COUNT, Query, encode_name, push_record, start_response};

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        encode_name(name, &mut q);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    /// Appends a record with an uncompressed owner name.
    fn push_owned(out: &mut Vec<u8>, owner: &str, rtype: u16, ttl: u32, rdata: &[u8]) {
        encode_name(owner, out);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
        let n = u16_at(out, ANSWER_COUNT) + 1;
        out[ANSWER_COUNT..ANSWER_COUNT + 2].copy_from_slice(&n.to_be_bytes());
    }

    #[test]
    fn follows_the_chain_and_ignores_unrelated_records() {
        let pkt = query("www.example.test", wire::TYPE_A);
        let q = Query::parse(&pkt).expect("q");
        let mut resp = Vec::new();
        start_response(&mut resp, &q, 0, false);
        let mut target = Vec::new();
        encode_name("e1.edge.test", &mut target);
        push_record(&mut resp, ANSWER_COUNT, TYPE_CNAME, 300, &target);
        push_owned(
            &mut resp,
            "E1.Edge.Test",
            wire::TYPE_A,
            60,
            &[192, 0, 2, 10],
        );
        push_owned(&mut resp, "evil.test", wire::TYPE_A, 60, &[203, 0, 113, 1]);
        push_owned(
            &mut resp,
            "e1.edge.test",
            wire::TYPE_AAAA,
            30,
            &"2001:db8::10".parse::<Ipv6Addr>().expect("v6").octets(),
        );
        let h = handouts(&resp, q.name());
        assert_eq!(
            h,
            [
                Handout {
                    addr: "192.0.2.10".parse().expect("ip"),
                    ttl: 60
                },
                Handout {
                    addr: "2001:db8::10".parse().expect("ip"),
                    ttl: 30
                },
            ]
        );
    }

    #[test]
    fn https_hints() {
        let pkt = query("svc.test", TYPE_HTTPS);
        let q = Query::parse(&pkt).expect("q");
        let mut resp = Vec::new();
        start_response(&mut resp, &q, 0, false);
        // priority 1, target ".", alpn=h2, ipv4hint=192.0.2.50,192.0.2.51, ipv6hint=2001:db8::50
        let mut rdata = vec![0, 1, 0];
        rdata.extend_from_slice(&[0, 1, 0, 3, 2, b'h', b'2']);
        rdata.extend_from_slice(&[0, 4, 0, 8, 192, 0, 2, 50, 192, 0, 2, 51]);
        rdata.extend_from_slice(&[0, 6, 0, 16]);
        rdata.extend_from_slice(&"2001:db8::50".parse::<Ipv6Addr>().expect("v6").octets());
        push_record(&mut resp, ANSWER_COUNT, TYPE_HTTPS, 300, &rdata);
        let addrs: Vec<IpAddr> = handouts(&resp, q.name()).iter().map(|h| h.addr).collect();
        assert_eq!(
            addrs,
            [
                "192.0.2.50".parse::<IpAddr>().expect("ip"),
                "192.0.2.51".parse().expect("ip"),
                "2001:db8::50".parse().expect("ip")
            ]
        );
    }

    #[test]
    fn malformed_answers_hand_out_nothing() {
        assert!(handouts(&[0; 5], b"a.test").is_empty());
        let pkt = query("a.test", wire::TYPE_A);
        let q = Query::parse(&pkt).expect("q");
        let mut resp = Vec::new();
        start_response(&mut resp, &q, 0, false);
        push_record(&mut resp, ANSWER_COUNT, wire::TYPE_A, 60, &[1, 2, 3, 4]);
        resp.truncate(resp.len() - 2);
        assert!(handouts(&resp, q.name()).is_empty());
        // A pointer loop.
        let mut looped = resp.clone();
        looped.extend_from_slice(&[0xc0, 0x0c]);
        let _ = handouts(&looped, q.name());
    }
}
