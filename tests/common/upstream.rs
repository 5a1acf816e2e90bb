//! In-process DNS upstream servers for integration tests.
//!
//! * [`Upstream`]: a real authoritative DNS server (hickory-server `Server` with a custom
//!   `RequestHandler`) on 127.0.0.1, UDP and TCP on the same random port, serving the fixed
//!   test zones `example.test.`, `cdn.test.` and `edge.test.` (see [`Upstream`] for the data).
//! * [`BlackHole`]: UDP + TCP on 127.0.0.1 (same random port) that reads everything and never
//!   answers.
//! * [`query_udp`] / [`query_tcp`] / [`build_query`]: tiny raw clients for talking to either the
//!   upstream or the forwarder under test.

use std::collections::HashMap;
use std::future::Future;
use std::iter;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::svcb::{Alpn, IpHint, SVCB, SvcParamKey, SvcParamValue};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, HTTPS, SOA, TXT};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// UDP payload size the upstream advertises in its OPT record, and the largest UDP response it
/// will ever send (the effective UDP limit is `clamp(client_edns_payload, 512, 1232)`, or 512
/// without EDNS).
pub const UPSTREAM_EDNS_PAYLOAD: u16 = 1232;

/// Delay before `slow.example.test.` is answered.
pub const SLOW_DELAY: Duration = Duration::from_millis(300);

/// Idle timeout for TCP connections to the upstream.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A real DNS server on 127.0.0.1 (UDP and TCP on the same random port).
///
/// Authoritative (AA=1) for `example.test.`, `cdn.test.`, `edge.test.`; anything else is
/// REFUSED. Data (TTL in seconds):
///
/// | name | data |
/// |---|---|
/// | `www.example.test.` | CNAME `www.cdn.test.` 300 |
/// | `www.cdn.test.` | CNAME `e1.edge.test.` 120 |
/// | `e1.edge.test.` | A 192.0.2.10, A 192.0.2.11 (60); AAAA 2001:db8::10 (60) |
/// | `a.example.test.` | A 192.0.2.1 3600 |
/// | `short.example.test.` | A 192.0.2.2 2 |
/// | `zero.example.test.` | A 192.0.2.3 0 |
/// | `nodata.example.test.` | TXT "hello" 300 (A → NOERROR/NODATA + SOA) |
/// | `big.example.test.` | 30 × TXT (100 chars each, ~3.4 KB) 300; 60 × A 198.51.100.1..=60 300 |
/// | `huge.example.test.` | 100 × A 198.51.100.1..=100 300 (~1.6 KB: > 1232, TC over UDP even with EDNS) |
/// | `servfail.example.test.` | SERVFAIL (any type) |
/// | `refused.example.test.` | REFUSED (any type) |
/// | `slow.example.test.` | A 192.0.2.99 300, answered after [`SLOW_DELAY`] (300 ms) |
/// | `https.example.test.` | HTTPS `1 . alpn=h2 ipv4hint=192.0.2.50 ipv6hint=2001:db8::50` 300; A 192.0.2.50 300 |
/// | zone apexes | SOA `ns.<zone> hostmaster.<zone> 1 3600 600 86400 300`, record TTL 600 |
///
/// Non-existent names → NXDOMAIN with the zone SOA (TTL 600, MINIMUM 300) in authority.
/// CNAMEs are chased across the three zones; the whole chain is in the answer section.
///
/// Note on sizes: `big.example.test. A` (60 A records) encodes to ~1 KB, i.e. it is truncated
/// over UDP *without* EDNS (512) but fits in 1232 with EDNS. `big TXT` and `huge A` do not fit
/// 1232. A truncated response has TC=1 and empty answer/authority sections (OPT kept if the
/// query had EDNS).
///
/// Dropping the `Upstream` aborts the server tasks (sockets close shortly afterwards).
pub struct Upstream {
    pub addr: SocketAddr,
    /// DNS over TLS and DNS over HTTPS (`/dns-query`), with `start_encrypted`.
    pub dot: Option<SocketAddr>,
    pub doh: Option<SocketAddr>,
    stats: Arc<Stats>,
    server_task: JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    total: AtomicUsize,
    udp: AtomicUsize,
    tcp: AtomicUsize,
    tls: AtomicUsize,
    https: AtomicUsize,
    per_question: Mutex<HashMap<(String, RecordType), usize>>,
}

