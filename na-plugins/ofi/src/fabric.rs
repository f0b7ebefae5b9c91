//! Owned libfabric objects (info, fabric, domain, completion queue, address vector,
//! endpoint, memory region) closed on drop, and libfabric return codes as [`NaError`]s.
//!
//! Every `unsafe` block here calls libfabric on objects this module opened and still owns;
//! libfabric's objects are thread-safe because the domain is opened with `FI_THREAD_SAFE`.

use std::ffi::{CStr, CString, c_void};
use std::os::fd::RawFd;
use std::ptr;

use libfabric_sys as fi;
use na::NaError;

/// The libfabric API version this plugin is written against.
pub const API_VERSION: u32 = fi::fi_make_version(1, 17);

/// The text of a libfabric error number (positive or negative).
pub fn strerror(code: i64) -> String {
    let n = code.unsigned_abs() as i32;
    // SAFETY: fi_strerror returns a pointer to a static NUL-terminated string for any number.
    unsafe { CStr::from_ptr(fi::fi_strerror(n)) }
        .to_string_lossy()
        .into_owned()
}

/// Maps a libfabric error number (either sign) to the contract's error, naming `what`.
pub fn error(what: &str, code: i64) -> NaError {
    let n = code.unsigned_abs() as u32;
    let msg = format!("{what}: {} ({n})", strerror(code));
    match n {
        fi::FI_ECANCELED => NaError::Canceled,
        fi::FI_EACCES | fi::FI_EKEYREJECTED | fi::FI_EREMOTEIO => NaError::AccessDenied(msg),
        fi::FI_ECONNREFUSED | fi::FI_EHOSTUNREACH | fi::FI_ENOENT => NaError::Unreachable(msg),
        fi::FI_ECONNRESET | fi::FI_ECONNABORTED | fi::FI_ENOTCONN | fi::FI_EIO => {
            NaError::Disconnected(msg)
        }
        fi::FI_EINVAL => NaError::InvalidArgument(msg),
        x if x == fi::FI_ETRUNC || x == fi::FI_EOVERRUN => NaError::PeerMisbehaved(msg),
        fi::FI_EAGAIN => NaError::Exhausted(msg),
        _ => NaError::Os {
            kind: std::io::ErrorKind::Other,
            msg,
        },
    }
}

/// `Ok(())` for zero, the mapped error otherwise.
pub fn check(what: &str, rc: i64) -> Result<(), NaError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(error(what, rc))
    }
}

fn cstring(s: &str) -> Result<CString, NaError> {
    CString::new(s).map_err(|_| NaError::InvalidArgument(format!("NUL in {s:?}")))
}

/// A `struct fi_info` list returned by `fi_getinfo` (or one duplicated entry).
pub struct Info(*mut fi::fi_info);

// SAFETY: an fi_info is plain data owned by this value; libfabric keeps no reference to it.
unsafe impl Send for Info {}
// SAFETY: as for Send; it is only read after construction.
unsafe impl Sync for Info {}

/// What to ask `fi_getinfo` for.
pub struct Hints<'a> {
    /// The libfabric provider string (`tcp;ofi_rxm`).
    pub prov: &'a str,
    /// A domain (interface, NIC) to restrict to.
    pub domain: Option<&'a str>,
    /// Node and service to bind (with `FI_SOURCE`) or `None` for the provider's choice.
    pub node: Option<&'a str>,
    /// The service (port) with `node`.
    pub service: Option<&'a str>,
    /// Requested capabilities.
    pub caps: u64,
    /// Memory registration modes this plugin supports.
    pub mr_mode: u32,
}

