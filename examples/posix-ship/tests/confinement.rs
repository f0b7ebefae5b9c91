//! No client path reaches outside the export: `..`, absolute symlinks, symlinks that
//! climb out, and symlinks swapped in during opens; with the kernel's resolver
//! (`openat2`) and with the user-space walk.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{ServerProc, scratch};

const SECRET: &[u8] = b"outside the export";

fn escapes_are_refused(resolver: &str) {
    let base = scratch(&format!("confine-{resolver}"));
    let export = base.join("export");
    std::fs::create_dir_all(export.join("sub")).unwrap();
    std::fs::write(base.join("secret"), SECRET).unwrap();
    std::fs::write(export.join("inside"), b"inside").unwrap();
    std::os::unix::fs::symlink("/etc", export.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../secret", export.join("sub/climb")).unwrap();
    std::os::unix::fs::symlink("../inside", export.join("sub/ok")).unwrap();
    let srv = ServerProc::start_env(&export, "tcp", &[], &[("POSIX_SHIP_RESOLVE", resolver)]);
    let fs = srv.client();

    for p in [
        "../../etc/passwd",
        "/../secret",
        "sub/../../secret",
        "abs/passwd",
        "sub/climb",
    ] {
        let r = fs.read(p);
        assert!(
            r.is_err(),
            "{resolver}: {p} read {:?}",
            r.map(|v| String::from_utf8_lossy(&v).into_owned())
        );
        assert!(fs.metadata(p).is_err(), "{resolver}: stat {p}");
    }
    assert!(
        fs.create("abs/evil").is_err(),
        "{resolver}: create through /etc link"
    );
    assert!(fs.create_dir("sub/climb/x").is_err());
    assert!(
        fs.set_permissions("sub/climb", 0o777).is_err(),
        "chmod through a climbing link"
    );
    assert!(fs.truncate("sub/climb", 0).is_err());
    assert_eq!(
        fs.read("sub/ok").unwrap(),
        b"inside",
        "a link that stays inside works"
    );
    assert_eq!(
        fs.read("/sub/../inside").unwrap(),
        b"inside",
        ".. within the export works"
    );
    assert_eq!(
        std::fs::read(base.join("secret")).unwrap(),
        SECRET,
        "untouched"
    );
    assert!(!std::path::Path::new("/etc/evil").exists());
    // The CLI says what the refusal means, not only the kernel's "cross-device link".
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_posix-ship"))
        .args(["cat", "/../secret"])
        .env("POSIX_SHIP_SERVER", &srv.addr)
        .env("QS_AUTH", &srv.auth)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{resolver}: cat /../secret succeeded"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("outside the export"),
        "{resolver}: the secret was printed"
    );
    assert!(
        err.contains("/../secret: outside the export"),
        "{resolver}: {err}"
    );
}

#[test]
fn escapes_are_refused_by_openat2() {
    escapes_are_refused("openat2");
}

#[test]
fn escapes_are_refused_by_the_walk() {
    escapes_are_refused("walk");
}

/// A thread swaps `sub/x` between a directory inside and a symlink to the outside while
/// the client opens `sub/x/secret` in a loop: it may fail, it must never read the secret.
fn symlink_race_never_escapes(resolver: &str) {
    let base = scratch(&format!("race-{resolver}"));
    let export = base.join("export");
    let outside = base.join("outside");
    std::fs::create_dir_all(export.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), SECRET).unwrap();
    let srv = ServerProc::start_env(&export, "tcp", &[], &[("POSIX_SHIP_RESOLVE", resolver)]);
    let fs = srv.client();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, sub, outside) = (stop.clone(), export.join("sub"), outside.clone());
        std::thread::spawn(move || {
            let (x, tmp_dir, tmp_link) = (sub.join("x"), sub.join("xd"), sub.join("xl"));
            std::fs::create_dir_all(&tmp_dir).unwrap();
            std::fs::write(tmp_dir.join("secret"), b"fine").unwrap();
            std::os::unix::fs::symlink(&outside, &tmp_link).unwrap();
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Atomic swaps: x is a directory inside, then a link outside.
                std::fs::rename(&tmp_dir, &x).ok();
                std::fs::rename(&x, &tmp_dir).ok();
                std::fs::rename(&tmp_link, &x).ok();
                std::fs::rename(&x, &tmp_link).ok();
                swaps += 1;
            }
            swaps
        })
    };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..2000 {
        match fs.read("sub/x/secret") {
            Ok(v) => {
                assert_ne!(v, SECRET, "{resolver}: escaped through a swapped symlink");
                ok += 1;
            }
            Err(_) => refused += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        swaps > 100,
        "the race ran ({swaps} swaps, {ok} reads inside, {refused} refused)"
    );
}

#[test]
fn a_symlink_race_never_escapes_openat2() {
    symlink_race_never_escapes("openat2");
}

#[test]
fn a_symlink_race_never_escapes_the_walk() {
    symlink_race_never_escapes("walk");
}
