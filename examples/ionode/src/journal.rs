//! The write-behind journal (`--journal DIR`): every buffered write is appended to a
//! local log and made durable (`fdatasync`, one for a group of writers) before it is
//! acknowledged, and replayed to the backends when the node starts again, so that an
//! acknowledged write survives `kill -9` of the node.
//!
//! Records: `[len u32][crc32 u32][payload]`, the payload a MessagePack [`Entry`]. A torn
//! tail (short or bad checksum) ends the log. A file's `Clean` marker says that its
//! records before it reached the backend: replay skips them, so a record never undoes a
//! later change the node made without the journal (a truncate, an append, a large
//! write, each made after a flush and a marker). When nothing is buffered or being
//! written the log is emptied. Replay opens each file by the path it was opened by, as
//! the user who wrote, and checks it is still the same file (device and inode) first.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use posix_ship::client::RemoteFs;
use posix_ship::proto::{CLOSE, FSYNC, OPEN, OpenReq, Principal, STAT, Target};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::files::Key;
use crate::node::lock;
use crate::stats::Counters;

/// One journal entry.
#[derive(Serialize, Deserialize, Debug)]
pub enum Entry {
    /// A buffered write.
    Write {
        /// Order.
        seq: u64,
        /// Backend index, device, inode.
        key: (u32, u64, u64),
        /// The backend path the writer opened it by.
        path: ByteBuf,
        /// Who wrote.
        user: Option<Principal>,
        /// Where.
        off: u64,
        /// The bytes.
        data: ByteBuf,
    },
    /// Every record of `key` before `seq` is on the backend.
    Clean {
        /// Records before this are done.
        seq: u64,
        /// Backend index, device, inode.
        key: (u32, u64, u64),
    },
}

struct Log {
    file: File,
    next_seq: u64,
    written: u64,
    synced: u64,
    syncing: bool,
    size: u64,
}

/// The journal.
pub struct Journal {
    log: Mutex<Log>,
    done: Condvar,
    stats: Arc<Counters>,
}

/// The largest record accepted when reading the log back (a write is at most 16 MiB).
const MAX_RECORD: u32 = 17 << 20;

fn key32(k: Key) -> (u32, u64, u64) {
    (k.0 as u32, k.1, k.2)
}

