//! DNS wire format on the hot path: reading a query's header, question and OPT record, walking a
//! response's records, and writing the few answers pinhole makes itself.
//!
//! Why hand-written: cache hits and block answers are served without building a `Message`
//! (no allocation, no re-encoding), and upstream answers are passed on byte for byte after a
//! bounds-checked walk over their records. Record data that needs real parsing (HTTPS/SVCB
//! hints, in the allowlist work) is left to hickory-proto. This module owns byte layout only;
//! it decides nothing.

use thiserror::Error;

pub const HEADER_LEN: usize = 12;
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_HINFO: u16 = 13;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_SVCB: u16 = 64;
pub const TYPE_HTTPS: u16 = 65;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

/// SvcParamKeys of SVCB/HTTPS records (RFC 9460 section 14.3.2, RFC 9461).
pub const SVC_MANDATORY: u16 = 0;
pub const SVC_ALPN: u16 = 1;
pub const SVC_PORT: u16 = 3;
pub const SVC_IPV4HINT: u16 = 4;
pub const SVC_IPV6HINT: u16 = 6;
pub const SVC_DOHPATH: u16 = 7;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// Extended DNS Error codes (RFC 8914) pinhole uses.
pub const EDE_OTHER: u16 = 0;
pub const EDE_BLOCKED: u16 = 15;
pub const EDE_FILTERED: u16 = 17;
pub const EDE_PROHIBITED: u16 = 18;
pub const EDE_NOT_SUPPORTED: u16 = 21;
pub const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;
pub const EDE_NETWORK_ERROR: u16 = 23;
const OPT_EDE: u16 = 15;

const FLAG_QR: u8 = 0x80;
const FLAG_AA: u8 = 0x04;
const FLAG_TC: u8 = 0x02;
const FLAG_RD: u8 = 0x01;
const FLAG_RA: u8 = 0x80;
const FLAG_CD: u8 = 0x10;

/// The client's EDNS parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub dnssec_ok: bool,
}

/// Why a packet is not a query pinhole can answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum QueryError {
    /// Not even a header, or a response: nothing is sent back.
    #[error("packet dropped: too short or not a query")]
    Drop,
    /// The header is readable; answer with this RCODE and no question (FORMERR, NOTIMP).
    #[error("answered with rcode {0}")]
    Rcode(u8),
    /// EDNS version other than 0: answer BADVERS.
    #[error("unsupported EDNS version")]
    BadVers,
}

/// A parsed query. `name` is the question name in lower case, dotted, without trailing dot.
pub struct Query<'a> {
    pub packet: &'a [u8],
    pub id: u16,
    pub rd: bool,
    pub cd: bool,
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section (offset of the first byte after QCLASS).
    pub question_end: usize,
    /// Lower-case dotted name; `name_len` bytes of `name_buf` are used.
    name_buf: [u8; 256],
    name_len: usize,
    /// A label holds a '.' or a byte that no pattern can hold: the name matches no zone.
    pub unmatchable: bool,
    pub edns: Option<Edns>,
}

impl<'a> Query<'a> {
    /// The dotted lower-case name (empty for the root).
    pub fn name(&self) -> &[u8] {
        &self.name_buf[..self.name_len]
    }

