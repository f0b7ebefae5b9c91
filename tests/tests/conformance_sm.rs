//! The NA conformance suite over the shared-memory plugin, in both RMA modes.

use std::sync::Arc;

use na::Plugin;

/// RMA by single copy (`process_vm_readv`/`writev`), as detected on this machine.
fn sm() -> Arc<dyn Plugin> {
    Arc::new(na_sm::SmPlugin::new(&"sm://auto".parse().unwrap()).unwrap())
}

qs_tests::conformance_suite!(sm);

/// RMA data through the rings: the fallback when the kernel refuses cross-memory attach.
mod through_rings {
    use super::*;

    fn sm_rings() -> Arc<dyn Plugin> {
        let cfg = na_sm::SmConfig {
            single_copy: false,
            ..Default::default()
        };
        Arc::new(na_sm::SmPlugin::with_config(&"sm://auto".parse().unwrap(), cfg).unwrap())
    }

    qs_tests::conformance_suite!(sm_rings);
}
