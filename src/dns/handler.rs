//! The request path, top to bottom: parse → access check → special names → policy → cache →
//! upstream → answer. Every listener (UDP, TCP) calls into this one place.
//!
//! Owns the order of the stages and the answers pinhole writes itself (blocks, special names,
//! errors). It does not own sockets (see `udp`/`tcp`), the cache's storage, the upstream
//! transports, or the policy's matching.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::oneshot;

use crate::cache::{Cache, CacheKey, CacheLimits, Entry};
use crate::config::{BlockAction, Config, FailMode, SpecialConfig};
use crate::dns::special::{Special, SpecialReply};
use crate::dns::wire::{self, Query, QueryError};
use crate::firewall::table::proto_number;
use crate::firewall::{ElemKey, Firewall, Want};
use crate::metrics::Metrics;
use crate::policy::{Action, Policy};
use crate::upstream::{Question, Upstreams};

/// How the query arrived; UDP answers are limited in size, TCP answers are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What `answer_local` did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `out` holds the answer to send.
    Answered,
    /// Nothing is sent (not a query, or unreadable).
    Dropped,
    /// The answer needs an upstream: call `answer_upstream` with the same packet.
    Upstream,
}

/// Settings the request path reads on every query, copied out of the config once.
struct Settings {
    acl: Vec<IpNet>,
    max_udp_payload: u16,
    block_ttl: u32,
    sinkhole4: [u8; 4],
    sinkhole6: [u8; 16],
    extended_errors: bool,
    special: SpecialConfig,
    servfail_ttl: Duration,
    /// RDATA of the SOA pinhole puts in its own negative answers.
    soa_rdata: Vec<u8>,
    /// Largest TTL handed to a client.
    ttl_cap: u32,
    /// Answer even when the set write failed (counted and logged).
    fail_open: bool,
    /// `https_hints = "strip"`: remove address hints from HTTPS/SVCB answers.
    strip_hints: bool,
    /// RDATA of the SVCB records that answer `_dns.resolver.arpa` (DDR), when pinhole serves
    /// DoT or DoH.
    ddr: Option<Arc<[Vec<u8>]>>,
}

/// TTL of DDR answers (seconds).
const DDR_TTL: u32 = 300;

/// Queries waiting for the same upstream answer; the first one asks, the others wait.
type Waiters = Vec<oneshot::Sender<Arc<Entry>>>;

/// The whole request path, shared by every listener.
pub struct Handler {
    policy: Policy,
    cache: Cache,
    upstreams: Upstreams,
    inflight: Mutex<HashMap<Box<[u8]>, Waiters>>,
    settings: Settings,
    /// Set writes for approved names; `None` when `[firewall] mode = "off"`.
    firewall: Option<Arc<Firewall>>,
    /// Zone names, shared into allowlist records.
    zone_names: Vec<Arc<str>>,
    pub metrics: Arc<Metrics>,
}

const EDE_TEXT_DEFAULT: &str = "pinhole: name is not in an approved zone";
const EDE_TEXT_ZONE: &str = "pinhole: name is blocked by a zone";
const EDE_TEXT_ACL: &str = "pinhole: client is not allowed to query";

impl Handler {
    pub fn new(
        config: &Config,
        policy: Policy,
        firewall: Option<Arc<Firewall>>,
        metrics: Arc<Metrics>,
    ) -> Handler {
        let zone_names = policy
            .zones()
            .iter()
            .map(|z| Arc::from(z.name.as_str()))
            .collect();
        // No client may hold an address longer than its set element lives.
        let ttl_cap = match &firewall {
            Some(fw) => fw.lifetimes().ttl_cap().min(config.cache.max_ttl),
            None => config.cache.max_ttl,
        };
        let mut soa_rdata = Vec::new();
        wire::encode_name("pinhole.invalid", &mut soa_rdata);
        wire::encode_name("hostmaster.pinhole.invalid", &mut soa_rdata);
        for v in [1u32, 3600, 600, 86_400, config.policy.block_ttl] {
            soa_rdata.extend_from_slice(&v.to_be_bytes());
        }
        Handler {
            policy,
            cache: Cache::new(
                config.cache.max_entries,
                CacheLimits {
                    max_ttl: config.cache.max_ttl,
                    negative_max_ttl: config.cache.negative_max_ttl,
                    servfail_ttl: config.cache.servfail_ttl,
                },
            ),
            upstreams: Upstreams::new(&config.upstream),
            inflight: Mutex::new(HashMap::new()),
            settings: Settings {
                acl: config.server.allow_clients.clone(),
                max_udp_payload: config.server.max_udp_payload,
                block_ttl: config.policy.block_ttl,
                sinkhole4: config.policy.sinkhole_ipv4.octets(),
                sinkhole6: config.policy.sinkhole_ipv6.octets(),
                extended_errors: config.policy.extended_errors,
                special: config.special.clone(),
                servfail_ttl: Duration::from_secs(u64::from(config.cache.servfail_ttl.max(1))),
                soa_rdata,
                ttl_cap,
                fail_open: config.firewall.on_failure == FailMode::Open,
                strip_hints: config.firewall.https_hints == crate::config::HintPolicy::Strip,
                ddr: None,
            },
            firewall,
            zone_names,
            metrics,
        }
    }

