//! The journal: live elements on disk, so that a restart (or a reboot) restores the sets.
//!
//! Owns the file format, one element a line, appended after every acknowledged batch:
//! `EXPIRES_UNIX_MS ADDR tcp|udp PORT ZONE NAME`. Loading keeps the elements that have not
//! expired and rewrites the file compacted. It does not talk to the kernel.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::firewall::table::{ElemKey, Live, Want};
use crate::policy::Proto;

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
}

impl Journal {
    /// Opens (creating the folder if needed) and loads the journal at `dir/allowlist.journal`.
    /// Returns the journal and the elements still alive at `now_ms`; malformed lines are skipped
    /// and counted in the second value.
    pub fn open(dir: &Path, now_ms: u64) -> Result<Loaded, JournalError> {
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
                match parse_line(&line) {
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
                writeln!(f, "{}", format_line(k, l)).map_err(io)?;
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
            },
            entries,
            bad,
        ))
    }

    /// Appends acknowledged elements.
    pub fn append(&mut self, written: &[Want], now_ms: u64) -> Result<(), JournalError> {
        let mut text = String::new();
        for w in written {
            let live = Live {
                expires_ms: now_ms + w.timeout_ms,
                zone: Arc::clone(&w.zone),
                name: Arc::clone(&w.name),
            };
            text.push_str(&format_line(&w.key, &live));
            text.push('\n');
        }
        self.lines += written.len();
        self.file
            .write_all(text.as_bytes())
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Rewrites the file with only `live` when it has grown to more than twice that.
    pub fn compact_if_large(&mut self, live: &[(ElemKey, Live)]) -> Result<(), JournalError> {
        if self.lines <= 2 * live.len() + 1024 {
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
                text.push_str(&format_line(k, l));
                text.push('\n');
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
        Ok(())
    }
}

fn format_line(k: &ElemKey, l: &Live) -> String {
    let proto = match k.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    format!(
        "{} {} {} {} {} {}",
        l.expires_ms, k.addr, proto, k.port, l.zone, l.name
    )
}

fn parse_line(line: &str) -> Option<(ElemKey, Live)> {
    let mut it = line.split(' ');
    let expires_ms = it.next()?.parse().ok()?;
    let addr = it.next()?.parse().ok()?;
    let proto = match it.next()? {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    let port = it.next()?.parse().ok()?;
    let zone: Arc<str> = it.next()?.into();
    let name: Arc<str> = it.next()?.into();
    Some((
        ElemKey { addr, proto, port },
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
        let (mut j, live, _) = Journal::open(dir.path(), 1_000).expect("open");
        assert!(live.is_empty());
        let w = |a: &str, t| Want {
            key: ElemKey {
                addr: a.parse().expect("ip"),
                proto: Proto::Tcp,
                port: 443,
            },
            timeout_ms: t,
            needed_ms: t,
            zone: "apple".into(),
            name: "mesu.apple.com".into(),
        };
        j.append(&[w("192.0.2.1", 60_000), w("2001:db8::1", 5_000)], 1_000)
            .expect("append");
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("allowlist.journal"))
            .and_then(|mut f| f.write_all(b"garbage line\n"))
            .expect("garbage");
        let (_, live, bad) = Journal::open(dir.path(), 10_000).expect("reopen");
        assert_eq!(bad, 1);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0.addr.to_string(), "192.0.2.1");
        assert_eq!(live[0].1.expires_ms, 61_000);
        assert_eq!(&*live[0].1.name, "mesu.apple.com");
    }
}