impl Upstream {
    /// Starts UDP and TCP on 127.0.0.1 at one random free port (same port for both).
    /// Returns once both sockets are bound (ready to receive).
    pub async fn start() -> Upstream {
        Self::start_with(None).await
    }

    /// Also serves DNS over TLS and DNS over HTTPS (HTTP/2, `/dns-query`) on 127.0.0.1 with
    /// this certificate: hickory-server's own encrypted listeners, independent of pinhole's.
    pub async fn start_encrypted(cert: &super::certs::ServerCert) -> Upstream {
        Self::start_with(Some(cert)).await
    }

    async fn start_with(tls: Option<&super::certs::ServerCert>) -> Upstream {
        let (udp, tcp) = bind_pair().await;
        let addr = udp
            .local_addr()
            .expect("upstream: UDP socket has no local address");

        let stats = Arc::new(Stats::default());
        let handler = Handler {
            zones: Zones::build(),
            stats: Arc::clone(&stats),
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64);
        let (mut dot, mut doh) = (None, None);
        if let Some(cert) = tls {
            let config = |alpn: &[u8]| {
                use rustls::pki_types::pem::PemObject;
                let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
                    rustls::pki_types::CertificateDer::pem_file_iter(&cert.cert)
                        .expect("cert file")
                        .map(|c| c.expect("cert"))
                        .collect();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).expect("key");
                let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config");
                c.alpn_protocols = vec![alpn.to_vec()];
                Arc::new(c)
            };
            let dot_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind DoT");
            let doh_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind DoH");
            dot = dot_listener.local_addr().ok();
            doh = doh_listener.local_addr().ok();
            server
                .register_tls_listener_with_tls_config(
                    dot_listener,
                    TCP_IDLE_TIMEOUT,
                    config(b"dot"),
                )
                .expect("DoT listener");
            server
                .register_https_listener_with_tls_config(
                    doh_listener,
                    TCP_IDLE_TIMEOUT,
                    config(b"h2"),
                    None,
                    "/dns-query".into(),
                )
                .expect("DoH listener");
        }
        let server_task = tokio::spawn(async move {
            // Runs until aborted (Drop); dropping `server` aborts its socket/connection tasks.
            let _ = server.block_until_done().await;
        });

        Upstream {
            addr,
            dot,
            doh,
            stats,
            server_task,
        }
    }

    /// Number of queries received so far (UDP + TCP). Counted when the query reaches the
    /// handler (before the `slow` delay), including SERVFAIL/REFUSED ones; messages that do not
    /// parse or do not have exactly one question are not counted.
    pub fn queries(&self) -> usize {
        self.stats.total.load(Ordering::SeqCst)
    }

    /// Queries received over UDP.
    pub fn udp_queries(&self) -> usize {
        self.stats.udp.load(Ordering::SeqCst)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.stats.tcp.load(Ordering::SeqCst)
    }

    /// Queries received over DNS over TLS.
    pub fn tls_queries(&self) -> usize {
        self.stats.tls.load(Ordering::SeqCst)
    }

    /// Queries received over DNS over HTTPS.
    pub fn https_queries(&self) -> usize {
        self.stats.https.load(Ordering::SeqCst)
    }

    /// Number of queries received for (name, type). `name` is case-insensitive and the
    /// trailing dot is optional: `queries_for("a.example.test.", RecordType::A)`.
    pub fn queries_for(&self, name: &str, rtype: RecordType) -> usize {
        let key = (normalize_name(name), rtype);
        let map = self
            .stats
            .per_question
            .lock()
            .expect("upstream: stats mutex poisoned");
        map.get(&key).copied().unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server_task.abort();
    }
}

