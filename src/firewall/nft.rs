//! Minimal nf_tables client over raw netlink (no `nft` process, no libnftnl).
//!
//! Everything pinhole needs from nftables, and nothing more:
//!
//! * create a table and named sets ([`Nft::create_table_and_sets`]),
//! * add many elements to several sets in **one** nfnetlink transaction, each
//!   element with its own timeout and optional expiration, and wait for the
//!   kernel's verdict ([`Nft::add_elements`]),
//! * list a set's elements with their timeouts/expiry ([`Nft::list_elements`]),
//! * inspect a set's key type and flags ([`Nft::get_set`]) and table existence,
//! * delete a table ([`Nft::delete_table`]),
//! * watch for tables/sets being deleted behind our back ([`Monitor`]).
//!
//! Wire format: every message is `nlmsghdr` + `nfgenmsg` + netlink attributes,
//! with the constants of `linux/netfilter/nf_tables.h` and
//! `linux/netfilter/nfnetlink.h` (copied into the private [`sys`] module).
//! Multi-byte attribute payloads are big-endian, as the kernel expects.
//!
//! Writes are sent as `NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END`. The kernel
//! applies such a batch atomically: if any message in it fails, nothing in it is
//! applied, and every message that carried `NLM_F_ACK` still gets an answer
//! (status 0 for the ones that were fine). [`Nft`] therefore sets `NLM_F_ACK`
//! on every inner message and reports all failures in [`NftError::Batch`].
//!
//! The socket is blocking and the API synchronous: a batch is processed by the
//! kernel inside `send()`, so the acknowledgements are already queued when the
//! send returns and the receive does not wait. To use it from async code, call
//! it from a dedicated thread (or `spawn_blocking`); [`Monitor`] exposes its fd
//! (`AsFd`) so it can be wrapped in `tokio::io::unix::AsyncFd`.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// Kernel ABI constants (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`,
/// `linux/netfilter/nf_tables.h`). Values are stable ABI.
#[allow(dead_code)]
mod sys {
    // linux/netlink.h
    pub const NLMSG_HDRLEN: usize = 16;
    pub const NLMSG_NOOP: u16 = 1;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLMSG_OVERRUN: u16 = 4;
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_MULTI: u16 = 0x2;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_DUMP_INTR: u16 = 0x10;
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLM_F_EXCL: u16 = 0x200;
    pub const NLM_F_CREATE: u16 = 0x400;
    /// In an `NLMSG_ERROR`: the echoed request was cut to its header.
    pub const NLM_F_CAPPED: u16 = 0x100;
    /// In an `NLMSG_ERROR`: extended-ack TLVs follow.
    pub const NLM_F_ACK_TLVS: u16 = 0x200;
    pub const NLMSGERR_ATTR_MSG: u16 = 1;
    pub const NLA_F_NESTED: u16 = 0x8000;
    pub const NLA_TYPE_MASK: u16 = 0x3fff;

    // linux/netfilter/nfnetlink.h
    pub const NFNETLINK_V0: u8 = 0;
    pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
    pub const NFNL_MSG_BATCH_BEGIN: u16 = 16; // NLMSG_MIN_TYPE
    pub const NFNL_MSG_BATCH_END: u16 = 17;
    pub const NFNLGRP_NFTABLES: u32 = 7;

    // enum nf_tables_msg_types
    pub const NFT_MSG_NEWTABLE: u16 = 0;
    pub const NFT_MSG_GETTABLE: u16 = 1;
    pub const NFT_MSG_DELTABLE: u16 = 2;
    pub const NFT_MSG_NEWCHAIN: u16 = 3;
    pub const NFT_MSG_DELCHAIN: u16 = 5;
    pub const NFT_MSG_NEWRULE: u16 = 6;
    pub const NFT_MSG_DELRULE: u16 = 8;
    pub const NFT_MSG_NEWSET: u16 = 9;
    pub const NFT_MSG_GETSET: u16 = 10;
    pub const NFT_MSG_DELSET: u16 = 11;
    pub const NFT_MSG_NEWSETELEM: u16 = 12;
    pub const NFT_MSG_GETSETELEM: u16 = 13;
    pub const NFT_MSG_DELSETELEM: u16 = 14;
    pub const NFT_MSG_NEWGEN: u16 = 15;

    // enum nft_table_attributes
    pub const NFTA_TABLE_NAME: u16 = 1;
    // enum nft_set_attributes
    pub const NFTA_SET_TABLE: u16 = 1;
    pub const NFTA_SET_NAME: u16 = 2;
    pub const NFTA_SET_FLAGS: u16 = 3;
    pub const NFTA_SET_KEY_TYPE: u16 = 4;
    pub const NFTA_SET_KEY_LEN: u16 = 5;
    pub const NFTA_SET_DESC: u16 = 9;
    pub const NFTA_SET_ID: u16 = 10;
    pub const NFTA_SET_TIMEOUT: u16 = 11;
    // enum nft_set_desc_attributes / nft_set_field_attributes / nft_list_attributes
    pub const NFTA_SET_DESC_CONCAT: u16 = 2;
    pub const NFTA_SET_FIELD_LEN: u16 = 1;
    pub const NFTA_LIST_ELEM: u16 = 1;
    // enum nft_set_elem_attributes
    pub const NFTA_SET_ELEM_KEY: u16 = 1;
    pub const NFTA_SET_ELEM_FLAGS: u16 = 3;
    pub const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
    pub const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
    pub const NFTA_SET_ELEM_KEY_END: u16 = 10;
    // enum nft_set_elem_list_attributes
    pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
    pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
    pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    // enum nft_data_attributes
    pub const NFTA_DATA_VALUE: u16 = 1;
    // enum nft_gen_attributes
    pub const NFTA_GEN_ID: u16 = 1;
    pub const NFTA_GEN_PROC_PID: u16 = 2;
    pub const NFTA_GEN_PROC_NAME: u16 = 3;
    // enum nft_set_elem_flags
    pub const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

    // nftables userspace datatype ids (nftables: include/datatype.h), used
    // in NFTA_SET_KEY_TYPE so that `nft list` prints the right types.
    pub const TYPE_IPADDR: u32 = 7;
    pub const TYPE_IP6ADDR: u32 = 8;
    pub const TYPE_INET_PROTOCOL: u32 = 12;
    pub const TYPE_INET_SERVICE: u32 = 13;
    /// Bits per component in a concatenated type id (nftables `TYPE_BITS`).
    pub const TYPE_BITS: u32 = 6;
}

/// Largest payload we put in one `NFTA_SET_ELEM_LIST_ELEMENTS` nest. A nest's
/// length is a `u16`, so a big element list is split over several messages
/// (still inside the same batch).
const MAX_ELEMS_NEST: usize = 60_000;
/// Send buffer we ask for; the batch must fit in one `send()`.
const WANT_SNDBUF: usize = 16 << 20;
/// Receive buffer for dumps and monitor events.
const RECV_BUF: usize = 1 << 20;
/// Safety net for a blocking receive that should never block for long.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest table/set name the kernel accepts (NFT_NAME_MAXLEN - 1).
const MAX_NAME: usize = 255;

