//! The I/O node's counters, and the `ionode stats` table.

use std::sync::atomic::{AtomicU64, Ordering};

use posix_ship::proto::ServerStats;
use rpc_core::Rpc;
use serde::{Deserialize, Serialize};

/// The operations counted, by protocol name (client requests in, backend requests out).
pub const OPS: [&str; 35] = [
    "posix.stat",
    "posix.open",
    "posix.close",
    "posix.close_many",
    "posix.read",
    "posix.read_many",
    "posix.write",
    "posix.write_many",
    "posix.truncate",
    "posix.fsync",
    "posix.unlink",
    "posix.mkdir",
    "posix.rmdir",
    "posix.rename",
    "posix.readdir",
    "posix.symlink",
    "posix.readlink",
    "posix.statfs",
    "posix.chmod",
    "posix.utimens",
    "posix.access",
    "posix.link",
    "posix.chown",
    "posix.getxattr",
    "posix.setxattr",
    "posix.listxattr",
    "posix.removexattr",
    "posix.fallocate",
    "posix.rename2",
    "posix.server_stats",
    "posix.readdir_plus",
    "posix.readdir_plus_xattrs",
    "posix.setattr",
    "posix.lend",
    "posix.adopt",
];

/// What the node has done and holds, as `ionode stats` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Per operation: (name, client requests in, backend requests out).
    pub ops: Vec<(String, u64, u64)>,
    /// Client requests being served.
    pub in_flight: u64,
    /// Open client handles.
    pub handles: u64,
    /// Requests refused by a per-client or per-user bound.
    pub refused: u64,
    /// Bytes clients wrote to the node / the node wrote to backends.
    pub bytes_in: u64,
    /// Bytes written to backends.
    pub bytes_out: u64,
    /// Client writes buffered (acknowledged before reaching a backend).
    pub buffered_writes: u64,
    /// Client writes merged into an extent already buffered.
    pub merged_writes: u64,
    /// Client writes sent straight through (appends, large, or under memory pressure).
    pub write_through: u64,
    /// Flushes of a file's buffered writes.
    pub flushes: u64,
    /// Bytes buffered now / at most so far.
    pub buffered_bytes: u64,
    /// Peak of `buffered_bytes`.
    pub buffered_peak: u64,
    /// Client reads served from read-ahead data / backend reads made for read-ahead.
    pub readahead_hits: u64,
    /// Backend reads made to fill the read-ahead window.
    pub readahead_fetches: u64,
    /// `stat`s answered from the attribute cache.
    pub attr_hits: u64,
    /// Opens that shared a backend handle another client of the same user opened alike.
    pub shared_opens: u64,
    /// Deferred write errors (reported at the file's next fsync or close).
    pub deferred_errors: u64,
    /// Backend calls that failed for a transport reason.
    pub backend_errors: u64,
    /// Writes journaled / journal bytes not yet flushed to a backend.
    pub journal_records: u64,
    /// Journal bytes held for writes not yet on a backend.
    pub journal_bytes: u64,
    /// Reads, writes and closes answered on the thread that received them (from memory,
    /// no worker woken).
    #[serde(default)]
    pub answered_inline: u64,
    /// `stat`s, `open`s and `unlink`s begun on the thread that received them (answered
    /// from the backend's completion, no worker woken).
    #[serde(default)]
    pub begun_inline: u64,
}

impl NodeStats {
    /// Client requests in, backend requests out, for `op` (0s if unknown).
    pub fn op(&self, op: &str) -> (u64, u64) {
        self.ops
            .iter()
            .find(|o| o.0 == op)
            .map_or((0, 0), |o| (o.1, o.2))
    }

    /// All client requests, all backend requests.
    pub fn totals(&self) -> (u64, u64) {
        self.ops.iter().fold((0, 0), |(a, b), o| (a + o.1, b + o.2))
    }
}

/// The node's counters.
pub const STATS: Rpc<(), NodeStats> = Rpc::new("ionode.stats");

