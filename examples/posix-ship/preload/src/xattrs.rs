//! Extended attributes of shipped files, shipped (`user.*` and POSIX ACLs; the server
//! answers `ENOTSUP` for other namespaces). The `l*` variants act on the path as given
//! (the server does not follow a final symlink for attributes any differently).

use libc::{c_char, c_int, c_void, size_t, ssize_t};
use posix_ship::proto::{self as p, Target};
use serde_bytes::ByteBuf;

use crate::real::call_real;
use crate::{call, fail, fail_sz, ret, shipped, table};

fn name(n: *const c_char) -> Result<ByteBuf, c_int> {
    if n.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: a non-null attribute name is NUL-terminated.
    Ok(ByteBuf::from(
        unsafe { std::ffi::CStr::from_ptr(n) }.to_bytes().to_vec(),
    ))
}

fn fd_target(fd: c_int) -> Option<Result<Target, c_int>> {
    table::get(fd).map(|d| d.fh().map(Target::Handle))
}

/// Copies `data` out as the C calls do: its length if `size` is 0, `ERANGE` if it does
/// not fit.
fn give(data: &[u8], out: *mut c_void, size: size_t) -> ssize_t {
    if size == 0 {
        return data.len() as ssize_t;
    }
    if data.len() > size {
        return fail_sz(libc::ERANGE);
    }
    if out.is_null() {
        return fail_sz(libc::EFAULT);
    }
    // SAFETY: the caller's buffer holds `size` >= `data.len()` bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), out.cast::<u8>(), data.len()) };
    data.len() as ssize_t
}

fn get(t: Result<Target, c_int>, n: *const c_char, v: *mut c_void, s: size_t) -> ssize_t {
    // `ls -l` asks each file for its ACL: a listing read within the attribute lifetime
    // said whether the file has any extended attribute a client may reach.
    if let (Ok(Target::Path(path)), Ok(n)) = (&t, name(n))
        && n.starts_with(b"system.posix_acl_")
        && let Ok(fs) = table::client()
        && let Some(a) = fs.cached(path, false)
        && a.xattrs == Some(false)
    {
        return fail_sz(libc::ENODATA);
    }
    match t.and_then(|t| call(p::GETXATTR, &(t, name(n)?))) {
        Ok(d) => give(&d, v, s),
        Err(e) => fail_sz(e),
    }
}

fn list(t: Result<Target, c_int>, l: *mut c_char, s: size_t) -> ssize_t {
    match t.and_then(|t| call(p::LISTXATTR, &t)) {
        Ok(names) => {
            let mut all = Vec::new();
            for n in names {
                all.extend_from_slice(&n);
                all.push(0);
            }
            give(&all, l.cast(), s)
        }
        Err(e) => fail_sz(e),
    }
}

fn set(t: Result<Target, c_int>, n: *const c_char, v: *const c_void, s: size_t, f: c_int) -> c_int {
    if v.is_null() && s > 0 {
        return fail(libc::EFAULT);
    }
    let value = if s == 0 {
        Vec::new()
    } else {
        // SAFETY: the caller's value holds `s` bytes.
        unsafe { std::slice::from_raw_parts(v.cast::<u8>(), s) }.to_vec()
    };
    ret(t.and_then(|t| call(p::SETXATTR, &(t, name(n)?, ByteBuf::from(value), f))))
}

fn remove(t: Result<Target, c_int>, n: *const c_char) -> c_int {
    ret(t.and_then(|t| call(p::REMOVEXATTR, &(t, name(n)?))))
}

fn path_target(path: *const c_char) -> Option<Result<Target, c_int>> {
    shipped(path).map(|p| Ok(Target::Path(ByteBuf::from(p))))
}

macro_rules! by_path {
    ($($name:ident / $l:ident ($($a:ident : $t:ty),*) -> $r:ty = $f:ident;)*) => {$(
        /// Interposed: shipped on paths under the mount.
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(path: *const c_char, $($a: $t),*) -> $r {
            match path_target(path) {
                Some(t) => $f(t, $($a),*),
                None => {
                    let local = crate::local_path(path);
                    call_real!($name: fn(*const c_char, $($t),*) -> $r, local.ptr(), $($a),*)
                }
            }
        }

        /// Interposed: shipped on paths under the mount.
        #[unsafe(no_mangle)]
        pub extern "C" fn $l(path: *const c_char, $($a: $t),*) -> $r {
            match path_target(path) {
                Some(t) => $f(t, $($a),*),
                None => {
                    let local = crate::local_path(path);
                    call_real!($l: fn(*const c_char, $($t),*) -> $r, local.ptr(), $($a),*)
                }
            }
        }
    )*};
}

by_path! {
    getxattr / lgetxattr (n: *const c_char, v: *mut c_void, s: size_t) -> ssize_t = get;
    listxattr / llistxattr (l: *mut c_char, s: size_t) -> ssize_t = list;
    setxattr / lsetxattr (n: *const c_char, v: *const c_void, s: size_t, f: c_int) -> c_int = set;
    removexattr / lremovexattr (n: *const c_char) -> c_int = remove;
}

macro_rules! by_fd {
    ($($name:ident ($($a:ident : $t:ty),*) -> $r:ty = $f:ident;)*) => {$(
        /// Interposed: shipped on shipped descriptors.
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(fd: c_int, $($a: $t),*) -> $r {
            match fd_target(fd) {
                Some(t) => $f(t, $($a),*),
                None => call_real!($name: fn(c_int, $($t),*) -> $r, fd, $($a),*),
            }
        }
    )*};
}

by_fd! {
    fgetxattr (n: *const c_char, v: *mut c_void, s: size_t) -> ssize_t = get;
    flistxattr (l: *mut c_char, s: size_t) -> ssize_t = list;
    fsetxattr (n: *const c_char, v: *const c_void, s: size_t, f: c_int) -> c_int = set;
    fremovexattr (n: *const c_char) -> c_int = remove;
}
