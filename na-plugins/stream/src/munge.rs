//! MUNGE credentials through the system's `libmunge.so.2`, loaded when first needed, so that
//! programs that never use MUNGE neither link nor need it. The library talks to the node's
//! `munged` over its UNIX socket.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

type Encode = unsafe extern "C" fn(*mut *mut c_char, *mut c_void, *const c_void, c_int) -> c_int;
type Decode = unsafe extern "C" fn(
    *const c_char,
    *mut c_void,
    *mut *mut c_void,
    *mut c_int,
    *mut libc::uid_t,
    *mut libc::gid_t,
) -> c_int;
type StrError = unsafe extern "C" fn(c_int) -> *const c_char;

struct Lib {
    encode: Encode,
    decode: Decode,
    strerror: StrError,
    _lib: libloading::Library,
}

fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        // SAFETY: loading the system's MUNGE library, whose initializers have no
        // preconditions; its three symbols are taken with their documented C signatures.
        unsafe {
            let lib = libloading::Library::new("libmunge.so.2").map_err(|e| {
                format!("MUNGE is not installed (apt-get install munge libmunge2): {e}")
            })?;
            let sym = |name: &[u8]| -> Result<*const c_void, String> {
                lib.get::<*const c_void>(name)
                    .map(|s| *s)
                    .map_err(|e| e.to_string())
            };
            Ok(Lib {
                encode: std::mem::transmute::<*const c_void, Encode>(sym(b"munge_encode\0")?),
                decode: std::mem::transmute::<*const c_void, Decode>(sym(b"munge_decode\0")?),
                strerror: std::mem::transmute::<*const c_void, StrError>(sym(b"munge_strerror\0")?),
                _lib: lib,
            })
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn error(lib: &Lib, code: c_int) -> String {
    // SAFETY: munge_strerror returns a static string for any code.
    let s = unsafe { CStr::from_ptr((lib.strerror)(code)) };
    format!("MUNGE: {}", s.to_string_lossy())
}

/// A credential of this process over `payload`.
pub fn encode(payload: &[u8]) -> Result<Vec<u8>, String> {
    let lib = lib()?;
    let mut cred: *mut c_char = std::ptr::null_mut();
    // SAFETY: the payload pointer and length describe a live slice; on success the library
    // stores a malloc'd NUL-terminated string in `cred`, which we copy and free.
    unsafe {
        let rc = (lib.encode)(
            &mut cred,
            std::ptr::null_mut(),
            payload.as_ptr().cast(),
            payload.len() as c_int,
        );
        if rc != 0 {
            return Err(error(lib, rc));
        }
        let out = CStr::from_ptr(cred).to_bytes().to_vec();
        libc::free(cred.cast());
        Ok(out)
    }
}

/// Decodes a credential: the uid and gid it proves and its payload. Fails for forged,
/// expired or replayed credentials (munged remembers the ones it decoded).
pub fn decode(cred: &str) -> Result<(u32, u32, Vec<u8>), String> {
    let lib = lib()?;
    let cred = CString::new(cred).map_err(|_| "malformed MUNGE credential")?;
    let (mut buf, mut len): (*mut c_void, c_int) = (std::ptr::null_mut(), 0);
    let (mut uid, mut gid): (libc::uid_t, libc::gid_t) = (0, 0);
    // SAFETY: a NUL-terminated credential and out-pointers to locals; on return the library
    // may have stored a malloc'd payload of `len` bytes in `buf`, which we copy and free.
    unsafe {
        let rc = (lib.decode)(
            cred.as_ptr(),
            std::ptr::null_mut(),
            &mut buf,
            &mut len,
            &mut uid,
            &mut gid,
        );
        let payload = if buf.is_null() || len <= 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(buf.cast::<u8>(), len as usize).to_vec()
        };
        libc::free(buf);
        if rc != 0 {
            return Err(error(lib, rc));
        }
        Ok((uid, gid, payload))
    }
}
