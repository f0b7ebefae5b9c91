//! The demo (`posix-ship demo`, the README's main job): a server on a temporary export
//! on the default transport (or `RPC_TRANSPORT`), real unmodified programs shipping
//! their file calls through the interposer, then the CLI; what each step shipped is
//! printed from the server's own counters.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use posix_ship::client::{ClientOptions, RemoteFs};

const MOUNT: &str = "/fwd";

struct Demo {
    exe: PathBuf,
    lib: PathBuf,
    addr: String,
    /// `QS_AUTH` for the programs: the demo's shared key.
    auth: String,
    fs: RemoteFs,
    served: u64,
    /// `served` when the I/O node step began.
    served_before_node: u64,
    export: PathBuf,
}

impl Demo {
    /// Runs a program with the interposer and prints its output and what it shipped.
    fn run(&mut self, shell: &str, interposed: bool) -> io::Result<()> {
        println!("\n$ {shell}");
        io::stdout().flush()?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", shell])
            .env("POSIX_SHIP_SERVER", &self.addr)
            .env(rpc_core::Auth::ENV, &self.auth);
        if interposed {
            cmd.env("LD_PRELOAD", &self.lib)
                .env("POSIX_SHIP_MOUNT", MOUNT);
        } else {
            cmd.env("PATH", path_with(&self.exe));
        }
        let st = cmd.status()?;
        if !st.success() {
            return Err(io::Error::other(format!("`{shell}` failed: {st}")));
        }
        let s = self.fs.server_stats()?;
        // (Stats calls are not counted as requests.)
        let shipped = s.requests - self.served;
        self.served = s.requests;
        println!("  [shipped: {shipped} calls to the server]");
        Ok(())
    }
}

fn path_with(exe: &Path) -> String {
    let dir = exe
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// The interposer: `explicit`, else next to this program, else built with cargo.
fn find_preload(explicit: Option<PathBuf>, exe: &Path) -> io::Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p),
        None => built(exe, "libposix_ship_preload.so", "posix-ship-preload"),
    }
}

/// `file` next to this program, built with cargo (package `package`, this program's
/// profile) if it is not there yet.
fn built(exe: &Path, file: &str, package: &str) -> io::Result<PathBuf> {
    let dir = exe.parent().ok_or_else(|| io::Error::other("no exe dir"))?;
    let path = dir.join(file);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        println!("building {file} ({cargo} build -p {package})...");
        let mut c = Command::new(cargo);
        c.args(["build", "-q", "-p", package]);
        if dir.ends_with("release") {
            c.arg("--release");
        }
        c.status()?;
    }
    if path.exists() {
        Ok(path)
    } else {
        Err(io::Error::other(format!(
            "{} missing: cargo build --release -p {package}",
            path.display()
        )))
    }
}

fn start_server(exe: &Path, export: &Path, auth: &str) -> io::Result<(Child, String)> {
    let transport = rpc_core::transport::listen_address(None).map_err(io::Error::other)?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut cmd = Command::new(exe);
    cmd.arg("server").arg("--export").arg(export).args([
        "--listen",
        &transport.to_string(),
        "--auth",
        auth,
        // The demo's I/O node runs as this user: let it call for its clients.
        "--trust-forwarder",
        &uid.to_string(),
    ]);
    if uid == 0 {
        // Run as root, the demo's programs are root: let them act as root on its export.
        cmd.arg("--no-root-squash");
    }
    spawn_daemon(cmd)
}

/// Starts a daemon that prints its address first.
fn spawn_daemon(mut cmd: Command) -> io::Result<(Child, String)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut addr = String::new();
    BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?,
    )
    .read_line(&mut addr)?;
    Ok((child, addr.trim().to_string()))
}

