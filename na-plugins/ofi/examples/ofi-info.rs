//! Opens an endpoint on each address given (default: every loopback provider) and prints
//! the address peers use to reach it, the libfabric provider and domain, or the error.
use na::Plugin;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addrs = if args.is_empty() {
        vec![
            "ofi+tcp://127.0.0.1:0".to_string(),
            "ofi+shm://auto".into(),
            "ofi+sockets://127.0.0.1:0".into(),
        ]
    } else {
        args
    };
    for a in addrs {
        let parsed = match a.parse() {
            Ok(p) => p,
            Err(e) => {
                println!("{a}: {e}");
                continue;
            }
        };
        match na_ofi::OfiPlugin::new(&parsed) {
            Ok(p) => {
                let (prov, dom) = p.fabric_names();
                println!("{a}: listening at {} ({prov} on {dom})", p.self_addr());
            }
            Err(e) => println!("{a}: {e}"),
        }
    }
}
