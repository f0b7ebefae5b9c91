//! Waiting for a child: what this process cached of the server's attributes is
//! forgotten, since the child may have changed anything (`rm -f conftest` before a
//! `test -s conftest`, a recipe `make` then stats the target of). The C library's
//! `system` and `pclose` wait inside it, so they are wrapped too. Forgetting is one
//! atomic add (the connection forgets at its next use), so `errno` stays as the call
//! set it.

use libc::{c_char, c_int, id_t, idtype_t, pid_t, siginfo_t};

use crate::real::call_real;
use crate::table;

/// Interposed `wait`.
#[unsafe(no_mangle)]
pub extern "C" fn wait(status: *mut c_int) -> pid_t {
    let r = call_real!(wait: fn(*mut c_int) -> pid_t, status);
    if r > 0 {
        table::forget_attrs();
    }
    r
}

/// Interposed `waitpid`.
#[unsafe(no_mangle)]
pub extern "C" fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t {
    let r = call_real!(waitpid: fn(pid_t, *mut c_int, c_int) -> pid_t, pid, status, options);
    if r > 0 {
        table::forget_attrs();
    }
    r
}

/// Interposed `wait3`.
#[unsafe(no_mangle)]
pub extern "C" fn wait3(status: *mut c_int, options: c_int, ru: *mut libc::rusage) -> pid_t {
    let r =
        call_real!(wait3: fn(*mut c_int, c_int, *mut libc::rusage) -> pid_t, status, options, ru);
    if r > 0 {
        table::forget_attrs();
    }
    r
}

/// Interposed `wait4`.
#[unsafe(no_mangle)]
pub extern "C" fn wait4(
    pid: pid_t,
    status: *mut c_int,
    options: c_int,
    ru: *mut libc::rusage,
) -> pid_t {
    let r = call_real!(wait4: fn(pid_t, *mut c_int, c_int, *mut libc::rusage) -> pid_t,
        pid, status, options, ru);
    if r > 0 {
        table::forget_attrs();
    }
    r
}

/// Interposed `waitid`.
#[unsafe(no_mangle)]
pub extern "C" fn waitid(
    idtype: idtype_t,
    id: id_t,
    info: *mut siginfo_t,
    options: c_int,
) -> c_int {
    let r = call_real!(waitid: fn(idtype_t, id_t, *mut siginfo_t, c_int) -> c_int,
        idtype, id, info, options);
    if r == 0 {
        table::forget_attrs();
    }
    r
}

/// Interposed `system`.
#[unsafe(no_mangle)]
pub extern "C" fn system(cmd: *const c_char) -> c_int {
    let r = call_real!(system: fn(*const c_char) -> c_int, cmd);
    table::forget_attrs();
    r
}

/// Interposed `pclose`.
#[unsafe(no_mangle)]
pub extern "C" fn pclose(f: *mut libc::FILE) -> c_int {
    let r = call_real!(pclose: fn(*mut libc::FILE) -> c_int, f);
    table::forget_attrs();
    r
}
