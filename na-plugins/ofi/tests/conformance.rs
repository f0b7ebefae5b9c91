//! The NA conformance suite over libfabric's loopback-capable providers.

use std::sync::Arc;

use na::Plugin;
use na_ofi::OfiPlugin;

fn open(addr: &str) -> Arc<dyn Plugin> {
    Arc::new(OfiPlugin::new(&addr.parse().unwrap()).unwrap())
}

mod tcp {
    use super::*;
    fn ofi_tcp() -> Arc<dyn Plugin> {
        open("ofi+tcp://127.0.0.1:0")
    }
    qs_tests::conformance_suite!(ofi_tcp);
}

mod shm {
    use super::*;
    fn ofi_shm() -> Arc<dyn Plugin> {
        open("ofi+shm://auto")
    }
    qs_tests::conformance_suite!(ofi_shm);
}

mod sockets {
    use super::*;
    fn ofi_sockets() -> Arc<dyn Plugin> {
        open("ofi+sockets://127.0.0.1:0")
    }
    qs_tests::conformance_suite!(ofi_sockets);
}

/// tcp with a completion queue that has no wait fd (what a busy-polling engine opens):
/// progress that may wait polls with short sleeps instead, as over shm.
mod tcp_without_wait_fd {
    use super::*;
    fn ofi_tcp_polled() -> Arc<dyn Plugin> {
        let cfg = na_ofi::OfiConfig {
            wait_object: false,
            ..Default::default()
        };
        let p = OfiPlugin::with_config(&"ofi+tcp://127.0.0.1:0".parse().unwrap(), cfg).unwrap();
        assert!(!p.has_wait_fd(), "asked for none");
        Arc::new(p)
    }
    qs_tests::conformance_suite!(ofi_tcp_polled);
}
