//! `https_hints = "strip"`: removes `ipv4hint`/`ipv6hint` from HTTPS/SVCB records in an answer.
//!
//! Owns the byte-level rewrite of an upstream answer. Removing bytes shifts everything behind
//! them, so every compression pointer in the message (question, owner names, and the names
//! inside the RDATA types that may be compressed) is remapped to its target's new offset. It
//! decides nothing: the handler calls it when the setting asks for it.

use super::wire::{
    self, HEADER_LEN, SVC_IPV4HINT, SVC_IPV6HINT, SVC_MANDATORY, TYPE_HTTPS, TYPE_SVCB, u16_at,
};

/// Where a byte string must change: `len` bytes removed at `at`, or a big-endian u16 written
/// at `at` (positions in the original message).
enum Edit {
    Remove {
        at: usize,
        len: usize,
    },
    Put {
        at: usize,
        value: u16,
    },
    /// A compression pointer at `at` whose target offset must be remapped.
    Pointer {
        at: usize,
        target: usize,
    },
}

/// Returns the answer without address hints, or `None` if it holds none. `Err(())` if the
/// message is malformed (the caller treats it like any malformed upstream answer).
#[allow(clippy::result_unit_err)]
pub fn strip_hints(msg: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    if msg.len() < HEADER_LEN {
        return Err(());
    }
    let mut edits = Vec::new();
    let mut pos = HEADER_LEN;
    for _ in 0..u16_at(msg, 4) {
        pos = name(msg, pos, &mut edits)? + 4;
        if pos > msg.len() {
            return Err(());
        }
    }
    let records =
        u32::from(u16_at(msg, 6)) + u32::from(u16_at(msg, 8)) + u32::from(u16_at(msg, 10));
    let mut stripped = false;
    for _ in 0..records {
        let fixed = name(msg, pos, &mut edits)?;
        let header = msg.get(fixed..fixed + 10).ok_or(())?;
        let rtype = u16::from_be_bytes([header[0], header[1]]);
        let rdlen = usize::from(u16::from_be_bytes([header[8], header[9]]));
        let rdata = fixed + 10;
        let end = rdata + rdlen;
        if end > msg.len() {
            return Err(());
        }
        match rtype {
            TYPE_SVCB | TYPE_HTTPS => {
                let removed = svcb(msg, rdata, end, &mut edits)?;
                if removed > 0 {
                    stripped = true;
                    let len = u16::try_from(rdlen - removed).map_err(|_| ())?;
                    edits.push(Edit::Put {
                        at: fixed + 8,
                        value: len,
                    });
                }
            }
            _ => rdata_names(msg, rtype, rdata, end, &mut edits)?,
        }
        pos = end;
    }
    if !stripped {
        return Ok(None);
    }
    Ok(Some(apply(msg, &mut edits)))
}

/// Walks a name at `pos`, recording its pointer; returns the position after it.
fn name(msg: &[u8], mut pos: usize, edits: &mut Vec<Edit>) -> Result<usize, ()> {
    loop {
        let len = *msg.get(pos).ok_or(())?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xc0 == 0xc0 => {
                let low = *msg.get(pos + 1).ok_or(())?;
                let target = (usize::from(l & 0x3f) << 8) | usize::from(low);
                edits.push(Edit::Pointer { at: pos, target });
                return Ok(pos + 2);
            }
            l if l & 0xc0 == 0 => pos += 1 + usize::from(l),
            _ => return Err(()),
        }
    }
}

/// Records the pointers in the RDATA of the types whose names may be compressed (RFC 1035,
/// RFC 2163/3597 list). Other types are copied as they are.
fn rdata_names(
    msg: &[u8],
    rtype: u16,
    rdata: usize,
    end: usize,
    edits: &mut Vec<Edit>,
) -> Result<(), ()> {
    // (bytes before the first name, number of names)
    let (skip, names) = match rtype {
        2 | 5 | 12 | 39 => (0, 1),   // NS, CNAME, PTR, DNAME
        6 | 14 | 17 => (0, 2),       // SOA, MINFO, RP
        15 | 18 | 21 | 36 => (2, 1), // MX, AFSDB, RT, KX
        33 => (6, 1),                // SRV (compressed by some servers)
        _ => return Ok(()),
    };
    let mut pos = rdata + skip;
    for _ in 0..names {
        pos = name(msg, pos, edits)?;
        if pos > end {
            return Err(());
        }
    }
    Ok(())
}

/// Plans the removal of the hint parameters of one SVCB/HTTPS RDATA; returns bytes removed.
fn svcb(msg: &[u8], rdata: usize, end: usize, edits: &mut Vec<Edit>) -> Result<usize, ()> {
    let params = wire::svc_params(&msg[rdata..end]).ok_or(())?;
    let mut removed = 0;
    for p in params {
        let (pos, len) = (rdata + p.at, p.value.len());
        match p.key {
            SVC_IPV4HINT | SVC_IPV6HINT => {
                edits.push(Edit::Remove {
                    at: pos,
                    len: 4 + len,
                });
                removed += 4 + len;
            }
            SVC_MANDATORY => {
                // A hint named as mandatory goes from the list too; an emptied list goes.
                let keys: Vec<usize> = (rdata + p.value.start..rdata + p.value.end)
                    .step_by(2)
                    .filter(|&k| {
                        k + 2 <= rdata + p.value.end
                            && matches!(u16_at(msg, k), SVC_IPV4HINT | SVC_IPV6HINT)
                    })
                    .collect();
                if keys.len() * 2 == len && len > 0 {
                    edits.push(Edit::Remove {
                        at: pos,
                        len: 4 + len,
                    });
                    removed += 4 + len;
                } else if !keys.is_empty() {
                    for &k in &keys {
                        edits.push(Edit::Remove { at: k, len: 2 });
                    }
                    let left = u16::try_from(len - 2 * keys.len()).map_err(|_| ())?;
                    edits.push(Edit::Put {
                        at: pos + 2,
                        value: left,
                    });
                    removed += 2 * keys.len();
                }
            }
            _ => {}
        }
    }
    Ok(removed)
}

