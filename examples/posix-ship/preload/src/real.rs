//! The C library's own functions, found with `dlsym(RTLD_NEXT)` once and cached.

/// `real!(open: fn(*const c_char, c_int, mode_t) -> c_int)` evaluates to the next
/// definition of `open` after this library (the C library's), or `None` if there is none.
macro_rules! real {
    ($name:ident : fn($($t:ty),*) -> $r:ty) => {{
        static P: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut p = P.load(std::sync::atomic::Ordering::Relaxed);
        if p == 0 {
            // SAFETY: the name is a NUL-terminated literal; dlsym has no other requirement.
            p = unsafe {
                libc::dlsym(libc::RTLD_NEXT, concat!(stringify!($name), "\0").as_ptr().cast())
            } as usize;
            P.store(p, std::sync::atomic::Ordering::Relaxed);
        }
        if p == 0 {
            None
        } else {
            // SAFETY: the symbol named `$name` in the C library has this C signature
            // (declared per glibc's headers for x86_64 Linux at each use).
            Some(unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> $r>(p) })
        }
    }};
}

/// Calls the C library's `$name` with the arguments, or fails with `ENOSYS` (-1) when
/// the C library has none.
macro_rules! call_real {
    ($name:ident : fn($($t:ty),*) -> $r:ty, $($arg:expr),*) => {
        match $crate::real::real!($name: fn($($t),*) -> $r) {
            // SAFETY: forwarding the caller's own arguments, unchanged, to the function
            // they meant to call.
            Some(f) => unsafe { f($($arg),*) },
            None => $crate::fail(libc::ENOSYS) as $r,
        }
    };
}

pub(crate) use {call_real, real};