impl Info {
    /// Calls `fi_getinfo` with `hints`; returns the provider's first match.
    pub fn get(h: &Hints<'_>) -> Result<Info, NaError> {
        // SAFETY: fi_allocinfo (fi_dupinfo(NULL)) returns a zeroed info with allocated
        // sub-attributes, or NULL; strings stored into it are malloc'd (strdup) because
        // fi_freeinfo frees them.
        unsafe {
            let hints = fi::fi_dupinfo(ptr::null());
            if hints.is_null() {
                return Err(NaError::Exhausted("fi_allocinfo".into()));
            }
            let hints = Info(hints);
            let hi = &mut *hints.0;
            hi.caps = h.caps;
            hi.mode = fi::FI_CONTEXT | fi::FI_CONTEXT2;
            (*hi.ep_attr).type_ = fi::fi_ep_type_FI_EP_RDM;
            (*hi.domain_attr).mr_mode = h.mr_mode as i32;
            (*hi.domain_attr).threading = fi::fi_threading_FI_THREAD_SAFE;
            (*hi.domain_attr).av_type = fi::fi_av_type_FI_AV_TABLE;
            let prov = cstring(h.prov)?;
            (*hi.fabric_attr).prov_name = libc::strdup(prov.as_ptr());
            if let Some(d) = h.domain {
                let d = cstring(d)?;
                (*hi.domain_attr).name = libc::strdup(d.as_ptr());
            }
            let node = h.node.map(cstring).transpose()?;
            let service = h.service.map(cstring).transpose()?;
            let flags = if node.is_some() || service.is_some() {
                fi::FI_SOURCE
            } else {
                0
            };
            let mut out: *mut fi::fi_info = ptr::null_mut();
            let rc = fi::fi_getinfo(
                API_VERSION,
                node.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
                service.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
                flags,
                hints.0,
                &mut out,
            );
            if rc != 0 || out.is_null() {
                return Err(error(&format!("fi_getinfo({})", h.prov), rc as i64));
            }
            Ok(Info(out))
        }
    }

    /// The first entry.
    pub fn raw(&self) -> &fi::fi_info {
        // SAFETY: the pointer is a valid fi_info for as long as self lives.
        unsafe { &*self.0 }
    }

    /// The provider's name (`tcp;ofi_rxm`).
    pub fn prov_name(&self) -> String {
        // SAFETY: fabric_attr and its prov_name are set by fi_getinfo on every entry.
        unsafe { c_str((*self.raw().fabric_attr).prov_name) }
    }

    /// The domain's name (`lo`, `eth0`, `shm`).
    pub fn domain_name(&self) -> String {
        // SAFETY: domain_attr is set by fi_getinfo on every entry.
        unsafe { c_str((*self.raw().domain_attr).name) }
    }

    /// The memory registration modes the provider requires.
    pub fn mr_mode(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.raw().domain_attr).mr_mode as u32 }
    }

    /// The provider's memory key size in bytes.
    pub fn mr_key_size(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*self.raw().domain_attr).mr_key_size }
    }

    /// The largest message the endpoint takes.
    pub fn max_msg_size(&self) -> usize {
        // SAFETY: ep_attr is set by fi_getinfo on every entry.
        unsafe { (*self.raw().ep_attr).max_msg_size }
    }

    /// The most pieces a send may gather (`fi_sendv`).
    pub fn iov_limit(&self) -> usize {
        // SAFETY: tx_attr is set by fi_getinfo on every entry.
        unsafe { (*self.raw().tx_attr).iov_limit }
    }

    /// The largest `fi_inject`/`fi_tinject` payload.
    pub fn inject_size(&self) -> usize {
        // SAFETY: tx_attr is set by fi_getinfo on every entry.
        unsafe { (*self.raw().tx_attr).inject_size }
    }
}

impl Drop for Info {
    fn drop(&mut self) {
        // SAFETY: the list was allocated by libfabric and is freed once.
        unsafe { fi::fi_freeinfo(self.0) }
    }
}

