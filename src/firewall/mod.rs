//! The firewall side: every address handed out for an approved name is in an nftables set,
//! on its zone's ports, before the answer leaves.
//!
//! Owns the sets pinhole writes to (managed: its own table; external: the administrator's
//! sets, checked at start), the allowlist table, the writer thread that group-commits the set
//! writes of all concurrent requests into one netlink batch, the journal, the repair after a
//! firewall reload, and the ruleset text. It never decides policy and never answers queries:
//! the request path asks it to open elements and waits for the acknowledgement.

pub mod external;
pub mod journal;
pub mod nft;
pub mod ruleset;
pub mod table;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::oneshot;

use crate::config::{FirewallConfig, FirewallMode, RefreshMethod};
use crate::metrics::Metrics;
use crate::policy::ZoneDef;
use journal::Journal;
use nft::{Element, Family, Key, KeyType, Nft, SetFlags, SetSpec};
pub use table::{AllowTable, ElemKey, Lifetimes, Live, Want, now_ms};

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error(
        "cannot set up nftables table inet {table}: {source}\n  fix: run pinhole as root (CAP_NET_ADMIN); check with: nft list table inet {table}; a set that exists with another type must be removed: nft delete table inet {table}"
    )]
    Setup {
        table: String,
        source: nft::NftError,
    },
    #[error("{0}")]
    Check(String),
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("set write failed: {0}")]
    Write(String),
    #[error("set write missed its deadline of {0:?}")]
    Deadline(Duration),
}

/// A set pinhole writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRef {
    pub family: Family,
    pub table: String,
    pub name: String,
    /// Holds IPv6 addresses (else IPv4).
    pub v6: bool,
    /// Elements are `addr . proto . port` (else the address alone).
    pub ports: bool,
    /// The set has `flags interval` (it can hold networks; an address is a one-address range).
    pub interval: bool,
}

impl SetRef {
    /// `family table set`, as in zone files and the journal.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.family, self.table, self.name)
    }
}

/// Parses `family table set` (family: inet, ip or ip6).
pub fn parse_set_label(s: &str) -> Option<(Family, String, String)> {
    let mut it = s.split_whitespace();
    let family = match it.next()? {
        "inet" => Family::Inet,
        "ip" => Family::Ip,
        "ip6" => Family::Ip6,
        _ => return None,
    };
    let (table, set) = (it.next()?.to_string(), it.next()?.to_string());
    it.next().is_none().then_some((family, table, set))
}

