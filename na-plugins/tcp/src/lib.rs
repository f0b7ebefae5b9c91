//! The TCP plugin of Quicksilver's network abstraction.
//!
//! The [`na_stream`] core over TCP sockets: one connection per peer pair, `TCP_NODELAY`,
//! large socket buffers, `readv`/`writev`. TCP has no remote memory access, so `put`/`get`
//! are emulated over the stream by the core (the owner checks every access).
//!
//! ```
//! use na::{Address, Plugin};
//! let p = na_tcp::TcpPlugin::new(&Address::parse("tcp://127.0.0.1:0").unwrap()).unwrap();
//! assert!(p.self_addr().to_string().starts_with("tcp://127.0.0.1:"));
//! ```
#![deny(missing_docs)]

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};

use mio::net::{TcpListener, TcpStream};
use na::{Address, NaError, NaResult};
use na_stream::{Connector, RawPiece, Wire};
pub use na_stream::{StreamConfig, StreamPlugin, auth, frame};

/// Tunables of the TCP plugin.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// The stream core's tunables (eager size, RMA chunking).
    pub stream: StreamConfig,
    /// `SO_SNDBUF`/`SO_RCVBUF` requested for each connection. Bytes queued in the kernel
    /// are ahead of any later message, so this bounds how long a small RPC can wait behind
    /// bulk data: 1 MiB keeps that near 10 ms under heavy transfers with no loss of
    /// bandwidth on loopback (measured with qs-bw and the fairness test; 4 MiB gave 40-70 ms).
    pub socket_buffer: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            stream: StreamConfig::default(),
            socket_buffer: 1 << 20,
        }
    }
}

/// The TCP plugin: constructors of a [`StreamPlugin`] over TCP.
pub struct TcpPlugin;

impl TcpPlugin {
    /// Listens on `addr` (`tcp://host:port`, port 0 for an ephemeral one) with defaults.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(addr: &Address) -> NaResult<StreamPlugin> {
        Self::with_config(addr, TcpConfig::default())
    }

    /// Listens on `addr` with the given tunables.
    pub fn with_config(addr: &Address, cfg: TcpConfig) -> NaResult<StreamPlugin> {
        let sa = resolve(addr)?;
        let listener = TcpListener::bind(sa)?;
        let mut local = listener.local_addr()?;
        let wildcard = local.ip().is_unspecified();
        if wildcard {
            // A wildcard bind is reachable on loopback; name that so peers can dial it.
            local.set_ip(if local.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let self_addr = Address::new("tcp", None, &local.to_string())?;
        let net = Tcp {
            listener,
            self_addr,
            local,
            wildcard,
            socket_buffer: cfg.socket_buffer,
            spare: std::sync::Mutex::new(spare_fd()),
        };
        StreamPlugin::new(Box::new(net), cfg.stream)
    }
}

fn resolve(addr: &Address) -> NaResult<SocketAddr> {
    let bad = |reason: String| NaError::InvalidAddress {
        addr: addr.to_string(),
        reason,
    };
    if addr.plugin() != "tcp" || addr.provider().is_some() {
        return Err(bad("not a tcp:// address".into()));
    }
    addr.locator()
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

struct Tcp {
    listener: TcpListener,
    self_addr: Address,
    /// The bound socket address (loopback for a wildcard bind).
    local: SocketAddr,
    /// Bound to every interface: peers may dial any of our addresses.
    wildcard: bool,
    socket_buffer: usize,
    /// A descriptor held back, given up to refuse connections when the process has no
    /// other left (so that dialers hear why instead of waiting in the backlog).
    spare: std::sync::Mutex<Option<std::fs::File>>,
}

fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

impl Tcp {
    fn wire(&self, s: TcpStream) -> Box<dyn Wire> {
        let _ = s.set_nodelay(true);
        let sock = socket2::SockRef::from(&s);
        let _ = sock.set_send_buffer_size(self.socket_buffer);
        let _ = sock.set_recv_buffer_size(self.socket_buffer);
        Box::new(TcpWire(s))
    }
}

impl Tcp {
    /// Out of descriptors: gives up the spare to accept one pending connection, tells it
    /// why in a `Refused` frame and closes it. False if there is no spare to give up or
    /// no connection waiting.
    fn refuse_one(&self) -> bool {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.take().is_none() {
            *spare = spare_fd();
            return false;
        }
        // (accept says EMFILE before it looks at the queue: there may be nobody.)
        let refused = match self.listener.accept() {
            Ok((mut s, from)) => {
                let why = b"the server is out of file descriptors (EMFILE); try later";
                let h = frame::Header {
                    kind: frame::Kind::Refused,
                    len: why.len() as u32,
                    tag: 0,
                };
                let _ = s.write_all(&[&h.encode()[..], why].concat());
                tracing::warn!(%from, "refused a connection: out of file descriptors");
                true
            }
            Err(_) => false,
        };
        *spare = spare_fd();
        refused
    }
}

impl Connector for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn self_addr(&self) -> &Address {
        &self.self_addr
    }

    fn listen_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    fn is_self(&self, addr: &Address) -> bool {
        // No name resolution here (this runs on the progress thread): a host name is
        // checked by its port; a literal address by IP too, unless we listen on all.
        if addr.plugin() != "tcp" || addr.provider().is_some() {
            return false;
        }
        match addr.locator().parse::<SocketAddr>() {
            Ok(sa) => {
                sa.port() == self.local.port() && (self.wildcard || sa.ip() == self.local.ip())
            }
            Err(_) => addr
                .locator()
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_some_and(|p| p == self.local.port()),
        }
    }

    fn dial(&self, addr: &Address) -> NaResult<(Box<dyn Wire>, bool)> {
        let sa = resolve(addr)?;
        let s = TcpStream::connect(sa).map_err(|e| NaError::Unreachable(format!("{addr}: {e}")))?;
        Ok((self.wire(s), false))
    }

    fn accept(&self) -> Vec<Box<dyn Wire>> {
        let mut out = Vec::new();
        loop {
            match self.listener.accept() {
                Ok((s, from)) => {
                    tracing::trace!(%from, "tcp connection");
                    out.push(self.wire(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !self.refuse_one() {
                        tracing::debug!(error = %e, "tcp accept: nobody refused");
                        return out;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    return out;
                }
            }
        }
    }
}

struct TcpWire(TcpStream);

impl Wire for TcpWire {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }

    unsafe fn read_raw(&self, pieces: &[RawPiece]) -> io::Result<usize> {
        let iov: Vec<libc::iovec> = pieces
            .iter()
            .take(512)
            .map(|&(p, n)| libc::iovec {
                iov_base: p.cast(),
                iov_len: n,
            })
            .collect();
        // SAFETY: the caller guarantees every piece is valid for writes of its length;
        // readv writes at most that.
        let r = unsafe { libc::readv(self.0.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.0).write_vectored(bufs)
    }

    fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.0.as_raw_fd()]
    }

    fn connected(&self) -> io::Result<bool> {
        if let Some(e) = self.0.take_error()? {
            return Err(e);
        }
        match self.0.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}
