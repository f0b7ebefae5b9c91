//! Whole-file copies out of the server with reads in flight (`posix-ship get`): the next
//! pieces travel while the last one is written locally, so that network, server and local
//! I/O overlap instead of taking turns (the stop-and-go of the pNFS seed). Copies in the
//! other direction overlap through [`super::RemoteFile`]'s writes behind.

use std::collections::VecDeque;
use std::io::{self, Write};

use rpc_core::{Access, Bulk, Seg};

use super::{Pending, RemoteFs, rpc_err};
use crate::proto::{Fh, READ, ReadData, ReadReq};

/// A read in flight into a buffer of its own.
struct Piece {
    off: u64,
    want: usize,
    dest: Bulk<'static>,
    call: Pending<ReadData>,
}

impl RemoteFs {
    /// Copies the first `len` bytes of `fh` into `dst` with `depth` reads of `piece` bytes
    /// in flight (`depth` buffers, reused), calling `progress` with the bytes copied so
    /// far after each piece. Returns the bytes copied: fewer than `len` if the file ended
    /// first. A read the server answers short (its staging bound) is finished in place.
    pub fn copy_out(
        &self,
        fh: Fh,
        len: u64,
        dst: &mut impl Write,
        piece: usize,
        depth: usize,
        mut progress: impl FnMut(u64),
    ) -> io::Result<u64> {
        let piece = piece.max(1);
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut flying: VecDeque<Piece> = VecDeque::new();
        let (mut next, mut done) = (0u64, 0u64);
        loop {
            while flying.len() < depth.max(1) && next < len {
                let want = piece.min((len - next) as usize);
                // A reused buffer keeps its bytes: the server overwrites them (no memset).
                let mut buf = spare.pop().unwrap_or_default();
                buf.resize(want, 0);
                flying.push_back(self.start_piece(fh, next, buf)?);
                next += want as u64;
            }
            let Some(p) = flying.pop_front() else {
                return Ok(done);
            };
            let (buf, n) = self.land_piece(fh, p)?;
            dst.write_all(&buf[..n])?;
            done += n as u64;
            progress(done);
            if n < buf.len() {
                // The file ended: what is still in flight reads past it.
                return Ok(done);
            }
            spare.push(buf);
        }
    }

    fn start_piece(&self, fh: Fh, off: u64, buf: Vec<u8>) -> io::Result<Piece> {
        let want = buf.len();
        let dest = self
            .engine()
            .expose(vec![Seg::from(buf)], Access::WriteOnly)
            .map_err(rpc_err)?;
        let req = ReadReq {
            fh,
            offset: off,
            len: want as u64,
            dest: Some(dest.descriptor()),
        };
        let call = self.start(READ, &req);
        Ok(Piece {
            off,
            want,
            dest,
            call,
        })
    }

    /// Waits for a piece; its buffer and the bytes in it (fewer than its length only at
    /// the end of the file).
    fn land_piece(&self, fh: Fh, p: Piece) -> io::Result<(Vec<u8>, usize)> {
        let answer = p.call.call.wait();
        let mut buf = p.dest.into_vec();
        // A server at its bound of requests in flight: the piece read in place, below
        // (`pread` waits the bound out).
        let busy = matches!(answer, Err(rpc_core::RpcError::Busy(_)));
        let n = match answer {
            _ if busy => 0,
            answer => match answer.map_err(super::rpc_err)?.map_err(super::errno)? {
                ReadData::Pushed(n) if n as usize <= p.want => n as usize,
                ReadData::Inline(d) if d.len() <= p.want => {
                    buf[..d.len()].copy_from_slice(&d);
                    d.len()
                }
                _ => return Err(io::Error::from_raw_os_error(libc::EIO)),
            },
        };
        // Short under staging pressure (never empty before the end): the rest in place.
        let mut got = n;
        while got < p.want && (n > 0 || busy) {
            let m = self.pread(fh, &mut buf[got..p.want], p.off + got as u64)?;
            if m == 0 {
                break;
            }
            got += m;
        }
        Ok((buf, got))
    }
}