/// A batch request: elements to write, and where to say how it went.
struct WriteReq {
    wants: Vec<Want>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The firewall writer and the allowlist table, shared by every request.
pub struct Firewall {
    table: Arc<Mutex<AllowTable>>,
    shared: Arc<Shared>,
    sets: Arc<Vec<SetRef>>,
    /// Per zone (by `ZoneId`), the indexes of its sets.
    zone_sets: Vec<Vec<u16>>,
    lifetimes: Lifetimes,
    deadline: Duration,
    mode: FirewallMode,
    /// Per set (by index), the static networks written into it: addresses they cover are
    /// not written again (an interval set refuses overlapping elements).
    covers: Vec<Vec<external::Cover>>,
}

fn managed_specs() -> [SetSpec; 2] {
    [
        SetSpec::new(ruleset::SET4, KeyType::V4Port).with_flags(SetFlags::TIMEOUT),
        SetSpec::new(ruleset::SET6, KeyType::V6Port).with_flags(SetFlags::TIMEOUT),
    ]
}

fn element(set: &SetRef, w: &Want, now_ms: u64, expires_ms: Option<u64>) -> Element {
    let timeout = Duration::from_millis(w.timeout_ms);
    let key = match (set.ports, set.interval) {
        (true, false) => Key::Port {
            addr: w.key.addr,
            proto: w.key.proto,
            port: w.key.port,
        },
        (true, true) => Key::PortRange {
            first: w.key.addr,
            last: w.key.addr,
            proto: w.key.proto,
            port: w.key.port,
        },
        (false, false) => Key::Addr(w.key.addr),
        (false, true) => Key::Net {
            addr: w.key.addr,
            prefix_len: if w.key.addr.is_ipv4() { 32 } else { 128 },
        },
    };
    let mut e = Element {
        key,
        timeout: Some(timeout),
        expires: Some(timeout),
    };
    // Replays give the time left, so an element is not extended by a restart.
    if let Some(exp) = expires_ms {
        e.expires = Some(Duration::from_millis(
            exp.saturating_sub(now_ms)
                .clamp(1000, w.timeout_ms.max(1000)),
        ));
    }
    e
}

impl Firewall {
    /// Sets up the sets (managed: creates `table inet <table>`; external: checks the sets the
    /// zones name), restores the journal from `state_dir` into the kernel, and starts the
    /// writer thread, which also repairs a wiped managed table.
    pub fn start(
        cfg: &FirewallConfig,
        zones: &[ZoneDef],
        state_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Firewall, FirewallError> {
        let mut nft = Nft::open().map_err(FirewallError::Socket)?;
        let mut covers = Vec::new();
        let (sets, zone_sets) = match cfg.mode {
            FirewallMode::External => {
                let ext = external::check_sets(&mut nft, zones)?;
                external::write_statics(&mut nft, &ext.statics)
                    .map_err(|e| FirewallError::Write(format!("static networks: {e}")))?;
                covers = ext.covers;
                (ext.sets, ext.zone_sets)
            }
            _ => {
                nft.create_table_and_sets(Family::Inet, &cfg.table, &managed_specs())
                    .map_err(|source| FirewallError::Setup {
                        table: cfg.table.clone(),
                        source,
                    })?;
                let sets = vec![
                    SetRef {
                        family: Family::Inet,
                        table: cfg.table.clone(),
                        name: ruleset::SET4.into(),
                        v6: false,
                        ports: true,
                        interval: false,
                    },
                    SetRef {
                        family: Family::Inet,
                        table: cfg.table.clone(),
                        name: ruleset::SET6.into(),
                        v6: true,
                        ports: true,
                        interval: false,
                    },
                ];
                (sets, vec![vec![0, 1]; zones.len()])
            }
        };
        let sets = Arc::new(sets);
        let table = Arc::new(Mutex::new(AllowTable::default()));
        let mut journal = None;
        if let Some(dir) = state_dir {
            let now = now_ms();
            let labels: Vec<String> = sets.iter().map(SetRef::label).collect();
            let (j, live, bad) = Journal::open(&dir, &labels, now)?;
            if bad > 0 {
                tracing::warn!(bad, dir = %dir.display(), "skipped malformed or stale journal lines");
            }
            if !live.is_empty() {
                replay(&mut nft, &sets, &live, now)
                    .map_err(|e| FirewallError::Write(e.to_string()))?;
                tracing::info!(
                    elements = live.len(),
                    "restored live elements from the journal"
                );
            }
            if let Ok(mut t) = table.lock() {
                for (k, l) in live {
                    t.restore(k, l);
                }
            }
            journal = Some(j);
        }
        let in_place_update = match cfg.refresh {
            RefreshMethod::Update => true,
            RefreshMethod::Replace => false,
            RefreshMethod::Auto => match nft.probe_timeout_update() {
                Ok(yes) => {
                    tracing::info!(
                        in_place = yes,
                        "probed the kernel: element timeouts are {}",
                        if yes {
                            "updated in place"
                        } else {
                            "refreshed by delete and add in one batch"
                        }
                    );
                    yes
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot probe whether the kernel updates element timeouts; refreshing by delete and add");
                    false
                }
            },
        };
        let writer = Writer {
            nft,
            table: Arc::clone(&table),
            journal,
            sets: Arc::clone(&sets),
            managed: cfg.mode != FirewallMode::External,
            managed_table: cfg.table.clone(),
            in_place_update,
            metrics,
        };
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            queue: Mutex::new(Vec::new()),
            leader: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("pinhole-nft-watch".into())
            .spawn(move || watch(weak))
            .map_err(FirewallError::Socket)?;
        Ok(Firewall {
            table,
            shared,
            sets,
            zone_sets,
            lifetimes: Lifetimes {
                grace_s: cfg.grace_s,
                floor_s: cfg.timeout_floor_s,
                ceiling_s: cfg.timeout_ceiling_s,
            },
            deadline: Duration::from_millis(cfg.write_deadline_ms),
            mode: cfg.mode,
            covers,
        })
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    pub fn mode(&self) -> FirewallMode {
        self.mode
    }

    pub fn sets(&self) -> &[SetRef] {
        &self.sets
    }

    /// The sets of `zone` that take addresses of `addr`'s family.
    pub fn sets_for(&self, zone: u16, addr: &IpAddr) -> impl Iterator<Item = (u16, &SetRef)> {
        self.zone_sets
            .get(usize::from(zone))
            .into_iter()
            .flatten()
            .filter_map(|&i| self.sets.get(usize::from(i)).map(|s| (i, s)))
            .filter(move |(_, s)| s.v6 == addr.is_ipv6())
    }

    /// The wants that need a kernel write (their element would expire too early).
    pub fn missing(&self, wants: &[Want]) -> Vec<Want> {
        let now = now_ms();
        let uncovered = |w: &&Want| {
            self.covers
                .get(usize::from(w.key.set))
                .is_none_or(|c| !external::covered(c, &w.key))
        };
        match self.table.lock() {
            Ok(t) => t
                .missing(wants, now)
                .into_iter()
                .filter(uncovered)
                .cloned()
                .collect(),
            Err(_) => wants.iter().filter(uncovered).cloned().collect(),
        }
    }

    /// Writes `wants` (one batch with whatever else is pending) and waits for the kernel's
    /// acknowledgement, at most the configured deadline.
    pub async fn write(&self, wants: Vec<Want>) -> Result<(), FirewallError> {
        if wants.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        match self.shared.queue.lock() {
            Ok(mut q) => q.push(WriteReq { wants, done }),
            Err(_) => return Err(FirewallError::Write("writer queue poisoned".into())),
        }
        if !self.shared.leader.swap(true, Ordering::AcqRel) {
            // This request leads the next batch. It lets the other tasks that are ready run
            // first, so that their requests join the batch, then writes on this thread: no
            // hand-over to another thread and back. If the task is dropped while it yields,
            // the guard writes the batch anyway.
            let guard = LeadGuard(&self.shared);
            tokio::task::yield_now().await;
            drop(guard);
        }
        let wait = async {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(FirewallError::Write(e)),
                Err(_) => Err(FirewallError::Write("writer stopped".into())),
            }
        };
        match tokio::time::timeout(self.deadline, wait).await {
            Ok(r) => r,
            Err(_) => Err(FirewallError::Deadline(self.deadline)),
        }
    }

    /// Writes the journal's pending lines (at shutdown; otherwise every half second).
    pub fn flush_journal(&self) {
        if let Ok(mut w) = self.shared.writer.lock()
            && let Some(Err(e)) = w.journal.as_mut().map(Journal::flush)
        {
            tracing::warn!(error = %e, "journal write failed at shutdown");
        }
    }

    /// Live elements for `status`.
    pub fn snapshot(&self) -> Vec<(ElemKey, Live)> {
        self.table
            .lock()
            .map(|t| t.snapshot(now_ms()))
            .unwrap_or_default()
    }
}

/// The distinct tables of some sets, in first-seen order: one netlink batch goes to each.
fn tables<'a>(sets: impl IntoIterator<Item = &'a SetRef>) -> Vec<(Family, &'a str)> {
    let mut tables: Vec<(Family, &str)> = Vec::new();
    for s in sets {
        if !tables.contains(&(s.family, s.table.as_str())) {
            tables.push((s.family, s.table.as_str()));
        }
    }
    tables
}

/// One element to write: the want, its absolute expiry if fixed (replays), and whether it is
/// already in the kernel and must be deleted and added again (kernels without in-place update).
type Item<'a> = (&'a Want, Option<u64>, bool);

