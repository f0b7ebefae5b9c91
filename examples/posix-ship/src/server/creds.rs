//! Acting with the client's rights: who a request runs as (the policy), and switching a
//! handler thread's file-system credentials to that user for the request (the mechanism).
//!
//! The switch uses the raw per-thread system calls `setgroups`, `setfsgid` and `setfsuid`
//! (glibc's wrappers change every thread of the process); the kernel then checks each
//! path walk, open, create, chmod and unlink as it would for that user, and files created
//! are owned by them. Changing the fs uid away from 0 also drops the fs capabilities
//! (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, ...) for the thread; returning to 0 restores them.

use rpc_core::Identity;
use rustix::io::Errno;

/// Who requests run as.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Map uid 0 to the anonymous user (NFS `root_squash`).
    pub root_squash: bool,
    /// Strip setuid (and on files setgid) bits from every mode a client sets (NFS `nosuid`).
    pub nosuid: bool,
    /// The user and group anonymous and squashed clients act as.
    pub anon: (u32, u32),
    /// If not empty, only these uids are served (after squashing).
    pub allow_uids: Vec<u32>,
    /// If not empty, only users in one of these groups are served.
    pub allow_gids: Vec<u32>,
    /// Peers verified as one of these uids may call for others ([`crate::proto::forwarded`]):
    /// I/O nodes. Empty (the default): nobody may.
    pub trusted_forwarders: Vec<u32>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            root_squash: true,
            nosuid: true,
            anon: (65534, 65534),
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            trusted_forwarders: Vec::new(),
        }
    }
}

/// The credentials a request runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    /// File-system user id.
    pub uid: u32,
    /// File-system group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Policy {
    /// The credentials for a caller with verified identity `id` (`None`: anonymous), or
    /// `EACCES` when the allow lists exclude it.
    pub fn creds(&self, id: Option<&Identity>) -> Result<Creds, Errno> {
        let anon = Creds {
            uid: self.anon.0,
            gid: self.anon.1,
            groups: Vec::new(),
        };
        let c = match id {
            None => anon,
            Some(i) if i.uid == 0 && self.root_squash => anon,
            Some(i) => Creds {
                uid: i.uid,
                gid: i.gid,
                groups: i.groups.clone(),
            },
        };
        if !self.allow_uids.is_empty() && !self.allow_uids.contains(&c.uid) {
            return Err(Errno::ACCESS);
        }
        let in_group = |g: &u32| c.gid == *g || c.groups.contains(g);
        if !self.allow_gids.is_empty() && !self.allow_gids.iter().any(in_group) {
            return Err(Errno::ACCESS);
        }
        Ok(c)
    }

    /// A mode as the client may set it: without setuid, and without setgid on files
    /// (a directory's setgid only makes new entries inherit its group), under `nosuid`.
    pub fn mode(&self, mode: u32, dir: bool) -> u32 {
        if !self.nosuid {
            return mode;
        }
        let strip = if dir { 0o4000 } else { 0o6000 };
        mode & !strip
    }
}

/// The credentials this thread acts with until dropped.
pub struct AsUser {
    switched: bool,
}

fn setfsuid(uid: u32) -> u32 {
    // SAFETY: a plain integer argument; changes only the calling thread's fs uid.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

fn setfsgid(gid: u32) -> u32 {
    // SAFETY: a plain integer argument; changes only the calling thread's fs gid.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as u32 }
}

fn setgroups(groups: &[u32]) -> Result<(), Errno> {
    // SAFETY: a pointer to `len` gids that we own for the call; the raw system call (not
    // glibc's wrapper) changes only the calling thread's groups.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(errno()))
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EPERM)
}