    pub fn firewall(&self) -> Option<&Arc<Firewall>> {
        self.firewall.as_ref()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Everything that can be answered without waiting: errors, access refusals, special
    /// names, policy blocks, and cache hits. Allocation-free on those paths.
    pub fn answer_local(
        &self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Step {
        let m = &*self.metrics;
        Metrics::inc(match transport {
            Transport::Udp => &m.queries_udp_total,
            Transport::Tcp => &m.queries_tcp_total,
        });
        let q = match Query::parse(packet) {
            Ok(q) => q,
            Err(e) => return self.answer_bad_query(packet, e, out),
        };
        // 1. Who may ask.
        if !self.client_allowed(client) {
            Metrics::inc(&m.refused_acl_total);
            self.synthesize(
                &q,
                transport,
                wire::RCODE_REFUSED,
                out,
                Some((wire::EDE_PROHIBITED, EDE_TEXT_ACL)),
            );
            return Step::Answered;
        }
        // 2. What pinhole does not serve: other classes, zone transfers.
        if q.qclass != wire::CLASS_IN || q.qtype == wire::TYPE_AXFR || q.qtype == wire::TYPE_IXFR {
            self.synthesize(
                &q,
                transport,
                wire::RCODE_REFUSED,
                out,
                Some((
                    wire::EDE_NOT_SUPPORTED,
                    "pinhole: only class IN, no zone transfers",
                )),
            );
            return Step::Answered;
        }
        // 3. Special names, answered here and never forwarded.
        if let Some((special, reply)) = Special::classify(q.name(), &self.settings.special) {
            Metrics::inc(&m.special_total);
            let ede = (special == Special::PrivateRelay)
                .then_some((wire::EDE_BLOCKED, special.describe()));
            match reply {
                SpecialReply::Nxdomain => {
                    self.negative(&q, transport, wire::RCODE_NXDOMAIN, out, ede)
                }
                SpecialReply::Nodata => self.negative(&q, transport, wire::RCODE_NOERROR, out, ede),
                SpecialReply::Refuse => {
                    self.synthesize(&q, transport, wire::RCODE_REFUSED, out, ede)
                }
                SpecialReply::Servfail => {
                    self.synthesize(&q, transport, wire::RCODE_SERVFAIL, out, ede)
                }
                SpecialReply::Drop => return Step::Dropped,
                SpecialReply::Ddr => match &self.settings.ddr {
                    Some(records) if q.qtype == wire::TYPE_SVCB => {
                        wire::start_response(out, &q, wire::RCODE_NOERROR, true);
                        for rdata in records.iter() {
                            wire::push_record(
                                out,
                                wire::ANSWER_COUNT,
                                wire::TYPE_SVCB,
                                DDR_TTL,
                                rdata,
                            );
                        }
                        self.finish(&q, transport, out, None);
                    }
                    _ => self.negative(&q, transport, wire::RCODE_NOERROR, out, None),
                },
            }
            return Step::Answered;
        }
        // 4. Policy: the decision is on the name the client asked for.
        let verdict = if q.unmatchable {
            None
        } else {
            Some(self.policy.decide(q.name()))
        };
        let (action, by_zone) = match verdict {
            Some(v) => (v.action, v.target.is_some()),
            None => (Action::Block(self.policy.default_action()), false),
        };
        if let Action::Block(block) = action
            && block != BlockAction::Forward
        {
            Metrics::inc(&m.blocked_total);
            if block == BlockAction::Drop {
                return Step::Dropped;
            }
            tracing::debug!(name = %String::from_utf8_lossy(q.name()), qtype = q.qtype, action = block.as_str(), "blocked");
            let ede = (
                wire::EDE_BLOCKED,
                if by_zone {
                    EDE_TEXT_ZONE
                } else {
                    EDE_TEXT_DEFAULT
                },
            );
            self.block(&q, transport, block, out, ede);
            return Step::Answered;
        }
        // 5. ANY gets the minimal answer of RFC 8482 rather than whatever the upstream holds.
        if q.qtype == wire::TYPE_ANY {
            wire::start_response(out, &q, wire::RCODE_NOERROR, false);
            wire::push_record(
                out,
                wire::ANSWER_COUNT,
                wire::TYPE_HINFO,
                self.settings.block_ttl,
                b"\x07RFC8482\x00",
            );
            self.finish(&q, transport, out, None);
            return Step::Answered;
        }
        // 6. The cache. An approved answer leaves only when its addresses are in the sets;
        //    if some element would expire too early, the slow path writes it first.
        let key = self.cache.key(&q);
        let now = Instant::now();
        if let Some(entry) = self.cache.get(&key, now) {
            Metrics::inc(&m.cache_hits_total);
            if let Some(fw) = &self.firewall {
                let wants = self.wants(&entry, verdict.and_then(|v| v.target), &q, now);
                if !wants.is_empty() && !fw.missing(&wants).is_empty() {
                    return Step::Upstream;
                }
            }
            self.serve_entry(&entry, &q, transport, out);
            return Step::Answered;
        }
        Metrics::inc(&m.cache_misses_total);
        Step::Upstream
    }

    /// The answer for a packet `answer_local` returned `Step::Upstream` for: asks the upstreams
    /// (once for all identical queries in flight) and writes the answer into `out`.
    /// Returns false if nothing is to be sent.
    pub async fn answer_upstream(
        self: &Arc<Self>,
        packet: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        let Ok(q) = Query::parse(packet) else {
            return false;
        };
        let key = self.cache.key(&q);
        // A cache hit whose set elements need refreshing comes here too.
        if let Some(entry) = self.cache.get(&key, Instant::now()) {
            return self.open_and_serve(&entry, &q, transport, out).await;
        }
        let (tx, rx) = oneshot::channel();
        let lead = match self.inflight.lock() {
            Ok(mut map) => match map.get_mut(key.bytes()) {
                Some(waiters) => {
                    waiters.push(tx);
                    Metrics::inc(&self.metrics.inflight_joined_total);
                    false
                }
                None => {
                    map.insert(key.bytes().into(), vec![tx]);
                    true
                }
            },
            Err(_) => return false,
        };
        if lead {
            // The exchange runs in its own task so that a client going away cannot cancel it
            // for the others waiting on it.
            let this = Arc::clone(self);
            let owned = packet.to_vec();
            tokio::spawn(async move { this.resolve_and_publish(owned).await });
        }
        match rx.await {
            Ok(entry) => self.open_and_serve(&entry, &q, transport, out).await,
            Err(_) => false,
        }
    }

    /// Writes the answer's addresses into the sets (if the name is approved and the firewall
    /// is on), waits for the kernel, then serves. A failed write is SERVFAIL unless fail-open.
    async fn open_and_serve(
        &self,
        entry: &Entry,
        q: &Query<'_>,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        if let Some(fw) = &self.firewall {
            let target = if q.unmatchable {
                None
            } else {
                self.policy.decide(q.name()).target
            };
            let now = Instant::now();
            let mut wants = fw.missing(&self.wants(entry, target, q, now));
            if !wants.is_empty() {
                let name: Arc<str> = Arc::from(String::from_utf8_lossy(q.name()).as_ref());
                for w in &mut wants {
                    w.name = Arc::clone(&name);
                }
                if let Err(e) = fw.write(wants).await {
                    crate::dns::udp::log_fault(
                        &self.metrics.firewall_failures_total,
                        "set write failed before an answer",
                        &e,
                    );
                    if !self.settings.fail_open {
                        self.synthesize(
                            q,
                            transport,
                            wire::RCODE_SERVFAIL,
                            out,
                            Some((wire::EDE_OTHER, "pinhole: firewall set write failed")),
                        );
                        return true;
                    }
                }
            }
        }
        self.serve_entry(entry, q, transport, out);
        true
    }

    /// The set elements an answer needs: each address it hands out, on each port of each
    /// approved zone that decided the name, for the TTL the client will be given plus grace.
    /// Names are filled in only for elements that will be written.
    fn wants(&self, entry: &Entry, target: Option<u32>, q: &Query<'_>, now: Instant) -> Vec<Want> {
        let (Some(fw), Some(target)) = (&self.firewall, target) else {
            return Vec::new();
        };
        if entry.handouts().is_empty() || self.policy.target_action(target) != Action::Allow {
            return Vec::new();
        }
        let _ = q;
        let age = entry.age(now);
        let lifetimes = fw.lifetimes();
        let mut wants = Vec::new();
        for &zone in self.policy.target_zone_ids(target) {
            let Some(def) = self.policy.zones().get(usize::from(zone)) else {
                continue;
            };
            let zone_name = &self.zone_names[usize::from(zone)];
            for h in entry.handouts() {
                let ttl = h.ttl.saturating_sub(age).min(self.settings.ttl_cap);
                let want = |set, proto, port| Want {
                    key: ElemKey {
                        set,
                        addr: h.addr,
                        proto,
                        port,
                    },
                    timeout_ms: lifetimes.timeout_ms(ttl),
                    needed_ms: lifetimes.needed_ms(ttl),
                    zone: Arc::clone(zone_name),
                    name: Arc::clone(zone_name),
                };
                for (set, set_ref) in fw.sets_for(zone, &h.addr) {
                    if set_ref.ports {
                        for p in &def.ports {
                            wants.push(want(set, proto_number(p.proto), p.port));
                        }
                    } else {
                        wants.push(want(set, 0, 0));
                    }
                }
            }
        }
        wants
    }

    /// Sets the DDR answer (SVCB RDATA of pinhole's encrypted endpoints); before the handler is
    /// shared.
    pub fn set_ddr(&mut self, records: Vec<Vec<u8>>) {
        self.settings.ddr = (!records.is_empty()).then(|| records.into());
    }

    /// Both steps for transports that await anyway (TCP, tests).
    pub async fn answer(
        self: &Arc<Self>,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        match self.answer_local(packet, client, transport, out) {
            Step::Answered => true,
            Step::Dropped => false,
            Step::Upstream => self.answer_upstream(packet, transport, out).await,
        }
    }

    /// Asks the upstreams, caches the answer, and hands it to every query waiting for it.
    async fn resolve_and_publish(self: Arc<Self>, packet: Vec<u8>) {
        let Ok(q) = Query::parse(&packet) else {
            return;
        };
        let key = self.cache.key(&q);
        let entry = self.resolve(&q, &key).await;
        let waiters = self
            .inflight
            .lock()
            .ok()
            .and_then(|mut map| map.remove(key.bytes()))
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(Arc::clone(&entry));
        }
    }

