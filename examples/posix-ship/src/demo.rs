//! The demo (filled in below).
use std::io;
use std::path::PathBuf;

pub fn run(_preload: Option<PathBuf>) -> io::Result<()> {
    Err(io::Error::other("demo: not yet"))
}