/// Writes `items` to their sets: one batch per table.
fn write_grouped(
    nft: &mut Nft,
    sets: &[SetRef],
    items: &[Item<'_>],
    now: u64,
) -> Result<(), nft::NftError> {
    for (family, table) in tables(sets) {
        let mut add: Vec<(&str, Element)> = Vec::new();
        let mut replace: Vec<(&str, Element)> = Vec::new();
        for (w, exp, again) in items {
            let Some(set) = sets.get(usize::from(w.key.set)) else {
                continue;
            };
            if set.family == family && set.table == table {
                let list = if *again { &mut replace } else { &mut add };
                list.push((set.name.as_str(), element(set, w, now, *exp)));
            }
        }
        if replace.is_empty() {
            for chunk in add.chunks(4000) {
                nft.add_elements(family, table, chunk)?;
            }
            continue;
        }
        for chunk in replace.chunks(2000) {
            match nft.replace_elements(family, table, chunk, &[]) {
                // An element expired in the kernel meanwhile: adding it is all it needs.
                Err(e) if e.errno() == Some(libc::ENOENT) => {
                    nft.add_elements(family, table, chunk)?
                }
                other => other?,
            }
        }
        for chunk in add.chunks(4000) {
            nft.add_elements(family, table, chunk)?;
        }
    }
    Ok(())
}

/// Writes the live elements again with the time they have left.
fn replay(
    nft: &mut Nft,
    sets: &[SetRef],
    live: &[(ElemKey, Live)],
    now: u64,
) -> Result<(), nft::NftError> {
    let wants: Vec<(Want, u64)> = live
        .iter()
        .map(|(k, l)| {
            let left = l.expires_ms.saturating_sub(now).max(1000);
            (
                Want {
                    key: *k,
                    timeout_ms: left,
                    needed_ms: 0,
                    zone: Arc::clone(&l.zone),
                    name: Arc::clone(&l.name),
                },
                l.expires_ms,
            )
        })
        .collect();
    // Replays follow a wipe or a restart: the elements are not in the kernel.
    let items: Vec<Item<'_>> = wants.iter().map(|(w, e)| (w, Some(*e), false)).collect();
    write_grouped(nft, sets, &items, now)
}

/// The writer: sends one batch of requests, waits for the acknowledgement, records it, and
/// answers every request. It runs on the thread of the request that leads the batch, and on
/// the watch thread, which checks twice a second that a managed table and its sets are still
/// there and repairs them if not.
struct Writer {
    nft: Nft,
    table: Arc<Mutex<AllowTable>>,
    journal: Option<Journal>,
    sets: Arc<Vec<SetRef>>,
    managed: bool,
    managed_table: String,
    /// The kernel updates an element's timeout when it is added again (6.10+); otherwise
    /// refreshes delete and add in one batch.
    in_place_update: bool,
    metrics: Arc<Metrics>,
}

/// Requests per batch at most.
const MAX_BATCH_REQUESTS: usize = 512;
/// How often the table's presence is checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What the request path and the watch thread share: the writer (one netlink socket), the
/// queue of pending requests, and whether a request has taken the lead of the next batch.
struct Shared {
    writer: Mutex<Writer>,
    queue: Mutex<Vec<WriteReq>>,
    leader: AtomicBool,
}

impl Shared {
    /// Group commit: writes everything queued, batch after batch, until the queue is empty,
    /// then gives up the lead. A request queued after the last batch either sees the lead
    /// free and takes it, or is found by the check after the lead is given up.
    fn lead(&self) {
        loop {
            if let Ok(mut writer) = self.writer.lock() {
                loop {
                    let reqs: Vec<WriteReq> = match self.queue.lock() {
                        Ok(mut q) if q.len() > MAX_BATCH_REQUESTS => {
                            let rest = q.split_off(MAX_BATCH_REQUESTS);
                            std::mem::replace(&mut *q, rest)
                        }
                        Ok(mut q) => std::mem::take(&mut *q),
                        Err(_) => Vec::new(),
                    };
                    if reqs.is_empty() {
                        break;
                    }
                    writer.write_batch(reqs);
                }
            }
            self.leader.store(false, Ordering::Release);
            let pending = self.queue.lock().map(|q| !q.is_empty()).unwrap_or(false);
            if !pending || self.leader.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}

/// Writes the led batch when dropped: after the yield, or when the leading task is cancelled.
struct LeadGuard<'a>(&'a Shared);

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        self.0.lead();
    }
}

