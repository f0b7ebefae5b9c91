//! Transport addresses: `plugin[+provider]://locator`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::NaError;

/// A transport address such as `tcp://127.0.0.1:7000`, `sm://server0` or
/// `ofi+tcp://10.0.0.1:7001`.
///
/// The plugin name selects the transport; the optional provider refines it (a libfabric
/// provider for `ofi`); the locator is interpreted by the plugin (host and port, a name).
/// Addresses print as they parse, serialize as their string form, and compare and hash by
/// their parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    plugin: String,
    provider: Option<String>,
    locator: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Address {
    /// Builds an address from its parts, checking that the names are well formed.
    pub fn new(plugin: &str, provider: Option<&str>, locator: &str) -> Result<Self, NaError> {
        let text = match provider {
            Some(p) => format!("{plugin}+{p}://{locator}"),
            None => format!("{plugin}://{locator}"),
        };
        let bad = |reason: &str| NaError::InvalidAddress {
            addr: text.clone(),
            reason: reason.into(),
        };
        if !valid_name(plugin) {
            return Err(bad(
                "plugin name must be lowercase letters, digits, '-' or '_'",
            ));
        }
        if provider.is_some_and(|p| !valid_name(p)) {
            return Err(bad(
                "provider name must be lowercase letters, digits, '-' or '_'",
            ));
        }
        if locator.is_empty() {
            return Err(bad("empty locator"));
        }
        if locator.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("locator contains whitespace or control characters"));
        }
        Ok(Address {
            plugin: plugin.into(),
            provider: provider.map(Into::into),
            locator: locator.into(),
        })
    }

    /// Parses `plugin[+provider]://locator`.
    pub fn parse(s: &str) -> Result<Self, NaError> {
        let (scheme, locator) = s.split_once("://").ok_or_else(|| NaError::InvalidAddress {
            addr: s.into(),
            reason: "expected plugin[+provider]://locator".into(),
        })?;
        let (plugin, provider) = match scheme.split_once('+') {
            Some((pl, pr)) => (pl, Some(pr)),
            None => (scheme, None),
        };
        Address::new(plugin, provider, locator)
    }

    /// The plugin name (`tcp`, `sm`, `ofi`).
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The provider, if any (`tcp` in `ofi+tcp://…`).
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// The plugin-specific locator (`127.0.0.1:7000`).
    pub fn locator(&self) -> &str {
        &self.locator
    }

    /// The transport part, as `RPC_TRANSPORT` names it: `tcp`, `ofi+tcp`.
    pub fn transport(&self) -> String {
        match &self.provider {
            Some(p) => format!("{}+{}", self.plugin, p),
            None => self.plugin.clone(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport(), self.locator)
    }
}

impl FromStr for Address {
    type Err = NaError;
    fn from_str(s: &str) -> Result<Self, NaError> {
        Address::parse(s)
    }
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Address::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for s in [
            "tcp://127.0.0.1:7000",
            "tcp://0.0.0.0:0",
            "sm://server0",
            "ofi+tcp://127.0.0.1:7001",
            "ofi+verbs://mlx5_0/10.0.0.1:7000",
        ] {
            let a = Address::parse(s).unwrap();
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_addresses() {
        for s in [
            "",
            "tcp",
            "tcp:/x",
            "://x",
            "TCP://x",
            "tcp://",
            "ofi+://x",
            "tcp://a b",
        ] {
            let e = Address::parse(s).unwrap_err();
            assert!(matches!(e, NaError::InvalidAddress { .. }), "{s}: {e}");
        }
    }

    #[test]
    fn transport_names_plugin_and_provider() {
        assert_eq!(
            Address::parse("ofi+shm://x").unwrap().transport(),
            "ofi+shm"
        );
        assert_eq!(Address::parse("tcp://x:1").unwrap().transport(), "tcp");
    }
}
