//! Read-ahead for sequential readers: a program reading a file 4 KiB at a time (`cat`,
//! `cmp`, `sha256sum`, stdio) makes one request per window instead of one per read. The
//! window starts at [`FIRST_WINDOW`] and doubles with each sequential miss up to the
//! configured maximum (8 MiB by default); a read elsewhere goes straight to the server and
//! starts over. The logic is pure (the server read is a closure) and tested without I/O.
//!
//! Consistency: within the process, a read sees every write the process made before it
//! (a write or truncate through any handle of a file drops every window of that file: each
//! file, known by device and inode, has a generation that writes bump, and a window holds
//! only while its file's generation is the one it was read at); other processes' writes
//! are seen at the next open (close-to-open, as NFS gives). Memory is bounded per process: windows of all open files together stay
//! under [`Settings::total`] (a window that does not fit is read without read-ahead).
//!
//! Settings (environment, read once per process): `POSIX_SHIP_READAHEAD` (largest
//! window, bytes with an optional `K`/`M` suffix; `0` turns read-ahead off) and
//! `POSIX_SHIP_READAHEAD_TOTAL` (all windows of the process, default 64M).

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The first window of a sequential reader.
pub const FIRST_WINDOW: usize = 128 << 10;

/// How much to read ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The largest window (0: no read-ahead).
    pub max: usize,
    /// All windows of the process together.
    pub total: usize,
}

impl Settings {
    /// From `POSIX_SHIP_READAHEAD` and `POSIX_SHIP_READAHEAD_TOTAL` (8M and 64M unset).
    pub fn from_env() -> Settings {
        static S: OnceLock<Settings> = OnceLock::new();
        *S.get_or_init(|| {
            let get = |k: &str, d: usize| {
                std::env::var(k)
                    .ok()
                    .and_then(|v| parse_size(&v))
                    .unwrap_or(d)
            };
            Settings {
                max: get("POSIX_SHIP_READAHEAD", 8 << 20),
                total: get("POSIX_SHIP_READAHEAD_TOTAL", 64 << 20),
            }
        })
    }
}

/// `4096`, `128K`, `8M`, `1G`.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        _ => (s, 0),
    };
    num.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// Bytes held in windows by the whole process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Write generations of files, by a hash of (device, inode) (two files sharing a slot only
/// drop each other's windows more often), and one that every write bumps (for windows of
/// files whose identity is unknown).
static GENS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
static ANY: AtomicU64 = AtomicU64::new(0);

fn slot(id: (u64, u64)) -> usize {
    let h = id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id.1.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (h >> 56) as usize
}

/// The read-ahead state of one open file.
pub struct ReadAhead {
    settings: Settings,
    /// The generation this file's windows are checked against.
    epoch: &'static AtomicU64,
    st: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The window: `data` holds the file's bytes from `off`.
    off: u64,
    data: Vec<u8>,
    /// Where the last read ended (a read there is sequential).
    next: u64,
    /// The size of the last window read.
    window: usize,
    /// The file's write generation when the window was read.
    epoch: u64,
}

impl State {
    fn drop_window(&mut self) {
        HELD.fetch_sub(self.data.capacity(), Ordering::Relaxed);
        self.data = Vec::new();
    }
}

impl ReadAhead {
    /// For the file `id` (device, inode; `None` if unknown), with the process's settings.
    pub fn new(id: Option<(u64, u64)>) -> ReadAhead {
        Self::with(Settings::from_env(), id)
    }

    /// With these settings.
    pub fn with(settings: Settings, id: Option<(u64, u64)>) -> ReadAhead {
        ReadAhead {
            settings,
            epoch: id.map_or(&ANY, |id| &GENS[slot(id)]),
            st: Mutex::new(State::default()),
        }
    }

    /// Reads at `off` into `buf`, through the window; `fetch(off, buf)` reads from the
    /// server (all of `buf` unless the file ends).
    pub fn read(
        &self,
        off: u64,
        buf: &mut [u8],
        mut fetch: impl FnMut(u64, &mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut s = self.st.lock().unwrap_or_else(|e| e.into_inner());
        if self.settings.max == 0 || buf.is_empty() {
            return fetch(off, buf);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let end = s.off + s.data.len() as u64;
        // Served from the window if it holds all of `buf`, or the file ends inside it.
        if off >= s.off && off < end && s.epoch == epoch {
            let from = (off - s.off) as usize;
            let n = buf.len().min(s.data.len() - from);
            if n == buf.len() || s.data.len() < s.window {
                buf[..n].copy_from_slice(&s.data[from..from + n]);
                s.next = off + n as u64;
                return Ok(n);
            }
        }
        let sequential = off == s.next;
        let window = (s.window * 2).clamp(FIRST_WINDOW, self.settings.max);
        s.drop_window();
        if !sequential || buf.len() >= window || !reserve(window, self.settings.total) {
            s.window = 0;
            let n = fetch(off, buf)?;
            s.next = off + n as u64;
            return Ok(n);
        }
        let mut data = vec![0u8; window];
        let got = fetch(off, &mut data);
        let n = match got {
            Ok(n) => n,
            Err(e) => {
                HELD.fetch_sub(window, Ordering::Relaxed);
                return Err(e);
            }
        };
        data.truncate(n);
        let k = buf.len().min(n);
        buf[..k].copy_from_slice(&data[..k]);
        (s.off, s.data, s.window, s.next, s.epoch) = (off, data, window, off + k as u64, epoch);
        Ok(k)
    }

    /// The file is about to be written or truncated through this handle: every window of
    /// it in the process is dropped.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        ANY.fetch_add(1, Ordering::AcqRel);
        let mut s = self.st.lock().unwrap_or_else(|e| e.into_inner());
        s.drop_window();
        s.window = 0;
    }
}

impl Default for ReadAhead {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.st
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drop_window();
    }
}

