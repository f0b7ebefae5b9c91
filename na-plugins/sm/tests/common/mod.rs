//! Helpers shared by the multi-process tests of this crate.

use std::process::Command;

/// This test binary, set to run only its `child_entry` test, with `var=value` in its
/// environment: the child's role. The caller adds stdio and spawns it.
pub fn child(var: &str, value: String) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("test binary path"));
    c.args([
        "--exact",
        "child_entry",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(var, value);
    c
}
