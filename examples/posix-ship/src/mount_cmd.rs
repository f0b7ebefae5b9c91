//! `posix-ship mount`: mounts, says where, and unmounts on SIGINT/SIGTERM (or ends when
//! someone else unmounts).

use std::io;
use std::path::Path;
use std::time::Duration;

use fuser::{Config, MountOption};
use posix_ship::client::RemoteFs;
use posix_ship::mount::{Fs, MountOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

pub fn run(
    fs: RemoteFs,
    addr: &str,
    mountpoint: &Path,
    opts: MountOptions,
    threads: usize,
    read_ahead_kib: u32,
) -> io::Result<()> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot open /dev/fuse: {e} (load the fuse module, install fuse3, and mount \
                 as a user allowed to use it)"
            ),
        ));
    }
    if opts.multi_user {
        // A forwarded call, now: a server that does not trust this daemon refuses every
        // request of a multi-user mount, so say why before mounting.
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let me = posix_ship::proto::Principal {
            uid,
            gid,
            groups: Vec::new(),
        };
        if let Err(e) = fs.acting_for(Some(me)).metadata("/") {
            let why = if e.raw_os_error() == Some(libc::EPERM) {
                format!(
                    "the server does not let this daemon (uid {uid}) act for other users: \
                     start it with --trust-forwarder {uid}"
                )
            } else {
                e.to_string()
            };
            return Err(io::Error::new(e.kind(), format!("--multi-user: {why}")));
        }
    }
    let mut cfg = Config::default();
    cfg.mount_options.extend([
        MountOption::FSName(format!("posix-ship:{addr}")),
        MountOption::Subtype("posix-ship".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ]);
    if opts.read_only {
        cfg.mount_options.push(MountOption::RO);
    }
    if opts.multi_user {
        // Every user may enter; the kernel checks permission bits as each caller, and
        // the server checks each call again as that caller.
        cfg.acl = fuser::SessionACL::All;
    }
    cfg.n_threads = Some(threads.max(1));
    for sig in [SIGINT, SIGTERM] {
        // A handler installed at load by a library the transport pulls in (libinfinipath,
        // under libfabric, exits with status 1) would run after signal-hook's and end the
        // process before the unmount: the default goes back first.
        // SAFETY: sets a signal's disposition to the default before ours is installed.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let fs = Fs::new(fs, addr, opts);
    let notifier = fs.notifier_slot();
    let session = fuser::spawn_mount2(fs, mountpoint, &cfg)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", mountpoint.display())))?;
    let _ = notifier.set(session.notifier());
    read_ahead(mountpoint, read_ahead_kib);
    println!("mounted {addr} on {}", mountpoint.display());
    tracing::info!(%addr, mountpoint = %mountpoint.display(), "mounted");
    loop {
        if let Some(sig) = signals.pending().next() {
            eprintln!("posix-ship mount: signal {sig}, unmounting");
            return session.umount_and_join();
        }
        if session.guard.is_finished() {
            eprintln!("posix-ship mount: unmounted");
            return session.join();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sets the kernel's read-ahead window of the mount (its backing device's
/// `read_ahead_kb`): the kernel lowers it to 128 KiB at each FUSE mount, so a sequential
/// reader would cost a call per 128 KiB. Only root may raise it; anyone else keeps the
/// kernel's window (said in the log). Done after the kernel's INIT: stat of the mountpoint
/// waits for it, and INIT would lower a window set before.
fn read_ahead(mountpoint: &Path, kib: u32) {
    use std::os::unix::fs::MetadataExt;
    // Only the FUSE mount's own device: a mount that failed or went would leave the
    // file system beneath at that path.
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    match rustix::fs::statfs(mountpoint) {
        Ok(s) if s.f_type == FUSE_SUPER_MAGIC => {}
        other => {
            tracing::warn!(
                ?other,
                "not the mount: read-ahead left as the kernel set it"
            );
            return;
        }
    }
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            tracing::warn!(%e, "read-ahead left as the kernel set it");
            return;
        }
    };
    let at = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&at, kib.to_string()) {
        Ok(()) => tracing::info!(kib, "read-ahead set"),
        Err(e) => tracing::info!(%e, %at, "read-ahead left as the kernel set it"),
    }
}
