//! Finding the mount to ride on and asking it about files: the `ioctl`s of
//! [`posix_ship::ride`], the mount's owner from `/proc/self/mountinfo`. Everything here
//! runs with the C library's own calls: the first of it runs inside the configuration's
//! first use, which an interposed call would wait for.

use libc::{c_int, c_void};
use posix_ship::ride::{INFO, INFO_SIZE, Info};

use crate::real::call_real;

/// Asks the mount at `dir` what it serves: `None` if it is no posix-ship mount; else the
/// server's address and the mount's device number, if it can be ridden on.
#[allow(clippy::option_option)]
pub fn probe(dir: &[u8]) -> Option<Option<(String, u64)>> {
    let c = std::ffi::CString::new(dir).ok()?;
    let fd = call_real!(open: fn(*const libc::c_char, c_int, libc::mode_t) -> c_int,
        c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0);
    if fd < 0 {
        return None;
    }
    let info = info(fd);
    let dev = kernel_stat(fd).map(|s| s.st_dev);
    call_real!(close: fn(c_int) -> c_int, fd);
    let info = info?;
    // The mount names the server the data goes to and whom to prove this user to: only a
    // mount of this user's or root's (a daemon another user runs could name its own).
    let mounts = read_real(c"/proc/self/mountinfo");
    let at = realpath(dir)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match owner(&mounts, &at) {
        Some(uid) if uid == me || uid == 0 => {}
        other => {
            eprintln!(
                "posix-ship interposer: {} is not a posix-ship mount of this user's or \
                 root's (owner {other:?}): nothing is shipped around it",
                String::from_utf8_lossy(dir)
            );
            return Some(None);
        }
    }
    if info.writeback {
        eprintln!(
            "posix-ship interposer: {} is mounted with --writeback-cache, where the kernel \
             keeps file sizes itself: nothing is shipped around it",
            String::from_utf8_lossy(dir)
        );
        return Some(None);
    }
    Some(Some((info.server, dev?)))
}

/// The whole of a small file, read with the C library's calls.
fn read_real(path: &std::ffi::CStr) -> String {
    let fd = call_real!(open: fn(*const libc::c_char, c_int, libc::mode_t) -> c_int,
        path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC, 0);
    let mut out = Vec::new();
    if fd >= 0 {
        let mut b = [0u8; 8192];
        loop {
            let n = call_real!(read: fn(c_int, *mut c_void, usize) -> isize,
                fd, b.as_mut_ptr().cast(), b.len());
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&b[..n as usize]);
        }
        call_real!(close: fn(c_int) -> c_int, fd);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `dir` with symbolic links, `.` and `..` resolved (the C library's `realpath`).
fn realpath(dir: &[u8]) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(dir).ok()?;
    let mut out = vec![0u8; libc::PATH_MAX as usize + 1];
    let r = call_real!(realpath: fn(*const libc::c_char, *mut libc::c_char) -> *mut libc::c_char,
        c.as_ptr(), out.as_mut_ptr().cast());
    if r.is_null() {
        return None;
    }
    let n = out.iter().position(|&b| b == 0)?;
    out.truncate(n);
    Some(out)
}

/// The uid of the daemon serving the posix-ship FUSE mount at `at` (canonical), from
/// `/proc/self/mountinfo`'s `user_id=` (`None`: no such mount).
fn owner(mountinfo: &str, at: &[u8]) -> Option<u32> {
    // mountinfo escapes these in paths as octal.
    let mut esc = String::new();
    for &b in at {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => esc.push_str(&format!("\\{b:03o}")),
            _ => esc.push(b as char),
        }
    }
    mountinfo.lines().rev().find_map(|l| {
        let (mine, fs) = l.split_once(" - ")?;
        if mine.split(' ').nth(4)? != esc {
            return None;
        }
        // A FUSE file system (`fuse`, or `fuse.posix-ship` when mounted with a subtype)
        // whose source a posix-ship daemon names.
        let mut f = fs.split(' ');
        let (kind, source, opts) = (f.next()?, f.next()?, f.next()?);
        if !(kind == "fuse" || kind == "fuse.posix-ship") || !source.starts_with("posix-ship:") {
            return None;
        }
        opts.split(',')
            .find_map(|o| o.strip_prefix("user_id="))?
            .parse()
            .ok()
    })
}

pub(super) fn info(fd: c_int) -> Option<Info> {
    let mut b = vec![0u8; INFO_SIZE];
    let r = call_real!(ioctl: fn(c_int, libc::c_ulong, *mut c_void) -> c_int,
        fd, INFO as libc::c_ulong, b.as_mut_ptr().cast());
    if r < 0 {
        return None;
    }
    Info::decode(&b).ok()
}

pub(super) fn kernel_stat(fd: c_int) -> Option<libc::stat> {
    // SAFETY: all-zero is a valid `struct stat`, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = call_real!(fstat64: fn(c_int, *mut libc::stat) -> c_int, fd, &mut st);
    (r == 0).then_some(st)
}

#[cfg(test)]
mod tests {
    use super::owner;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:44 / /mnt/a\\040b rw,nosuid,nodev shared:9 - fuse.posix-ship posix-ship:tcp://x rw,user_id=1000,group_id=1000,default_permissions
41 22 0:45 / /mnt/c rw,nosuid,nodev shared:9 - fuse.sshfs host: rw,user_id=0,group_id=0
42 22 0:46 / /mnt/d rw shared:9 - fuse.posix-ship posix-ship:sm://1 rw,user_id=0,group_id=0
43 22 0:47 / /mnt/d rw shared:9 - fuse posix-ship:sm://2 rw,user_id=7,group_id=7
44 22 0:48 / /mnt/e rw - fuse other:x rw,user_id=0,group_id=0
";

    #[test]
    fn the_mounts_owner_comes_from_mountinfo() {
        assert_eq!(owner(MOUNTINFO, b"/mnt/a b"), Some(1000), "escaped space");
        assert_eq!(
            owner(MOUNTINFO, b"/mnt/c"),
            None,
            "another FUSE file system"
        );
        assert_eq!(
            owner(MOUNTINFO, b"/mnt/d"),
            Some(7),
            "the last mount on top wins"
        );
        assert_eq!(owner(MOUNTINFO, b"/mnt/e"), None, "FUSE, not posix-ship's");
        assert_eq!(owner(MOUNTINFO, b"/mnt"), None);
        assert_eq!(owner(MOUNTINFO, b"/"), None, "not FUSE");
    }
}
