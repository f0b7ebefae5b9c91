//! The NA conformance suite over the shared-memory plugin.

use std::sync::Arc;

use na::Plugin;

fn sm() -> Arc<dyn Plugin> {
    Arc::new(na_sm::SmPlugin::new(&"sm://auto".parse().unwrap()).unwrap())
}

qs_tests::conformance_suite!(sm);
