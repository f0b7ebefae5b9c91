//! A server process and the interposer: each command runs once on a local directory and
//! once under the mount prefix, and their outputs must match.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{ServerProc, preload_lib, scratch};

pub const MOUNT: &str = "/qs-fwd";

pub struct Rig {
    pub srv: ServerProc,
    pub lib: PathBuf,
    pub local: PathBuf,
    pub src: PathBuf,
}

impl Rig {
    pub fn new(name: &str, transport: &str) -> Rig {
        let base = scratch(name);
        let export = base.join("export");
        let local = base.join("local");
        std::fs::create_dir_all(&export).unwrap();
        std::fs::create_dir_all(&local).unwrap();
        let src = base.join("src.bin");
        let data: Vec<u8> = (0..3_000_017u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&src, data).unwrap();
        Rig {
            srv: ServerProc::start(&export, transport, &[]),
            lib: preload_lib(),
            local,
            src,
        }
    }

    /// Runs `prog args` with the interposer; `{}` in an argument becomes `dir`.
    pub fn run(&self, dir: &str, prog: &str, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|a| a.replace("{}", dir)).collect();
        let out = Command::new(prog)
            .args(&args)
            .env("LD_PRELOAD", &self.lib)
            .env("POSIX_SHIP_SERVER", &self.srv.addr)
            .env("QS_AUTH", &self.srv.auth)
            .env("POSIX_SHIP_MOUNT", MOUNT)
            .output()
            .unwrap_or_else(|e| panic!("{prog}: {e}"));
        assert!(
            out.status.success(),
            "{prog} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs the command locally and under the mount; the outputs must match.
    pub fn same(&self, prog: &str, args: &[&str]) -> Vec<u8> {
        let local = self.run(self.local.to_str().unwrap(), prog, args);
        let shipped = self.run(MOUNT, prog, args);
        let norm = |o: &Output, dir: &str| String::from_utf8_lossy(&o.stdout).replace(dir, "DIR");
        assert_eq!(
            norm(&local, self.local.to_str().unwrap()),
            norm(&shipped, MOUNT),
            "{prog} {args:?}: output differs"
        );
        shipped.stdout
    }

    pub fn both(&self, rel: &str) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(self.local.join(rel)).unwrap(),
            std::fs::read(self.srv.export.join(rel)).unwrap(),
        )
    }
}

pub fn assert_same_file(r: &Rig, rel: &str) {
    let (a, b) = r.both(rel);
    assert!(
        a == b,
        "{rel}: {} local bytes vs {} shipped bytes differ",
        a.len(),
        b.len()
    );
}