    async fn resolve(&self, q: &Query<'_>, key: &CacheKey) -> Arc<Entry> {
        let question = Question {
            wire: q.question(),
            cd: q.cd,
            dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
        };
        let now = Instant::now();
        let servfail = |this: &Self| {
            Metrics::inc(&this.metrics.servfail_total);
            let entry = Arc::new(Entry::servfail(key, q, this.settings.servfail_ttl, now));
            this.cache.insert(key, Arc::clone(&entry));
            entry
        };
        let answer = match self.upstreams.exchange(&question, &self.metrics).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(name = %String::from_utf8_lossy(q.name()), qtype = q.qtype, error = %e, "no upstream answer; SERVFAIL");
                return servfail(self);
            }
        };
        // The raw answer is passed on as the upstream wrote it (less any stripped hints); the
        // scan checks that every record is within bounds before it is cached or served.
        let answer = match self.settings.strip_hints {
            true => match crate::dns::strip::strip_hints(&answer) {
                Ok(stripped) => Some(stripped.unwrap_or(answer)),
                Err(()) => None,
            },
            false => Some(answer),
        };
        let Some((answer, scan)) =
            answer.and_then(|a| wire::scan_response(&a).map(|scan| (a, scan)))
        else {
            Metrics::inc(&self.metrics.upstream_malformed_total);
            tracing::warn!(name = %String::from_utf8_lossy(q.name()), qtype = q.qtype, "malformed upstream answer; SERVFAIL");
            return servfail(self);
        };
        tracing::debug!(name = %String::from_utf8_lossy(q.name()), qtype = q.qtype, rcode = scan.rcode, answers = scan.answers, "upstream answer");
        let limits = &self.cache.limits;
        match Entry::from_response(key, q.name(), &answer, &scan, q.question_end, limits, now) {
            Some(entry) => {
                let entry = Arc::new(entry);
                if entry.is_fresh(now) {
                    self.cache.insert(key, Arc::clone(&entry));
                }
                entry
            }
            None => {
                Metrics::inc(&self.metrics.upstream_malformed_total);
                servfail(self)
            }
        }
    }

    fn client_allowed(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.settings.acl.iter().any(|net| net.contains(&client))
    }

    fn serve_entry(&self, entry: &Entry, q: &Query<'_>, transport: Transport, out: &mut Vec<u8>) {
        entry.write_answer(q, Instant::now(), self.settings.ttl_cap, out);
        self.finish(q, transport, out, None);
    }

    /// Adds the client's OPT record and enforces the UDP size limit (512 without EDNS).
    fn finish(
        &self,
        q: &Query<'_>,
        transport: Transport,
        out: &mut Vec<u8>,
        ede: Option<(u16, &str)>,
    ) {
        let ede = ede.filter(|_| self.settings.extended_errors);
        if let Some(edns) = q.edns {
            wire::push_opt(out, self.settings.max_udp_payload, edns.dnssec_ok, 0, ede);
        }
        if transport == Transport::Udp {
            let limit = q.edns.map_or(512, |e| {
                usize::from(e.payload.min(self.settings.max_udp_payload).max(512))
            });
            if out.len() > limit {
                Metrics::inc(&self.metrics.truncated_total);
                wire::truncate(out, q.question_end);
                if let Some(edns) = q.edns {
                    wire::push_opt(out, self.settings.max_udp_payload, edns.dnssec_ok, 0, None);
                }
            }
        }
    }

    /// A bare answer with `rcode`.
    fn synthesize(
        &self,
        q: &Query<'_>,
        transport: Transport,
        rcode: u8,
        out: &mut Vec<u8>,
        ede: Option<(u16, &str)>,
    ) {
        wire::start_response(out, q, rcode, false);
        self.finish(q, transport, out, ede);
    }

    /// NXDOMAIN or NODATA with pinhole's SOA, so that clients cache the answer.
    fn negative(
        &self,
        q: &Query<'_>,
        transport: Transport,
        rcode: u8,
        out: &mut Vec<u8>,
        ede: Option<(u16, &str)>,
    ) {
        wire::start_response(out, q, rcode, true);
        wire::push_record(
            out,
            wire::AUTHORITY_COUNT,
            wire::TYPE_SOA,
            self.settings.block_ttl,
            &self.settings.soa_rdata,
        );
        self.finish(q, transport, out, ede);
    }

    fn block(
        &self,
        q: &Query<'_>,
        transport: Transport,
        action: BlockAction,
        out: &mut Vec<u8>,
        ede: (u16, &str),
    ) {
        match action {
            BlockAction::Refuse | BlockAction::Forward => {
                self.synthesize(q, transport, wire::RCODE_REFUSED, out, Some(ede))
            }
            // Drop never gets here (no answer at all); SERVFAIL stands in if it did.
            BlockAction::Servfail | BlockAction::Drop => {
                self.synthesize(q, transport, wire::RCODE_SERVFAIL, out, Some(ede))
            }
            BlockAction::Nxdomain => {
                self.negative(q, transport, wire::RCODE_NXDOMAIN, out, Some(ede))
            }
            BlockAction::Nodata => self.negative(q, transport, wire::RCODE_NOERROR, out, Some(ede)),
            BlockAction::Sinkhole => {
                let rdata: &[u8] = match q.qtype {
                    wire::TYPE_A => &self.settings.sinkhole4,
                    wire::TYPE_AAAA => &self.settings.sinkhole6,
                    _ => return self.negative(q, transport, wire::RCODE_NOERROR, out, Some(ede)),
                };
                wire::start_response(out, q, wire::RCODE_NOERROR, true);
                wire::push_record(
                    out,
                    wire::ANSWER_COUNT,
                    q.qtype,
                    self.settings.block_ttl,
                    rdata,
                );
                self.finish(q, transport, out, Some(ede));
            }
        }
    }

    fn answer_bad_query(&self, packet: &[u8], err: QueryError, out: &mut Vec<u8>) -> Step {
        let m = &*self.metrics;
        match err {
            QueryError::Drop => {
                Metrics::inc(&m.dropped_total);
                Step::Dropped
            }
            QueryError::Rcode(rcode) => {
                Metrics::inc(if rcode == wire::RCODE_NOTIMP {
                    &m.notimp_total
                } else {
                    &m.formerr_total
                });
                wire::header_only(out, packet, rcode);
                Step::Answered
            }
            QueryError::BadVers => {
                Metrics::inc(&m.formerr_total);
                wire::header_only(out, packet, 0);
                // BADVERS is extended RCODE 16: upper bits 1 in the OPT record.
                wire::push_opt(out, self.settings.max_udp_payload, false, 1, None);
                Step::Answered
            }
        }
    }
}