/// A server bound on 127.0.0.1 (UDP and TCP, same random port) that accepts/reads everything
/// and never answers. TCP connections stay open (and are read and discarded) until drop.
pub struct BlackHole {
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let (udp, tcp) = bind_pair().await;
        let addr = udp
            .local_addr()
            .expect("blackhole: UDP socket has no local address");
        let received = Arc::new(AtomicUsize::new(0));

        let udp_received = Arc::clone(&received);
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                match udp.recv_from(&mut buf).await {
                    Ok(_) => {
                        udp_received.fetch_add(1, Ordering::SeqCst);
                    }
                    // e.g. ICMP port unreachable surfacing as ECONNREFUSED: keep going
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        });

        let tcp_received = Arc::clone(&received);
        let tcp_task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let counter = Arc::clone(&tcp_received);
                conns.spawn(async move {
                    // count length-prefixed messages (best effort), never write anything
                    let mut len = [0u8; 2];
                    while stream.read_exact(&mut len).await.is_ok() {
                        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut msg).await.is_err() {
                            break;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    // peer closed: keep nothing, just end
                });
                while conns.try_join_next().is_some() {}
            }
        });

        BlackHole {
            addr,
            received,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Number of messages received so far (UDP datagrams + complete TCP messages).
    pub fn queries(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// client helpers
// ---------------------------------------------------------------------------------------------

/// Builds a query message (random id, RD=1, class IN). `edns`: `Some(payload)` adds an OPT
/// record advertising that UDP payload size.
pub fn build_query(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let name = Name::from_ascii(name).expect("build_query: invalid name");
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name, rtype));
    if let Some(payload) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(payload);
        msg.set_edns(opt);
    }
    msg
}

/// Sends `query` over UDP to `server` and waits (at most `timeout`) for the response with the
/// same id. Returns `None` on timeout. Panics on I/O or decode errors.
pub async fn exchange_udp(
    server: SocketAddr,
    query: &Message,
    timeout: Duration,
) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("exchange_udp: bind client socket");
    let bytes = query.to_vec().expect("exchange_udp: encode query");
    sock.send_to(&bytes, server)
        .await
        .expect("exchange_udp: send query");
    let mut buf = vec![0u8; 65535];
    let recv = async {
        loop {
            let (n, from) = sock
                .recv_from(&mut buf)
                .await
                .expect("exchange_udp: recv response");
            if from != server {
                continue;
            }
            let msg = Message::from_vec(&buf[..n]).expect("exchange_udp: decode response");
            if msg.metadata.id == query.metadata.id {
                return msg;
            }
        }
    };
    tokio::time::timeout(timeout, recv).await.ok()
}

/// Sends `query` over TCP (2-byte length prefix) to `server` and reads one response. Returns
/// `None` on timeout (connect + write + read). Panics on I/O or decode errors.
pub async fn exchange_tcp(
    server: SocketAddr,
    query: &Message,
    timeout: Duration,
) -> Option<Message> {
    let bytes = query.to_vec().expect("exchange_tcp: encode query");
    let exchange = async {
        let mut stream = TcpStream::connect(server)
            .await
            .expect("exchange_tcp: connect");
        let len = u16::try_from(bytes.len()).expect("exchange_tcp: query too long");
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream
            .write_all(&framed)
            .await
            .expect("exchange_tcp: write query");
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .expect("exchange_tcp: read length prefix");
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut buf)
            .await
            .expect("exchange_tcp: read response");
        Message::from_vec(&buf).expect("exchange_tcp: decode response")
    };
    tokio::time::timeout(timeout, exchange).await.ok()
}

/// `build_query` + `exchange_udp` with a 2 s timeout; panics if no answer arrives.
pub async fn query_udp(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    edns: Option<u16>,
) -> Message {
    let q = build_query(name, rtype, edns);
    exchange_udp(server, &q, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("query_udp: no response from {server} for {name} {rtype}"))
}

/// `build_query` + `exchange_tcp` with a 2 s timeout; panics if no answer arrives.
pub async fn query_tcp(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    edns: Option<u16>,
) -> Message {
    let q = build_query(name, rtype, edns);
    exchange_tcp(server, &q, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("query_tcp: no response from {server} for {name} {rtype}"))
}

