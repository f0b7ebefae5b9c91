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