    /// The question as on the wire (name, type, class), as the client wrote it.
    pub fn question(&self) -> &'a [u8] {
        &self.packet[HEADER_LEN..self.question_end]
    }

    /// Parses a query. Answers and authority records in a query are skipped; the OPT record
    /// is looked for in the additional section.
    pub fn parse(packet: &'a [u8]) -> Result<Query<'a>, QueryError> {
        if packet.len() < HEADER_LEN || packet[2] & FLAG_QR != 0 {
            return Err(QueryError::Drop);
        }
        let opcode = (packet[2] >> 3) & 0x0f;
        if opcode != 0 {
            return Err(QueryError::Rcode(RCODE_NOTIMP));
        }
        if u16_at(packet, 4) != 1 {
            return Err(QueryError::Rcode(RCODE_FORMERR));
        }
        let mut q = Query {
            packet,
            id: u16_at(packet, 0),
            rd: packet[2] & FLAG_RD != 0,
            cd: packet[3] & FLAG_CD != 0,
            qtype: 0,
            qclass: 0,
            question_end: 0,
            name_buf: [0; 256],
            name_len: 0,
            unmatchable: false,
            edns: None,
        };
        let formerr = QueryError::Rcode(RCODE_FORMERR);
        let mut pos = HEADER_LEN;
        let mut wire_len = 0usize;
        loop {
            let len = *packet.get(pos).ok_or(formerr)? as usize;
            if len == 0 {
                pos += 1;
                break;
            }
            // Compression pointers have nothing to point to in a question: refuse them.
            if len > 63 {
                return Err(formerr);
            }
            let label = packet.get(pos + 1..pos + 1 + len).ok_or(formerr)?;
            wire_len += len + 1;
            if wire_len > 254 {
                return Err(formerr);
            }
            if q.name_len > 0 {
                q.name_buf[q.name_len] = b'.';
                q.name_len += 1;
            }
            for &b in label {
                let lower = b.to_ascii_lowercase();
                if !(lower.is_ascii_alphanumeric() || lower == b'-' || lower == b'_') {
                    q.unmatchable = true;
                }
                q.name_buf[q.name_len] = lower;
                q.name_len += 1;
            }
            pos += 1 + len;
        }
        let fixed = packet.get(pos..pos + 4).ok_or(formerr)?;
        q.qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        q.qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        pos += 4;
        q.question_end = pos;
        // Skip answer and authority records, then look for OPT among the additionals.
        let skip = usize::from(u16_at(packet, 6)) + usize::from(u16_at(packet, 8));
        for _ in 0..skip {
            pos = skip_rr(packet, pos).ok_or(formerr)?.end;
        }
        for _ in 0..u16_at(packet, 10) {
            let rr = skip_rr(packet, pos).ok_or(formerr)?;
            if rr.rtype == TYPE_OPT {
                if q.edns.is_some() || rr.name_start + 1 != rr.fixed_start {
                    // Two OPT records, or an OPT not owned by the root.
                    return Err(formerr);
                }
                let version = packet[rr.fixed_start + 5];
                if version != 0 {
                    return Err(QueryError::BadVers);
                }
                q.edns = Some(Edns {
                    payload: rr.class.max(512),
                    dnssec_ok: packet[rr.fixed_start + 6] & 0x80 != 0,
                });
            }
            pos = rr.end;
        }
        Ok(q)
    }
}

pub fn u16_at(buf: &[u8], pos: usize) -> u16 {
    u16::from_be_bytes([buf[pos], buf[pos + 1]])
}

fn u32_at(buf: &[u8], pos: usize) -> u32 {
    u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]])
}

/// Position of the byte after a (possibly compressed) name starting at `pos`.
fn skip_name(buf: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *buf.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => {
                buf.get(pos + 1)?;
                return Some(pos + 2);
            }
            l if l & 0xc0 == 0 => pos += 1 + l as usize,
            _ => return None,
        }
    }
}

/// One SvcParam of an SVCB/HTTPS RDATA; offsets are within the RDATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcParam {
    /// Where the parameter (its key) starts.
    pub at: usize,
    pub key: u16,
    /// Its value.
    pub value: std::ops::Range<usize>,
}

/// The SvcParams of an SVCB/HTTPS RDATA: SvcPriority, an uncompressed TargetName, then
/// key/length/value triples (RFC 9460 section 2.2). `None` if the RDATA is malformed.
pub fn svc_params(rdata: &[u8]) -> Option<Vec<SvcParam>> {
    let mut pos = 2;
    loop {
        let len = usize::from(*rdata.get(pos)?);
        if len > 63 {
            return None;
        }
        pos += 1 + len;
        if len == 0 {
            break;
        }
    }
    let mut params = Vec::new();
    while pos < rdata.len() {
        rdata.get(pos..pos + 4)?;
        let key = u16_at(rdata, pos);
        let end = pos + 4 + usize::from(u16_at(rdata, pos + 2));
        if end > rdata.len() {
            return None;
        }
        params.push(SvcParam {
            at: pos,
            key,
            value: pos + 4..end,
        });
        pos = end;
    }
    Some(params)
}

/// Where one resource record's parts are.
#[derive(Debug, Clone, Copy)]
pub struct RrPos {
    pub name_start: usize,
    /// Offset of TYPE (TTL is at fixed_start + 4, RDLENGTH at + 8, RDATA at + 10).
    pub fixed_start: usize,
    pub rtype: u16,
    pub class: u16,
    pub end: usize,
}