// ---------------------------------------------------------------------------------------------
// internals
// ---------------------------------------------------------------------------------------------

/// Binds UDP on 127.0.0.1:0, then TCP on the same port (retrying with a new port if taken).
async fn bind_pair() -> (UdpSocket, TcpListener) {
    let mut last_err = None;
    for _ in 0..64 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind UDP 127.0.0.1:0");
        let port = udp.local_addr().expect("UDP local_addr").port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("could not bind UDP and TCP on the same port: {last_err:?}");
}

fn normalize_name(name: &str) -> String {
    let mut s = name.to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap_or_else(|e| panic!("invalid name {s:?}: {e}"))
}

/// The static zone data.
struct Zones {
    /// (zone apex, SOA record)
    soas: Vec<(LowerName, Record)>,
    records: HashMap<LowerName, Vec<Record>>,
}

impl Zones {
    fn build() -> Zones {
        let mut zones = Zones {
            soas: Vec::new(),
            records: HashMap::new(),
        };

        for zone in ["example.test.", "cdn.test.", "edge.test."] {
            let soa = Record::from_rdata(
                name(zone),
                600,
                RData::SOA(SOA::new(
                    name(&format!("ns.{zone}")),
                    name(&format!("hostmaster.{zone}")),
                    1,
                    3600,
                    600,
                    86400,
                    300,
                )),
            );
            zones.soas.push((LowerName::from(name(zone)), soa.clone()));
            zones.add(soa);
        }

        let a = |n: &str, ttl: u32, ip: Ipv4Addr| Record::from_rdata(name(n), ttl, RData::A(A(ip)));

        zones.add(Record::from_rdata(
            name("www.example.test."),
            300,
            RData::CNAME(CNAME(name("www.cdn.test."))),
        ));
        zones.add(Record::from_rdata(
            name("www.cdn.test."),
            120,
            RData::CNAME(CNAME(name("e1.edge.test."))),
        ));
        zones.add(a("e1.edge.test.", 60, Ipv4Addr::new(192, 0, 2, 10)));
        zones.add(a("e1.edge.test.", 60, Ipv4Addr::new(192, 0, 2, 11)));
        zones.add(Record::from_rdata(
            name("e1.edge.test."),
            60,
            RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10))),
        ));

        zones.add(a("a.example.test.", 3600, Ipv4Addr::new(192, 0, 2, 1)));
        zones.add(a("short.example.test.", 2, Ipv4Addr::new(192, 0, 2, 2)));
        zones.add(a("zero.example.test.", 0, Ipv4Addr::new(192, 0, 2, 3)));
        zones.add(a("slow.example.test.", 300, Ipv4Addr::new(192, 0, 2, 99)));

        zones.add(Record::from_rdata(
            name("nodata.example.test."),
            300,
            RData::TXT(TXT::new(vec!["hello".to_string()])),
        ));

        for i in 0..30u8 {
            // 100 chars, distinct per record
            let text = format!("{i:02}-{}", "x".repeat(97));
            zones.add(Record::from_rdata(
                name("big.example.test."),
                300,
                RData::TXT(TXT::new(vec![text])),
            ));
        }
        for i in 1..=60u8 {
            zones.add(a("big.example.test.", 300, Ipv4Addr::new(198, 51, 100, i)));
        }
        for i in 1..=100u8 {
            zones.add(a("huge.example.test.", 300, Ipv4Addr::new(198, 51, 100, i)));
        }

        let svcb = SVCB::new(
            1,
            Name::root(),
            vec![
                (
                    SvcParamKey::Alpn,
                    SvcParamValue::Alpn(Alpn(vec!["h2".to_string()])),
                ),
                (
                    SvcParamKey::Ipv4Hint,
                    SvcParamValue::Ipv4Hint(IpHint(vec![A(Ipv4Addr::new(192, 0, 2, 50))])),
                ),
                (
                    SvcParamKey::Ipv6Hint,
                    SvcParamValue::Ipv6Hint(IpHint(vec![AAAA(Ipv6Addr::new(
                        0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50,
                    ))])),
                ),
            ],
        );
        zones.add(Record::from_rdata(
            name("https.example.test."),
            300,
            RData::HTTPS(HTTPS(svcb)),
        ));
        zones.add(a("https.example.test.", 300, Ipv4Addr::new(192, 0, 2, 50)));

        zones
    }

    fn add(&mut self, record: Record) {
        self.records
            .entry(LowerName::from(&record.name))
            .or_default()
            .push(record);
    }

    /// SOA record of the (deepest) zone containing `name`, if we are authoritative for it.
    fn zone_soa(&self, name: &LowerName) -> Option<&Record> {
        self.soas
            .iter()
            .filter(|(apex, _)| apex.zone_of(name))
            .max_by_key(|(apex, _)| apex.num_labels())
            .map(|(_, soa)| soa)
    }

    /// true if some record exists strictly below `name` (empty non-terminal).
    fn has_descendants(&self, name: &LowerName) -> bool {
        self.records
            .keys()
            .any(|owner| owner != name && name.zone_of(owner))
    }

    fn resolve(&self, qname: &LowerName, qtype: RecordType) -> Resolution {
        let mut answers = Vec::new();
        let mut current = qname.clone();
        for _ in 0..16 {
            let Some(soa) = self.zone_soa(&current) else {
                if answers.is_empty() {
                    return Resolution::rcode(ResponseCode::Refused);
                }
                // CNAME pointing outside our zones: return the partial chain.
                return Resolution::answer(ResponseCode::NoError, answers, Vec::new());
            };
            let Some(rrs) = self.records.get(&current) else {
                let rcode = if self.has_descendants(&current) {
                    ResponseCode::NoError
                } else {
                    ResponseCode::NXDomain
                };
                return Resolution::answer(rcode, answers, vec![soa.clone()]);
            };
            let matching: Vec<Record> = rrs
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .cloned()
                .collect();
            if !matching.is_empty() {
                answers.extend(matching);
                return Resolution::answer(ResponseCode::NoError, answers, Vec::new());
            }
            if let Some(cname) = rrs.iter().find(|r| r.record_type() == RecordType::CNAME) {
                let RData::CNAME(target) = &cname.data else {
                    unreachable!("CNAME record without CNAME rdata")
                };
                current = LowerName::from(&target.0);
                answers.push(cname.clone());
                continue;
            }
            // name exists, no data of this type
            return Resolution::answer(ResponseCode::NoError, answers, vec![soa.clone()]);
        }
        // CNAME chain too long / loop
        Resolution::rcode(ResponseCode::ServFail)
    }
}

