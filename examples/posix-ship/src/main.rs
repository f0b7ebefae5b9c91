//! `posix-ship`: the server, and a CLI client (`ls`, `stat`, `cat`, `put`, `get`, `rm`,
//! `mkdir`, `mv`), and the demo.

mod demo;
mod mount_cmd;
mod serve_cmd;

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use posix_ship::client::{ClientOptions, RemoteFs};
use posix_ship::server::{Auth, Limits, Policy, ServerConfig, UserLimits};

/// POSIX function shipping over Quicksilver.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The server's address (client commands).
    #[arg(short, long, env = "POSIX_SHIP_SERVER", global = true)]
    server: Option<String>,
    /// Seconds a client command waits for the server to answer each call (connecting
    /// included) before it fails with "timed out".
    #[arg(
        long,
        env = "POSIX_SHIP_TIMEOUT",
        global = true,
        default_value_t = 30.0
    )]
    timeout: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Export a directory; prints the address to connect to, stops on SIGINT/SIGTERM.
    Server {
        /// The directory to export.
        #[arg(long)]
        export: PathBuf,
        /// Where to listen: an address (`tcp://0.0.0.0:7000`, `sm://name`) or a transport
        /// name (`tcp`, `sm`); default `RPC_TRANSPORT`, else tcp.
        #[arg(long)]
        listen: Option<String>,
        /// Refuse every change with EACCES.
        #[arg(long)]
        read_only: bool,
        /// Open files per client.
        #[arg(long, default_value_t = Limits::default().open_files)]
        max_open: usize,
        /// Open files of all clients together (default and upper bound: the descriptor
        /// limit less a quarter kept for connections).
        #[arg(long)]
        max_open_total: Option<usize>,
        /// Bulk data held for one client's reads and writes at once, in MiB (past it,
        /// reads and writes are served short, as POSIX allows).
        #[arg(long, default_value_t = Limits::default().staging_per_client >> 20)]
        staging_mib: u64,
        /// Bulk data held for all clients at once, in MiB.
        #[arg(long, default_value_t = Limits::default().staging_total >> 20)]
        staging_total_mib: u64,
        /// Requests in flight for all the connections of one user (its verified uid;
        /// anonymous peers count as one user).
        #[arg(long, default_value_t = Limits::default().per_user.in_flight)]
        user_in_flight: usize,
        /// Open files for all the connections of one user.
        #[arg(long, default_value_t = Limits::default().per_user.open_files)]
        user_open: usize,
        /// Bulk data held for all the connections of one user, in MiB.
        #[arg(long, default_value_t = Limits::default().per_user.staging >> 20)]
        user_staging_mib: u64,
        /// Requests in flight per client.
        #[arg(long, default_value_t = Limits::default().in_flight)]
        max_in_flight: usize,
        /// Handler threads.
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// How tcp clients prove who they are: `none` (all act as the anonymous user),
        /// `munge` (the node's munged), `key:FILE` (a 0600 shared key; clients set
        /// QS_AUTH=key:FILE). sm clients are known by the kernel whatever this says.
        #[arg(long, default_value = "none")]
        auth: String,
        /// Let uid 0 act as root (by default it acts as the anonymous user).
        #[arg(long)]
        no_root_squash: bool,
        /// Let clients set setuid/setgid bits (stripped by default).
        #[arg(long)]
        allow_suid: bool,
        /// The user anonymous and squashed clients act as.
        #[arg(long, default_value_t = 65534)]
        anon_uid: u32,
        /// The group anonymous and squashed clients act as.
        #[arg(long, default_value_t = 65534)]
        anon_gid: u32,
        /// Serve only these uids (repeat or comma-separate; default: all).
        #[arg(long, value_delimiter = ',')]
        allow_uid: Vec<u32>,
        /// Serve only members of these groups (default: all).
        #[arg(long, value_delimiter = ',')]
        allow_gid: Vec<u32>,
        /// Let peers verified as this uid call for other users (I/O nodes; repeat or
        /// comma-separate). Each request still runs with the rights of the user named.
        #[arg(long, value_delimiter = ',')]
        trust_forwarder: Vec<u32>,
        /// Benchmark knob: each operation takes this many microseconds longer (emulates
        /// the latency of a parallel file system behind the export).
        #[arg(long, default_value_t = 0)]
        op_delay_us: u64,
        /// Answer list reads and writes (`posix.read_many`, `posix.write_many`) `ENOSYS`,
        /// as a server built before them does (to test forwarders against one).
        #[arg(long)]
        no_list_io: bool,
    },
    /// List a directory.
    Ls { path: String },
    /// Show a file's attributes.
    Stat { path: String },
    /// Print a file.
    Cat { path: String },
    /// Copy a local file to the server.
    Put { local: PathBuf, remote: String },
    /// Copy a file from the server.
    Get { remote: String, local: PathBuf },
    /// Remove a file.
    Rm { path: String },
    /// Make a directory.
    Mkdir { path: String },
    /// Rename.
    Mv { from: String, to: String },
    /// Show the server's counters (clients, open files, requests in flight, served, refused).
    Stats,
    /// Mount the server's export on MOUNTPOINT with FUSE (real file descriptors for every
    /// program); stays in the foreground and unmounts on SIGINT/SIGTERM.
    #[command(override_usage = "posix-ship mount [OPTIONS] [ADDR] <MOUNTPOINT>")]
    Mount {
        /// The server (else `-s`/POSIX_SHIP_SERVER), and where to mount it (an empty
        /// directory).
        #[arg(num_args = 1..=2, required = true, value_name = "[ADDR] MOUNTPOINT")]
        places: Vec<String>,
        /// Refuse every change (EROFS).
        #[arg(long)]
        read_only: bool,
        /// Seconds the kernel may trust attributes.
        #[arg(long, default_value_t = 1.0)]
        attr_timeout: f64,
        /// Seconds the kernel may trust a name's lookup.
        #[arg(long, default_value_t = 1.0)]
        entry_timeout: f64,
        /// Seconds the kernel may remember that a name is not there (0: never).
        #[arg(long, default_value_t = 1.0)]
        negative_timeout: f64,
        /// Threads serving kernel requests.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Let the kernel gather small writes into large ones (FUSE writeback cache).
        #[arg(long)]
        writeback_cache: bool,
        /// Open the mount to every user, each request made for its caller (run as root;
        /// the server must trust this user as a forwarder: `--trust-forwarder`).
        #[arg(long)]
        multi_user: bool,
        /// How the kernel caches file data: `on` (kept across opens), `off` (every read
        /// and write to the server), `otoc` (dropped at each open).
        #[arg(long, default_value = "otoc")]
        data_cache: posix_ship::mount::DataCache,
        /// The kernel's read-ahead on the mount, in KiB (the kernel's default is 128; a
        /// larger window needs root, and the kernel reads at most 1 MiB per request).
        #[arg(long, default_value_t = 8192)]
        read_ahead_kib: u32,
    },
    /// Relay to the server (`-s`/POSIX_SHIP_SERVER) from another transport: every call is
    /// made for its caller, so the server must trust this user (`--trust-forwarder`).
    Relay {
        /// Where clients connect (`sm`, `tcp://0.0.0.0:7001`, ...).
        #[arg(long, default_value = "sm")]
        listen: String,
        /// The proof demanded of tcp clients (as `server --auth`).
        #[arg(long, default_value = "none")]
        auth: String,
    },
    /// Run the demo: a server on a temporary export, real programs through the interposer.
    Demo {
        /// The interposer library (default: next to this program).
        #[arg(long)]
        preload: Option<PathBuf>,
    },
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(io::stderr)
        .try_init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("posix-ship: {e}");
        std::process::exit(1);
    }
}

