//! `dlopen` of a shipped library (`ctypes.CDLL("/fwd/lib/libx.so")`, a Python extension
//! module in a venv in the mount): the dynamic loader reads the file with its own calls,
//! which this library does not see. A shipped library is copied into a memfd once per
//! process and loaded by its `/proc/self/fd` path, which the loader then knows it by (a
//! second `dlopen` of the same path gives the same handle). What it needs in turn is
//! found by the loader alone: system libraries, not others in the mount (`$ORIGIN` is
//! `/proc/self/fd`). Anything that cannot be copied goes to the C library's `dlopen`,
//! whose failure (and `dlerror`) is the caller's answer.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use libc::{c_char, c_int, c_void};

use crate::real::call_real;
use crate::{run, shipped, table};

/// Shipped libraries copied into memory, by their path beneath the export. Held only
/// to look and to insert, never across a copy (a `fork` keeps it: `table::before_fork`),
/// so that a child forked while another thread copies a library finds it free.
pub(crate) static LOADED: Mutex<Option<HashMap<Vec<u8>, OwnedFd>>> = Mutex::new(None);

/// The path the loader loads shipped library `p` by.
fn library(p: Vec<u8>) -> Result<CString, c_int> {
    if let Some(fd) = table::lock(&LOADED).as_ref().and_then(|m| m.get(&p)) {
        return Ok(run::image_path(fd));
    }
    let fd = run::memfd(&run::image(p.clone(), libc::R_OK)?)?;
    // Another thread may have copied it meanwhile: the first copy is the one the loader
    // knows the library by, and ours is closed after the lock.
    let (path, _spare) = {
        let mut loaded = table::lock(&LOADED);
        let map = loaded.get_or_insert_with(HashMap::new);
        match map.get(&p) {
            Some(first) => (run::image_path(first), Some(fd)),
            None => {
                let path = run::image_path(&fd);
                map.insert(p, fd);
                (path, None)
            }
        }
    };
    Ok(path)
}

/// Interposed `dlopen`.
///
/// # Safety
/// As `dlopen(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void {
    let real =
        |f: *const c_char| call_real!(dlopen: fn(*const c_char, c_int) -> *mut c_void, f, mode);
    match shipped(file).map(library) {
        Some(Ok(path)) => real(path.as_ptr()),
        _ => real(file),
    }
}
