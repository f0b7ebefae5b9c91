//! Setting up a connection between two processes on one node.
//!
//! A listener binds an abstract-namespace UNIX socket named after its `sm://` name: the
//! kernel removes such a name when its owner closes it or dies, so a crashed server's name
//! never blocks a restart. The connecting side creates the shared [`Segment`] and two
//! eventfds (one each side sleeps on) and sends all three with `SCM_RIGHTS`, with its own
//! name. The socket stays open as the liveness channel (a peer's death hangs it up), and
//! `SO_PEERCRED`/`SO_PEERGROUPS` give the peer's verified identity and its pid for
//! single-copy RMA.
//!
//! Accepting never blocks: a connection whose hello has not arrived waits in the
//! listener's own epoll set (whose descriptor is what the plugin watches), at most
//! [`MAX_PENDING`] of them, each for at most [`HELLO_TIMEOUT`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Instant;

use na::{Identity, Proof};

use crate::shm::{Dir, Segment};

const HELLO_MAGIC: u32 = 0x5153_4c4b; // "QSLK"
const NAME_MAX: usize = 100;
/// How long an accepted peer has to send its hello.
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);
/// Accepted connections whose hello has not arrived yet; past it the oldest is dropped.
pub const MAX_PENDING: usize = 64;

/// Which side of a link this is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// Connected, created the segment.
    Creator,
    /// Accepted.
    Acceptor,
}

/// One end of an established connection.
pub struct Link {
    /// The liveness socket.
    pub sock: OwnedFd,
    /// The shared rings.
    pub seg: Segment,
    /// The eventfd this side sleeps on.
    pub wake_me: OwnedFd,
    /// The eventfd that wakes the peer.
    pub wake_peer: OwnedFd,
    /// The peer's process id.
    pub peer_pid: i32,
    /// The peer's identity, from the kernel.
    pub peer: Identity,
    /// The peer's `sm://` name.
    pub peer_name: String,
    /// This side.
    pub side: Side,
}

