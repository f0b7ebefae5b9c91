//! The table of provider descriptions: every provider quirk the plugin knows lives here,
//! not in `if`s scattered through the data path.

use libfabric_sys as fi;

/// How a provider behaves, as far as this plugin cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The name addresses use (`ofi+tcp://…` → `tcp`).
    pub name: &'static str,
    /// The libfabric provider string to ask for (`tcp;ofi_rxm`).
    pub prov: &'static str,
    /// The locator to listen on when the program names none.
    pub default_locator: &'static str,
    /// Whether locators carry `host:port` (passed to `fi_getinfo` as node and service).
    pub host_port: bool,
    /// Whether the plugin asks the owner before each RMA (a [`crate::wire::Check`] round
    /// trip): for providers whose own key checks are missing or destructive. Measured with
    /// libfabric 1.17: `shm` performs a transfer with a wrong key or into a deregistered
    /// region without error; `tcp;ofi_rxm` refuses it but closes the connection, failing
    /// every other operation to that peer. `sockets` refuses cleanly; hardware providers
    /// check keys in the NIC.
    pub checked_rma: bool,
    /// The completion flag of writes that makes a put complete only once its data is in
    /// the owner's memory (`FI_DELIVERY_COMPLETE` where the default completes earlier).
    pub write_completion: u64,
}

const fn p(name: &'static str, prov: &'static str, host_port: bool, checked_rma: bool) -> Provider {
    Provider {
        name,
        prov,
        default_locator: if host_port { "127.0.0.1:0" } else { "auto" },
        host_port,
        checked_rma,
        write_completion: fi::FI_DELIVERY_COMPLETE as u64,
    }
}

/// Every provider the plugin knows. Connection-oriented providers run under the `ofi_rxm`
/// utility provider, which gives them reliable datagram (RDM) endpoints.
pub const PROVIDERS: &[Provider] = &[
    p("tcp", "tcp;ofi_rxm", true, true),
    p("sockets", "sockets", true, false),
    p("shm", "shm", false, true),
    p("verbs", "verbs;ofi_rxm", true, false),
    p("cxi", "cxi", false, false),
    p("psm2", "psm2", false, false),
    p("psm3", "psm3", false, false),
    p("efa", "efa", false, false),
    p("opx", "opx", false, false),
];

/// The description of `name` (the provider part of an `ofi+NAME://` address).
pub fn lookup(name: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.name == name)
}

/// The capabilities the plugin asks every provider for.
pub const CAPS: u64 = fi::FI_MSG as u64
    | fi::FI_TAGGED as u64
    | fi::FI_RMA as u64
    | fi::FI_READ as u64
    | fi::FI_WRITE as u64
    | fi::FI_SEND as u64
    | fi::FI_RECV as u64
    | fi::FI_REMOTE_READ as u64
    | fi::FI_REMOTE_WRITE as u64;

/// The memory registration modes the plugin can honour (`fi_getinfo` answers with the
/// subset the provider requires).
pub const MR_MODES: u32 = fi::FI_MR_LOCAL
    | fi::FI_MR_VIRT_ADDR
    | fi::FI_MR_ALLOCATED
    | fi::FI_MR_PROV_KEY
    | fi::FI_MR_ENDPOINT;