/// Reads the record at `pos`, bounds-checked.
pub fn skip_rr(buf: &[u8], pos: usize) -> Option<RrPos> {
    let fixed_start = skip_name(buf, pos)?;
    buf.get(fixed_start..fixed_start + 10)?;
    let rdlen = usize::from(u16_at(buf, fixed_start + 8));
    let end = fixed_start + 10 + rdlen;
    if end > buf.len() {
        return None;
    }
    Some(RrPos {
        name_start: pos,
        fixed_start,
        rtype: u16_at(buf, fixed_start),
        class: u16_at(buf, fixed_start + 2),
        end,
    })
}

/// What the cache needs to know of an upstream response.
#[derive(Debug, Default)]
pub struct ResponseScan {
    /// Offsets of every TTL field except OPT's, to count them down on cache hits.
    pub ttl_offsets: Vec<u16>,
    /// Smallest TTL over every record except OPT, if there is a record.
    pub min_ttl: Option<u32>,
    /// For negative answers: min(SOA TTL, SOA MINIMUM) of the SOA in authority (RFC 2308).
    pub negative_ttl: Option<u32>,
    /// Byte range of the OPT record, if any.
    pub opt: Option<(usize, usize)>,
    pub rcode: u8,
    pub truncated: bool,
    pub answers: u16,
}

/// Walks every record of a response. Returns `None` if it is malformed.
pub fn scan_response(buf: &[u8]) -> Option<ResponseScan> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let mut scan = ResponseScan {
        rcode: buf[3] & 0x0f,
        truncated: buf[2] & FLAG_TC != 0,
        answers: u16_at(buf, 6),
        ..Default::default()
    };
    let mut pos = HEADER_LEN;
    for _ in 0..u16_at(buf, 4) {
        pos = skip_name(buf, pos)? + 4;
    }
    let (an, ns, ar) = (u16_at(buf, 6), u16_at(buf, 8), u16_at(buf, 10));
    for i in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
        let rr = skip_rr(buf, pos)?;
        if rr.rtype == TYPE_OPT {
            scan.opt = Some((pos, rr.end));
        } else {
            let ttl_at = rr.fixed_start + 4;
            let ttl = u32_at(buf, ttl_at);
            scan.ttl_offsets.push(u16::try_from(ttl_at).ok()?);
            scan.min_ttl = Some(scan.min_ttl.map_or(ttl, |m: u32| m.min(ttl)));
            let in_authority = i >= u32::from(an) && i < u32::from(an) + u32::from(ns);
            if in_authority && rr.rtype == TYPE_SOA && rr.end >= rr.fixed_start + 10 + 20 {
                let minimum = u32_at(buf, rr.end - 4);
                scan.negative_ttl = Some(ttl.min(minimum));
            }
        }
        pos = rr.end;
    }
    Some(scan)
}

/// Compares the question of `response` with the query's question, case-insensitively.
pub fn same_question(response: &[u8], question: &[u8]) -> bool {
    response.len() >= HEADER_LEN + question.len()
        && u16_at(response, 4) == 1
        && response[HEADER_LEN..HEADER_LEN + question.len()].eq_ignore_ascii_case(question)
}

// ---- writing -----------------------------------------------------------------------------

fn bump(out: &mut [u8], count_at: usize) {
    let n = u16_at(out, count_at).wrapping_add(1);
    out[count_at..count_at + 2].copy_from_slice(&n.to_be_bytes());
}

pub const ANSWER_COUNT: usize = 6;
pub const AUTHORITY_COUNT: usize = 8;
pub const ADDITIONAL_COUNT: usize = 10;

