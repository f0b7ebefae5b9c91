//! Moving a request's data to and from the caller's memory by bulk transfer: for
//! servers, and for I/O nodes that serve the same protocol.

use rpc_core::{Access, Caller, Descriptor, RpcError, Seg};

/// How long one transfer with a caller may take.
pub const BULK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Pulls the first `len` bytes of the caller's buffer `src`.
pub fn pull_from(caller: &Caller, src: &Descriptor, len: u64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len as usize];
    let mut dst = caller
        .engine()
        .expose(vec![Seg::from(&mut buf[..])], Access::WriteOnly)
        .map_err(errno)?;
    caller
        .pull(&mut dst, 0, src, 0, len)
        .timeout(BULK_TIMEOUT)
        .wait()
        .map_err(errno)?;
    drop(dst);
    Ok(buf)
}

/// The `errno` a failed transfer answers: `EFAULT` for a descriptor that does not
/// cover the range, `ETIMEDOUT`, else `EIO`.
pub fn errno(e: RpcError) -> i32 {
    tracing::debug!(error = %e, "bulk transfer failed");
    match e {
        RpcError::InvalidArgument(_) => libc::EFAULT,
        RpcError::Timeout { .. } => libc::ETIMEDOUT,
        _ => libc::EIO,
    }
}
