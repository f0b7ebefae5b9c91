//! One TCP connection: its socket, the queue of frames to write (flushed with vectored
//! writes from whichever thread posts), and the decoder of what it reads.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Mutex;

use mio::net::TcpStream;
use na::{Address, OpId, PeerId};

use crate::frame::{Decoder, HEADER_LEN, Header, Kind};

/// A frame waiting to be written.
pub struct OutFrame {
    hdr: [u8; HEADER_LEN],
    body: Vec<u8>,
    op: Option<OpId>,
}

impl OutFrame {
    /// A frame of `kind` with `tag` and `body`, completing `op` once written.
    pub fn new(kind: Kind, tag: u64, body: Vec<u8>, op: Option<OpId>) -> Self {
        let hdr = Header {
            kind,
            len: body.len() as u32,
            tag,
        }
        .encode();
        OutFrame { hdr, body, op }
    }

    fn len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }
}

/// Write side state.
pub struct WriteQ {
    frames: VecDeque<OutFrame>,
    /// Bytes of the front frame already written.
    head_off: usize,
    /// The non-blocking connect finished.
    pub connected: bool,
    /// No more writes: the connection failed or is closing.
    pub closed: bool,
}

/// Read side state.
pub struct ReadState {
    /// The frame decoder.
    pub decoder: Decoder,
}

/// A connection to one peer.
pub struct Conn {
    /// Our id for the peer.
    pub peer: PeerId,
    /// The socket.
    pub stream: TcpStream,
    /// Frames to write.
    pub write: Mutex<WriteQ>,
    /// Bytes read and not yet framed.
    pub read: Mutex<ReadState>,
    /// The peer's listening address, once its Hello arrived (or the one we dialled).
    pub remote: Mutex<Option<Address>>,
    /// Whether we dialled (true) or accepted (false).
    pub outgoing: bool,
}

/// Outcome of a flush.
pub struct Flushed {
    /// Sends whose frames are fully written.
    pub done: Vec<OpId>,
}

impl Conn {
    /// A connection over `stream`.
    pub fn new(
        peer: PeerId,
        stream: TcpStream,
        outgoing: bool,
        connected: bool,
        max_frame: usize,
    ) -> Self {
        Conn {
            peer,
            stream,
            write: Mutex::new(WriteQ {
                frames: VecDeque::new(),
                head_off: 0,
                connected,
                closed: false,
            }),
            read: Mutex::new(ReadState {
                decoder: Decoder::new(max_frame),
            }),
            remote: Mutex::new(None),
            outgoing,
        }
    }

    /// Queues a frame and writes what the socket takes now. Returns the sends completed,
    /// or the frame back if the connection is closed.
    pub fn send(&self, f: OutFrame) -> Result<Flushed, OutFrame> {
        let mut w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if w.closed {
            return Err(f);
        }
        w.frames.push_back(f);
        if !w.connected || w.frames.len() > 1 {
            // Not connected yet, or a flush is pending a writable event already.
            return Ok(Flushed { done: Vec::new() });
        }
        Ok(self.flush_locked(&mut w))
    }

    /// Writes queued frames until the socket would block.
    pub fn flush(&self) -> Flushed {
        let mut w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked(&mut w)
    }

    fn flush_locked(&self, w: &mut WriteQ) -> Flushed {
        let mut done = Vec::new();
        while !w.closed && w.connected && !w.frames.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(32);
            for (i, f) in w.frames.iter().take(16).enumerate() {
                let skip = if i == 0 { w.head_off } else { 0 };
                if skip < HEADER_LEN {
                    slices.push(IoSlice::new(&f.hdr[skip..]));
                    if !f.body.is_empty() {
                        slices.push(IoSlice::new(&f.body));
                    }
                } else {
                    slices.push(IoSlice::new(&f.body[skip - HEADER_LEN..]));
                }
            }
            match (&self.stream).write_vectored(&slices) {
                Ok(0) => {
                    self.fail_locked(w);
                    break;
                }
                Ok(mut n) => {
                    while n > 0 {
                        let Some(front) = w.frames.front() else { break };
                        let rest = front.len() - w.head_off;
                        if n >= rest {
                            n -= rest;
                            w.head_off = 0;
                            if let Some(op) = w.frames.pop_front().and_then(|f| f.op) {
                                done.push(op);
                            }
                        } else {
                            w.head_off += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(peer = self.peer.0, error = %e, "tcp write failed");
                    self.fail_locked(w);
                    break;
                }
            }
        }
        Flushed { done }
    }

    /// Stops writing and shuts the socket down, so that the progress loop sees the
    /// connection end and fails its operations.
    fn fail_locked(&self, w: &mut WriteQ) {
        w.closed = true;
        w.frames.clear();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Marks the connection closed for writing and drops queued frames.
    pub fn close(&self) {
        let mut w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        w.closed = true;
        w.frames.clear();
    }
}
