//! The namespace an I/O node shows: a prefix table over its backends (pure).
//!
//! `--backend ADDR` serves the whole namespace; `--backend /scratch=ADDR` serves paths
//! beneath `/scratch` (the prefix removed before the backend sees them). The longest
//! matching prefix wins, matched on whole components (`/scratch2` is not beneath
//! `/scratch`).

use std::fmt;

/// A parse error of a `--backend` argument.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRoute(pub String);

impl fmt::Display for BadRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad --backend {:?}: want ADDR or /PREFIX=ADDR", self.0)
    }
}

impl std::error::Error for BadRoute {}

/// Prefix -> backend index, longest first.
#[derive(Debug, Clone)]
pub struct Routes {
    table: Vec<(Vec<u8>, usize)>,
}

/// One `--backend` argument: its prefix (`/` for the whole namespace) and address.
pub fn parse(arg: &str) -> Result<(String, String), BadRoute> {
    let bad = || BadRoute(arg.into());
    match arg.split_once('=') {
        Some((p, a)) if p.starts_with('/') && !a.is_empty() => {
            if p.split('/').any(|c| c == "." || c == "..") {
                return Err(bad());
            }
            Ok((p.trim_end_matches('/').to_string(), a.into()))
        }
        Some(_) => Err(bad()),
        None if !arg.is_empty() => Ok((String::new(), arg.into())),
        None => Err(bad()),
    }
}

impl Routes {
    /// The table for these prefixes (index = backend number); `None` if two are equal.
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a str>) -> Option<Routes> {
        let mut table: Vec<(Vec<u8>, usize)> = prefixes
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p.trim_end_matches('/').as_bytes().to_vec(), i))
            .collect();
        table.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let dup = table.windows(2).any(|w| w[0].0 == w[1].0);
        (!dup).then_some(Routes { table })
    }

    /// The backend serving `path` and the path it knows it by, or `None` (`ENOENT`: no
    /// backend serves it).
    pub fn route(&self, path: &[u8]) -> Option<(usize, Vec<u8>)> {
        // Paths name the namespace's root with or without a leading `/`.
        let norm: Vec<u8> = if path.first() == Some(&b'/') {
            path.to_vec()
        } else {
            [b"/", path].concat()
        };
        let (p, i, rest) = self.table.iter().find_map(|(p, i)| {
            let rest = norm.strip_prefix(p.as_slice())?;
            (rest.is_empty() || rest[0] == b'/').then_some((p, *i, rest))
        })?;
        let inner = if rest.is_empty() {
            b"/".to_vec()
        } else {
            rest.to_vec()
        };
        // A `..` would climb out of the prefix on the backend: refuse it here, as the
        // prefix is ours, not the backend's.
        if !p.is_empty() && inner.split(|b| *b == b'/').any(|c| c == b"..") {
            return None;
        }
        Some((i, inner))
    }

    /// The names in `path` when no backend serves it but prefixes lie beneath it (`/`
    /// with only `--backend /home=…` and `--backend /scratch=…`: `home`, `scratch`),
    /// sorted; `None` otherwise. The node shows such a path as a read-only directory.
    pub fn above(&self, path: &[u8]) -> Option<Vec<Vec<u8>>> {
        if self.route(path).is_some() {
            return None;
        }
        let comps: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        if comps.iter().any(|c| *c == b"." || *c == b"..") {
            return None;
        }
        let mut names: Vec<Vec<u8>> = self
            .table
            .iter()
            .filter_map(|(p, _)| {
                let mut pc = p.split(|b| *b == b'/').filter(|c| !c.is_empty());
                comps
                    .iter()
                    .all(|c| pc.next() == Some(c))
                    .then(|| pc.next().map(<[u8]>::to_vec))?
            })
            .collect();
        names.sort();
        names.dedup();
        (!names.is_empty()).then_some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_whole_component_prefix_wins() {
        let r = Routes::new(["", "/scratch", "/scratch/big"]).unwrap();
        assert_eq!(r.route(b"/a/b"), Some((0, b"/a/b".to_vec())));
        assert_eq!(r.route(b"a"), Some((0, b"/a".to_vec())));
        assert_eq!(r.route(b"/scratch"), Some((1, b"/".to_vec())));
        assert_eq!(r.route(b"/scratch/x"), Some((1, b"/x".to_vec())));
        assert_eq!(r.route(b"/scratch2/x"), Some((0, b"/scratch2/x".to_vec())));
        assert_eq!(r.route(b"/scratch/big/f"), Some((2, b"/f".to_vec())));
        assert_eq!(
            r.route(b"/scratch/../etc"),
            None,
            "no climbing out of a prefix"
        );
    }

    #[test]
    fn without_a_root_backend_other_paths_are_nowhere() {
        let r = Routes::new(["/home"]).unwrap();
        assert_eq!(r.route(b"/tmp"), None);
        assert_eq!(r.route(b"/home/u"), Some((0, b"/u".to_vec())));
        assert!(
            Routes::new(["/a", "/a/"]).is_none(),
            "the same prefix twice"
        );
    }

    #[test]
    fn paths_above_the_prefixes_list_their_next_components() {
        let r = Routes::new(["/home", "/scratch/big", "/scratch/small"]).unwrap();
        let v = |n: &[&str]| Some(n.iter().map(|s| s.as_bytes().to_vec()).collect());
        assert_eq!(r.above(b"/"), v(&["home", "scratch"]));
        assert_eq!(r.above(b""), v(&["home", "scratch"]));
        assert_eq!(r.above(b"/scratch/"), v(&["big", "small"]));
        assert_eq!(r.above(b"scratch"), v(&["big", "small"]));
        assert_eq!(r.above(b"/home"), None, "served by a backend");
        assert_eq!(r.above(b"/home/u"), None);
        assert_eq!(r.above(b"/tmp"), None, "nothing beneath");
        assert_eq!(r.above(b"/scratch/big2"), None);
        assert_eq!(r.above(b"/scratch/.."), None);
        assert_eq!(r.above(b"/./scratch"), None);
        let whole = Routes::new(["", "/scratch/big"]).unwrap();
        assert_eq!(whole.above(b"/"), None, "a root backend serves it");
        assert_eq!(whole.above(b"/scratch"), None);
    }

    #[test]
    fn backend_arguments_parse() {
        assert_eq!(parse("sm://x"), Ok((String::new(), "sm://x".into())));
        assert_eq!(
            parse("/s/=tcp://h:1"),
            Ok(("/s".into(), "tcp://h:1".into()))
        );
        assert!(parse("s=tcp://h:1").is_err());
        assert!(parse("/a/../b=x").is_err());
        assert!(parse("/a=").is_err());
        assert!(parse("").is_err());
    }
}
