//! Who a peer is, as its transport verified it, and how a transport demands proof of it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::NaError;

/// How an [`Identity`] was proven.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Proof {
    /// The kernel's `SO_PEERCRED`/`SO_PEERGROUPS` of a same-node socket.
    PeerCred,
    /// A MUNGE credential, decoded by the local `munged` (groups from this node's user
    /// database).
    Munge,
    /// A claim authenticated with the shared key: the peer holds the key, and the key's
    /// holders are trusted to say who they act for.
    SharedKey,
    /// Asserted by a forwarder (an I/O node) that the server is configured to trust,
    /// which verified it by one of the other proofs on its own connection.
    Forwarded,
}

/// The verified credentials of the process at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// How it was proven.
    pub proof: Proof,
}

/// The most supplementary groups an identity may carry (the kernel's `NGROUPS_MAX`).
pub const MAX_GROUPS: usize = 65536;

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {} ({:?})", self.uid, self.gid, self.proof)
    }
}

/// What a listening endpoint demands of connecting peers on transports that cannot ask the
/// kernel (tcp), and what a connecting endpoint can show. Same-node transports (sm) always
/// take the kernel's word ([`Proof::PeerCred`]) whatever this says.
#[derive(Clone, Default)]
pub enum Auth {
    /// No proof: peers are anonymous ([`crate::Plugin::peer_identity`] is `None`).
    #[default]
    None,
    /// A MUNGE credential bound to the connection's challenge.
    Munge,
    /// An HMAC-SHA256 of the challenge and the claimed identity under a shared key; the
    /// key never crosses the wire.
    Key(Arc<[u8]>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.write_str(match self {
            Auth::None => "none",
            Auth::Munge => "munge",
            Auth::Key(_) => "key",
        })
    }
}

impl Auth {
    /// The environment variable a program reads its [`Auth`] from when it is not told one:
    /// `none`, `munge` or `key:FILE`.
    pub const ENV: &'static str = "QS_AUTH";

    /// Parses `none`, `munge` or `key:FILE` (reading the key file; see [`Auth::key_file`]).
    pub fn parse(spec: &str) -> Result<Auth, NaError> {
        match spec.trim() {
            "" | "none" => Ok(Auth::None),
            "munge" => Ok(Auth::Munge),
            s => match s.strip_prefix("key:") {
                Some(path) => Auth::key_file(Path::new(path)),
                None => Err(NaError::InvalidArgument(format!(
                    "auth {s:?}: expected none, munge or key:FILE"
                ))),
            },
        }
    }

    /// From `QS_AUTH`, or [`Auth::None`] when unset.
    pub fn from_env() -> Result<Auth, NaError> {
        Auth::parse(&std::env::var(Self::ENV).unwrap_or_default())
    }

    /// Reads a shared key: a file of at least 16 bytes that only its owner can read or
    /// write (as MUNGE insists of its own key), so that a key leaked to other users is
    /// refused rather than trusted.
    pub fn key_file(path: &Path) -> Result<Auth, NaError> {
        use std::os::unix::fs::MetadataExt;
        let bad = |why: String| NaError::InvalidArgument(format!("key file {path:?}: {why}"));
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o} lets other users read or write it (chmod 600)",
                meta.mode() & 0o777
            )));
        }
        let mut key = Vec::new();
        use std::io::Read;
        file.take(4096)
            .read_to_end(&mut key)
            .map_err(|e| bad(e.to_string()))?;
        if key.len() < 16 {
            return Err(bad(format!("{} bytes; at least 16 needed", key.len())));
        }
        Ok(Auth::Key(key.into()))
    }

    /// Writes a new random 32-byte key to `path`, mode 0600 (for set-up scripts and tests).
    pub fn create_key_file(path: &Path) -> Result<PathBuf, NaError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| NaError::InvalidArgument(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(&key)?;
        Ok(path.to_owned())
    }

    /// The wire code of the mode (in a challenge).
    pub fn code(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Munge => 1,
            Auth::Key(_) => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn specs_parse_and_bad_ones_are_named() {
        assert!(matches!(Auth::parse("none").unwrap(), Auth::None));
        assert!(matches!(Auth::parse("").unwrap(), Auth::None));
        assert!(matches!(Auth::parse("munge").unwrap(), Auth::Munge));
        let e = Auth::parse("kerberos").unwrap_err();
        assert!(
            e.to_string().contains("expected none, munge or key:FILE"),
            "{e}"
        );
        let e = Auth::parse("key:/nonexistent/qs.key").unwrap_err();
        assert!(matches!(e, NaError::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn key_files_readable_by_others_or_short_are_refused() {
        let dir = std::env::temp_dir().join(format!("qs-key-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("k");
        let _ = std::fs::remove_file(&path);
        Auth::create_key_file(&path).unwrap();
        assert!(matches!(Auth::key_file(&path).unwrap(), Auth::Key(k) if k.len() == 32));
        assert_eq!(format!("{:?}", Auth::key_file(&path).unwrap()), "key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Auth::key_file(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::write(&path, b"short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Auth::key_file(&path).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
