//! Cross-memory attach: `process_vm_readv`/`process_vm_writev` between two processes of one
//! node, one copy with no staging. Available unless the kernel forbids it (Yama's
//! `ptrace_scope` above 0, a seccomp filter, a container without `CAP_SYS_PTRACE` between
//! unrelated processes); [`probe`] decides once, at start-up.

use std::io;

use na_stream::{CopyDir, RawPiece};

/// The environment variable that turns single-copy RMA off (`QS_SM_CMA=0`): RMA then
/// copies through the rings. Tests use it to run everything in both modes.
pub const CMA_ENV: &str = "QS_SM_CMA";

/// Whether single copy can work here, and why not.
pub fn probe() -> Result<(), String> {
    if std::env::var(CMA_ENV).is_ok_and(|v| v.trim() == "0") {
        return Err(format!("turned off by {CMA_ENV}=0"));
    }
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        && s.trim() != "0"
    {
        return Err(format!(
            "kernel.yama.ptrace_scope is {} (0 allows process_vm_readv between peers)",
            s.trim()
        ));
    }
    // Copy within this process: catches seccomp filters and kernels without the calls.
    let src = [0x5au8; 8];
    let mut dst = [0u8; 8];
    let local = [(dst.as_mut_ptr(), dst.len())];
    let remote = [(src.as_ptr() as u64, src.len() as u64)];
    // SAFETY: `dst` is ours, valid for writes of 8 bytes, and not referenced meanwhile.
    match unsafe {
        copy(
            std::process::id() as i32,
            CopyDir::FromPeer,
            &local,
            &remote,
        )
    } {
        Ok(8) if dst == src => Ok(()),
        Ok(n) => Err(format!("process_vm_readv copied {n} of 8 bytes")),
        Err(e) => Err(format!("process_vm_readv: {e}")),
    }
}

fn iov(addr: u64, len: u64) -> libc::iovec {
    libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len as usize,
    }
}

/// Copies between our `local` pieces and `remote` (address, length) pieces of process
/// `pid`, in order, until one side ends or the kernel stops; returns bytes copied.
///
/// # Safety
/// Every local piece must be valid for reads (`ToPeer`) or writes (`FromPeer`) of its
/// length, with no live Rust reference to written memory while the call runs.
pub unsafe fn copy(
    pid: i32,
    dir: CopyDir,
    local: &[RawPiece],
    remote: &[(u64, u64)],
) -> io::Result<usize> {
    let lv: Vec<libc::iovec> = local
        .iter()
        .map(|&(p, n)| iov(p as u64, n as u64))
        .collect();
    let rv: Vec<libc::iovec> = remote.iter().map(|&(a, n)| iov(a, n)).collect();
    let want: usize = lv
        .iter()
        .map(|v| v.iov_len)
        .sum::<usize>()
        .min(rv.iter().map(|v| v.iov_len).sum());
    let (mut li, mut loff, mut ri, mut roff, mut done) = (0, 0, 0, 0, 0);
    while done < want {
        // Resume after a partial copy: trim the first vector of each side.
        let mut l: Vec<libc::iovec> = lv[li..].iter().take(1024).copied().collect();
        let mut r: Vec<libc::iovec> = rv[ri..].iter().take(1024).copied().collect();
        l[0] = iov(
            l[0].iov_base as u64 + loff as u64,
            (l[0].iov_len - loff) as u64,
        );
        r[0] = iov(
            r[0].iov_base as u64 + roff as u64,
            (r[0].iov_len - roff) as u64,
        );
        let call = match dir {
            CopyDir::FromPeer => libc::process_vm_readv,
            CopyDir::ToPeer => libc::process_vm_writev,
        };
        // SAFETY: the local vectors lie in memory the caller vouches for; the kernel
        // checks the remote ones against the peer's address space (EFAULT otherwise).
        let n = unsafe { call(pid, l.as_ptr(), l.len() as _, r.as_ptr(), r.len() as _, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return if done > 0 { Ok(done) } else { Err(e) };
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        done += n;
        advance(&lv, &mut li, &mut loff, n);
        advance(&rv, &mut ri, &mut roff, n);
    }
    Ok(done)
}

/// Moves a (vector index, offset) cursor forward by `n` bytes.
fn advance(v: &[libc::iovec], i: &mut usize, off: &mut usize, mut n: usize) {
    while n > 0 && *i < v.len() {
        let left = v[*i].iov_len - *off;
        if n < left {
            *off += n;
            return;
        }
        n -= left;
        *i += 1;
        *off = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_across_uneven_pieces_within_this_process() {
        let src: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut a = vec![0u8; 3_000];
        let mut b = vec![0u8; 7_000];
        let local = [(a.as_mut_ptr(), a.len()), (b.as_mut_ptr(), b.len())];
        let remote = [(src.as_ptr() as u64, 1), (src[1..].as_ptr() as u64, 9_999)];
        let pid = std::process::id() as i32;
        // SAFETY: a and b are ours and not referenced during the call.
        let n = unsafe { copy(pid, CopyDir::FromPeer, &local, &remote) }.unwrap();
        assert_eq!(n, 10_000);
        assert_eq!([a, b].concat(), src);
    }

    #[test]
    fn a_bad_remote_address_is_an_error_not_a_crash() {
        let mut a = [0u8; 16];
        let local = [(a.as_mut_ptr(), a.len())];
        let pid = std::process::id() as i32;
        // SAFETY: as above; the remote address is unmapped, which the kernel reports.
        let r = unsafe { copy(pid, CopyDir::FromPeer, &local, &[(8, 16)]) };
        assert!(r.is_err(), "{r:?}");
    }
}