/// Counts `n` more bytes held if the process stays within `total`.
fn reserve(n: usize, total: usize) -> bool {
    let mut held = HELD.load(Ordering::Relaxed);
    loop {
        if held + n > total {
            return false;
        }
        match HELD.compare_exchange_weak(held, held + n, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(h) => held = h,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Log = std::rc::Rc<std::cell::RefCell<Vec<(u64, usize)>>>;

    /// A file of `len` bytes (byte i is i mod 251) and a log of the server reads.
    fn file(len: u64) -> (impl FnMut(u64, &mut [u8]) -> io::Result<usize>, Log) {
        let log = Log::default();
        let l = log.clone();
        let f = move |off: u64, b: &mut [u8]| {
            l.borrow_mut().push((off, b.len()));
            let n = (len.saturating_sub(off) as usize).min(b.len());
            for (i, x) in b[..n].iter_mut().enumerate() {
                *x = ((off + i as u64) % 251) as u8;
            }
            Ok(n)
        };
        (f, log)
    }

    const S: Settings = Settings {
        max: 1 << 20,
        total: 64 << 20,
    };

    #[test]
    fn the_tests_files_have_slots_of_their_own() {
        let ids = [(1, 1), (2, 2), (3, 3), (7, 9), (7, 10)];
        let mut slots: Vec<usize> = ids.iter().map(|&id| slot(id)).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), ids.len());
    }

    #[test]
    fn a_sequential_reader_makes_few_requests_and_reads_the_right_bytes() {
        let len = 5 << 20;
        let (mut f, log) = file(len);
        let ra = ReadAhead::with(S, Some((1, 1)));
        let mut off = 0;
        let mut buf = [0u8; 4096];
        loop {
            let n = ra.read(off, &mut buf, &mut f).unwrap();
            if n == 0 {
                break;
            }
            assert!(
                buf[..n]
                    .iter()
                    .enumerate()
                    .all(|(i, x)| *x == ((off + i as u64) % 251) as u8)
            );
            off += n as u64;
        }
        assert_eq!(off, len);
        let sizes: Vec<usize> = log.borrow().iter().map(|r| r.1).collect();
        // 128K, 256K, 512K, then 1M windows to the end, and one read at the end.
        assert_eq!(&sizes[..4], &[128 << 10, 256 << 10, 512 << 10, 1 << 20]);
        assert!(sizes.len() <= 9, "{sizes:?}");
    }

    #[test]
    fn random_reads_go_straight_to_the_server() {
        let (mut f, log) = file(1 << 20);
        let ra = ReadAhead::with(S, Some((2, 2)));
        let mut buf = [0u8; 100];
        ra.read(5000, &mut buf, &mut f).unwrap();
        ra.read(100, &mut buf, &mut f).unwrap();
        assert_eq!(&*log.borrow(), &[(5000, 100), (100, 100)]);
        assert_eq!(buf[0], 100);
    }

    #[test]
    fn a_write_drops_the_window_and_the_next_read_asks_the_server() {
        let (mut f, log) = file(1 << 20);
        let ra = ReadAhead::with(S, Some((3, 3)));
        let mut buf = [0u8; 10];
        ra.read(0, &mut buf, &mut f).unwrap();
        ra.read(10, &mut buf, &mut f).unwrap();
        assert_eq!(log.borrow().len(), 1, "the second read was in the window");
        ra.invalidate();
        ra.read(20, &mut buf, &mut f).unwrap();
        assert_eq!(log.borrow().len(), 2);
        assert_eq!(buf[0], 20);
    }

    #[test]
    fn a_write_through_another_handle_of_the_file_drops_this_window() {
        let (mut f, log) = file(1 << 20);
        let (a, b) = (
            ReadAhead::with(S, Some((7, 9))),
            ReadAhead::with(S, Some((7, 9))),
        );
        let other = ReadAhead::with(S, Some((7, 10)));
        let mut buf = [0u8; 10];
        a.read(0, &mut buf, &mut f).unwrap();
        other.invalidate();
        a.read(10, &mut buf, &mut f).unwrap();
        assert_eq!(
            log.borrow().len(),
            1,
            "another file's write leaves it (slots differ)"
        );
        b.invalidate();
        a.read(20, &mut buf, &mut f).unwrap();
        assert_eq!(
            log.borrow().len(),
            2,
            "this file's write through b drops a's window"
        );
    }

    #[test]
    fn off_switches_it_off_and_sizes_parse() {
        let (mut f, log) = file(1 << 20);
        let ra = ReadAhead::with(Settings { max: 0, total: 0 }, None);
        let mut buf = [0u8; 10];
        ra.read(0, &mut buf, &mut f).unwrap();
        ra.read(10, &mut buf, &mut f).unwrap();
        assert_eq!(&*log.borrow(), &[(0, 10), (10, 10)]);
        assert_eq!(parse_size("8M"), Some(8 << 20));
        assert_eq!(parse_size("128k"), Some(128 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
    }
}