fn euid_egid() -> (u32, u32) {
    // SAFETY: geteuid/getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

impl AsUser {
    /// Switches this thread to `c`. A server that is not root cannot switch: it serves
    /// only requests that run as its own user, and refuses others with `EACCES` rather
    /// than acting for them with its own rights.
    pub fn enter(c: &Creds) -> Result<AsUser, Errno> {
        let (euid, egid) = euid_egid();
        if euid != 0 {
            return if c.uid == euid {
                Ok(AsUser { switched: false })
            } else {
                Err(Errno::ACCESS)
            };
        }
        setgroups(&c.groups)?;
        setfsgid(c.gid);
        setfsuid(c.uid);
        // Both calls return the previous value; a second call with an impossible id
        // reports the current one, which must now be the one asked for.
        let (u, g) = (setfsuid(u32::MAX), setfsgid(u32::MAX));
        let guard = AsUser { switched: true };
        if u != c.uid || g != c.gid {
            tracing::error!(
                uid = c.uid,
                gid = c.gid,
                egid,
                "could not switch credentials"
            );
            return Err(Errno::PERM);
        }
        Ok(guard)
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        if self.switched {
            setfsuid(0);
            let (_, egid) = euid_egid();
            setfsgid(egid);
            let _ = setgroups(&[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_core::Proof;

    fn user(uid: u32) -> Identity {
        Identity {
            uid,
            gid: uid,
            groups: vec![uid, 50],
            proof: Proof::PeerCred,
        }
    }

    #[test]
    fn root_and_anonymous_callers_are_squashed_and_allow_lists_apply() {
        let p = Policy::default();
        assert_eq!(p.creds(None).unwrap().uid, 65534);
        assert_eq!(p.creds(Some(&user(0))).unwrap().uid, 65534);
        assert_eq!(p.creds(Some(&user(1000))).unwrap().groups, vec![1000, 50]);
        let open = Policy {
            root_squash: false,
            ..Policy::default()
        };
        assert_eq!(open.creds(Some(&user(0))).unwrap().uid, 0);
        let only = Policy {
            allow_uids: vec![1000],
            ..Policy::default()
        };
        assert_eq!(only.creds(Some(&user(1001))), Err(Errno::ACCESS));
        assert_eq!(only.creds(None), Err(Errno::ACCESS));
        let group = Policy {
            allow_gids: vec![50],
            ..Policy::default()
        };
        assert!(group.creds(Some(&user(7))).is_ok());
        assert_eq!(group.creds(None), Err(Errno::ACCESS));
    }

    #[test]
    fn nosuid_strips_setuid_everywhere_and_setgid_on_files() {
        let p = Policy::default();
        assert_eq!(p.mode(0o4755, false), 0o755);
        assert_eq!(p.mode(0o6755, false), 0o755);
        assert_eq!(p.mode(0o2775, true), 0o2775);
        assert_eq!(p.mode(0o4775, true), 0o775);
        let suid = Policy {
            nosuid: false,
            ..Policy::default()
        };
        assert_eq!(suid.mode(0o4755, false), 0o4755);
    }

    #[test]
    fn a_thread_switches_and_comes_back() {
        let (euid, _) = euid_egid();
        if euid != 0 {
            let me = Creds {
                uid: euid,
                gid: 0,
                groups: vec![],
            };
            assert!(AsUser::enter(&me).is_ok());
            let other = Creds {
                uid: euid + 1,
                gid: 0,
                groups: vec![],
            };
            assert_eq!(AsUser::enter(&other).err(), Some(Errno::ACCESS));
            return;
        }
        let dir = std::env::temp_dir().join(format!("qs-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::thread::spawn({
            let dir = dir.clone();
            move || {
                let nobody = Creds {
                    uid: 65534,
                    gid: 65534,
                    groups: vec![],
                };
                {
                    let _as = AsUser::enter(&nobody).unwrap();
                    let e = std::fs::read(dir.join("secret")).unwrap_err();
                    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
                }
                assert_eq!(std::fs::read(dir.join("secret")).unwrap(), b"x");
            }
        })
        .join()
        .unwrap();
        // Other threads never changed.
        assert_eq!(std::fs::read(dir.join("secret")).unwrap(), b"x");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