/// Twice a second: repairs a wiped managed table and forgets what the kernel has dropped.
/// Ends when the firewall is dropped.
fn watch(shared: std::sync::Weak<Shared>) {
    loop {
        std::thread::sleep(WATCH_INTERVAL);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Ok(mut w) = shared.writer.lock() {
            w.repair_if_wiped();
            if let Some(Err(e)) = w.journal.as_mut().map(Journal::flush) {
                Metrics::inc(&w.metrics.journal_errors_total);
                tracing::warn!(error = %e, "journal write failed; a restart may lose elements");
            }
            // O(live elements), so not per batch.
            if let Ok(mut t) = w.table.lock() {
                t.expire(now_ms());
            }
        }
    }
}

impl Writer {
    fn write_batch(&mut self, reqs: Vec<WriteReq>) {
        let now = now_ms();
        // Concurrent requests often want the same element: write it once, with the longest timeout.
        let mut unique: std::collections::HashMap<ElemKey, &Want> = Default::default();
        for w in reqs.iter().flat_map(|r| r.wants.iter()) {
            let e = unique.entry(w.key).or_insert(w);
            if w.timeout_ms > e.timeout_ms {
                *e = w;
            }
        }
        let items: Vec<Item<'_>> = match (self.in_place_update, self.table.lock()) {
            (false, Ok(t)) => unique
                .values()
                .map(|w| (*w, None, t.is_live(&w.key, now)))
                .collect(),
            _ => unique.values().map(|w| (*w, None, false)).collect(),
        };
        let started = Instant::now();
        let result = write_grouped(&mut self.nft, &self.sets, &items, now);
        let took = started.elapsed().as_micros() as u64;
        Metrics::inc(&self.metrics.nft_batches_total);
        self.metrics
            .nft_elements_total
            .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .nft_write_micros_total
            .fetch_add(took, std::sync::atomic::Ordering::Relaxed);
        self.metrics.histograms.nft_write_us.observe(took);
        self.metrics
            .histograms
            .nft_batch_elements
            .observe(items.len() as u64);
        let outcome = match result {
            Ok(()) => {
                let written: Vec<&Want> = items.iter().map(|i| i.0).collect();
                if let Ok(mut t) = self.table.lock() {
                    t.commit(written.iter().copied(), now);
                }
                self.journal_append(&written, now);
                Ok(())
            }
            Err(e) => {
                Metrics::inc(&self.metrics.nft_errors_total);
                let sets: Vec<String> = self.sets.iter().map(SetRef::label).collect();
                tracing::error!(error = %e, elements = items.len(), sets = ?sets, "nftables batch failed; answers that needed it get SERVFAIL unless on_failure = \"open\"");
                // A wiped managed table is the usual cause: repair, so that the next batch succeeds.
                self.repair_if_wiped();
                Err(e.to_string())
            }
        };
        for r in reqs {
            let _ = r.done.send(outcome.clone());
        }
    }

    fn journal_append(&mut self, all: &[&Want], now: u64) {
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        if let Err(e) = j.append(all, &self.sets, now) {
            Metrics::inc(&self.metrics.journal_errors_total);
            tracing::warn!(error = %e, "journal write failed; a restart may lose these elements");
        }
        // Compaction needs a snapshot (O(live elements)): only when the journal has grown.
        let live_count = self.table.lock().map(|t| t.len()).unwrap_or(0);
        if !j.needs_compaction(live_count) {
            return;
        }
        let live = self
            .table
            .lock()
            .map(|t| t.snapshot(now))
            .unwrap_or_default();
        if let Err(e) = j.compact_if_large(&live, &self.sets) {
            Metrics::inc(&self.metrics.journal_errors_total);
            tracing::warn!(error = %e, "journal compaction failed");
        }
    }

    /// If a firewall reload removed the managed table or a set, recreates them and writes
    /// every live element again. External sets belong to the administrator: not recreated.
    fn repair_if_wiped(&mut self) {
        if !self.managed {
            return;
        }
        let mut present = true;
        for set in [ruleset::SET4, ruleset::SET6] {
            match self.nft.get_set(Family::Inet, &self.managed_table, set) {
                Ok(Some(_)) => {}
                Ok(None) => present = false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the nftables sets");
                    return;
                }
            }
        }
        if present {
            return;
        }
        Metrics::inc(&self.metrics.nft_repairs_total);
        let now = now_ms();
        let live = self
            .table
            .lock()
            .map(|t| t.snapshot(now))
            .unwrap_or_default();
        let result = self
            .nft
            .create_table_and_sets(Family::Inet, &self.managed_table, &managed_specs())
            .and_then(|()| replay(&mut self.nft, &self.sets, &live, now));
        match result {
            Ok(()) => {
                tracing::warn!(table = %self.managed_table, elements = live.len(), "nftables table or sets were removed (firewall reload?); recreated them and replayed the live elements")
            }
            Err(e) => {
                tracing::error!(table = %self.managed_table, error = %e, "nftables table or sets were removed and could not be recreated")
            }
        }
    }
}