/// Errors from [`Nft`] and [`Monitor`].
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netlink socket itself failed (open, send, receive, timeout).
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// A single request (not a batch) was refused by the kernel.
    #[error("{op}: {}{}", io::Error::from_raw_os_error(*errno), ext_msg(message))]
    Kernel {
        /// What we asked for.
        op: String,
        /// Positive errno (e.g. `libc::ENOENT`).
        errno: i32,
        /// Extended-ack message from the kernel, if it sent one.
        message: Option<String>,
    },
    /// A batch was refused; the kernel applied none of it.
    #[error("batch rejected, nothing applied: {}", join_errors(.0))]
    Batch(Vec<MsgError>),
    /// The kernel sent something we could not parse, or not what we expected.
    #[error("netlink protocol: {0}")]
    Protocol(String),
    /// The caller's input cannot be encoded (bad name, prefix length, size...).
    #[error("invalid input: {0}")]
    Invalid(String),
}

impl NftError {
    /// The errno behind a kernel refusal (for a batch: the first failing message).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { errno, .. } => Some(*errno),
            NftError::Batch(errs) => errs.first().map(|e| e.errno),
            NftError::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// One refused message inside a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgError {
    /// What the message was, e.g. `add 3 element(s) to inet pinhole allow4`,
    /// or `commit` for an error reported on the batch itself.
    pub what: String,
    /// Positive errno.
    pub errno: i32,
    /// Extended-ack message, if any.
    pub message: Option<String>,
}

impl fmt::Display for MsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}{}",
            self.what,
            io::Error::from_raw_os_error(self.errno),
            ext_msg(&self.message)
        )
    }
}

fn ext_msg(m: &Option<String>) -> String {
    m.as_ref().map(|m| format!(" ({m})")).unwrap_or_default()
}

fn join_errors(errs: &[MsgError]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result alias for this module.
pub type Result<T, E = NftError> = std::result::Result<T, E>;

/// nftables address family of a table (`nfgenmsg.nfgen_family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `inet`: IPv4 and IPv6 (NFPROTO_INET).
    Inet,
    /// `ip` (NFPROTO_IPV4).
    Ip,
    /// `ip6` (NFPROTO_IPV6).
    Ip6,
}

impl Family {
    fn raw(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }

    fn from_raw(v: u8) -> Option<Family> {
        match v {
            1 => Some(Family::Inet),
            2 => Some(Family::Ip),
            10 => Some(Family::Ip6),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        })
    }
}

/// Key type of a set, i.e. what one element matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ipv4_addr . inet_proto . inet_service` (12-byte key).
    V4Port,
    /// `ipv6_addr . inet_proto . inet_service` (24-byte key).
    V6Port,
    /// `ipv4_addr`; with [`SetFlags::INTERVAL`] it holds CIDRs.
    V4Net,
    /// `ipv6_addr`; with [`SetFlags::INTERVAL`] it holds CIDRs.
    V6Net,
}

impl KeyType {
    /// Datatype ids of the concatenated fields, in order.
    fn fields(self) -> &'static [u32] {
        use sys::*;
        match self {
            KeyType::V4Port => &[TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE],
            KeyType::V6Port => &[TYPE_IP6ADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE],
            KeyType::V4Net => &[TYPE_IPADDR],
            KeyType::V6Net => &[TYPE_IP6ADDR],
        }
    }

    /// Byte length of each field before padding (what NFTA_SET_FIELD_LEN carries).
    fn field_lens(self) -> &'static [u32] {
        match self {
            KeyType::V4Port => &[4, 1, 2],
            KeyType::V6Port => &[16, 1, 2],
            KeyType::V4Net => &[4],
            KeyType::V6Net => &[16],
        }
    }

    /// `NFTA_SET_KEY_TYPE`: nftables' concatenated datatype id.
    pub fn type_id(self) -> u32 {
        self.fields()
            .iter()
            .fold(0, |acc, t| (acc << sys::TYPE_BITS) | t)
    }

    /// `NFTA_SET_KEY_LEN`: each field is padded to a 32-bit register.
    pub fn key_len(self) -> u32 {
        self.field_lens().iter().map(|l| l.div_ceil(4) * 4).sum()
    }

    /// Recognise a kernel set's key (`NFTA_SET_KEY_TYPE`, `NFTA_SET_KEY_LEN`).
    pub fn from_kernel(type_id: u32, key_len: u32) -> Option<KeyType> {
        [
            KeyType::V4Port,
            KeyType::V6Port,
            KeyType::V4Net,
            KeyType::V6Net,
        ]
        .into_iter()
        .find(|k| k.type_id() == type_id && k.key_len() == key_len)
    }

    fn is_concat(self) -> bool {
        self.fields().len() > 1
    }
}

/// Set flags (`enum nft_set_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SetFlags(pub u32);

impl SetFlags {
    /// `flags constant`.
    pub const CONSTANT: SetFlags = SetFlags(0x2);
    /// `flags interval`: elements are ranges/CIDRs.
    pub const INTERVAL: SetFlags = SetFlags(0x4);
    /// `flags timeout`: elements may carry timeouts.
    pub const TIMEOUT: SetFlags = SetFlags(0x10);
    /// `flags dynamic` (NFT_SET_EVAL): updatable from the packet path.
    pub const DYNAMIC: SetFlags = SetFlags(0x20);
    /// NFT_SET_CONCAT: concatenated key with intervals (pipapo backend).
    pub const CONCAT: SetFlags = SetFlags(0x80);

    /// Whether all bits of `other` are set.
    pub fn contains(self, other: SetFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for SetFlags {
    type Output = SetFlags;
    fn bitor(self, rhs: SetFlags) -> SetFlags {
        SetFlags(self.0 | rhs.0)
    }
}

/// A named set to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// Set name.
    pub name: String,
    /// Key type.
    pub key: KeyType,
    /// Flags. [`SetSpec::new`] picks `timeout` for port keys and `interval`
    /// for address keys.
    pub flags: SetFlags,
}

impl SetSpec {
    /// A set with the usual flags for its key type.
    pub fn new(name: impl Into<String>, key: KeyType) -> SetSpec {
        let flags = match key {
            KeyType::V4Port | KeyType::V6Port => SetFlags::TIMEOUT,
            KeyType::V4Net | KeyType::V6Net => SetFlags::INTERVAL,
        };
        SetSpec {
            name: name.into(),
            key,
            flags,
        }
    }

    /// Replace the flags.
    pub fn with_flags(mut self, flags: SetFlags) -> SetSpec {
        self.flags = flags;
        self
    }
}

/// What an element to add matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// `addr . proto . port`, for [`KeyType::V4Port`]/[`KeyType::V6Port`] sets.
    Port {
        /// Address (its family selects V4Port or V6Port encoding).
        addr: IpAddr,
        /// IP protocol number (6 = tcp, 17 = udp).
        proto: u8,
        /// Port, host byte order.
        port: u16,
    },
    /// `first_addr . proto . port - last_addr . proto . port`, for `interval` sets of
    /// [`KeyType::V4Port`]/[`KeyType::V6Port`] (the pipapo backend): a key and an inclusive
    /// key end. One address is a range with `first == last`.
    PortRange {
        first: IpAddr,
        last: IpAddr,
        proto: u8,
        port: u16,
    },
    /// One address, for plain (non-interval) sets of [`KeyType::V4Net`]/[`KeyType::V6Net`],
    /// as dnsmasq's `--nftset` writes them.
    Addr(IpAddr),
    /// A CIDR, for `interval` sets of [`KeyType::V4Net`]/[`KeyType::V6Net`].
    /// Host bits of `addr` are ignored. Sent as a start element plus an
    /// interval-end element (as `nft` does for the rbtree backend).
    Net {
        /// Network address.
        addr: IpAddr,
        /// Prefix length (0..=32 or 0..=128).
        prefix_len: u8,
    },
}

