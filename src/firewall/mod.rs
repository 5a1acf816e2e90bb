//! The firewall side: every address handed out for an approved name is in an nftables set,
//! on its zone's ports, before the answer leaves.
//!
//! Owns the allowlist table, the writer thread that group-commits the set writes of all
//! concurrent requests into one netlink batch, the journal, the repair after a firewall
//! reload, and the ruleset text. It never decides policy and never answers queries: the
//! request path asks it to open elements and waits for the acknowledgement.

pub mod journal;
pub mod nft;
pub mod ruleset;
pub mod table;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::mpsc;
use thiserror::Error;

use tokio::sync::oneshot;

use crate::config::FirewallConfig;
use crate::metrics::Metrics;
use journal::Journal;
use nft::{Element, Family, KeyType, Nft, SetFlags, SetSpec};
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
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("set write failed: {0}")]
    Write(String),
    #[error("set write missed its deadline of {0:?}")]
    Deadline(Duration),
}

/// A batch request: elements to write, and where to say how it went.
struct WriteReq {
    wants: Vec<Want>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The firewall writer and the allowlist table, shared by every request.
pub struct Firewall {
    table: Arc<Mutex<AllowTable>>,
    tx: mpsc::Sender<WriteReq>,
    lifetimes: Lifetimes,
    deadline: Duration,
    table_name: String,
}

/// Sets of the managed table.
fn managed_sets() -> [SetSpec; 2] {
    [
        SetSpec::new(ruleset::SET4, KeyType::V4Port).with_flags(SetFlags::TIMEOUT),
        SetSpec::new(ruleset::SET6, KeyType::V6Port).with_flags(SetFlags::TIMEOUT),
    ]
}

fn set_for(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        ruleset::SET4
    } else {
        ruleset::SET6
    }
}

fn element(w: &Want, now_ms: u64, expires_ms: Option<u64>) -> Element {
    let mut e = Element::port(
        w.key.addr,
        w.key.proto_number(),
        w.key.port,
        Duration::from_millis(w.timeout_ms),
    );
    // Replays give the time left, so an element is not extended by a restart.
    if let Some(exp) = expires_ms {
        e.expires = Some(Duration::from_millis(exp.saturating_sub(now_ms).max(1000)));
    }
    e
}