/// # Safety
/// `p` must be NULL or a valid NUL-terminated string.
unsafe fn c_str(p: *const libc::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the function's contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The names of the libfabric providers present on this machine with RDM endpoints,
/// tagged messages and RMA (for error messages that list the alternatives).
pub fn providers() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: as in Info::get; the returned list is walked read-only, then freed.
    unsafe {
        let hints = fi::fi_dupinfo(ptr::null());
        if hints.is_null() {
            return names;
        }
        let hints = Info(hints);
        (*hints.0).caps = fi::FI_TAGGED as u64 | fi::FI_RMA as u64;
        (*(*hints.0).ep_attr).type_ = fi::fi_ep_type_FI_EP_RDM;
        let mut out: *mut fi::fi_info = ptr::null_mut();
        if fi::fi_getinfo(API_VERSION, ptr::null(), ptr::null(), 0, hints.0, &mut out) != 0 {
            return names;
        }
        let list = Info(out);
        let mut p = list.0;
        while !p.is_null() {
            let n = c_str((*(*p).fabric_attr).prov_name);
            if !names.contains(&n) {
                names.push(n);
            }
            p = (*p).next;
        }
    }
    names
}

macro_rules! owned {
    ($(#[$m:meta])* $name:ident, $raw:ty) => {
        $(#[$m])*
        pub struct $name(pub *mut $raw);
        // SAFETY: libfabric objects of a FI_THREAD_SAFE domain may be used from any thread.
        unsafe impl Send for $name {}
        // SAFETY: as for Send.
        unsafe impl Sync for $name {}
        impl $name {
            /// The object's `fid`, for binding and closing.
            pub fn fid(&self) -> *mut fi::fid {
                // SAFETY: the object is open; taking the address of its first member.
                unsafe { ptr::addr_of_mut!((*self.0).fid) }
            }
        }
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: the object was opened by this module and is closed once.
                let rc = unsafe { fi::fi_close(self.fid()) };
                if rc != 0 {
                    tracing::warn!("fi_close({}): {}", stringify!($name), strerror(rc as i64));
                }
            }
        }
    };
}

owned!(
    /// An open fabric.
    Fabric,
    fi::fid_fabric
);
owned!(
    /// An open domain.
    Domain,
    fi::fid_domain
);
owned!(
    /// An open completion queue.
    Cq,
    fi::fid_cq
);
owned!(
    /// An open address vector.
    Av,
    fi::fid_av
);
owned!(
    /// An open endpoint.
    Ep,
    fi::fid_ep
);
owned!(
    /// A memory registration.
    Mr,
    fi::fid_mr
);

/// Fabric, domain, completion queue, address vector and an enabled endpoint, declared in
/// the order they must close (endpoint first).
pub struct Stack {
    /// The endpoint.
    pub ep: Ep,
    /// The address vector.
    pub av: Av,
    /// The completion queue of sends, receives and RMA.
    pub cq: Cq,
    /// The file descriptor to wait on for the CQ, when the provider has one.
    pub wait_fd: Option<RawFd>,
    /// The domain.
    pub domain: Domain,
    /// The fabric.
    pub fabric: Fabric,
}

