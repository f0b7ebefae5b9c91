//! Programs that live in the mount: the kernel cannot `exec` a file it cannot see, so
//! `execve`, `posix_spawn` and their kin of a shipped path (`./prog` built in the tree,
//! a venv's `bin/python`) are made here. A path whose links lead out of the mount runs
//! the local file it names; a shipped script (`#!`) runs its interpreter on the script's
//! path (the interpreter, under this library too, reads it); any other shipped file is
//! copied into a memfd that the kernel executes (`execveat`, or `/proc/self/fd/N` for
//! `posix_spawn`), `argv` unchanged. The kernel's checks come first: search and execute
//! permission for the caller (the server's `access`), a regular file. Shared libraries
//! in the mount that a shipped binary needs are handed to its loader (`crate::libs`).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::c_int;
use posix_ship::proto as p;
use serde_bytes::ByteBuf;

use crate::real::call_real;
use crate::{call, shipped, table};

/// The largest shipped program copied into memory to run.
const MAX_IMAGE: u64 = 1 << 30;

/// How to run the program a path names.
pub enum Program {
    /// Not shipped: the call goes on unchanged.
    Elsewhere,
    /// A shipped path whose links lead to this local file.
    Local(CString),
    /// A shipped binary, copied into this memfd, and the shipped libraries it needs.
    Image(OwnedFd, Option<crate::libs::Libs>),
    /// A shipped script: its interpreter (a local one) and optional argument, then its path.
    Script(Vec<CString>),
    /// Not to be run: this errno.
    Refused(c_int),
}

/// How to run `file` (the caller's path argument) with environment `envp`.
pub fn program(file: *const libc::c_char, envp: *const *const libc::c_char) -> Program {
    let (Some(p), Some(cfg)) = (shipped(file), crate::config()) else {
        return Program::Elsewhere;
    };
    let named = [cfg.mount(), &p[..]].concat();
    let real = match crate::compat::canonical(&named) {
        Ok(r) => r,
        Err(e) => return Program::Refused(e),
    };
    let Some(p) = crate::shipped_bytes(&real) else {
        return CString::new(real).map_or(Program::Refused(libc::EINVAL), Program::Local);
    };
    match image(p, libc::X_OK) {
        Ok(data) if data.starts_with(b"#!") => script(&data, file),
        Ok(data) => match memfd(&data) {
            Ok(fd) => {
                // (`$ORIGIN` is where the links lead, as the kernel names the program; a
                // malformed image must not unwind into the caller's `execve`.)
                let find = || crate::libs::find(&data, &real, envp);
                let libs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(find));
                Program::Image(fd, libs.ok().flatten())
            }
            Err(e) => Program::Refused(e),
        },
        Err(e) => Program::Refused(e),
    }
}

/// The C library's search path when `PATH` is unset.
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// Where `execvp`, `execvpe` and `posix_spawnp` find the bare name `file` when `PATH`
/// names a directory in the mount (the C library's own search makes its calls inside
/// itself, where this library does not see them): the first directory in `PATH` order
/// holding a regular file of that name the caller may execute (shipped: the server's
/// checks; local: the kernel's), or else the first shipped one it may not (its exec
/// fails with `EACCES`, as the C library's search would). `None` if `PATH` names no
/// shipped directory, if the file is found in a local directory first, or if there is
/// none: the C library then looks, as it would. Empty entries are the working
/// directory, as in the C library.
pub fn search(file: *const libc::c_char) -> Option<CString> {
    if file.is_null() || crate::config()?.ride.is_some() {
        return None;
    }
    // SAFETY: a non-null `file` is NUL-terminated (execvp's contract).
    let name = unsafe { CStr::from_ptr(file) }.to_bytes();
    if name.is_empty() || name.contains(&b'/') {
        return None;
    }
    let path = std::env::var_os("PATH").map(std::os::unix::ffi::OsStringExt::into_vec);
    let candidates: Vec<CString> = path
        .as_deref()
        .unwrap_or(DEFAULT_PATH)
        .split(|b| *b == b':')
        .filter_map(|d| {
            let d: &[u8] = if d.is_empty() { b"." } else { d };
            CString::new([d, b"/", name].concat()).ok()
        })
        .collect();
    if !candidates.iter().any(|c| shipped(c.as_ptr()).is_some()) {
        return None;
    }
    // The first regular file that may be executed; else the first shipped regular file,
    // whose exec then fails with EACCES as the C library's search would.
    let mut denied = None;
    for c in candidates {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        let regular = crate::paths::stat(c.as_ptr(), st.as_mut_ptr()) == 0
            // SAFETY: stat succeeded and filled it.
            && unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFREG;
        let ours = shipped(c.as_ptr()).is_some();
        if regular && crate::paths::access(c.as_ptr(), libc::X_OK) == 0 {
            // A local one is the C library's to run (its search also runs a script
            // without `#!` with the shell).
            return ours.then_some(c);
        }
        if regular && ours && denied.is_none() {
            denied = Some(c);
        }
    }
    denied
}

