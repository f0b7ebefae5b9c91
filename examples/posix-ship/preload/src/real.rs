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

/// Exports each `alias` as a C function doing exactly what `target` does (the `*64`
/// variants, which are the same calls on 64-bit Linux). Each line starts `safe` or
/// `unsafe`, as the target is.
macro_rules! alias {
    ($( $kind:ident $alias:ident => $target:ident($($a:ident: $t:ty),*) -> $r:ty; )*) => {$(
        $crate::real::alias!(@one $kind $alias $target ($($a: $t),*) $r);
    )*};
    (@one safe $alias:ident $target:ident ($($a:ident: $t:ty),*) $r:ty) => {
        #[doc = concat!("Interposed `", stringify!($alias), "`: `", stringify!($target), "`.")]
        #[unsafe(no_mangle)]
        pub extern "C" fn $alias($($a: $t),*) -> $r {
            $target($($a),*)
        }
    };
    (@one unsafe $alias:ident $target:ident ($($a:ident: $t:ty),*) $r:ty) => {
        #[doc = concat!("Interposed `", stringify!($alias), "`: `", stringify!($target), "`.")]
        ///
        /// # Safety
        /// As the C call's contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $alias($($a: $t),*) -> $r {
            // SAFETY: the caller's contract is the target's.
            unsafe { $target($($a),*) }
        }
    };
}

pub(crate) use {alias, call_real, real};