/// `n<I>.many.example.test.` for I < 65536: A 198.18.(I/256).(I%256) and AAAA 2001:db8:1::I,
/// TTL 300: many distinct names, each with its own addresses (firewall tests).
pub fn many_addr(i: u16) -> (Ipv4Addr, Ipv6Addr) {
    let [hi, lo] = i.to_be_bytes();
    (
        Ipv4Addr::new(198, 18, hi, lo),
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i),
    )
}

fn many(qname: &LowerName, qtype: RecordType) -> Option<Resolution> {
    let text = qname.to_string();
    let i: u16 = text
        .strip_suffix(".many.example.test.")?
        .strip_prefix('n')?
        .parse()
        .ok()?;
    let (v4, v6) = many_addr(i);
    let name = Name::from(qname.clone());
    let answers = match qtype {
        RecordType::A => vec![Record::from_rdata(name, 300, RData::A(A(v4)))],
        RecordType::AAAA => vec![Record::from_rdata(name, 300, RData::AAAA(AAAA(v6)))],
        _ => Vec::new(),
    };
    Some(Resolution::answer(
        ResponseCode::NoError,
        answers,
        Vec::new(),
    ))
}

struct Resolution {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Resolution {
    fn rcode(rcode: ResponseCode) -> Self {
        Resolution {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
        }
    }

