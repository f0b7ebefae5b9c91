//! Typed RPC handles and their stable ids.

use std::fmt;
use std::marker::PhantomData;

/// The stable 64-bit id of an RPC name: FNV-1a over its bytes, the same in every process
/// and build.
pub const fn rpc_id(name: &str) -> u64 {
    let b = name.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < b.len() {
        h ^= b[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// A typed RPC: its name, its id, and its input and output types. A `const` item shared
/// by client and server makes a type mismatch a compile error:
///
/// ```
/// use rpc_core::Rpc;
/// const SUM: Rpc<(u64, u64), u64> = Rpc::new("sum");
/// assert_eq!(SUM.name(), "sum");
/// ```
pub struct Rpc<In, Out> {
    name: &'static str,
    id: u64,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Rpc<In, Out> {
    /// The RPC called `name`.
    pub const fn new(name: &'static str) -> Self {
        Rpc {
            name,
            id: rpc_id(name),
            _types: PhantomData,
        }
    }

    /// The same operation with `W` carried before its input, under its own id (the hash of
    /// `tag` and the name), so that both can be registered side by side: a forwarder uses
    /// it to say whom it calls for. Errors still name the operation.
    ///
    /// ```
    /// use rpc_core::Rpc;
    /// const SUM: Rpc<(u64, u64), u64> = Rpc::new("sum");
    /// const SUM_FOR: Rpc<(u32, (u64, u64)), u64> = SUM.prefixed("on-behalf");
    /// assert_eq!(SUM_FOR.name(), "sum");
    /// assert_ne!(SUM_FOR.id(), SUM.id());
    /// ```
    pub const fn prefixed<W>(self, tag: &'static str) -> Rpc<(W, In), Out> {
        Rpc {
            name: self.name,
            id: self.id ^ rpc_id(tag).rotate_left(1),
            _types: PhantomData,
        }
    }

    /// An RPC with a chosen id, to test what happens when two names hash alike.
    #[cfg(test)]
    pub(crate) const fn with_id(name: &'static str, id: u64) -> Self {
        Rpc {
            name,
            id,
            _types: PhantomData,
        }
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Its id (the hash of its name).
    pub const fn id(&self) -> u64 {
        self.id
    }
}

impl<In, Out> Clone for Rpc<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<In, Out> Copy for Rpc<In, Out> {}

impl<In, Out> fmt::Debug for Rpc<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rpc({:?}, {:#x})", self.name, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_across_builds() {
        // FNV-1a test vectors: any change to the hash breaks wire compatibility.
        assert_eq!(rpc_id(""), 0xcbf29ce484222325);
        assert_eq!(rpc_id("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(rpc_id("foobar"), 0x85944171f73967e8);
    }
}