/// Copies `msg` without the removed ranges, writing the new values and remapped pointers.
fn apply(msg: &[u8], edits: &mut [Edit]) -> Vec<u8> {
    let mut removals: Vec<(usize, usize)> = edits
        .iter()
        .filter_map(|e| match *e {
            Edit::Remove { at, len } => Some((at, len)),
            _ => None,
        })
        .collect();
    removals.sort_unstable();
    // New offset of an original offset outside the removed ranges.
    let map = |off: usize| -> usize {
        let gone: usize = removals
            .iter()
            .take_while(|(at, _)| *at < off)
            .map(|&(at, len)| len.min(off - at))
            .sum();
        off - gone
    };
    let mut out = Vec::with_capacity(msg.len());
    let mut from = 0;
    for &(at, len) in &removals {
        out.extend_from_slice(&msg[from..at]);
        from = at + len;
    }
    out.extend_from_slice(&msg[from..]);
    for e in edits.iter() {
        let (at, value) = match *e {
            Edit::Put { at, value } => (at, value),
            // Targets are below 0x4000 and only shrink, so the remapped pointer still fits.
            Edit::Pointer { at, target } => (at, 0xc000 | (map(target) as u16 & 0x3fff)),
            Edit::Remove { .. } => continue,
        };
        let at = map(at);
        out[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::rdata::svcb::{
        Alpn, IpHint, Mandatory, SVCB, SvcParamKey, SvcParamValue,
    };
    use hickory_proto::rr::rdata::{A, CNAME, HTTPS};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_str(s).expect("name")
    }

    fn https(params: Vec<(SvcParamKey, SvcParamValue)>) -> RData {
        RData::HTTPS(HTTPS(SVCB::new(1, name("."), params)))
    }

    fn message(rdata: RData) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Response, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(name("www.example.test."), RecordType::HTTPS));
        m.add_answer(Record::from_rdata(name("www.example.test."), 300, rdata));
        // Records after the HTTPS one whose names point back into the message.
        m.add_additional(Record::from_rdata(
            name("edge.example.test."),
            60,
            RData::CNAME(CNAME(name("www.example.test."))),
        ));
        m.add_additional(Record::from_rdata(
            name("edge.example.test."),
            60,
            RData::A(A::new(192, 0, 2, 9)),
        ));
        m.to_vec().expect("encode")
    }

    #[test]
    fn hints_go_and_everything_else_stays() {
        let wire = message(https(vec![
            (
                SvcParamKey::Mandatory,
                SvcParamValue::Mandatory(Mandatory(vec![SvcParamKey::Alpn, SvcParamKey::Ipv4Hint])),
            ),
            (
                SvcParamKey::Alpn,
                SvcParamValue::Alpn(Alpn(vec!["h2".into(), "h3".into()])),
            ),
            (
                SvcParamKey::Ipv4Hint,
                SvcParamValue::Ipv4Hint(IpHint(vec![A::new(192, 0, 2, 50)])),
            ),
            (
                SvcParamKey::Ipv6Hint,
                SvcParamValue::Ipv6Hint(IpHint(vec![hickory_proto::rr::rdata::AAAA::new(
                    0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50,
                )])),
            ),
        ]));
        let out = strip_hints(&wire).expect("well formed").expect("changed");
        assert_eq!(out.len(), wire.len() - (4 + 4) - (4 + 16) - 2);
        let m = Message::from_vec(&out).expect("still parses");
        let RData::HTTPS(h) = &m.answers[0].data else {
            panic!("not HTTPS: {m:?}");
        };
        let keys: Vec<SvcParamKey> = h.0.svc_params.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [SvcParamKey::Mandatory, SvcParamKey::Alpn]);
        let SvcParamValue::Mandatory(Mandatory(mandatory)) = &h.0.svc_params[0].1 else {
            panic!("mandatory");
        };
        assert_eq!(mandatory, &[SvcParamKey::Alpn]);
        // The records after it still carry the right (remapped) names.
        assert_eq!(m.additionals[0].name, name("edge.example.test."));
        assert_eq!(
            m.additionals[0].data,
            RData::CNAME(CNAME(name("www.example.test.")))
        );
        // This owner name is a pointer to the one above, which moved: it was remapped.
        assert_eq!(m.additionals[1].name, name("edge.example.test."));
        assert_eq!(m.additionals[1].data, RData::A(A::new(192, 0, 2, 9)));
        assert!(crate::dns::chain::handouts(&out, b"www.example.test").is_empty());
    }

    #[test]
    fn answers_without_hints_are_left_alone_and_garbage_is_an_error() {
        let wire = message(https(vec![(
            SvcParamKey::Alpn,
            SvcParamValue::Alpn(Alpn(vec!["h2".into()])),
        )]));
        assert_eq!(strip_hints(&wire), Ok(None));
        let mut cut = message(https(vec![(
            SvcParamKey::Ipv4Hint,
            SvcParamValue::Ipv4Hint(IpHint(vec![A::new(192, 0, 2, 50)])),
        )]));
        cut.truncate(cut.len() - 3);
        assert_eq!(strip_hints(&cut), Err(()));
        assert_eq!(strip_hints(&[0u8; 5]), Err(()));
    }
}