fn connect(server: Option<String>, timeout: f64) -> io::Result<RemoteFs> {
    let addr = server.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "no server: pass --server ADDR or set POSIX_SHIP_SERVER",
        )
    })?;
    let timeout = Duration::try_from_secs_f64(timeout)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("--timeout: {e}")))?;
    let opts = ClientOptions {
        timeout: Some(timeout),
        ..ClientOptions::default()
    };
    RemoteFs::connect_with(&addr, opts)
        .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))
}

fn with_path(p: &str, e: io::Error) -> io::Error {
    // The server's confinement refuses a path that leaves the export with the kernel's
    // `EXDEV` ("Invalid cross-device link"), which tells a user nothing: say what it means.
    if e.raw_os_error() == Some(libc::EXDEV) {
        return io::Error::new(e.kind(), format!("{p}: outside the export ({e})"));
    }
    io::Error::new(e.kind(), format!("{p}: {e}"))
}

fn run(cli: Cli) -> io::Result<()> {
    let fs = || connect(cli.server.clone(), cli.timeout);
    match cli.cmd {
        Cmd::Server {
            export,
            listen,
            read_only,
            max_open,
            max_open_total,
            staging_mib,
            staging_total_mib,
            user_in_flight,
            user_open,
            user_staging_mib,
            max_in_flight,
            workers,
            auth,
            no_root_squash,
            allow_suid,
            anon_uid,
            anon_gid,
            allow_uid,
            allow_gid,
            trust_forwarder,
            op_delay_us,
            no_list_io,
        } => serve_cmd::serve(ServerConfig {
            export,
            listen: listen.unwrap_or_default(),
            read_only,
            limits: Limits {
                open_files: max_open,
                total_open: max_open_total.unwrap_or(usize::MAX),
                in_flight: max_in_flight,
                staging_per_client: staging_mib << 20,
                staging_total: staging_total_mib << 20,
                per_user: UserLimits {
                    in_flight: user_in_flight,
                    open_files: user_open,
                    staging: user_staging_mib << 20,
                },
            },
            workers,
            auth: Auth::parse(&auth).map_err(io::Error::other)?,
            policy: Policy {
                root_squash: !no_root_squash,
                nosuid: !allow_suid,
                anon: (anon_uid, anon_gid),
                allow_uids: allow_uid,
                allow_gids: allow_gid,
                trusted_forwarders: trust_forwarder,
            },
            op_delay: Duration::from_micros(op_delay_us),
            list_io: !no_list_io,
        }),
        Cmd::Ls { path } => {
            let mut entries = fs()?.read_dir(&path).map_err(|e| with_path(&path, e))?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            for e in entries {
                let slash = if e.kind == libc::DT_DIR { "/" } else { "" };
                println!("{}{slash}", String::from_utf8_lossy(&e.name));
            }
            Ok(())
        }
        Cmd::Stat { path } => {
            let a = fs()?
                .symlink_metadata(&path)
                .map_err(|e| with_path(&path, e))?;
            println!(
                "{path}: size {} mode {:o} inode {} links {} uid {} gid {} mtime {}",
                a.size, a.mode, a.ino, a.nlink, a.uid, a.gid, a.mtime.sec
            );
            Ok(())
        }
        Cmd::Cat { path } => {
            let mut f = fs()?.open(&path).map_err(|e| with_path(&path, e))?;
            io::copy(&mut f, &mut io::stdout().lock())?;
            Ok(())
        }
        Cmd::Put { local, remote } => {
            let src = std::fs::File::open(&local)?;
            let len = src.metadata()?.len();
            let dst = fs()?.create(&remote).map_err(|e| with_path(&remote, e))?;
            copy(src, dst, len, &format!("{} -> {remote}", local.display()))
        }
        Cmd::Get { remote, local } => {
            let fs = fs()?;
            let src = fs.open(&remote).map_err(|e| with_path(&remote, e))?;
            let (len, fh) = (src.metadata()?.size, src.handle().expect("open"));
            let mut dst = std::fs::File::create(&local)?;
            let what = format!("{remote} -> {}", local.display());
            // Four reads of 4 MiB in flight while the last piece is written here.
            timed(len, &what, |bar| {
                fs.copy_out(fh, len, &mut dst, 4 << 20, 4, |n| bar.set_position(n))
            })
        }
        Cmd::Rm { path } => fs()?.remove_file(&path).map_err(|e| with_path(&path, e)),
        Cmd::Mkdir { path } => fs()?.create_dir(&path).map_err(|e| with_path(&path, e)),
        // (A rename between file systems inside the export is `EXDEV` too: not reworded.)
        Cmd::Mv { from, to } => fs()?
            .rename(&from, &to)
            .map_err(|e| io::Error::new(e.kind(), format!("{from} -> {to}: {e}"))),
        Cmd::Stats => {
            let s = fs()?.server_stats()?;
            println!(
                "clients {}\nopen_files {}\nin_flight {}\nrequests {}\nrefused {}",
                s.clients, s.open_files, s.in_flight, s.requests, s.refused
            );
            Ok(())
        }
        Cmd::Mount {
            places,
            read_only,
            attr_timeout,
            entry_timeout,
            negative_timeout,
            threads,
            writeback_cache,
            multi_user,
            data_cache,
            read_ahead_kib,
        } => {
            let secs = |s: f64, what: &str| {
                Duration::try_from_secs_f64(s).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("--{what}: {e}"))
                })
            };
            let opts = posix_ship::mount::MountOptions {
                attr_timeout: secs(attr_timeout, "attr-timeout")?,
                entry_timeout: secs(entry_timeout, "entry-timeout")?,
                negative_timeout: secs(negative_timeout, "negative-timeout")?,
                read_only,
                writeback: writeback_cache,
                multi_user,
                data_cache,
            };
            let (server, mountpoint) = match places.as_slice() {
                [addr, at] => (Some(addr.clone()), PathBuf::from(at)),
                [at] => (cli.server.clone(), PathBuf::from(at)),
                _ => {
                    let usage = "usage: posix-ship mount [ADDR] MOUNTPOINT";
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, usage));
                }
            };
            mount_cmd::run(
                connect(server.clone(), cli.timeout)?,
                &server.unwrap_or_default(),
                &mountpoint,
                opts,
                threads,
                read_ahead_kib,
            )
        }
        Cmd::Relay { listen, auth } => serve_cmd::relay(&listen, &auth, fs()?),
        Cmd::Demo { preload } => demo::run(preload),
    }
}

/// Copies with a progress bar (on a terminal) and prints the throughput.
fn copy(mut src: impl Read, mut dst: impl Write, len: u64, what: &str) -> io::Result<()> {
    timed(len, what, |bar| {
        let mut buf = vec![0u8; 4 << 20];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n])?;
            total += n as u64;
            bar.set_position(total);
        }
        dst.flush()?;
        Ok(total)
    })
}

/// Runs `f` (which moves bytes, shown on a progress bar on a terminal, and returns how
/// many) and prints the throughput.
fn timed(
    len: u64,
    what: &str,
    f: impl FnOnce(&indicatif::ProgressBar) -> io::Result<u64>,
) -> io::Result<()> {
    let bar = indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .map_err(io::Error::other)?,
    );
    bar.set_message(what.to_string());
    let t0 = Instant::now();
    let total = f(&bar)?;
    bar.finish_and_clear();
    let dt = t0.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{what}: {total} bytes in {:.3} s ({:.1} MB/s)",
        dt,
        total as f64 / dt / 1e6
    );
    Ok(())
}
