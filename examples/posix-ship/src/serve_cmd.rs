//! `posix-ship server` and `posix-ship relay`: serve until SIGINT or SIGTERM.

use std::io::{self, Write};
use std::time::Duration;

use posix_ship::client::RemoteFs;
use posix_ship::server::{Auth, Limits, Server, ServerConfig};

/// Serves `cfg` until SIGINT or SIGTERM, then finishes the requests in flight.
pub fn serve(cfg: ServerConfig) -> io::Result<()> {
    // SIGINT and SIGTERM are blocked in every thread (threads inherit the mask, those a
    // transport library starts included) and taken here with sigwait: no library's own
    // handler can intercept them. A shell's SIG_IGN for background jobs is undone.
    // SAFETY: plain signal-mask calls on a zeroed, then initialised, sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        set
    };
    let server = Server::start(cfg)?;
    println!("{}", server.addr());
    io::stdout().flush()?;
    let mut sig = 0;
    // SAFETY: waits on the set built above.
    while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
    eprintln!("posix-ship server: signal {sig}, finishing requests in flight");
    let s = server.shutdown(Duration::from_secs(10));
    eprintln!(
        "posix-ship server: stopped ({} requests served, {} files were still open, {} requests unfinished)",
        s.requests, s.open_files, s.in_flight
    );
    Ok(())
}

/// Serves the protocol on `listen` over a [`posix_ship::server::Remote`] backend until
/// SIGINT or SIGTERM.
pub fn relay(listen: &str, auth: &str, to: RemoteFs) -> io::Result<()> {
    use posix_ship::server::{Remote, Service};
    let listen = rpc_core::transport::listen_address(Some(listen)).map_err(io::Error::other)?;
    let engine = rpc_core::Engine::builder()
        .listen(&listen.to_string())
        .workers(8)
        .auth(Auth::parse(auth).map_err(io::Error::other)?)
        .build()
        .map_err(io::Error::other)?;
    let remote = std::sync::Arc::new(Remote::new(to)?);
    let _svc = Service::register(&engine, remote, Limits::default(), Vec::new())
        .map_err(io::Error::other)?;
    println!("{}", engine.self_addr());
    io::stdout().flush()?;
    let sig = engine.serve_until_signal().map_err(io::Error::other)?;
    eprintln!("posix-ship relay: signal {sig}, stopping");
    Ok(())
}
