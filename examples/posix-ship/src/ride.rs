//! What the interposer and the mount daemon say to each other through `ioctl` on a file
//! of the mount, so that the interposer can ride on the mount (after DAOS's libioil over
//! dfuse): the kernel holds the descriptors and does everything else, the interposer
//! ships the data calls of those descriptors straight to the server.
//!
//! - [`INFO`] (`_IOR('Q', 1, [u8; 4096])`): which server the mount serves, the path of
//!   the file beneath the export and the server's (device, inode) of the file the
//!   descriptor holds ([`Info`]), so that the interposer can open the same file on its own
//!   connection, with its own identity checked by the server, and know it is the same
//!   file (the path may name another one by then: renamed over, or replaced on the server).
//! - [`INVAL`] (`_IO('Q', 2)`): the kernel forgets the file's cached attributes and pages
//!   (the interposer wrote around them); answered once they are gone.
//!
//! The daemon is the interposer's peer here: [`Info::decode`] checks every length.

/// Bytes the kernel hands back for [`INFO`] (the size encoded in the command).
pub const INFO_SIZE: usize = 4096;

/// `_IOR('Q', 1, [u8; INFO_SIZE])`.
pub const INFO: u32 = (2 << 30) | ((INFO_SIZE as u32) << 16) | ((b'Q' as u32) << 8) | 1;

/// `_IO('Q', 2)`.
pub const INVAL: u32 = ((b'Q' as u32) << 8) | 2;

const MAGIC: &[u8; 4] = b"QSR2";

/// The answer to [`INFO`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The server's address, as the daemon reached it.
    pub server: String,
    /// The file's path beneath the export.
    pub path: Vec<u8>,
    /// The server's (device, inode) of the file the descriptor holds; (0, 0) for a
    /// descriptor that holds no file the daemon opened (a directory's).
    pub file: (u64, u64),
    /// The mount runs with the kernel's writeback cache: the kernel then keeps its own
    /// idea of each file's size and ignores the server's, so nothing may be written
    /// around it (an interposer does not ride on such a mount).
    pub writeback: bool,
}

/// Why an [`INFO`] answer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// It does not start with the magic (another file system's ioctl, or another version).
    Magic,
    /// A length runs past the end, or the address is not UTF-8.
    Length,
    /// The answer does not fit in [`INFO_SIZE`].
    TooLong,
}

impl Info {
    /// The answer's bytes: magic, flags (bit 0: writeback), device and inode (u64 LE
    /// each), address length (u16 LE), address, path length (u16 LE), path.
    pub fn encode(&self) -> Result<Vec<u8>, Malformed> {
        let (s, p) = (self.server.as_bytes(), &self.path);
        let len = MAGIC.len() + 1 + 16 + 2 + s.len() + 2 + p.len();
        if len > INFO_SIZE {
            return Err(Malformed::TooLong);
        }
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(MAGIC);
        b.push(u8::from(self.writeback));
        b.extend_from_slice(&self.file.0.to_le_bytes());
        b.extend_from_slice(&self.file.1.to_le_bytes());
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
        b.extend_from_slice(s);
        b.extend_from_slice(&(p.len() as u16).to_le_bytes());
        b.extend_from_slice(p);
        Ok(b)
    }

    /// Reads an answer (trailing bytes, the rest of the kernel's buffer, ignored).
    pub fn decode(b: &[u8]) -> Result<Info, Malformed> {
        let rest = b.strip_prefix(MAGIC).ok_or(Malformed::Magic)?;
        let (flags, rest) = rest.split_first().ok_or(Malformed::Length)?;
        let (dev, rest) = rest.split_first_chunk::<8>().ok_or(Malformed::Length)?;
        let (ino, rest) = rest.split_first_chunk::<8>().ok_or(Malformed::Length)?;
        let (server, rest) = field(rest)?;
        let (path, _) = field(rest)?;
        let server = std::str::from_utf8(server).map_err(|_| Malformed::Length)?;
        Ok(Info {
            server: server.to_string(),
            path: path.to_vec(),
            file: (u64::from_le_bytes(*dev), u64::from_le_bytes(*ino)),
            writeback: flags & 1 != 0,
        })
    }
}

/// A u16-length-prefixed field and what follows it.
fn field(b: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let (len, rest) = b.split_first_chunk::<2>().ok_or(Malformed::Length)?;
    let len = u16::from_le_bytes(*len) as usize;
    (rest.len() >= len)
        .then(|| rest.split_at(len))
        .ok_or(Malformed::Length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_kernels_encoding() {
        // _IOR('Q', 1, char[4096]) and _IO('Q', 2) as the C macros compute them.
        assert_eq!(INFO, 0x9000_5101);
        assert_eq!(INVAL, 0x5102);
    }

    #[test]
    fn an_answer_round_trips_with_the_kernels_padding() {
        let i = Info {
            server: "sm://1234/0".into(),
            path: b"/dir/f".to_vec(),
            file: (0x801, u64::MAX - 7),
            writeback: true,
        };
        let mut b = i.encode().unwrap();
        b.resize(INFO_SIZE, 0);
        assert_eq!(Info::decode(&b), Ok(i));
    }

    #[test]
    fn hostile_answers_are_refused() {
        let id = [7u8; 16];
        let bad: [&[u8]; 7] = [
            b"QSR2",
            b"QSR2\0",
            b"QSR2\0\x01\x02\x03",
            b"\x05\0abc",
            b"\x01\0a\xff\xff/",
            b"\x01\0\xff\0\0",
            b"\x01\0a\x01",
        ];
        for (i, b) in bad.into_iter().enumerate() {
            // The first three are cut before the file's identity ends; the rest follow it.
            let b = if i < 3 {
                b.to_vec()
            } else {
                [&b"QSR2\0"[..], &id, b].concat()
            };
            assert_eq!(Info::decode(&b), Err(Malformed::Length), "{b:?}");
        }
        assert_eq!(
            Info::decode(b"QSR1\0\0\0\0\0"),
            Err(Malformed::Magic),
            "older answers"
        );
        assert_eq!(Info::decode(b""), Err(Malformed::Magic));
        assert_eq!(Info::decode(b"XSR1\0\0\0\0\0"), Err(Malformed::Magic));
        let long = Info {
            server: "x".repeat(INFO_SIZE),
            path: Vec::new(),
            file: (0, 0),
            writeback: false,
        };
        assert_eq!(long.encode(), Err(Malformed::TooLong));
    }
}