/// Starts a response to `q` in `out`: header with the query's ID, RD and CD, RA set, and
/// the question exactly as the client sent it.
pub fn start_response(out: &mut Vec<u8>, q: &Query<'_>, rcode: u8, authoritative: bool) {
    out.clear();
    out.extend_from_slice(&q.id.to_be_bytes());
    let mut b2 = FLAG_QR;
    if q.rd {
        b2 |= FLAG_RD;
    }
    if authoritative {
        b2 |= FLAG_AA;
    }
    let mut b3 = FLAG_RA | (rcode & 0x0f);
    if q.cd {
        b3 |= FLAG_CD;
    }
    out.extend_from_slice(&[b2, b3, 0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(q.question());
}

/// A response with only a header (for queries whose question could not be read).
pub fn header_only(out: &mut Vec<u8>, packet: &[u8], rcode: u8) {
    out.clear();
    out.extend_from_slice(&packet[..2]);
    let b2 = FLAG_QR | (packet[2] & (0x78 | FLAG_RD));
    out.extend_from_slice(&[b2, FLAG_RA | (rcode & 0x0f), 0, 0, 0, 0, 0, 0, 0, 0]);
}

/// Appends a record owned by the question name (compression pointer to offset 12).
pub fn push_record(out: &mut Vec<u8>, section: usize, rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
    bump(out, section);
}

/// Appends an OPT record (with an Extended DNS Error when `ede` is given).
pub fn push_opt(
    out: &mut Vec<u8>,
    payload: u16,
    dnssec_ok: bool,
    ext_rcode: u8,
    ede: Option<(u16, &str)>,
) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&[ext_rcode, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
    match ede {
        Some((code, text)) => {
            let text = &text.as_bytes()[..text.len().min(200)];
            let optlen = 2 + text.len() as u16;
            out.extend_from_slice(&(4 + optlen).to_be_bytes());
            out.extend_from_slice(&OPT_EDE.to_be_bytes());
            out.extend_from_slice(&optlen.to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(text);
        }
        None => out.extend_from_slice(&[0, 0]),
    }
    bump(out, ADDITIONAL_COUNT);
}

/// Cuts a response down to header and question with TC set, for a UDP client whose size
/// limit it exceeds. Returns the length to keep; the caller appends OPT again if needed.
pub fn truncate(out: &mut Vec<u8>, question_end: usize) {
    out.truncate(question_end);
    out[2] |= FLAG_TC;
    out[6..12].fill(0);
}

/// Encodes a dotted name (no trailing dot) as uncompressed wire labels.
pub fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
}

/// Builds a query for an upstream: given ID, RD set, CD as asked, the question, and an OPT
/// record advertising `payload` with DO as asked.
pub fn build_query(
    out: &mut Vec<u8>,
    id: u16,
    question: &[u8],
    cd: bool,
    dnssec_ok: bool,
    payload: u16,
) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[
        FLAG_RD,
        if cd { FLAG_CD } else { 0 },
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    out.extend_from_slice(question);
    push_opt(out, payload, dnssec_ok, 0, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_bytes(name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        encode_name(name, &mut q);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        if edns {
            push_opt(&mut q, 4096, true, 0, None);
        }
        q
    }

    #[test]
    fn parses_question_and_edns() {
        let pkt = query_bytes("WWW.Example.COM", TYPE_AAAA, true);
        let q = Query::parse(&pkt).expect("query");
        assert_eq!(q.name(), b"www.example.com");
        assert_eq!(q.qtype, TYPE_AAAA);
        assert_eq!(q.id, 0x1234);
        assert!(q.rd);
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 4096,
                dnssec_ok: true
            })
        );
        assert!(!q.unmatchable);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Query::parse(&[0; 5]).err(), Some(QueryError::Drop));
        let mut pkt = query_bytes("a.test", TYPE_A, false);
        pkt[5] = 2;
        assert_eq!(
            Query::parse(&pkt).err(),
            Some(QueryError::Rcode(RCODE_FORMERR))
        );
        let mut pkt = query_bytes("a.test", TYPE_A, false);
        pkt[2] |= 2 << 3;
        assert_eq!(
            Query::parse(&pkt).err(),
            Some(QueryError::Rcode(RCODE_NOTIMP))
        );
        let pkt = query_bytes("a.test", TYPE_A, false);
        assert_eq!(
            Query::parse(&pkt[..pkt.len() - 2]).err(),
            Some(QueryError::Rcode(RCODE_FORMERR))
        );
    }

    #[test]
    fn dotted_label_is_unmatchable() {
        let mut pkt = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        pkt.extend_from_slice(b"\x03a.b\x04test\x00\x00\x01\x00\x01");
        let q = Query::parse(&pkt).expect("query");
        assert!(q.unmatchable);
    }
}