/// One element to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Element {
    /// What it matches.
    pub key: Key,
    /// `NFTA_SET_ELEM_TIMEOUT` (sent in ms; the kernel keeps jiffies). The set
    /// needs [`SetFlags::TIMEOUT`]. `None`: the set's default timeout, if any,
    /// else the element never expires. Under 1 ms is refused: the kernel takes
    /// a zero timeout as "no timeout" and the element would be permanent.
    pub timeout: Option<Duration>,
    /// `NFTA_SET_ELEM_EXPIRATION`: time left right now. `None` sends nothing:
    /// a new element then gets `timeout`, but an existing element re-added
    /// with an *unchanged* timeout keeps its old expiry (kernel 6.18 behaviour).
    /// To refresh, send `Some(timeout)`, as [`Element::port`] does. Must not
    /// exceed `timeout` (`ERANGE`).
    pub expires: Option<Duration>,
}

impl Element {
    /// `addr . proto . port` with a timeout; re-adding it restarts the
    /// countdown (it sends `expires = timeout`).
    pub fn port(addr: IpAddr, proto: u8, port: u16, timeout: Duration) -> Element {
        Element {
            key: Key::Port { addr, proto, port },
            timeout: Some(timeout),
            expires: Some(timeout),
        }
    }

    /// A CIDR without timeout.
    pub fn net(addr: IpAddr, prefix_len: u8) -> Element {
        Element {
            key: Key::Net { addr, prefix_len },
            timeout: None,
            expires: None,
        }
    }
}

/// Key of an element as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListedKey {
    /// A 12- or 24-byte `addr . proto . port` key.
    Port {
        /// Address.
        addr: IpAddr,
        /// IP protocol number.
        proto: u8,
        /// Port.
        port: u16,
    },
    /// A 4- or 16-byte address key (plain element, interval start or end).
    Addr(IpAddr),
    /// Any other key length, raw.
    Raw(Vec<u8>),
}

/// An element as listed by [`Nft::list_elements`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListedElement {
    /// Key.
    pub key: ListedKey,
    /// Marks the (exclusive) end of an interval in an `interval` set.
    pub interval_end: bool,
    /// The inclusive end of a range in a concatenated `interval` set (pipapo).
    pub key_end: Option<ListedKey>,
    /// The element's timeout, if the kernel reports one.
    pub timeout: Option<Duration>,
    /// Time left before it expires.
    pub expires: Option<Duration>,
}

/// An address range of an `interval` set, rebuilt from listed elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interval {
    /// First address.
    pub start: IpAddr,
    /// First address after the range; `None` when it runs to the top of the space.
    pub end: Option<IpAddr>,
}

impl Interval {
    /// The range as a CIDR `(network, prefix_len)`, if it is one.
    pub fn as_cidr(&self) -> Option<(IpAddr, u8)> {
        let (start, end, bits) = match (self.start, self.end) {
            (IpAddr::V4(s), None) => (u32::from(s) as u128, 1u128 << 32, 32),
            (IpAddr::V4(s), Some(IpAddr::V4(e))) => {
                (u32::from(s) as u128, u32::from(e) as u128, 32)
            }
            (IpAddr::V6(s), None) => {
                let s = u128::from(s);
                // size = 2^128 - s; CIDR iff s is a multiple of that size.
                let size = s.wrapping_neg();
                if s == 0 {
                    return Some((self.start, 0));
                }
                return (size.is_power_of_two() && s % size == 0)
                    .then(|| (self.start, 128 - size.trailing_zeros() as u8));
            }
            (IpAddr::V6(s), Some(IpAddr::V6(e))) => (u128::from(s), u128::from(e), 128),
            _ => return None,
        };
        let size = end.checked_sub(start)?;
        (size.is_power_of_two() && start % size == 0)
            .then(|| (self.start, bits - size.trailing_zeros() as u8))
    }
}

/// Rebuild ranges from the elements of an `interval` set (start elements and
/// their `interval_end` elements; the kernel may list them in any order).
pub fn intervals(elems: &[ListedElement]) -> Vec<Interval> {
    let mut points: Vec<(IpAddr, bool)> = elems
        .iter()
        .filter_map(|e| match e.key {
            ListedKey::Addr(a) => Some((a, e.interval_end)),
            _ => None,
        })
        .collect();
    points.sort();
    let mut out = Vec::new();
    let mut open: Option<IpAddr> = None;
    for (addr, is_end) in points {
        match (is_end, open) {
            (false, Some(start)) => {
                out.push(Interval {
                    start,
                    end: Some(addr),
                });
                open = Some(addr);
            }
            (false, None) => open = Some(addr),
            (true, Some(start)) => {
                out.push(Interval {
                    start,
                    end: Some(addr),
                });
                open = None;
            }
            (true, None) => {} // e.g. nft's 0.0.0.0 end sentinel
        }
    }
    if let Some(start) = open {
        out.push(Interval { start, end: None });
    }
    out
}

/// A set as the kernel describes it (`NFT_MSG_GETSET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    /// Table family.
    pub family: Option<Family>,
    /// Table name.
    pub table: String,
    /// Set name.
    pub name: String,
    /// Flags.
    pub flags: SetFlags,
    /// Raw `NFTA_SET_KEY_TYPE`.
    pub key_type_id: u32,
    /// Raw `NFTA_SET_KEY_LEN`.
    pub key_len: u32,
    /// The key type, if it is one we know.
    pub key: Option<KeyType>,
    /// The set's default element timeout.
    pub timeout: Option<Duration>,
}

// ---------------------------------------------------------------------------
// Message building

/// A growing buffer of netlink messages.
#[derive(Default)]
struct MsgBuf {
    buf: Vec<u8>,
}