    fn answer(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Self {
        Resolution {
            rcode,
            authoritative: true,
            answers,
            authorities,
        }
    }
}

struct Handler {
    zones: Zones,
    stats: Arc<Stats>,
}

impl Handler {
    async fn handle<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let response_edns = request.edns.as_ref().map(|_| {
            let mut edns = Edns::new();
            edns.set_max_payload(UPSTREAM_EDNS_PAYLOAD);
            edns
        });
        let queries: &Queries = &request.queries;

        let resolution = match request.request_info() {
            Err(_) => Resolution::rcode(ResponseCode::FormErr),
            Ok(_) if request.metadata.op_code != OpCode::Query => {
                Resolution::rcode(ResponseCode::NotImp)
            }
            Ok(info) => {
                let qname = info.query.name().clone();
                let qtype = info.query.query_type();
                self.count(&qname, qtype, request.protocol());

                let key = qname.to_string();
                if info.query.query_class() != DNSClass::IN {
                    Resolution::rcode(ResponseCode::Refused)
                } else if key == "servfail.example.test." {
                    Resolution::rcode(ResponseCode::ServFail)
                } else if key == "refused.example.test." {
                    Resolution::rcode(ResponseCode::Refused)
                } else if let Some(r) = many(&qname, qtype) {
                    r
                } else {
                    if key == "slow.example.test." {
                        tokio::time::sleep(SLOW_DELAY).await;
                    }
                    self.zones.resolve(&qname, qtype)
                }
            }
        };

        metadata.response_code = resolution.rcode;
        metadata.authoritative = resolution.authoritative;

        let limit = match request.protocol() {
            Protocol::Udp => match &request.edns {
                Some(edns) => usize::from(edns.max_payload().clamp(512, UPSTREAM_EDNS_PAYLOAD)),
                None => 512,
            },
            _ => usize::from(u16::MAX),
        };
        let full_len = encoded_len(
            queries,
            response_edns.as_ref(),
            metadata,
            &resolution.answers,
            &resolution.authorities,
        );
        let (answers, authorities): (&[Record], &[Record]) = if full_len > limit {
            metadata.truncation = true;
            (&[], &[])
        } else {
            (&resolution.answers, &resolution.authorities)
        };

        let response = MessageResponseBuilder::new(queries, response_edns.as_ref()).build(
            metadata,
            answers.iter(),
            authorities.iter(),
            iter::empty(),
            iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }

    fn count(&self, qname: &LowerName, qtype: RecordType, protocol: Protocol) {
        self.stats.total.fetch_add(1, Ordering::SeqCst);
        match protocol {
            Protocol::Udp => self.stats.udp.fetch_add(1, Ordering::SeqCst),
            Protocol::Tcp => self.stats.tcp.fetch_add(1, Ordering::SeqCst),
            Protocol::Tls => self.stats.tls.fetch_add(1, Ordering::SeqCst),
            Protocol::Https => self.stats.https.fetch_add(1, Ordering::SeqCst),
            _ => self.stats.tcp.fetch_add(1, Ordering::SeqCst),
        };
        let mut map = self
            .stats
            .per_question
            .lock()
            .expect("upstream: stats mutex poisoned");
        *map.entry((normalize_name(&qname.to_string()), qtype))
            .or_default() += 1;
    }
}

/// Size of the response if encoded without any size limit.
fn encoded_len(
    queries: &Queries,
    edns: Option<&Edns>,
    metadata: Metadata,
    answers: &[Record],
    authorities: &[Record],
) -> usize {
    let mut buf = Vec::with_capacity(4096);
    let mut encoder = BinEncoder::new(&mut buf);
    let response = MessageResponseBuilder::new(queries, edns).build(
        metadata,
        answers.iter(),
        authorities.iter(),
        iter::empty(),
        iter::empty(),
    );
    match response.destructive_emit(&mut encoder) {
        Ok(_) => buf.len(),
        Err(_) => usize::MAX,
    }
}

// `RequestHandler` is declared with `#[async_trait]`; this crate has no direct async-trait
// dependency, so the desugared signature is written out by hand.
impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.handle(request, response_handle))
    }
}

/// The A and AAAA addresses among `records`, in order.
pub fn addrs(records: &[Record]) -> Vec<std::net::IpAddr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}
