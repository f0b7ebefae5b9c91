//! The NA conformance suite over the TCP plugin.

use std::sync::Arc;

use na::Plugin;

fn tcp() -> Arc<dyn Plugin> {
    Arc::new(na_tcp::TcpPlugin::new(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap())
}

qs_tests::conformance_suite!(tcp);
