//! Choosing a transport: the address decides, and `RPC_TRANSPORT` decides when the program
//! names none. A closed set of the plugins built into this program.

use std::sync::Arc;

use na::{Address, NaError, Plugin};

use crate::RpcError;

/// The environment variable that picks the transport (`tcp`, `sm`) or the whole listen
/// address (`tcp://0.0.0.0:7000`, `sm://myserver`) when a program does not name one.
pub const TRANSPORT_ENV: &str = "RPC_TRANSPORT";

/// The transport used when neither the program nor the environment names one.
pub const DEFAULT_TRANSPORT: &str = "tcp";

/// Transports built into this program (the libfabric ones with the `ofi` feature; any
/// provider of `na_ofi::provider::PROVIDERS` is accepted in an address).
#[cfg(feature = "ofi")]
pub const TRANSPORTS: &[&str] = &["tcp", "sm", "ofi+tcp", "ofi+shm", "ofi+sockets"];
/// Transports built into this program (the libfabric ones with the `ofi` feature).
#[cfg(not(feature = "ofi"))]
pub const TRANSPORTS: &[&str] = &["tcp", "sm"];

fn default_locator(transport: &str) -> Option<&'static str> {
    match transport {
        "tcp" => Some("127.0.0.1:0"),
        "sm" => Some("auto"),
        #[cfg(feature = "ofi")]
        t => t
            .strip_prefix("ofi+")
            .and_then(na_ofi::provider::lookup)
            .map(|p| p.default_locator),
        #[cfg(not(feature = "ofi"))]
        _ => None,
    }
}

/// The address to listen on: `explicit` if given, else from `RPC_TRANSPORT`, else the
/// default transport on its default locator (an ephemeral loopback port for tcp, a name
/// unique on the node for sm).
pub fn listen_address(explicit: Option<&str>) -> Result<Address, RpcError> {
    let env = std::env::var(TRANSPORT_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty());
    let spec = explicit
        .map(str::to_owned)
        .or(env)
        .unwrap_or_else(|| DEFAULT_TRANSPORT.to_owned());
    let spec = spec.trim();
    if spec.contains("://") {
        return Ok(Address::parse(spec)?);
    }
    let locator = default_locator(spec).ok_or_else(|| unsupported(spec))?;
    Ok(Address::parse(&format!("{spec}://{locator}"))?)
}

fn unsupported(transport: &str) -> RpcError {
    let hint = if transport.starts_with("ofi") && cfg!(not(feature = "ofi")) {
        "; build with the `ofi` feature of rpc-core (and libfabric-dev installed) for libfabric"
    } else {
        ""
    };
    RpcError::Transport(NaError::Unsupported(format!(
        "transport {transport:?} is not built into this program (available: {}){hint}",
        TRANSPORTS.join(", ")
    )))
}

/// Opens the plugin for `addr`, listening there, with `auth` for its handshakes; `busy`:
/// the engine polls (`ProgressMode::BusyPoll`): over libfabric its queue then has no wait
/// fd (one costs two system calls per message where the provider has it), and a progress
/// call with a timeout (`Engine::serve_until_signal`'s) polls with short sleeps instead.
pub(crate) fn open(
    addr: &Address,
    auth: na::Auth,
    busy: bool,
) -> Result<Arc<dyn Plugin>, RpcError> {
    // (Only libfabric's queues care.)
    let _ = busy;
    match addr.transport().as_str() {
        "tcp" => {
            let mut cfg = na_tcp::TcpConfig::default();
            cfg.stream.auth = auth;
            Ok(Arc::new(na_tcp::TcpPlugin::with_config(addr, cfg)?))
        }
        // The kernel vouches for sm peers; `auth` is not needed there.
        "sm" => Ok(Arc::new(na_sm::SmPlugin::new(addr)?)),
        #[cfg(feature = "ofi")]
        _ if addr.plugin() == "ofi" => {
            if !matches!(auth, na::Auth::None) {
                tracing::warn!(%addr, "ofi peers are anonymous: the libfabric plugin has no handshake credential yet");
            }
            Ok(Arc::new(na_ofi::OfiPlugin::with_config(
                addr,
                ofi_config(busy),
            )?))
        }
        other => Err(unsupported(other)),
    }
}

/// The libfabric plugin's settings for an engine that busy-polls or not: a busy engine
/// that waits (between its own polls) keeps its queue polled every 200 µs at most however
/// long it was idle (latency first, as it asked); others let an idle queue without a wait
/// object be polled as rarely as the plugin's default says.
#[cfg(feature = "ofi")]
fn ofi_config(busy: bool) -> na_ofi::OfiConfig {
    let d = na_ofi::OfiConfig::default();
    na_ofi::OfiConfig {
        wait_object: !busy,
        idle_poll_max: match busy {
            true => d.idle_poll_max.min(std::time::Duration::from_micros(200)),
            false => d.idle_poll_max,
        },
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_addresses_win_and_unknown_transports_are_named() {
        assert_eq!(
            listen_address(Some("tcp://1.2.3.4:5")).unwrap().to_string(),
            "tcp://1.2.3.4:5"
        );
        assert_eq!(
            listen_address(Some("tcp")).unwrap().to_string(),
            "tcp://127.0.0.1:0"
        );
        assert_eq!(listen_address(Some("sm")).unwrap().to_string(), "sm://auto");
        let e = listen_address(Some("carrier-pigeon")).unwrap_err();
        assert!(e.to_string().contains("available: tcp, sm"), "{e}");
    }

    #[cfg(feature = "ofi")]
    #[test]
    fn a_busy_engine_asks_libfabric_for_no_wait_fd() {
        assert!(!ofi_config(true).wait_object, "busy: polled, no wait fd");
        assert!(ofi_config(false).wait_object, "else progress sleeps on it");
        let (busy, quiet) = (ofi_config(true), ofi_config(false));
        assert!(busy.idle_poll_max <= std::time::Duration::from_micros(200));
        assert_eq!(
            quiet.idle_poll_max,
            na_ofi::OfiConfig::default().idle_poll_max
        );
    }
}