impl Firewall {
    /// Managed mode: creates `table inet <table>` and its sets, restores the journal from
    /// `state_dir` into the kernel, and starts the writer thread and the repair watch.
    pub fn start_managed(
        cfg: &FirewallConfig,
        state_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Firewall, FirewallError> {
        let mut nft = Nft::open().map_err(FirewallError::Socket)?;
        let table_name = cfg.table.clone();
        nft.create_table_and_sets(Family::Inet, &table_name, &managed_sets())
            .map_err(|source| FirewallError::Setup {
                table: table_name.clone(),
                source,
            })?;
        let table = Arc::new(Mutex::new(AllowTable::default()));
        let mut journal = None;
        if let Some(dir) = state_dir {
            let now = now_ms();
            let (j, live, bad) = Journal::open(&dir, now)?;
            if bad > 0 {
                tracing::warn!(bad, dir = %dir.display(), "skipped malformed journal lines");
            }
            if !live.is_empty() {
                replay(&mut nft, &table_name, &live, now)
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
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            nft,
            table: Arc::clone(&table),
            journal,
            table_name: table_name.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name("pinhole-nft".into())
            .spawn(move || writer.run(rx))
            .map_err(FirewallError::Socket)?;
        Ok(Firewall {
            table,
            tx,
            lifetimes: Lifetimes {
                grace_s: cfg.grace_s,
                floor_s: cfg.timeout_floor_s,
                ceiling_s: cfg.timeout_ceiling_s,
            },
            deadline: Duration::from_millis(cfg.write_deadline_ms),
            table_name,
        })
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    pub fn table_name(&self) -> &str {
        &self.table_name
    }

    /// The wants that need a kernel write (their element would expire too early).
    pub fn missing(&self, wants: &[Want]) -> Vec<Want> {
        let now = now_ms();
        match self.table.lock() {
            Ok(t) => t.missing(wants, now).into_iter().cloned().collect(),
            Err(_) => wants.to_vec(),
        }
    }

    /// Writes `wants` (one batch with whatever else is pending) and waits for the kernel's
    /// acknowledgement, at most the configured deadline.
    pub async fn write(&self, wants: Vec<Want>) -> Result<(), FirewallError> {
        if wants.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(WriteReq { wants, done })
            .map_err(|_| FirewallError::Write("writer stopped".into()))?;
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

    /// Live elements for `status`.
    pub fn snapshot(&self) -> Vec<(ElemKey, Live)> {
        self.table
            .lock()
            .map(|t| t.snapshot(now_ms()))
            .unwrap_or_default()
    }
}

/// Writes the live elements again with the time they have left.
fn replay(
    nft: &mut Nft,
    table: &str,
    live: &[(ElemKey, Live)],
    now: u64,
) -> Result<(), nft::NftError> {
    let wants: Vec<(Want, u64)> = live
        .iter()
        .map(|(k, l)| {
            (
                Want {
                    key: *k,
                    timeout_ms: l.expires_ms.saturating_sub(now).max(1000),
                    needed_ms: 0,
                    zone: Arc::clone(&l.zone),
                    name: Arc::clone(&l.name),
                },
                l.expires_ms,
            )
        })
        .collect();
    let elems: Vec<(&str, Element)> = wants
        .iter()
        .map(|(w, exp)| (set_for(&w.key.addr), element(w, now, Some(*exp))))
        .collect();
    for chunk in elems.chunks(2000) {
        nft.add_elements(Family::Inet, table, chunk)?;
    }
    Ok(())
}

/// The writer thread: gathers every pending request into one batch, sends it, waits for the
/// acknowledgement, records it, answers every request. Between batches it checks once a
/// second (or less) that the table and sets are still there and repairs them if not.
struct Writer {
    nft: Nft,
    table: Arc<Mutex<AllowTable>>,
    journal: Option<Journal>,
    table_name: String,
    metrics: Arc<Metrics>,
}

/// Requests per batch at most.
const MAX_BATCH_REQUESTS: usize = 512;
/// How often the table's presence is checked when idle.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<WriteReq>) {
        let mut last_check = Instant::now();
        loop {
            // Wait for work, but wake up to check the ruleset at least every WATCH_INTERVAL.
            let first = match rx.recv_timeout(WATCH_INTERVAL) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if last_check.elapsed() >= WATCH_INTERVAL {
                self.repair_if_wiped();
                last_check = Instant::now();
            }
            let Some(first) = first else { continue };
            let mut reqs = vec![first];
            while reqs.len() < MAX_BATCH_REQUESTS {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            self.write_batch(reqs);
        }
    }

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
        let elems: Vec<(&str, Element)> = unique
            .values()
            .map(|w| (set_for(&w.key.addr), element(w, now, None)))
            .collect();
        let started = Instant::now();
        let result = self
            .nft
            .add_elements(Family::Inet, &self.table_name, &elems);
        let took = started.elapsed();
        Metrics::inc(&self.metrics.nft_batches_total);
        self.metrics
            .nft_elements_total
            .fetch_add(elems.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.metrics.nft_write_micros_total.fetch_add(
            took.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let outcome = match result {
            Ok(()) => {
                let all: Vec<Want> = reqs.iter().flat_map(|r| r.wants.iter().cloned()).collect();
                if let Ok(mut t) = self.table.lock() {
                    t.commit(&all, now);
                    t.expire(now);
                }
                if let Some(j) = self.journal.as_mut() {
                    if let Err(e) = j.append(&all, now) {
                        Metrics::inc(&self.metrics.journal_errors_total);
                        tracing::warn!(error = %e, "journal write failed; a restart may lose these elements");
                    }
                    let live = self
                        .table
                        .lock()
                        .map(|t| t.snapshot(now))
                        .unwrap_or_default();
                    if let Err(e) = j.compact_if_large(&live) {
                        Metrics::inc(&self.metrics.journal_errors_total);
                        tracing::warn!(error = %e, "journal compaction failed");
                    }
                }
                Ok(())
            }
            Err(e) => {
                Metrics::inc(&self.metrics.nft_errors_total);
                tracing::error!(error = %e, elements = elems.len(), table = %self.table_name, "nftables batch failed");
                // A wiped table is the usual cause: repair, so that the next batch succeeds.
                self.repair_if_wiped();
                Err(e.to_string())
            }
        };
        for r in reqs {
            let _ = r.done.send(outcome.clone());
        }
    }

    /// If a firewall reload removed the table or a set, recreates them and writes every live
    /// element again.
    fn repair_if_wiped(&mut self) {
        let mut present = true;
        for set in [ruleset::SET4, ruleset::SET6] {
            match self.nft.get_set(Family::Inet, &self.table_name, set) {
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
            .create_table_and_sets(Family::Inet, &self.table_name, &managed_sets())
            .and_then(|()| replay(&mut self.nft, &self.table_name, &live, now));
        match result {
            Ok(()) => {
                tracing::warn!(table = %self.table_name, elements = live.len(), "nftables table or sets were removed (firewall reload?); recreated them and replayed the live elements")
            }
            Err(e) => {
                tracing::error!(table = %self.table_name, error = %e, "nftables table or sets were removed and could not be recreated")
            }
        }
    }
}
