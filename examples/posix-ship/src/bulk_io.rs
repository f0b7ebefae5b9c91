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

/// Pushes `data` into the caller's buffer `dst`, from its start.
pub fn push_to(caller: &Caller, dst: &Descriptor, data: &[u8]) -> Result<(), i32> {
    let src = caller
        .engine()
        .expose(vec![Seg::from(data)], Access::ReadOnly)
        .map_err(errno)?;
    caller
        .push(&src, 0, dst, 0, data.len() as u64)
        .timeout(BULK_TIMEOUT)
        .wait()
        .map_err(errno)
}

/// [`pull_from`] without waiting: `f` gets the bytes on the thread that completes the
/// pull (the engine's progress thread, usually: it must not block).
pub fn pull_then(
    caller: &Caller,
    src: &Descriptor,
    len: u64,
    f: impl FnOnce(Result<Vec<u8>, i32>) + Send + 'static,
) {
    let buf = vec![0u8; len as usize];
    let dst = match caller
        .engine()
        .expose(vec![Seg::from(buf)], Access::WriteOnly)
    {
        Ok(d) => d,
        Err(e) => return f(Err(errno(e))),
    };
    let mut set = caller.transfers().timeout(BULK_TIMEOUT);
    set.pull(dst, 0, src, 0, len);
    set.then(move |bufs, outcome| {
        f(outcome.map_err(errno).map(|()| {
            bufs.into_iter()
                .next()
                .map_or_else(Vec::new, rpc_core::Bulk::into_vec)
        }))
    });
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