macro_rules! counters {
    ($($f:ident),*) => {
        /// Live counters (atomics; a snapshot is [`NodeStats`]).
        pub struct Counters {
            ops_in: [AtomicU64; OPS.len()],
            ops_out: [AtomicU64; OPS.len()],
            $(#[allow(missing_docs)] pub $f: AtomicU64,)*
        }

        impl Default for Counters {
            fn default() -> Self {
                Counters {
                    ops_in: [const { AtomicU64::new(0) }; OPS.len()],
                    ops_out: [const { AtomicU64::new(0) }; OPS.len()],
                    $($f: AtomicU64::new(0),)*
                }
            }
        }

        impl Counters {
            /// A snapshot, with what the service holds for the node's clients (handles,
            /// requests in flight, refusals: counted by the service, not here).
            pub fn snapshot(&self, held: &ServerStats) -> NodeStats {
                NodeStats {
                    in_flight: held.in_flight,
                    handles: held.open_files,
                    refused: held.refused,
                    ops: OPS
                        .iter()
                        .enumerate()
                        .map(|(i, n)| {
                            let g = |a: &[AtomicU64; OPS.len()]| a[i].load(Ordering::Relaxed);
                            (n.to_string(), g(&self.ops_in), g(&self.ops_out))
                        })
                        .collect(),
                    $($f: self.$f.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    bytes_in,
    bytes_out,
    buffered_writes,
    merged_writes,
    write_through,
    flushes,
    buffered_bytes,
    buffered_peak,
    readahead_hits,
    readahead_fetches,
    attr_hits,
    shared_opens,
    deferred_errors,
    backend_errors,
    journal_records,
    journal_bytes,
    answered_inline,
    begun_inline
);

fn index(op: &str) -> Option<usize> {
    OPS.iter().position(|o| *o == op)
}

impl Counters {
    /// A client request for `op` arrived.
    pub fn request_in(&self, op: &str) {
        if let Some(i) = index(op) {
            self.ops_in[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Client requests since start, all operations.
    pub fn requests_in(&self) -> u64 {
        self.ops_in.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// A backend request for `op` was made.
    pub fn request_out(&self, op: &str) {
        if let Some(i) = index(op) {
            self.ops_out[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The table `ionode stats` prints.
pub fn table(s: &NodeStats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>12} {:>12} {:>8} {:>10}",
        "operation", "client", "backend", "ratio", "as lists"
    );
    // A list read or write is counted with the reads or writes it made (its own row
    // would have no client requests).
    let lists = |op: &str| s.op(&format!("{op}_many")).1;
    for (op, i, o) in s.ops.iter().filter(|o| !o.0.ends_with("_many")) {
        let listed = lists(op);
        let o = o + listed;
        if i + o == 0 {
            continue;
        }
        let ratio = if o > 0 {
            format!("{:.1}", *i as f64 / o as f64)
        } else {
            "-".into()
        };
        let listed = if listed > 0 {
            listed.to_string()
        } else {
            "-".into()
        };
        let name = op.strip_prefix("posix.").unwrap_or(op);
        let _ = writeln!(out, "{name:<20} {i:>12} {o:>12} {ratio:>8} {listed:>10}");
    }
    let (i, o) = s.totals();
    let ratio = if o > 0 {
        format!("{:.1}", i as f64 / o as f64)
    } else {
        "-".into()
    };
    let _ = writeln!(out, "{:<20} {i:>12} {o:>12} {ratio:>8}", "all");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let _ = writeln!(
        out,
        "writes: {} buffered ({} merged), {} through, {} flushes; {:.1} MiB in, {:.1} MiB out",
        s.buffered_writes,
        s.merged_writes,
        s.write_through,
        s.flushes,
        mib(s.bytes_in),
        mib(s.bytes_out)
    );
    let _ = writeln!(
        out,
        "write-behind: {:.1} MiB held (peak {:.1}); journal: {} records, {:.1} MiB held",
        mib(s.buffered_bytes),
        mib(s.buffered_peak),
        s.journal_records,
        mib(s.journal_bytes)
    );
    let _ = writeln!(
        out,
        "read-ahead: {} hits, {} fetches; inline: {} reads and writes answered, {} metadata calls begun; {} handles ({} opens shared a backend handle), {} in flight; errors: {} deferred, {} backend",
        s.readahead_hits,
        s.readahead_fetches,
        s.answered_inline,
        s.begun_inline,
        s.handles,
        s.shared_opens,
        s.in_flight,
        s.deferred_errors,
        s.backend_errors
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_requests_are_counted_with_the_reads_and_writes_they_made() {
        let s = NodeStats {
            ops: vec![
                ("posix.read".into(), 1000, 40),
                ("posix.read_many".into(), 0, 60),
                ("posix.write".into(), 500, 5),
                ("posix.stat".into(), 0, 0),
            ],
            ..NodeStats::default()
        };
        let t = table(&s);
        let row = |name: &str| {
            t.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        };
        assert_eq!(row("read").unwrap(), ["read", "1000", "100", "10.0", "60"]);
        assert_eq!(row("write").unwrap(), ["write", "500", "5", "100.0", "-"]);
        assert!(row("read_many").is_none() && row("stat").is_none(), "{t}");
        assert_eq!(row("all").unwrap()[1..3], ["1500", "105"]);
    }
}