impl Journal {
    /// Opens (creating) `dir/journal.log`, keeping what it holds for [`Journal::replay`].
    /// The directory is made 0700 and the log 0600: it holds every user's data.
    pub fn open(dir: &Path, stats: Arc<Counters>) -> io::Result<Journal> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(dir.join("journal.log"))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let size = file.metadata()?.len();
        Ok(Journal {
            log: Mutex::new(Log {
                file,
                next_seq: 1,
                written: 0,
                synced: 0,
                syncing: false,
                size,
            }),
            done: Condvar::new(),
            stats,
        })
    }

    /// The sequence number the next record gets: records before it were appended.
    pub fn next_seq(&self) -> u64 {
        lock(&self.log).next_seq
    }

    /// Appends a buffered write (durable once [`Journal::sync_to`] its number returns).
    pub fn append_write(
        &self,
        key: Key,
        path: &[u8],
        user: Option<Principal>,
        off: u64,
        data: &[u8],
    ) -> io::Result<u64> {
        let seq = self.append(|seq| Entry::Write {
            seq,
            key: key32(key),
            path: ByteBuf::from(path.to_vec()),
            user,
            off,
            data: ByteBuf::from(data.to_vec()),
        })?;
        Counters::add(&self.stats.journal_records, 1);
        Ok(seq)
    }

    /// Marks `key`'s records before `seq` done (durable with the next sync).
    pub fn clean(&self, key: Key, seq: u64) -> io::Result<()> {
        self.append(|_| Entry::Clean {
            seq,
            key: key32(key),
        })
        .map(drop)
    }

    fn append(&self, entry: impl FnOnce(u64) -> Entry) -> io::Result<u64> {
        let mut g = lock(&self.log);
        let seq = g.next_seq;
        let payload = rmp_serde::to_vec(&entry(seq)).map_err(io::Error::other)?;
        let mut rec = Vec::with_capacity(payload.len() + 8);
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        rec.extend_from_slice(&payload);
        g.file.write_all(&rec)?;
        g.next_seq += 1;
        g.written = seq;
        g.size += rec.len() as u64;
        self.stats
            .journal_bytes
            .store(g.size, std::sync::atomic::Ordering::Relaxed);
        Ok(seq)
    }

    /// Returns once everything appended so far is durable.
    pub fn sync(&self) -> io::Result<()> {
        let seq = lock(&self.log).written;
        self.sync_to(seq)
    }

    /// Returns once record `seq` is durable. Group commit: one writer syncs for all who
    /// appended before it started.
    pub fn sync_to(&self, seq: u64) -> io::Result<()> {
        let mut g = lock(&self.log);
        loop {
            if g.synced >= seq {
                return Ok(());
            }
            if !g.syncing {
                g.syncing = true;
                let target = g.written;
                let file = g.file.try_clone();
                drop(g);
                let r = file.and_then(|f| f.sync_data());
                g = lock(&self.log);
                g.syncing = false;
                if r.is_ok() {
                    g.synced = g.synced.max(target);
                }
                self.done.notify_all();
                r?;
            } else {
                g = self.done.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Empties the log if `clean()` says nothing is buffered or being written (checked
    /// under the log's lock, so no record can be appended meanwhile).
    pub fn reset_if(&self, clean: impl FnOnce() -> bool) -> io::Result<()> {
        let mut g = lock(&self.log);
        if g.size == 0 || g.syncing || !clean() {
            return Ok(());
        }
        g.file.set_len(0)?;
        g.file.sync_data()?;
        g.size = 0;
        g.synced = g.written;
        self.stats
            .journal_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Bytes in the log.
    pub fn size(&self) -> u64 {
        lock(&self.log).size
    }

    /// Writes what the log holds to the backends, fsyncs each file, and empties the
    /// log. Returns the records replayed.
    pub fn replay(&self, backends: &[RemoteFs]) -> io::Result<usize> {
        let entries = {
            let g = lock(&self.log);
            let mut f = g.file.try_clone()?;
            use std::io::Seek;
            f.seek(io::SeekFrom::Start(0))?;
            read_entries(&mut f)
        };
        let mut clean: HashMap<(u32, u64, u64), u64> = HashMap::new();
        for e in &entries {
            if let Entry::Clean { seq, key } = e {
                let c = clean.entry(*key).or_default();
                *c = (*c).max(*seq);
            }
        }
        let mut open: HashMap<(u32, u64, u64), Option<(RemoteFs, posix_ship::proto::Fh)>> =
            HashMap::new();
        let mut replayed = 0;
        for e in entries {
            let Entry::Write {
                seq,
                key,
                path,
                user,
                off,
                data,
            } = e
            else {
                continue;
            };
            if clean.get(&key).is_some_and(|c| seq < *c) {
                continue;
            }
            let Some(backend) = backends.get(key.0 as usize) else {
                tracing::warn!(?key, "journal: no such backend now; record skipped");
                continue;
            };
            let target = open
                .entry(key)
                .or_insert_with(|| reopen(backend, key, &path, user));
            if let Some((fs, fh)) = target {
                fs.pwrite(*fh, &data, Some(off))?;
                replayed += 1;
            }
        }
        for (fs, fh) in open.into_values().flatten() {
            fs.call(FSYNC, &(fh, false))?;
            fs.call(CLOSE, &fh)?;
        }
        self.reset_if(|| true)?;
        if replayed > 0 {
            tracing::info!(records = replayed, "journal replayed to the backends");
        }
        Ok(replayed)
    }
}

/// Opens the file a record was written to, as its writer; `None` (skipped) if it is
/// gone or another file now has its name.
fn reopen(
    backend: &RemoteFs,
    key: (u32, u64, u64),
    path: &[u8],
    user: Option<Principal>,
) -> Option<(RemoteFs, posix_ship::proto::Fh)> {
    let fs = backend.acting_for(user);
    let req = OpenReq {
        path: ByteBuf::from(path.to_vec()),
        flags: libc::O_WRONLY,
        mode: 0,
    };
    let opened = match fs.call(OPEN, &req) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(path = %String::from_utf8_lossy(path), error = %e, "journal: cannot reopen; records skipped");
            return None;
        }
    };
    let a = fs.call(STAT, &(Target::Handle(opened.fh), true)).ok();
    if a.is_some_and(|a| (a.dev, a.ino) == (key.1, key.2)) {
        Some((fs, opened.fh))
    } else {
        tracing::warn!(path = %String::from_utf8_lossy(path), "journal: the path names another file now; records skipped");
        let _ = fs.call(CLOSE, &opened.fh);
        None
    }
}

/// The entries of a log, up to a torn or corrupt tail.
fn read_entries(f: &mut impl Read) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut head = [0u8; 8];
    while f.read_exact(&mut head).is_ok() {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            tracing::warn!(len, "journal: record too large; the rest is ignored");
            break;
        }
        let mut payload = vec![0u8; len as usize];
        if f.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            tracing::warn!("journal: torn tail ignored");
            break;
        }
        match rmp_serde::from_slice(&payload) {
            Ok(e) => out.push(e),
            Err(e) => {
                tracing::warn!(error = %e, "journal: undecodable record; the rest is ignored");
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_log() {
        let dir = std::env::temp_dir().join(format!("ionode-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = Journal::open(&dir, Arc::new(Counters::default())).unwrap();
        j.append_write((0, 1, 2), b"/f", None, 0, b"abc").unwrap();
        j.clean((0, 1, 2), 2).unwrap();
        j.append_write((0, 1, 2), b"/f", None, 3, b"def").unwrap();
        j.sync().unwrap();
        let log = dir.join("journal.log");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(&dir), mode(&log)),
            (0o700, 0o600),
            "users' data: ours only"
        );
        let whole = std::fs::read(&log).unwrap();
        assert_eq!(read_entries(&mut &whole[..]).len(), 3);
        assert_eq!(
            read_entries(&mut &whole[..whole.len() - 1]).len(),
            2,
            "torn"
        );
        let mut bad = whole.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(read_entries(&mut &bad[..]).len(), 2, "bad checksum");
        let mut huge = whole[..0].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(
            read_entries(&mut &huge[..]).is_empty(),
            "no huge allocation"
        );
        j.reset_if(|| false).unwrap();
        assert_eq!(j.size(), whole.len() as u64, "not clean: kept");
        j.reset_if(|| true).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