/// The bytes of regular file `p` (beneath the export), which the caller may `access`
/// (`X_OK` to run it, `R_OK` to load it).
pub(crate) fn image(p: Vec<u8>, access: c_int) -> Result<Vec<u8>, c_int> {
    call(p::ACCESS, &(ByteBuf::from(p.clone()), access))?;
    let fs = table::client()?;
    let o = fs
        .open_raw(&p, libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(crate::errno_of)?;
    let read = || {
        if !o.attr.is_file() {
            return Err(libc::EACCES);
        }
        if o.attr.size > MAX_IMAGE {
            return Err(libc::ENOMEM);
        }
        let mut data = vec![0u8; o.attr.size as usize];
        let mut at = 0;
        while at < data.len() {
            let n = fs
                .pread(o.fh, &mut data[at..], at as u64)
                .map_err(crate::errno_of)?;
            if n == 0 {
                break;
            }
            at += n;
        }
        data.truncate(at);
        Ok(data)
    };
    let r = read();
    let _ = fs.close_raw(o.fh);
    r
}

/// A script's interpreter line: the interpreter, its one optional argument (the rest of
/// the line, as Linux takes it), then the script as the caller named it.
fn script(data: &[u8], file: *const libc::c_char) -> Program {
    let line = data[2..].split(|b| *b == b'\n').next().unwrap_or_default();
    let line = &line[..line.len().min(255)];
    let trim = |s: &[u8]| -> Vec<u8> {
        let s = s.trim_ascii();
        s.to_vec()
    };
    let line = trim(line);
    let (interp, arg) = match line.iter().position(|b| b.is_ascii_whitespace()) {
        Some(i) => (line[..i].to_vec(), Some(trim(&line[i..]))),
        None => (line, None),
    };
    if interp.is_empty() {
        return Program::Refused(libc::ENOEXEC);
    }
    // SAFETY: `shipped` found `file` non-null and NUL-terminated.
    let file = unsafe { CStr::from_ptr(file) }.to_owned();
    let words = std::iter::once(interp).chain(arg.filter(|a| !a.is_empty()));
    match words.map(CString::new).collect::<Result<Vec<_>, _>>() {
        Ok(mut v) => {
            v.push(file);
            Program::Script(v)
        }
        Err(_) => Program::Refused(libc::ENOEXEC),
    }
}

/// `data` in a memfd the kernel can execute.
pub(crate) fn memfd(data: &[u8]) -> Result<OwnedFd, c_int> {
    memfd_named(data, c"posix-ship-exec", libc::MFD_CLOEXEC)
}

/// `data` in a memfd named `name`, made with `flags`.
pub(crate) fn memfd_named(data: &[u8], name: &CStr, flags: libc::c_uint) -> Result<OwnedFd, c_int> {
    // SAFETY: a NUL-terminated name; flags as memfd_create(2) documents.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(crate::last_errno());
    }
    // SAFETY: a descriptor just made, owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut at = 0;
    while at < data.len() {
        let n = call_real!(write: fn(c_int, *const libc::c_void, usize) -> isize,
            fd, data[at..].as_ptr().cast(), data.len() - at);
        if n <= 0 {
            return Err(crate::last_errno());
        }
        at += n as usize;
    }
    Ok(owned)
}

/// `argv` with its first entry replaced by `prefix` (a script's interpreter line and
/// path), owned for the call.
pub struct Argv {
    _own: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

impl Argv {
    /// # Safety
    /// `argv` is a NULL-terminated array of C strings (execve's contract).
    pub unsafe fn after(prefix: Vec<CString>, argv: *const *const libc::c_char) -> Argv {
        let mut ptrs: Vec<*const libc::c_char> = prefix.iter().map(|c| c.as_ptr()).collect();
        let mut i = 1;
        // SAFETY: the caller's contract; entry 0 exists unless argv is empty.
        while !argv.is_null() && unsafe { !(*argv).is_null() && !(*argv.add(i)).is_null() } {
            // SAFETY: as above, entry i is within the array.
            ptrs.push(unsafe { *argv.add(i) });
            i += 1;
        }
        ptrs.push(std::ptr::null());
        Argv { _own: prefix, ptrs }
    }

    /// The interpreter to run (a local file: one in the mount is not looked for).
    pub fn program(&self) -> *const libc::c_char {
        self.ptrs[0]
    }

    /// The array to pass, valid while `self` lives.
    pub fn ptr(&self) -> *const *const libc::c_char {
        self.ptrs.as_ptr()
    }
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: returns only on failure (-1, errno set).
pub fn exec_image(
    fd: &OwnedFd,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> c_int {
    // SAFETY: the kernel reads the NUL-terminated empty path and the caller's
    // NULL-terminated arrays; on success it does not return.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv,
            envp,
            libc::AT_EMPTY_PATH,
        ) as c_int
    }
}

/// The path `posix_spawn` runs an image by (the child inherits the descriptor until it
/// executes it).
pub fn image_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}