impl MsgBuf {
    /// Start a message (`nlmsghdr` + `nfgenmsg`); returns its offset.
    fn begin(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in end()
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        self.buf.push(family);
        self.buf.push(sys::NFNETLINK_V0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> Result<()> {
        let len = u16::try_from(4 + data.len())
            .map_err(|_| NftError::Invalid(format!("attribute {ty} too long")))?;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    /// A NUL-terminated name (table/set).
    fn attr_name(&mut self, ty: u16, name: &str) -> Result<()> {
        check_name(name)?;
        let mut v = Vec::with_capacity(name.len() + 1);
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    fn attr_u32(&mut self, ty: u16, v: u32) -> Result<()> {
        self.attr(ty, &v.to_be_bytes())
    }

    fn attr_u64(&mut self, ty: u16, v: u64) -> Result<()> {
        self.attr(ty, &v.to_be_bytes())
    }

    fn nest_start(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | sys::NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn nest_end(&mut self, start: usize) -> Result<()> {
        let len = u16::try_from(self.buf.len() - start)
            .map_err(|_| NftError::Invalid("nested attribute over 64 KiB".into()))?;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        Ok(())
    }

    fn len(&self) -> usize {
        self.buf.len()
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
        return Err(NftError::Invalid(format!("bad table/set name {name:?}")));
    }
    Ok(())
}

fn millis(d: Duration) -> Result<u64> {
    u64::try_from(d.as_millis()).map_err(|_| NftError::Invalid(format!("duration {d:?} too large")))
}

/// Key bytes of an `addr . proto . port` element, fields padded to 4 bytes.
fn port_key(addr: IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// Network address and (exclusive) end of a CIDR; `end` is `None` when the
/// range reaches the top of the address space.
fn cidr_bounds(addr: IpAddr, prefix_len: u8) -> Result<(IpAddr, Option<IpAddr>)> {
    match addr {
        IpAddr::V4(a) => {
            if prefix_len > 32 {
                return Err(NftError::Invalid(format!("prefix /{prefix_len} for {a}")));
            }
            let host = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let net = u32::from(a) & !host;
            let end = net.checked_add(host).and_then(|b| b.checked_add(1));
            Ok((
                Ipv4Addr::from(net).into(),
                end.map(|e| Ipv4Addr::from(e).into()),
            ))
        }
        IpAddr::V6(a) => {
            if prefix_len > 128 {
                return Err(NftError::Invalid(format!("prefix /{prefix_len} for {a}")));
            }
            let host = u128::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let net = u128::from(a) & !host;
            let end = net.checked_add(host).and_then(|b| b.checked_add(1));
            Ok((
                Ipv6Addr::from(net).into(),
                end.map(|e| Ipv6Addr::from(e).into()),
            ))
        }
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Append one `NFTA_LIST_ELEM`.
fn put_elem(
    b: &mut MsgBuf,
    (key, key_end): (&[u8], Option<&[u8]>),
    flags: u32,
    timeout: Option<Duration>,
    expires: Option<Duration>,
) -> Result<()> {
    let el = b.nest_start(sys::NFTA_LIST_ELEM);
    let k = b.nest_start(sys::NFTA_SET_ELEM_KEY);
    b.attr(sys::NFTA_DATA_VALUE, key)?;
    b.nest_end(k)?;
    if let Some(end) = key_end {
        let k = b.nest_start(sys::NFTA_SET_ELEM_KEY_END);
        b.attr(sys::NFTA_DATA_VALUE, end)?;
        b.nest_end(k)?;
    }
    if flags != 0 {
        b.attr_u32(sys::NFTA_SET_ELEM_FLAGS, flags)?;
    }
    for (ty, d) in [
        (sys::NFTA_SET_ELEM_TIMEOUT, timeout),
        (sys::NFTA_SET_ELEM_EXPIRATION, expires),
    ] {
        if let Some(d) = d {
            let ms = millis(d)?;
            if ms == 0 {
                // The kernel reads 0 as "not given": a zero timeout would
                // silently create a permanent element.
                return Err(NftError::Invalid(format!(
                    "timeout/expiration {d:?} is under 1 ms"
                )));
            }
            b.attr_u64(ty, ms)?;
        }
    }
    b.nest_end(el)
}

/// Append the kernel elements for one [`Element`] (two for a CIDR).
/// Appends element messages of type `msg_type` (grouped per set, first-seen order; at most
/// ~60 KiB of elements a message) to a batch.
fn push_elements(
    b: &mut Batch,
    msg_type: u16,
    flags: u16,
    family: Family,
    table: &str,
    elems: &[(&str, Element)],
) -> Result<()> {
    let mut groups: Vec<(&str, Vec<&Element>)> = Vec::new();
    for (set, e) in elems {
        match groups.iter_mut().find(|(s, _)| s == set) {
            Some((_, v)) => v.push(e),
            None => groups.push((set, vec![e])),
        }
    }
    let verb = if msg_type == sys::NFT_MSG_DELSETELEM {
        "delete"
    } else {
        "add"
    };
    for (set, list) in groups {
        let mut it = list.into_iter().peekable();
        while it.peek().is_some() {
            let m = b.msg(msg_type, flags, family, String::new());
            b.buf.attr_name(sys::NFTA_SET_ELEM_LIST_TABLE, table)?;
            b.buf.attr_name(sys::NFTA_SET_ELEM_LIST_SET, set)?;
            let nest = b.buf.nest_start(sys::NFTA_SET_ELEM_LIST_ELEMENTS);
            let mut n = 0usize;
            while let Some(e) = it.next_if(|_| b.buf.len() - nest < MAX_ELEMS_NEST) {
                encode_element(&mut b.buf, e)?;
                n += 1;
            }
            b.buf.nest_end(nest)?;
            b.buf.end(m);
            if let Some(last) = b.msgs.last_mut() {
                last.1 = format!("{verb} {n} element(s) in {family} {table} {set}");
            }
        }
    }
    Ok(())
}

fn encode_element(b: &mut MsgBuf, e: &Element) -> Result<()> {
    match e.key {
        Key::Port { addr, proto, port } => put_elem(
            b,
            (&port_key(addr, proto, port), None),
            0,
            e.timeout,
            e.expires,
        ),
        Key::PortRange {
            first,
            last,
            proto,
            port,
        } => {
            if first.is_ipv4() != last.is_ipv4() {
                return Err(NftError::Invalid(format!(
                    "range {first}-{last} mixes families"
                )));
            }
            put_elem(
                b,
                (
                    &port_key(first, proto, port),
                    Some(&port_key(last, proto, port)),
                ),
                0,
                e.timeout,
                e.expires,
            )
        }
        Key::Addr(addr) => put_elem(b, (&addr_bytes(addr), None), 0, e.timeout, e.expires),
        Key::Net { addr, prefix_len } => {
            let (start, end) = cidr_bounds(addr, prefix_len)?;
            put_elem(b, (&addr_bytes(start), None), 0, e.timeout, e.expires)?;
            match end {
                Some(end) => put_elem(
                    b,
                    (&addr_bytes(end), None),
                    sys::NFT_SET_ELEM_INTERVAL_END,
                    None,
                    None,
                ),
                None => Ok(()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Message parsing

/// One received netlink message.
struct NlMsg<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

fn proto_err(what: &str) -> NftError {
    NftError::Protocol(what.to_string())
}

fn split_msgs(mut buf: &[u8]) -> Result<Vec<NlMsg<'_>>> {
    let mut out = Vec::new();
    while buf.len() >= sys::NLMSG_HDRLEN {
        let len =
            u32::from_ne_bytes(buf[0..4].try_into().map_err(|_| proto_err("header"))?) as usize;
        if len < sys::NLMSG_HDRLEN || len > buf.len() {
            return Err(proto_err("bad nlmsg_len"));
        }
        out.push(NlMsg {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[sys::NLMSG_HDRLEN..len],
        });
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

/// Parsed attributes: `(type without flags, payload)`.
type Attrs<'a> = Vec<(u16, &'a [u8])>;

/// Attributes of a buffer as `(type without flags, payload)`.
fn parse_attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & sys::NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(proto_err("bad attribute length"));
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

fn find<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn be32(v: &[u8]) -> Result<u32> {
    Ok(u32::from_be_bytes(
        v.try_into().map_err(|_| proto_err("u32 attribute"))?,
    ))
}

fn be64(v: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(
        v.try_into().map_err(|_| proto_err("u64 attribute"))?,
    ))
}

fn name(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// `(family, attributes)` of an nf_tables message payload.
fn nft_payload(p: &[u8]) -> Result<(u8, Attrs<'_>)> {
    if p.len() < 4 {
        return Err(proto_err("short nfgenmsg"));
    }
    Ok((p[0], parse_attrs(&p[4..])?))
}

/// An `NLMSG_ERROR`: `(errno >= 0, seq of the request, ext-ack message)`.
fn parse_error(m: &NlMsg<'_>) -> Result<(i32, u32, Option<String>)> {
    let p = m.payload;
    if p.len() < 4 + sys::NLMSG_HDRLEN {
        return Err(proto_err("short NLMSG_ERROR"));
    }
    let errno = -i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    let orig_len = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
    let orig_seq = u32::from_ne_bytes([p[12], p[13], p[14], p[15]]);
    let mut msg = None;
    if m.flags & sys::NLM_F_ACK_TLVS != 0 {
        let off = if m.flags & sys::NLM_F_CAPPED != 0 {
            4 + sys::NLMSG_HDRLEN
        } else {
            4 + orig_len.next_multiple_of(4)
        };
        if let Some(tlvs) = p.get(off..) {
            msg = parse_attrs(tlvs)
                .ok()
                .and_then(|a| find(&a, sys::NLMSGERR_ATTR_MSG).map(name));
        }
    }
    Ok((errno, orig_seq, msg))
}

fn decode_key(k: &[u8]) -> ListedKey {
    let v4 = |b: &[u8]| IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default());
    let v6 = |b: &[u8]| IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default());
    match k.len() {
        4 => ListedKey::Addr(v4(k)),
        16 => ListedKey::Addr(v6(k)),
        12 => ListedKey::Port {
            addr: v4(&k[0..4]),
            proto: k[4],
            port: u16::from_be_bytes([k[8], k[9]]),
        },
        24 => ListedKey::Port {
            addr: v6(&k[0..16]),
            proto: k[16],
            port: u16::from_be_bytes([k[20], k[21]]),
        },
        _ => ListedKey::Raw(k.to_vec()),
    }
}

fn parse_set_elems(attrs: &[(u16, &[u8])], out: &mut Vec<ListedElement>) -> Result<()> {
    let Some(list) = find(attrs, sys::NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Ok(());
    };
    for (ty, el) in parse_attrs(list)? {
        if ty != sys::NFTA_LIST_ELEM {
            continue;
        }
        let ea = parse_attrs(el)?;
        let key = find(&ea, sys::NFTA_SET_ELEM_KEY)
            .map(parse_attrs)
            .transpose()?
            .and_then(|ka| find(&ka, sys::NFTA_DATA_VALUE).map(decode_key))
            .ok_or_else(|| proto_err("set element without key"))?;
        let key_end = find(&ea, sys::NFTA_SET_ELEM_KEY_END)
            .map(parse_attrs)
            .transpose()?
            .and_then(|ka| find(&ka, sys::NFTA_DATA_VALUE).map(decode_key));
        let flags = find(&ea, sys::NFTA_SET_ELEM_FLAGS)
            .map(be32)
            .transpose()?
            .unwrap_or(0);
        let ms = |ty| -> Result<Option<Duration>> {
            Ok(find(&ea, ty)
                .map(be64)
                .transpose()?
                .map(Duration::from_millis))
        };
        out.push(ListedElement {
            key,
            interval_end: flags & sys::NFT_SET_ELEM_INTERVAL_END != 0,
            key_end,
            timeout: ms(sys::NFTA_SET_ELEM_TIMEOUT)?,
            expires: ms(sys::NFTA_SET_ELEM_EXPIRATION)?,
        });
    }
    Ok(())
}

fn nft_type(msg: u16) -> u16 {
    (sys::NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn io_timeout(sock: &Socket, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(sock, libc::SO_RCVTIMEO, &tv)
}

fn setsockopt<T>(sock: &Socket, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live T of the size we pass; the fd is open.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_int(sock: &Socket, opt: libc::c_int) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes; the fd is open.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v.max(0) as usize)
    }
}

/// Receive one datagram into `rx` (cleared first); errors if it was truncated.
fn recv_one(sock: &Socket, rx: &mut Vec<u8>, flags: libc::c_int) -> io::Result<usize> {
    rx.clear();
    let n = sock.recv(rx, flags | libc::MSG_TRUNC)?;
    if n > rx.len() {
        return Err(io::Error::other(format!(
            "netlink datagram of {n} bytes truncated"
        )));
    }
    Ok(n)
}

/// Ask for a big socket buffer: `*_FORCE` (CAP_NET_ADMIN) first, then plain.
fn grow_buf(sock: &Socket, force: libc::c_int, plain: libc::c_int, want: usize) {
    let v = want as libc::c_int;
    if setsockopt(sock, force, &v).is_err() {
        let _ = setsockopt(sock, plain, &v);
    }
}

// ---------------------------------------------------------------------------
// Nft

/// A batch under construction.
struct Batch {
    buf: MsgBuf,
    begin_seq: u32,
    /// `(seq, description)` of each inner message.
    msgs: Vec<(u32, String)>,
    next_seq: u32,
}

impl Batch {
    fn msg(&mut self, ty: u16, flags: u16, family: Family, what: String) -> usize {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.msgs.push((seq, what));
        self.buf.begin(
            nft_type(ty),
            sys::NLM_F_REQUEST | sys::NLM_F_ACK | flags,
            seq,
            family.raw(),
            0,
        )
    }
}

/// An nf_tables netlink socket for requests and batches.
pub struct Nft {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
    max_batch: usize,
}

impl Nft {
    /// Open and bind a `NETLINK_NETFILTER` socket in the caller's network namespace.
    pub fn open() -> io::Result<Nft> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        // Errors echo only the failing message's header, not its (maybe 60 KiB) payload.
        sock.set_cap_ack(true)?;
        // Extended ack: the kernel may explain an error in words.
        let _ = sock.set_ext_ack(true);
        io_timeout(&sock, RECV_TIMEOUT)?;
        grow_buf(&sock, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, WANT_SNDBUF);
        // The kernel reports a doubled value; netlink refuses len > sndbuf - 32.
        let max_batch = getsockopt_int(&sock, libc::SO_SNDBUF)?.saturating_sub(64);
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Nft {
            sock,
            seq,
            rx: Vec::with_capacity(RECV_BUF),
            max_batch,
        })
    }

    /// Largest batch, in bytes, that one send can carry (from `SO_SNDBUF`).
    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn batch(&mut self) -> Batch {
        let begin_seq = self.next_seq();
        let mut buf = MsgBuf::default();
        let b = buf.begin(
            sys::NFNL_MSG_BATCH_BEGIN,
            sys::NLM_F_REQUEST,
            begin_seq,
            0,
            sys::NFNL_SUBSYS_NFTABLES,
        );
        buf.end(b);
        Batch {
            buf,
            begin_seq,
            msgs: Vec::new(),
            next_seq: begin_seq.wrapping_add(1),
        }
    }

    /// Close the batch, send it in one datagram and collect one answer per
    /// inner message. `Ok` means the kernel committed all of it.
    fn commit(&mut self, mut batch: Batch) -> Result<()> {
        if batch.msgs.is_empty() {
            return Ok(());
        }
        let end_seq = batch.next_seq;
        let e = batch.buf.begin(
            sys::NFNL_MSG_BATCH_END,
            sys::NLM_F_REQUEST,
            end_seq,
            0,
            sys::NFNL_SUBSYS_NFTABLES,
        );
        batch.buf.end(e);
        self.seq = end_seq;
        if batch.buf.len() > self.max_batch {
            return Err(NftError::Invalid(format!(
                "batch of {} bytes exceeds the socket send buffer ({} bytes); split it",
                batch.buf.len(),
                self.max_batch
            )));
        }
        let sent = self.sock.send(&batch.buf.buf, 0)?;
        if sent != batch.buf.len() {
            return Err(proto_err("short send"));
        }

        let mut pending: Vec<u32> = batch.msgs.iter().map(|(s, _)| *s).collect();
        let mut errors = Vec::new();
        // The kernel handles the batch inside send(), so the answers are queued
        // already; after a batch-level error it may not answer the rest at all.
        let mut dontwait = false;
        while !pending.is_empty() {
            let flags = if dontwait { libc::MSG_DONTWAIT } else { 0 };
            match recv_one(&self.sock, &mut self.rx, flags) {
                Ok(_) => {}
                Err(e) if dontwait && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
            for m in split_msgs(&self.rx)? {
                if m.ty != sys::NLMSG_ERROR {
                    continue;
                }
                let (errno, seq, message) = parse_error(&m)?;
                if seq == batch.begin_seq || seq == end_seq {
                    if errno != 0 {
                        errors.push(MsgError {
                            what: "batch/commit".into(),
                            errno,
                            message,
                        });
                        dontwait = true;
                    }
                    continue;
                }
                let Some(pos) = pending.iter().position(|&s| s == seq) else {
                    continue; // stale answer of an earlier request
                };
                pending.swap_remove(pos);
                if errno != 0 {
                    let what = batch
                        .msgs
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map(|(_, w)| w.clone())
                        .unwrap_or_default();
                    errors.push(MsgError {
                        what,
                        errno,
                        message,
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(NftError::Batch(errors));
        }
        if !pending.is_empty() {
            return Err(NftError::Protocol(format!(
                "{} message(s) of the batch never acknowledged",
                pending.len()
            )));
        }
        Ok(())
    }

    /// Create (if missing) a table and its sets, in one batch. Existing objects
    /// with the same definition are left alone (no `NLM_F_EXCL`); a set that
    /// exists with another key type or flags makes the batch fail with `EEXIST`.
    pub fn create_table_and_sets(
        &mut self,
        family: Family,
        table: &str,
        sets: &[SetSpec],
    ) -> Result<()> {
        let mut b = self.batch();
        let m = b.msg(
            sys::NFT_MSG_NEWTABLE,
            sys::NLM_F_CREATE,
            family,
            format!("create table {family} {table}"),
        );
        b.buf.attr_name(sys::NFTA_TABLE_NAME, table)?;
        b.buf.end(m);
        for (i, s) in sets.iter().enumerate() {
            let m = b.msg(
                sys::NFT_MSG_NEWSET,
                sys::NLM_F_CREATE,
                family,
                format!("create set {family} {table} {}", s.name),
            );
            b.buf.attr_name(sys::NFTA_SET_TABLE, table)?;
            b.buf.attr_name(sys::NFTA_SET_NAME, &s.name)?;
            // Concatenation + intervals means the pipapo backend, which needs
            // NFT_SET_CONCAT and the field lengths; the kernel refuses
            // NFTA_SET_DESC_CONCAT (EINVAL) on any other set.
            let pipapo = s.key.is_concat() && s.flags.contains(SetFlags::INTERVAL);
            let flags = if pipapo {
                s.flags | SetFlags::CONCAT
            } else {
                s.flags
            };
            b.buf.attr_u32(sys::NFTA_SET_FLAGS, flags.0)?;
            b.buf.attr_u32(sys::NFTA_SET_KEY_TYPE, s.key.type_id())?;
            b.buf.attr_u32(sys::NFTA_SET_KEY_LEN, s.key.key_len())?;
            b.buf.attr_u32(sys::NFTA_SET_ID, i as u32 + 1)?;
            if pipapo {
                let d = b.buf.nest_start(sys::NFTA_SET_DESC);
                let c = b.buf.nest_start(sys::NFTA_SET_DESC_CONCAT);
                for len in s.key.field_lens() {
                    let f = b.buf.nest_start(sys::NFTA_LIST_ELEM);
                    b.buf.attr_u32(sys::NFTA_SET_FIELD_LEN, *len)?;
                    b.buf.nest_end(f)?;
                }
                b.buf.nest_end(c)?;
                b.buf.nest_end(d)?;
            }
            b.buf.end(m);
        }
        self.commit(b)
    }

    /// Add (or refresh) elements in one atomic batch and wait for the kernel's
    /// verdict. Elements may target several sets of `table`; each message
    /// carries at most ~60 KiB of elements, so big lists span several messages
    /// of the same batch. Existing elements are not an error: on kernels with
    /// element timeout update (6.10+) their timeout/expiration are reset to the
    /// values given.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        elems: &[(&str, Element)],
    ) -> Result<()> {
        self.add_elements_inner(family, table, elems, false)
    }

    /// Like [`Nft::add_elements`] but with `NLM_F_EXCL`: an element that already
    /// exists fails the whole batch with `EEXIST`.
    pub fn create_elements(
        &mut self,
        family: Family,
        table: &str,
        elems: &[(&str, Element)],
    ) -> Result<()> {
        self.add_elements_inner(family, table, elems, true)
    }

    fn add_elements_inner(
        &mut self,
        family: Family,
        table: &str,
        elems: &[(&str, Element)],
        excl: bool,
    ) -> Result<()> {
        let flags = sys::NLM_F_CREATE | if excl { sys::NLM_F_EXCL } else { 0 };
        let mut b = self.batch();
        push_elements(&mut b, sys::NFT_MSG_NEWSETELEM, flags, family, table, elems)?;
        self.commit(b)
    }

    /// Refresh for kernels that cannot update an element's timeout in place (before 6.10):
    /// deletes `replace` and adds it again with its new timeout, and adds `add`, all in one
    /// atomic batch, so the element is never absent. A `replace` element that is not in the
    /// set fails the batch with `ENOENT`.
    pub fn replace_elements(
        &mut self,
        family: Family,
        table: &str,
        replace: &[(&str, Element)],
        add: &[(&str, Element)],
    ) -> Result<()> {
        let keys: Vec<(&str, Element)> = replace
            .iter()
            .map(|(set, e)| {
                (
                    *set,
                    Element {
                        key: e.key,
                        timeout: None,
                        expires: None,
                    },
                )
            })
            .collect();
        let mut b = self.batch();
        push_elements(&mut b, sys::NFT_MSG_DELSETELEM, 0, family, table, &keys)?;
        for list in [replace, add] {
            push_elements(
                &mut b,
                sys::NFT_MSG_NEWSETELEM,
                sys::NLM_F_CREATE,
                family,
                table,
                list,
            )?;
        }
        self.commit(b)
    }

    /// Whether this kernel updates the timeout of an element that is added again (6.10+).
    /// Probed in a scratch table that is removed afterwards: add an element with a 60 s
    /// timeout, add it again with 3,600 s, and read back which expiry the kernel kept.
    pub fn probe_timeout_update(&mut self) -> Result<bool> {
        let table = format!("pinhole_probe_{}", std::process::id());
        let spec = SetSpec::new("probe", KeyType::V4Net).with_flags(SetFlags::TIMEOUT);
        self.create_table_and_sets(Family::Inet, &table, &[spec])?;
        let addr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        let elem = |secs| Element {
            key: Key::Addr(addr),
            timeout: Some(Duration::from_secs(secs)),
            expires: Some(Duration::from_secs(secs)),
        };
        let result = self
            .add_elements(Family::Inet, &table, &[("probe", elem(60))])
            .and_then(|()| self.add_elements(Family::Inet, &table, &[("probe", elem(3600))]))
            .and_then(|()| self.list_elements(Family::Inet, &table, "probe"));
        let _ = self.delete_table(Family::Inet, &table);
        Ok(result?
            .iter()
            .any(|e| e.expires.is_some_and(|x| x > Duration::from_secs(600))))
    }

    /// Delete a table and everything in it. `Ok(false)` if it did not exist.
    pub fn delete_table(&mut self, family: Family, table: &str) -> Result<bool> {
        let mut b = self.batch();
        let m = b.msg(
            sys::NFT_MSG_DELTABLE,
            0,
            family,
            format!("delete table {family} {table}"),
        );
        b.buf.attr_name(sys::NFTA_TABLE_NAME, table)?;
        b.buf.end(m);
        match self.commit(b) {
            Ok(()) => Ok(true),
            Err(NftError::Batch(e)) if e.len() == 1 && e[0].errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Send one non-batched request and return the nf_tables payloads of the
    /// answer (one message for a get, many for a dump).
    fn request(
        &mut self,
        ty: u16,
        dump: bool,
        family: Family,
        op: &str,
        attrs: &[(u16, &str)],
    ) -> Result<Vec<Vec<u8>>> {
        for attempt in 0.. {
            let seq = self.next_seq();
            let mut b = MsgBuf::default();
            let flags = sys::NLM_F_REQUEST
                | if dump {
                    sys::NLM_F_DUMP
                } else {
                    sys::NLM_F_ACK
                };
            let m = b.begin(nft_type(ty), flags, seq, family.raw(), 0);
            for (t, v) in attrs {
                b.attr_name(*t, v)?;
            }
            b.end(m);
            self.sock.send(&b.buf, 0)?;

            let mut out = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                recv_one(&self.sock, &mut self.rx, 0)?;
                for m in split_msgs(&self.rx)? {
                    if m.seq != seq {
                        continue;
                    }
                    interrupted |= m.flags & sys::NLM_F_DUMP_INTR != 0;
                    match m.ty {
                        sys::NLMSG_ERROR => {
                            let (errno, _, message) = parse_error(&m)?;
                            if errno != 0 {
                                return Err(NftError::Kernel {
                                    op: op.to_string(),
                                    errno,
                                    message,
                                });
                            }
                            break 'recv; // ack closes a get
                        }
                        sys::NLMSG_DONE => break 'recv,
                        sys::NLMSG_NOOP | sys::NLMSG_OVERRUN => {}
                        _ => out.push(m.payload.to_vec()),
                    }
                }
            }
            if !interrupted || attempt >= 3 {
                return if interrupted {
                    Err(NftError::Protocol(format!(
                        "{op}: dump kept being interrupted by ruleset changes"
                    )))
                } else {
                    Ok(out)
                };
            }
        }
        unreachable!("loop returns")
    }

    /// List the elements of a set (`NFT_MSG_GETSETELEM` dump).
    pub fn list_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
    ) -> Result<Vec<ListedElement>> {
        let op = format!("list set {family} {table} {set}");
        let msgs = self.request(
            sys::NFT_MSG_GETSETELEM,
            true,
            family,
            &op,
            &[
                (sys::NFTA_SET_ELEM_LIST_TABLE, table),
                (sys::NFTA_SET_ELEM_LIST_SET, set),
            ],
        )?;
        let mut out = Vec::new();
        for p in &msgs {
            let (_, attrs) = nft_payload(p)?;
            parse_set_elems(&attrs, &mut out)?;
        }
        Ok(out)
    }

    /// Describe a set; `Ok(None)` if the table or the set does not exist.
    pub fn get_set(&mut self, family: Family, table: &str, set: &str) -> Result<Option<SetInfo>> {
        let op = format!("get set {family} {table} {set}");
        let msgs = match self.request(
            sys::NFT_MSG_GETSET,
            false,
            family,
            &op,
            &[(sys::NFTA_SET_TABLE, table), (sys::NFTA_SET_NAME, set)],
        ) {
            Ok(m) => m,
            Err(NftError::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(p) = msgs.first() else {
            return Err(NftError::Protocol(format!("{op}: no answer")));
        };
        let (fam, a) = nft_payload(p)?;
        let u32_of = |ty| -> Result<u32> { Ok(find(&a, ty).map(be32).transpose()?.unwrap_or(0)) };
        let key_type_id = u32_of(sys::NFTA_SET_KEY_TYPE)?;
        let key_len = u32_of(sys::NFTA_SET_KEY_LEN)?;
        Ok(Some(SetInfo {
            family: Family::from_raw(fam),
            table: find(&a, sys::NFTA_SET_TABLE).map(name).unwrap_or_default(),
            name: find(&a, sys::NFTA_SET_NAME).map(name).unwrap_or_default(),
            flags: SetFlags(u32_of(sys::NFTA_SET_FLAGS)?),
            key_type_id,
            key_len,
            key: KeyType::from_kernel(key_type_id, key_len),
            timeout: find(&a, sys::NFTA_SET_TIMEOUT)
                .map(be64)
                .transpose()?
                .map(Duration::from_millis),
        }))
    }

    /// Whether a table exists.
    pub fn table_exists(&mut self, family: Family, table: &str) -> Result<bool> {
        let op = format!("get table {family} {table}");
        match self.request(
            sys::NFT_MSG_GETTABLE,
            false,
            family,
            &op,
            &[(sys::NFTA_TABLE_NAME, table)],
        ) {
            Ok(_) => Ok(true),
            Err(NftError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Monitor

/// A ruleset change seen on the `NFNLGRP_NFTABLES` multicast group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// A table was created.
    NewTable {
        family: Option<Family>,
        table: String,
    },
    /// A table was deleted (also sent for each table by `nft flush ruleset`).
    DelTable {
        family: Option<Family>,
        table: String,
    },
    /// A set was created.
    NewSet {
        family: Option<Family>,
        table: String,
        set: String,
    },
    /// A set was deleted.
    DelSet {
        family: Option<Family>,
        table: String,
        set: String,
    },
    /// Elements were added (`added`) or deleted in a set; `count` in this message.
    Elements {
        added: bool,
        family: Option<Family>,
        table: String,
        set: String,
        count: usize,
    },
    /// End of a committed transaction: new generation id and who made it.
    NewGen {
        genid: u32,
        pid: Option<u32>,
        process: Option<String>,
    },
    /// Any other nf_tables message (chains, rules, objects, flowtables...).
    Other { msg_type: u16 },
    /// The socket's receive buffer overflowed (`ENOBUFS`): events were lost,
    /// so re-check the ruleset.
    Overrun,
}

/// Subscription to nf_tables change notifications in the caller's netns.
///
/// Note: it also receives the notifications of our own writes, including one
/// `Elements` event per element message, and while any listener exists the
/// kernel spends time building those notifications.
pub struct Monitor {
    sock: Socket,
    rx: Vec<u8>,
    pending: std::collections::VecDeque<MonitorEvent>,
}

impl Monitor {
    /// Open a socket and join `NFNLGRP_NFTABLES`.
    pub fn open() -> io::Result<Monitor> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind(&SocketAddr::new(0, 0))?;
        sock.add_membership(sys::NFNLGRP_NFTABLES)?;
        grow_buf(&sock, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 8 << 20);
        Ok(Monitor {
            sock,
            rx: Vec::with_capacity(RECV_BUF),
            pending: Default::default(),
        })
    }

    /// Make [`Monitor::next_event`] return `Ok(None)` after `timeout` without events.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        io_timeout(&self.sock, timeout)
    }

    /// Next event; blocks (up to the read timeout, then `Ok(None)`).
    pub fn next_event(&mut self) -> Result<Option<MonitorEvent>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            match recv_one(&self.sock, &mut self.rx, 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(Some(MonitorEvent::Overrun));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            for m in split_msgs(&self.rx)? {
                if m.ty >> 8 != sys::NFNL_SUBSYS_NFTABLES {
                    continue;
                }
                let ev = decode_event(m.ty & 0xff, m.payload)?;
                self.pending.push_back(ev);
            }
        }
    }
}

impl AsFd for Monitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn decode_event(msg: u16, payload: &[u8]) -> Result<MonitorEvent> {
    let (fam, a) = nft_payload(payload)?;
    let family = Family::from_raw(fam);
    let s = |ty| find(&a, ty).map(name).unwrap_or_default();
    Ok(match msg {
        sys::NFT_MSG_NEWTABLE => MonitorEvent::NewTable {
            family,
            table: s(sys::NFTA_TABLE_NAME),
        },
        sys::NFT_MSG_DELTABLE => MonitorEvent::DelTable {
            family,
            table: s(sys::NFTA_TABLE_NAME),
        },
        sys::NFT_MSG_NEWSET => MonitorEvent::NewSet {
            family,
            table: s(sys::NFTA_SET_TABLE),
            set: s(sys::NFTA_SET_NAME),
        },
        sys::NFT_MSG_DELSET => MonitorEvent::DelSet {
            family,
            table: s(sys::NFTA_SET_TABLE),
            set: s(sys::NFTA_SET_NAME),
        },
        sys::NFT_MSG_NEWSETELEM | sys::NFT_MSG_DELSETELEM => {
            let count = match find(&a, sys::NFTA_SET_ELEM_LIST_ELEMENTS) {
                Some(l) => parse_attrs(l)?.len(),
                None => 0,
            };
            MonitorEvent::Elements {
                added: msg == sys::NFT_MSG_NEWSETELEM,
                family,
                table: s(sys::NFTA_SET_ELEM_LIST_TABLE),
                set: s(sys::NFTA_SET_ELEM_LIST_SET),
                count,
            }
        }
        sys::NFT_MSG_NEWGEN => MonitorEvent::NewGen {
            genid: find(&a, sys::NFTA_GEN_ID)
                .map(be32)
                .transpose()?
                .unwrap_or(0),
            pid: find(&a, sys::NFTA_GEN_PROC_PID).map(be32).transpose()?,
            process: find(&a, sys::NFTA_GEN_PROC_NAME).map(name),
        },
        other => MonitorEvent::Other { msg_type: other },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_match_nft() {
        // Values `nft --debug=netlink` sends for these declarations.
        assert_eq!(KeyType::V4Port.type_id(), 0x730d);
        assert_eq!(KeyType::V4Port.key_len(), 12);
        assert_eq!(KeyType::V6Port.type_id(), (8 << 12) | (12 << 6) | 13);
        assert_eq!(KeyType::V6Port.key_len(), 24);
        assert_eq!(KeyType::V4Net.type_id(), 7);
        assert_eq!(KeyType::from_kernel(0x730d, 12), Some(KeyType::V4Port));
        assert_eq!(KeyType::from_kernel(8, 16), Some(KeyType::V6Net));
    }

    #[test]
    fn port_key_layout() {
        let k = port_key("1.2.3.4".parse().unwrap(), 6, 443);
        assert_eq!(k, [1, 2, 3, 4, 6, 0, 0, 0, 0x01, 0xbb, 0, 0]);
        assert_eq!(
            decode_key(&k),
            ListedKey::Port {
                addr: "1.2.3.4".parse().unwrap(),
                proto: 6,
                port: 443
            }
        );
    }

    #[test]
    fn cidr_bounds_and_back() {
        let (s, e) = cidr_bounds("17.1.2.3".parse().unwrap(), 8).unwrap();
        assert_eq!(
            (s, e),
            (
                "17.0.0.0".parse().unwrap(),
                Some("18.0.0.0".parse().unwrap())
            )
        );
        let (_, e) = cidr_bounds("224.0.0.0".parse().unwrap(), 3).unwrap();
        assert_eq!(e, None);
        let (s, e) = cidr_bounds("::".parse().unwrap(), 0).unwrap();
        assert_eq!((s, e), ("::".parse().unwrap(), None));
        assert!(cidr_bounds("1.2.3.4".parse().unwrap(), 33).is_err());
        let i = Interval {
            start: "17.0.0.0".parse().unwrap(),
            end: Some("18.0.0.0".parse().unwrap()),
        };
        assert_eq!(i.as_cidr(), Some(("17.0.0.0".parse().unwrap(), 8)));
        let i = Interval {
            start: "224.0.0.0".parse().unwrap(),
            end: None,
        };
        assert_eq!(i.as_cidr(), Some(("224.0.0.0".parse().unwrap(), 3)));
        let i = Interval {
            start: "ff00::".parse().unwrap(),
            end: None,
        };
        assert_eq!(i.as_cidr(), Some(("ff00::".parse().unwrap(), 8)));
    }

    #[test]
    fn element_roundtrip_through_attrs() {
        let mut b = MsgBuf::default();
        let n = b.nest_start(sys::NFTA_SET_ELEM_LIST_ELEMENTS);
        let e = Element {
            key: Key::Port {
                addr: "2001:db8::1".parse().unwrap(),
                proto: 17,
                port: 53,
            },
            timeout: Some(Duration::from_secs(30)),
            expires: Some(Duration::from_secs(5)),
        };
        encode_element(&mut b, &e).unwrap();
        encode_element(&mut b, &Element::net("10.0.0.0".parse().unwrap(), 8)).unwrap();
        b.nest_end(n).unwrap();
        let attrs = parse_attrs(&b.buf).unwrap();
        let mut out = Vec::new();
        parse_set_elems(&attrs, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].timeout, Some(Duration::from_secs(30)));
        assert_eq!(out[0].expires, Some(Duration::from_secs(5)));
        assert!(!out[1].interval_end && out[2].interval_end);
        assert_eq!(
            intervals(&out)[0].as_cidr(),
            Some(("10.0.0.0".parse().unwrap(), 8))
        );
    }
}
