//! Identities from this node's user database and from the kernel.

use na::{Identity, MAX_GROUPS, Proof};

/// The supplementary groups of `uid` (primary group `gid`) by this node's user database;
/// just `gid` for a user it does not know.
pub fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let mut pw: libc::passwd = zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r fills `pw` with pointers into `buf`, both ours and live below.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return vec![gid];
    }
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: pw_name points into `buf`; `groups` has room for `n` entries.
        let r = unsafe { libc::getgrouplist(pw.pw_name, gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n as usize > MAX_GROUPS {
            return vec![gid];
        }
    }
}

/// This process's own credentials (what it claims under a shared key).
pub fn own_identity() -> Identity {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: a first call with size 0 returns the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) }.max(0) as usize;
    let mut groups = vec![0 as libc::gid_t; n];
    // SAFETY: `groups` has room for `n` entries.
    let got = unsafe { libc::getgroups(n as libc::c_int, groups.as_mut_ptr()) };
    groups.truncate(got.max(0) as usize);
    Identity {
        uid,
        gid,
        groups,
        proof: Proof::SharedKey,
    }
}

fn zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is plain data (integers and pointers); all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known_and_an_unknown_user_has_its_primary_group_only() {
        assert!(groups_of(0, 0).contains(&0));
        assert_eq!(groups_of(4_000_000_000, 77), vec![77]);
        let me = own_identity();
        assert_eq!(me.uid, unsafe { libc::getuid() });
    }
}
