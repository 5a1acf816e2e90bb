//! The journal: live elements on disk, so that a restart (or a reboot) restores the sets.
//!
//! Owns the file format, one element a line, appended after every acknowledged batch:
//! `EXPIRES_UNIX_MS ADDR PROTO PORT ZONE NAME FAMILY TABLE SET` (PROTO is the IP protocol
//! number, 0 with PORT 0 for sets of plain addresses). Loading keeps the elements that have
//! not expired and whose set is still configured, and rewrites the file compacted. It does not
//! talk to the kernel.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::firewall::SetRef;
use crate::firewall::table::{ElemKey, Live, Want};

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An opened journal, the elements still alive in it, and how many lines were unreadable.
pub type Loaded = (Journal, Vec<(ElemKey, Live)>, usize);

/// An append-only journal file.
pub struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
    /// Lines not yet written: the writer appends here, and the file gets them every half
    /// second (the watch thread), when 64 KiB have gathered, and when the journal is dropped.
    pending: String,
}

/// Bytes of pending lines that make `append` write at once.
const PENDING_LIMIT: usize = 64 * 1024;

impl Journal {
    /// Opens (creating the folder if needed) and loads the journal at `dir/allowlist.journal`.
    /// Returns the journal and the elements still alive at `now_ms`; malformed lines are skipped
    /// and counted in the second value.
    /// `sets` are the labels (`family table set`) of the configured sets, by index.
    pub fn open(dir: &Path, sets: &[String], now_ms: u64) -> Result<Loaded, JournalError> {
        let path = dir.join("allowlist.journal");
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut live: std::collections::HashMap<ElemKey, Live> = Default::default();
        let mut bad = 0;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io)?;
                match parse_line(&line, sets) {
                    Some((k, l)) if l.expires_ms > now_ms => {
                        let keep = live.get(&k).is_none_or(|old| old.expires_ms < l.expires_ms);
                        if keep {
                            live.insert(k, l);
                        }
                    }
                    Some(_) => {}
                    None => bad += 1,
                }
            }
        }
        let mut entries: Vec<(ElemKey, Live)> = live.into_iter().collect();
        entries.sort_by_key(|e| e.0);
        // Rewrite compacted, atomically.
        let tmp = dir.join("allowlist.journal.tmp");
        {
            let mut f = File::create(&tmp).map_err(io)?;
            for (k, l) in &entries {
                if let Some(label) = sets.get(usize::from(k.set)) {
                    let mut line = String::new();
                    push_line(&mut line, k, l, label);
                    f.write_all(line.as_bytes()).map_err(io)?;
                }
            }
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok((
            Journal {
                path,
                file,
                lines: entries.len(),
                pending: String::new(),
            },
            entries,
            bad,
        ))
    }

    /// Appends acknowledged elements.
    pub fn append(
        &mut self,
        written: &[&Want],
        sets: &[SetRef],
        now_ms: u64,
    ) -> Result<(), JournalError> {
        for w in written {
            let Some(set) = sets.get(usize::from(w.key.set)) else {
                continue;
            };
            let live = Live {
                expires_ms: now_ms + w.timeout_ms,
                zone: Arc::clone(&w.zone),
                name: Arc::clone(&w.name),
            };
            push_line(&mut self.pending, &w.key, &live, &set.label());
        }
        self.lines += written.len();
        if self.pending.len() >= PENDING_LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pending lines to the file.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(self.pending.as_bytes());
        self.pending.clear();
        result.map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Whether the file has grown to more than twice the `live` elements (plus slack).
    pub fn needs_compaction(&self, live: usize) -> bool {
        self.lines > 2 * live + 1024
    }

    /// Rewrites the file with only `live` when it has grown to more than twice that.
    pub fn compact_if_large(
        &mut self,
        live: &[(ElemKey, Live)],
        sets: &[SetRef],
    ) -> Result<(), JournalError> {
        if !self.needs_compaction(live.len()) {
            return Ok(());
        }
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join("allowlist.journal.tmp");
        {
            let mut f = File::create(&tmp).map_err(io)?;
            let mut text = String::new();
            for (k, l) in live {
                let Some(set) = sets.get(usize::from(k.set)) else {
                    continue;
                };
                push_line(&mut text, k, l, &set.label());
            }
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.lines = live.len();
        // Every pending line is in `live` (the table is committed before the journal).
        self.pending.clear();
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn push_line(out: &mut String, k: &ElemKey, l: &Live, set: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "{} {} {} {} {} {} {set}",
        l.expires_ms, k.addr, k.proto, k.port, l.zone, l.name
    );
}

fn parse_line(line: &str, sets: &[String]) -> Option<(ElemKey, Live)> {
    let mut it = line.split(' ');
    let expires_ms = it.next()?.parse().ok()?;
    let addr = it.next()?.parse().ok()?;
    let proto = it.next()?.parse().ok()?;
    let port = it.next()?.parse().ok()?;
    let zone: Arc<str> = it.next()?.into();
    let name: Arc<str> = it.next()?.into();
    let label = it.collect::<Vec<_>>().join(" ");
    let set = sets.iter().position(|s| *s == label)?;
    Some((
        ElemKey {
            set: u16::try_from(set).ok()?,
            addr,
            proto,
            port,
        },
        Live {
            expires_ms,
            zone,
            name,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_and_drops_expired_and_garbage() {
        let dir = tempfile::tempdir().expect("tmp");
        let labels = vec![
            "inet pinhole allow4".to_string(),
            "inet pinhole allow6".to_string(),
        ];
        let sets: Vec<SetRef> = [("allow4", false), ("allow6", true)]
            .iter()
            .map(|(n, v6)| SetRef {
                family: crate::firewall::nft::Family::Inet,
                table: "pinhole".into(),
                name: (*n).into(),
                v6: *v6,
                ports: true,
                interval: false,
            })
            .collect();
        let (mut j, live, _) = Journal::open(dir.path(), &labels, 1_000).expect("open");
        assert!(live.is_empty());
        let w = |a: &str, t| Want {
            key: ElemKey {
                set: 0,
                addr: a.parse().expect("ip"),
                proto: 6,
                port: 443,
            },
            timeout_ms: t,
            needed_ms: t,
            zone: "apple".into(),
            name: "mesu.apple.com".into(),
        };
        j.append(
            &[&w("192.0.2.1", 60_000), &w("2001:db8::1", 5_000)],
            &sets,
            1_000,
        )
        .expect("append");
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("allowlist.journal"))
            .and_then(|mut f| f.write_all(b"garbage line\n"))
            .expect("garbage");
        let (_, live, bad) = Journal::open(dir.path(), &labels, 10_000).expect("reopen");
        assert_eq!(bad, 1);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0.addr.to_string(), "192.0.2.1");
        assert_eq!(live[0].1.expires_ms, 61_000);
        assert_eq!(&*live[0].1.name, "mesu.apple.com");
    }
}
