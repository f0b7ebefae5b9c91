//! Programs started from inside the mount inherit its working directory: `execve`,
//! `execvpe`, `posix_spawn` and `posix_spawnp` get `POSIX_SHIP_CWD` in the environment
//! they pass (shells pass their own variables, not `environ`, so setting it at `chdir`
//! is not enough).

use std::ffi::{CStr, CString};

use libc::{c_char, c_int, pid_t, posix_spawn_file_actions_t, posix_spawnattr_t};

use crate::real::call_real;

/// `envp` with the working directory inside the mount added, owned for the call.
struct Env {
    _own: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl Env {
    /// `None` when the working directory is the kernel's (`envp` is passed unchanged).
    fn new(envp: *const *const c_char) -> Option<Env> {
        let (k, v) = crate::cwd::env()?;
        let prefix = [k.as_bytes(), b"="].concat();
        let mut own = vec![CString::new([prefix.as_slice(), &v].concat()).ok()?];
        let mut i = 0;
        while !envp.is_null() {
            // SAFETY: `envp` is a NULL-terminated array of C strings (execve's contract).
            let e = unsafe { *envp.add(i) };
            if e.is_null() {
                break;
            }
            // SAFETY: each entry is a NUL-terminated string.
            let s = unsafe { CStr::from_ptr(e) };
            if !s.to_bytes().starts_with(&prefix) {
                own.push(s.to_owned());
            }
            i += 1;
        }
        let mut ptrs: Vec<*const c_char> = own.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Some(Env { _own: own, ptrs })
    }
}

/// The environment to pass: ours if made, else the caller's.
fn pick<T>(env: &Option<Env>, envp: *const *const T) -> *const *const T {
    env.as_ref().map_or(envp, |e| e.ptrs.as_ptr().cast())
}

macro_rules! exec {
    ($($name:ident),*) => {$(
        #[doc = concat!("Interposed `", stringify!($name), "`: the program inherits the working directory inside the mount.")]
        ///
        /// # Safety
        /// As the C call's contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            file: *const c_char,
            argv: *const *const c_char,
            envp: *const *const c_char,
        ) -> c_int {
            let env = Env::new(envp);
            call_real!($name: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
                file, argv, pick(&env, envp))
        }
    )*};
}

macro_rules! spawn {
    ($($name:ident),*) => {$(
        #[doc = concat!("Interposed `", stringify!($name), "`: the program inherits the working directory inside the mount.")]
        ///
        /// # Safety
        /// As the C call's contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            pid: *mut pid_t,
            file: *const c_char,
            actions: *const posix_spawn_file_actions_t,
            attr: *const posix_spawnattr_t,
            argv: *const *mut c_char,
            envp: *const *mut c_char,
        ) -> c_int {
            let env = Env::new(envp.cast());
            let envp: *const *mut c_char = pick(&env, envp.cast::<*const c_char>()).cast();
            call_real!($name: fn(*mut pid_t, *const c_char, *const posix_spawn_file_actions_t,
                *const posix_spawnattr_t, *const *mut c_char, *const *mut c_char) -> c_int,
                pid, file, actions, attr, argv, envp)
        }
    )*};
}

exec!(execve, execvpe);
spawn!(posix_spawn, posix_spawnp);