/// Runs the demo.
pub fn run(preload: Option<PathBuf>) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let lib = find_preload(preload, &exe)?;
    let base = std::env::temp_dir().join(format!("posix-ship-demo-{}", std::process::id()));
    let (export, local) = (base.join("export"), base.join("local"));
    std::fs::create_dir_all(&export)?;
    std::fs::create_dir_all(&local)?;
    let sample = local.join("sample.bin");
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&sample, &data)?;
    std::fs::write(local.join("hello.txt"), "hello from a compute node\n")?;

    // tcp clients prove who they are with a shared key made for this run.
    let key = base.join("demo.key");
    rpc_core::Auth::create_key_file(&key).map_err(io::Error::other)?;
    let auth = format!("key:{}", key.display());
    let (mut server, addr) = start_server(&exe, &export, &auth)?;
    println!(
        "server (pid {}) exports {} at {addr}, clients authenticated by {auth}",
        server.id(),
        export.display()
    );
    println!(
        "programs below see it at {MOUNT} through LD_PRELOAD={}",
        lib.display()
    );
    let opts = ClientOptions {
        auth: Some(rpc_core::Auth::parse(&auth).map_err(io::Error::other)?),
        ..ClientOptions::default()
    };
    let fs = RemoteFs::connect_with(&addr, opts)?;
    let served = fs.server_stats()?.requests;
    let mut d = Demo {
        exe: exe.clone(),
        lib,
        addr,
        auth,
        fs,
        served,
        served_before_node: 0,
        export: export.clone(),
    };
    let l = local.display();
    let r = (|| {
        // (command, through the interposer?)
        let steps = [
            (format!("mkdir {MOUNT}/run1"), true),
            (
                format!("cp {l}/sample.bin {l}/hello.txt {MOUNT}/run1/"),
                true,
            ),
            (format!("cat {MOUNT}/run1/hello.txt"), true),
            (format!("ls -l {MOUNT}/run1"), true),
            (
                format!("sha256sum {l}/sample.bin {MOUNT}/run1/sample.bin"),
                true,
            ),
            (
                format!("dd if={MOUNT}/run1/sample.bin of={MOUNT}/run1/copy.bin bs=1M"),
                true,
            ),
            (
                format!("cmp {l}/sample.bin {MOUNT}/run1/copy.bin && echo identical"),
                true,
            ),
            ("posix-ship ls /run1".into(), false),
            ("posix-ship stat /run1/copy.bin".into(), false),
            (format!("posix-ship get /run1/copy.bin {l}/back.bin"), false),
            (
                format!("posix-ship put {l}/back.bin /run1/again.bin"),
                false,
            ),
            (
                "posix-ship mv /run1/again.bin /run1/moved.bin".into(),
                false,
            ),
            ("posix-ship rm /run1/moved.bin".into(), false),
            (
                "posix-ship cat /../../etc/hostname || echo refused: outside the export".into(),
                false,
            ),
        ];
        for (cmd, interposed) in &steps {
            d.run(cmd, *interposed)?;
        }
        let on_disk = std::fs::read(export.join("run1/copy.bin"))?;
        println!(
            "\nserver's disk: {}/run1/copy.bin is {} bytes, identical to the sample: {}",
            export.display(),
            on_disk.len(),
            on_disk == data
        );
        println!("server counters: {:?}", d.fs.server_stats()?);
        through_node(&mut d, &exe, &data)
    })();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    server.wait()?;
    let _ = std::fs::remove_dir_all(&base);
    r
}

/// The same kind of programs through an I/O node in front of the server: what the
/// programs asked of the node, and what the node asked of the server.
fn through_node(d: &mut Demo, exe: &Path, data: &[u8]) -> io::Result<()> {
    let mut cmd = Command::new(built(exe, "ionode", "ionode")?);
    let transport = rpc_core::transport::listen_address(None).map_err(io::Error::other)?;
    cmd.args([
        "serve",
        "--listen",
        &transport.to_string(),
        "--backend",
        &d.addr,
    ])
    .args(["--auth", &d.auth]);
    let (mut node, node_addr) = spawn_daemon(cmd)?;
    println!(
        "\n--- the same through an I/O node (pid {}) at {node_addr} ---",
        node.id()
    );
    let opts = ClientOptions {
        auth: Some(rpc_core::Auth::parse(&d.auth).map_err(io::Error::other)?),
        ..ClientOptions::default()
    };
    d.served = d.fs.server_stats()?.requests;
    d.served_before_node = d.served;
    let r = (|| {
        let to_node = RemoteFs::connect_with(&node_addr, opts)?;
        let server_addr = std::mem::replace(&mut d.addr, node_addr.clone());
        let steps = [
            format!("mkdir {MOUNT}/run2"),
            format!("dd if={MOUNT}/run1/sample.bin of={MOUNT}/run2/copy.bin bs=4k status=none"),
            format!("cmp {MOUNT}/run1/sample.bin {MOUNT}/run2/copy.bin && echo identical"),
        ];
        let mut asked = to_node.server_stats()?.requests;
        for step in &steps {
            d.run(step, true)?;
            let now = to_node.server_stats()?.requests;
            println!("  [the programs asked the I/O node {} calls]", now - asked);
            asked = now;
        }
        d.addr = server_addr;
        let on_disk = std::fs::read(d.export.join("run2/copy.bin"))?;
        println!(
            "\nthrough the I/O node: {} calls from the programs became {} calls to the server; copy identical: {}",
            asked,
            d.served - d.served_before_node,
            on_disk == data
        );
        Ok(())
    })();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    node.wait()?;
    r
}