impl Link {
    /// The ring this side writes.
    pub fn outbox(&self) -> crate::ring::Ring<'_> {
        self.seg.ring(if self.side == Side::Creator {
            Dir::ToAcceptor
        } else {
            Dir::ToCreator
        })
    }

    /// The ring this side reads.
    pub fn inbox(&self) -> crate::ring::Ring<'_> {
        self.seg.ring(if self.side == Side::Creator {
            Dir::ToCreator
        } else {
            Dir::ToAcceptor
        })
    }

    /// Announces this side's arena and salt of direct copies to the peer.
    pub fn announce(&self, arena: na_stream::direct::Announced) {
        let dir = match self.side {
            Side::Creator => Dir::ToAcceptor,
            Side::Acceptor => Dir::ToCreator,
        };
        self.seg.announce(dir, arena);
    }

    /// This side's write lease ([`crate::shm::Segment::lease`]).
    pub fn lease(&self) -> &std::sync::atomic::AtomicU64 {
        self.seg.lease(match self.side {
            Side::Creator => Dir::ToAcceptor,
            Side::Acceptor => Dir::ToCreator,
        })
    }

    /// The peer's write lease word: the key of our region it declares it is writing, or 0.
    pub fn peer_lease_word(&self) -> &std::sync::atomic::AtomicU64 {
        self.seg.lease(match self.side {
            Side::Creator => Dir::ToCreator,
            Side::Acceptor => Dir::ToAcceptor,
        })
    }

    /// What the peer announced for direct copies, if it did.
    pub fn peer_arena(&self) -> Option<na_stream::direct::Announced> {
        self.seg.announced(match self.side {
            Side::Creator => Dir::ToCreator,
            Side::Acceptor => Dir::ToAcceptor,
        })
    }

    /// Wakes the peer (after its ring said it sleeps).
    pub fn wake_peer(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local u64 to an eventfd we own.
        let r = unsafe { libc::write(self.wake_peer.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Consumes pending wake-ups of this side (its eventfd is non-blocking).
    pub fn drain_wakeups(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a local u64 from an eventfd we own.
        let _ = unsafe { libc::read(self.wake_me.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a fresh descriptor returned by the kernel, owned from here on.
    check(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The abstract socket address of `name`.
fn sockaddr(name: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    if name.is_empty() || name.len() > NAME_MAX || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad sm name {name:?}"),
        ));
    }
    // SAFETY: sockaddr_un is plain data; zero is a valid value.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = format!("qs-sm/{name}");
    for (i, b) in path.bytes().enumerate() {
        sa.sun_path[i + 1] = b as libc::c_char; // sun_path[0] = 0: abstract namespace
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + path.len();
    Ok((sa, len as libc::socklen_t))
}

/// The signature shared by `bind` and `connect`.
type SockOp =
    unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int;

/// A new UNIX stream socket bound or connected (`op`) to `name`'s abstract address.
fn socket_at(name: &str, op: SockOp) -> io::Result<OwnedFd> {
    let (sa, len) = sockaddr(name)?;
    let sock = unix_socket()?;
    // SAFETY: `op` is bind or connect, given our socket and a valid address of `len` bytes.
    check(unsafe {
        op(
            sock.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(sock)
}

fn unix_socket() -> io::Result<OwnedFd> {
    // SAFETY: creating a socket; the result is checked and owned.
    owned(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: creating an eventfd; the result is checked and owned.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// The peer's pid and identity, as the kernel recorded them when the socket connected.
fn peer_cred(sock: &OwnedFd) -> io::Result<(i32, Identity)> {
    // SAFETY: getsockopt into a zeroed ucred of the right length.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: as above.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = std::mem::size_of_val(&groups[..]) as libc::socklen_t;
        // SAFETY: getsockopt into our buffer of `len` bytes; on ERANGE it says the size.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() || n > na::MAX_GROUPS {
            return Err(e);
        }
        groups.resize(n, 0);
    }
    let id = Identity {
        uid: cred.uid,
        gid: cred.gid,
        groups,
        proof: Proof::PeerCred,
    };
    Ok((cred.pid, id))
}

fn epoll_ctl(ep: &OwnedFd, op: libc::c_int, fd: RawFd) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: an epoll control call on our epoll set with a local event.
    check(unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) }).map(drop)
}

/// A listening name.
pub struct Listener {
    sock: OwnedFd,
    name: String,
    /// The listening socket and the pending connections: readable when either is.
    ep: OwnedFd,
    /// Accepted connections whose hello has not arrived, oldest first.
    pending: Mutex<Vec<(OwnedFd, Instant)>>,
    /// A descriptor held back, given up to turn connections away when the process has no
    /// other left (so that they see the hang-up instead of waiting in the backlog).
    spare: Mutex<Option<std::fs::File>>,
}

fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

impl Listener {
    /// Binds `name`; fails with `AddrInUse` while a live process holds it. The listening
    /// socket is non-blocking: [`Listener::accept`] returns `WouldBlock` when no peer waits.
    pub fn bind(name: &str) -> io::Result<Listener> {
        let sock = socket_at(name, libc::bind)?;
        // SAFETY: setting a status flag on our socket.
        check(unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
        // SAFETY: listening on our bound socket.
        check(unsafe { libc::listen(sock.as_raw_fd(), 128) })?;
        // SAFETY: creating an epoll set; the result is checked and owned.
        let ep = owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        epoll_ctl(&ep, libc::EPOLL_CTL_ADD, sock.as_raw_fd())?;
        Ok(Listener {
            sock,
            name: name.to_owned(),
            ep,
            pending: Mutex::new(Vec::new()),
            spare: Mutex::new(spare_fd()),
        })
    }

    fn accept_one(&self) -> io::Result<OwnedFd> {
        // SAFETY: accepting on our listening socket; the result is checked and owned.
        owned(unsafe {
            libc::accept4(
                self.sock.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        })
    }

    /// Out of descriptors: gives up the spare to accept one waiting peer and close it at
    /// once (it sees the hang-up). False if there is no spare or nobody waits.
    fn turn_away(&self) -> bool {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.take().is_none() {
            *spare = spare_fd();
            return false;
        }
        let turned = self.accept_one().is_ok();
        if turned {
            tracing::warn!(name = %self.name, "sm: turned a connection away: out of file descriptors");
        }
        *spare = spare_fd();
        turned
    }

    /// The bound name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor to watch: readable when a peer connects or a pending hello arrives.
    pub fn fd(&self) -> RawFd {
        self.ep.as_raw_fd()
    }

    /// Accepts one connection whose hello has arrived, with its segment and eventfds:
    /// `WouldBlock` when none is ready. Never waits: a connection whose hello is not there
    /// yet is kept pending (see the module documentation); a silent one is dropped after
    /// [`HELLO_TIMEOUT`], and a malformed hello is `InvalidData`: either way only that
    /// connection fails.
    pub fn accept(&self) -> io::Result<Link> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let sock = match self.accept_one() {
                Ok(s) => s,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if self.turn_away() {
                        continue;
                    }
                    break;
                }
                Err(_) => break,
            };
            if pending.len() >= MAX_PENDING {
                tracing::warn!(
                    "sm: {MAX_PENDING} connections without a hello; dropping the oldest"
                );
                pending.remove(0);
            }
            epoll_ctl(&self.ep, libc::EPOLL_CTL_ADD, sock.as_raw_fd())?;
            pending.push((sock, Instant::now()));
        }
        // Clear the set's ready list; what is still ready is found below.
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: a non-blocking wait into our local array of 64 events.
        unsafe { libc::epoll_wait(self.ep.as_raw_fd(), evs.as_mut_ptr(), 64, 0) };
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            match recv_with_fds(&pending[i].0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if now.duration_since(pending[i].1) < HELLO_TIMEOUT {
                        i += 1;
                        continue;
                    }
                    pending.remove(i);
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "sm hello: silent peer",
                    ));
                }
                r => {
                    let (sock, _) = pending.remove(i);
                    return r.and_then(|(payload, fds)| Self::link(sock, payload, fds));
                }
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn link(sock: OwnedFd, payload: Vec<u8>, fds: Vec<OwnedFd>) -> io::Result<Link> {
        let bad =
            |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sm hello: {why}"));
        let [memfd, wake_peer, wake_me]: [OwnedFd; 3] = fds
            .try_into()
            .map_err(|_| bad("expected three descriptors"))?;
        if payload.len() < 4
            || u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) != HELLO_MAGIC
        {
            return Err(bad("bad magic"));
        }
        let peer_name =
            String::from_utf8(payload[4..].to_vec()).map_err(|_| bad("name is not UTF-8"))?;
        let seg = Segment::open(memfd)?;
        let (peer_pid, peer) = peer_cred(&sock)?;
        Ok(Link {
            sock,
            seg,
            wake_me,
            wake_peer,
            peer_pid,
            peer,
            peer_name,
            side: Side::Acceptor,
        })
    }
}

/// Connects to `name`, announcing `me`, with rings of `cap` bytes.
pub fn connect(name: &str, me: &str, cap: usize) -> io::Result<Link> {
    let sock = socket_at(name, libc::connect)?;
    let seg = Segment::create(&format!("qs-sm-{me}"), cap)?;
    let (wake_me, wake_peer) = (eventfd()?, eventfd()?);
    let mut payload = HELLO_MAGIC.to_le_bytes().to_vec();
    payload.extend_from_slice(me.as_bytes());
    // The acceptor receives [memfd, its wake_peer = our wake_me, its wake_me = our wake_peer].
    send_with_fds(
        &sock,
        &payload,
        &[seg.fd(), wake_me.as_raw_fd(), wake_peer.as_raw_fd()],
    )?;
    let (peer_pid, peer) = peer_cred(&sock)?;
    Ok(Link {
        sock,
        seg,
        wake_me,
        wake_peer,
        peer_pid,
        peer,
        peer_name: name.to_owned(),
        side: Side::Creator,
    })
}

const CMSG_FDS: usize = 3;

/// A zeroed control buffer with room for `nfds` descriptors (8-byte aligned).
fn control_buffer(nfds: usize) -> Vec<u64> {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((nfds * std::mem::size_of::<RawFd>()) as u32) } as usize;
    vec![0u64; space.div_ceil(8)]
}

/// A message header over one data buffer and a control buffer; both must outlive it.
fn msghdr(iov: &mut libc::iovec, cbuf: &mut [u64]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zero is a valid value before we fill it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(cbuf) as _;
    msg
}

fn send_with_fds(sock: &OwnedFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    let mut cbuf = control_buffer(fds.len());
    let msg = msghdr(&mut iov, &mut cbuf);
    // SAFETY: the control buffer holds one header with room for `fds` (CMSG_SPACE); the
    // macros compute pointers inside it, and we copy exactly `fd_bytes` there.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(c),
            fd_bytes as usize,
        );
    }
    // SAFETY: sending a fully initialized message on our socket.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n as usize == payload.len() {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn recv_with_fds(sock: &OwnedFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4 + NAME_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = control_buffer(CMSG_FDS);
    let mut msg = msghdr(&mut iov, &mut cbuf);
    // SAFETY: receiving into our buffers; MSG_CMSG_CLOEXEC marks received fds close-on-exec.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into our buffer; each SCM_RIGHTS
    // payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors, which we take ownership of.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sm hello: too many descriptors",
        ));
    }
    Ok((buf, fds))
}
