//! A write-out's backend writes: up to [`WRITES_IN_FLIGHT`] requests at once (one file's
//! write-out made them one after another: 64 clients' random 4 KiB writes over one
//! 512 MiB file, which merge little, went through the node at 0.11x direct with a
//! 200 µs backend); the writes smaller than [`LISTED`] that come one after another go
//! together, up to `MAX_WRITE_MANY` in one list write (`posix.write_many`, IOFSL's one
//! list-I/O call per batch): with 8 MiB per client of that shape, the 512 MiB file more
//! than the node's memory, 107 764 backend writes. A backend built before list writes
//! answers `ENOSYS`; its file's writes go alone from then on.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::Ordering;

use posix_ship::client::{PendingWrite, slice_parts};
use posix_ship::proto::MAX_WRITE_MANY;

use super::*;

/// Backend requests of one write-out in flight at once, and their bytes at most (once
/// more than one is in flight): half what a server stages for a connection by default.
const WRITES_IN_FLIGHT: usize = 16;
const BYTES_IN_FLIGHT: u64 = 32 << 20;

/// Writes smaller than this go to the backend together (one that large is worth a
/// request of its own).
const LISTED: u64 = 1 << 20;

/// A write's outcome: `None` if it was not made.
pub(super) type Outcome = Option<Result<(), i32>>;

impl Files {
    /// Makes `writes` (disjoint, in offset order) at the backend through `b`, none
    /// started after one fails. Each one's outcome, in order.
    pub(super) fn write_all(&self, b: &Backing, writes: &[Write]) -> Vec<Outcome> {
        let mut out: Vec<Outcome> = writes.iter().map(|_| None).collect();
        let parts: Vec<Vec<&[u8]>> = writes
            .iter()
            .map(|w| w.parts.iter().map(Vec::as_slice).collect())
            .collect();
        let size = |r: &Range<usize>| writes[r.clone()].iter().map(Write::len).sum::<u64>();
        let listing = !b.writes_alone.load(Ordering::Acquire);
        let mut flight: VecDeque<(Range<usize>, PendingWrite<'_>)> = VecDeque::new();
        let (mut failing, mut bytes) = (false, 0u64);
        for r in units(writes, listing) {
            // (Bytes too: more than a server stages for one connection at once comes
            // back short.)
            while flight.len() == WRITES_IN_FLIGHT
                || (bytes >= BYTES_IN_FLIGHT && !flight.is_empty())
            {
                let (j, p) = flight.pop_front().expect("not empty");
                bytes -= size(&j);
                failing |= self.land(b, (writes, &parts), j, p, &mut out);
            }
            if failing {
                break;
            }
            let started = if r.len() == 1 {
                self.stats.request_out("posix.write");
                b.fs.pwrite_parts_start(b.fh(), &parts[r.start], Some(writes[r.start].off))
            } else {
                self.stats.request_out("posix.write_many");
                let list: Vec<_> = r
                    .clone()
                    .map(|i| (writes[i].off, parts[i].clone()))
                    .collect();
                b.fs.pwrite_many_start(b.fh(), &list)
            };
            match started {
                Ok(p) => {
                    bytes += size(&r);
                    flight.push_back((r, p));
                }
                Err(e) => {
                    out[r.start] = Some(Err(errno_of(&e)));
                    failing = true;
                }
            }
        }
        for (j, p) in flight {
            self.land(b, (writes, &parts), j, p, &mut out);
        }
        out
    }

    /// Lands the request for `writes[r]` into `out`; whether one of them failed. What
    /// the server did not take (a short count: its staging; a handle it forgot; busy;
    /// no list writes) is written the blocking way, which goes on, opens again or waits.
    fn land(
        &self,
        b: &Backing,
        (writes, parts): (&[Write], &[Vec<&[u8]>]),
        r: Range<usize>,
        p: PendingWrite<'_>,
        out: &mut [Outcome],
    ) -> bool {
        let mut taken = match p.wait() {
            Ok(n) => n.n,
            Err(e) => {
                if r.len() > 1 && e.raw_os_error() == Some(libc::ENOSYS) {
                    b.writes_alone.store(true, Ordering::Release);
                }
                0
            }
        };
        let mut failed = false;
        for i in r {
            let w = &writes[i];
            let from = taken.min(w.len());
            taken -= from;
            if from == w.len() {
                out[i] = Some(Ok(()));
                continue;
            }
            self.stats.request_out("posix.write");
            let rest = slice_parts(&parts[i], from as usize, usize::MAX);
            let made = b.with(|fh| b.fs.pwrite_parts(fh, &rest, Some(w.off + from)));
            let made = made.map(drop).map_err(|e| errno_of(&e));
            failed |= made.is_err();
            out[i] = Some(made);
        }
        failed
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// `writes` as requests: a write of [`LISTED`] bytes or more alone, the smaller ones that
/// come one after another together (`listing`), up to `MAX_WRITE_MANY` and
/// [`MAX_MERGE`] bytes in one.
fn units(writes: &[Write], listing: bool) -> Vec<Range<usize>> {
    let small = |i: usize| listing && writes[i].len() < LISTED;
    let mut units = Vec::new();
    let mut i = 0;
    while i < writes.len() {
        let (mut j, mut bytes) = (i + 1, writes[i].len());
        while small(i)
            && j < writes.len()
            && j - i < MAX_WRITE_MANY
            && small(j)
            && bytes + writes[j].len() <= MAX_MERGE as u64
        {
            bytes += writes[j].len();
            j += 1;
        }
        units.push(i..j);
        i = j;
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(off: u64, len: usize) -> Write {
        Write {
            off,
            parts: vec![vec![0; len]],
        }
    }

    #[test]
    fn small_writes_one_after_another_go_together_within_the_bounds() {
        let k = 4096;
        let ws = [
            w(0, k),
            w(8192, k),
            w(1 << 20, 2 << 20),
            w(4 << 20, k),
            w(5 << 20, k),
        ];
        assert_eq!(units(&ws, true), vec![0..2, 2..3, 3..5]);
        assert_eq!(units(&ws, false), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
        // At most MAX_WRITE_MANY in one.
        let many: Vec<_> = (0..MAX_WRITE_MANY as u64 + 3)
            .map(|i| w(i * 8192, k))
            .collect();
        assert_eq!(
            units(&many, true),
            vec![0..MAX_WRITE_MANY, MAX_WRITE_MANY..MAX_WRITE_MANY + 3]
        );
        // At most MAX_MERGE bytes in one: 16 writes of just under 1 MiB, 8 by 8.
        let big: Vec<_> = (0..16u64).map(|i| w(i << 21, (1 << 20) - 1)).collect();
        assert_eq!(units(&big, true), vec![0..8, 8..16]);
        assert!(units(&[], true).is_empty());
    }
}