impl Stack {
    /// Opens everything for `info` and enables the endpoint; `min_multi`: the free room
    /// below which the provider releases a multi-receive buffer.
    pub fn open(
        info: &Info,
        cq_size: usize,
        wait: bool,
        min_multi: Option<usize>,
    ) -> Result<Stack, NaError> {
        let raw = info.0;
        // SAFETY: each call gets valid arguments (attributes from fi_getinfo, out pointers to
        // locals) and each opened object is wrapped at once so that it is closed on error.
        unsafe {
            let mut f: *mut fi::fid_fabric = ptr::null_mut();
            check(
                "fi_fabric",
                fi::fi_fabric((*raw).fabric_attr, &mut f, ptr::null_mut()) as i64,
            )?;
            let fabric = Fabric(f);
            let mut d: *mut fi::fid_domain = ptr::null_mut();
            check(
                "fi_domain",
                fi::fi_domain(f, raw, &mut d, ptr::null_mut()) as i64,
            )?;
            let domain = Domain(d);
            let (cq, wait_fd) = open_cq(&domain, cq_size, wait)?;
            let mut av_attr = fi::fi_av_attr {
                type_: (*(*raw).domain_attr).av_type,
                ..Default::default()
            };
            if av_attr.type_ == fi::fi_av_type_FI_AV_UNSPEC {
                av_attr.type_ = fi::fi_av_type_FI_AV_MAP;
            }
            let mut a: *mut fi::fid_av = ptr::null_mut();
            check(
                "fi_av_open",
                fi::fi_av_open(d, &mut av_attr, &mut a, ptr::null_mut()) as i64,
            )?;
            let av = Av(a);
            let mut e: *mut fi::fid_ep = ptr::null_mut();
            check(
                "fi_endpoint",
                fi::fi_endpoint(d, raw, &mut e, ptr::null_mut()) as i64,
            )?;
            let ep = Ep(e);
            check("fi_ep_bind(av)", fi::fi_ep_bind(e, av.fid(), 0) as i64)?;
            let flags = fi::FI_TRANSMIT as u64 | fi::FI_RECV as u64;
            check("fi_ep_bind(cq)", fi::fi_ep_bind(e, cq.fid(), flags) as i64)?;
            if let Some(min) = min_multi {
                let rc = fi::fi_setopt(
                    ep.fid(),
                    fi::FI_OPT_ENDPOINT as i32,
                    fi::FI_OPT_MIN_MULTI_RECV as i32,
                    (&raw const min).cast(),
                    std::mem::size_of::<usize>(),
                );
                check("fi_setopt(FI_OPT_MIN_MULTI_RECV)", rc as i64)?;
            }
            check("fi_enable", fi::fi_enable(e) as i64)?;
            Ok(Stack {
                ep,
                av,
                cq,
                wait_fd,
                domain,
                fabric,
            })
        }
    }

    /// The endpoint's own address in the provider's format.
    pub fn name(&self) -> Result<Vec<u8>, NaError> {
        let mut buf = vec![0u8; 256];
        let mut len = buf.len();
        // SAFETY: buf has len bytes; fi_getname writes at most len and sets len.
        let rc = unsafe { fi::fi_getname(self.ep.fid(), buf.as_mut_ptr().cast(), &mut len) };
        check("fi_getname", rc as i64)?;
        buf.truncate(len);
        Ok(buf)
    }
}

/// Opens the completion queue: with a wait fd if `wait` and the provider has one.
fn open_cq(domain: &Domain, size: usize, wait: bool) -> Result<(Cq, Option<RawFd>), NaError> {
    let objs = [fi::fi_wait_obj_FI_WAIT_FD, fi::fi_wait_obj_FI_WAIT_NONE];
    for obj in objs.into_iter().skip(usize::from(!wait)) {
        let mut attr = fi::fi_cq_attr {
            size,
            format: fi::fi_cq_format_FI_CQ_FORMAT_TAGGED,
            wait_obj: obj,
            ..Default::default()
        };
        let mut c: *mut fi::fid_cq = ptr::null_mut();
        // SAFETY: valid domain, attributes and out pointer.
        let rc = unsafe { fi::fi_cq_open(domain.0, &mut attr, &mut c, ptr::null_mut()) };
        if rc != 0 {
            tracing::debug!("fi_cq_open(wait {obj}): {}", strerror(rc as i64));
            continue;
        }
        let cq = Cq(c);
        if obj == fi::fi_wait_obj_FI_WAIT_NONE {
            return Ok((cq, None));
        }
        let mut fd: libc::c_int = -1;
        // SAFETY: FI_GETWAIT on a CQ with FI_WAIT_FD writes one int.
        let rc = unsafe {
            fi::fi_control(
                cq.fid(),
                fi::FI_GETWAIT as i32,
                (&mut fd as *mut libc::c_int).cast::<c_void>(),
            )
        };
        if rc == 0 && fd >= 0 {
            return Ok((cq, Some(fd)));
        }
        tracing::debug!("FI_GETWAIT: {}", strerror(rc as i64));
    }
    Err(NaError::Unsupported(
        "the provider opens no completion queue".into(),
    ))
}
