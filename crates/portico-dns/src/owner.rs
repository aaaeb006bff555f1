//! Owner names in DNS canonical form, as bytes that compare in canonical order.
//!
//! Why not hickory's `Name` as the key of a zone's nodes: comparing two `Name`s walks their
//! labels from the right, lower-casing each byte, and a B-tree search does that a dozen times per
//! query; the profile of the hosted-zones benchmark put it at about 17 % of Portico's CPU
//! (docs/benchmarks.md, issue 14). A canonical key is the name's labels from the root down,
//! lower-cased, each ended by a zero byte, so that the byte order of two keys is the canonical
//! order of RFC 4034 §6.1, an ancestor's key is a prefix of its descendants' keys, and every
//! comparison is one `memcmp`. Bytes 0 and 1 inside a label are escaped (`01 01`, `01 02`) to
//! keep that order exact. A key is also smaller than a `Name` (no inline label buffers).

use std::borrow::Borrow;
use std::fmt;

use hickory_proto::rr::Name;

/// A name's canonical key (see the module documentation).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner(Box<[u8]>);

impl Owner {
    pub fn new(name: &Name) -> Self {
        let mut key = Vec::with_capacity(name.len() + 1);
        key_into(name, &mut key);
        Owner(key.into_boxed_slice())
    }

    pub fn key(&self) -> &[u8] {
        &self.0
    }

    /// The name again (lower-case, fully qualified).
    pub fn name(&self) -> Name {
        name_of(&self.0)
    }

    /// The key as base64: how the journal file and the shared store's log write an owner.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// Reads back [`Owner::to_base64`] (the name is rebuilt, so any key decodes to a valid one).
    pub fn from_base64(text: &str) -> Result<Owner, base64::DecodeError> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(text)?;
        Ok(Owner::new(&name_of(&raw)))
    }
}

impl Borrow<[u8]> for Owner {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl From<&Name> for Owner {
    fn from(n: &Name) -> Self {
        Owner::new(n)
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// Appends `name`'s canonical key to `out` (cleared first).
pub fn key_into(name: &Name, out: &mut Vec<u8>) {
    out.clear();
    for label in name.iter().rev() {
        for &b in label {
            match b {
                0 => out.extend_from_slice(&[1, 1]),
                1 => out.extend_from_slice(&[1, 2]),
                b => out.push(b.to_ascii_lowercase()),
            }
        }
        out.push(0);
    }
}

/// The keys of `key`'s ancestors and itself, shortest first (the root's is empty): each is a
/// prefix of `key` ending after a label.
pub fn ancestors(key: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    std::iter::once(0)
        .chain(key.iter().enumerate().filter_map(|(i, &b)| {
            // A zero byte ends a label (escapes never produce one).
            (b == 0).then_some(i + 1)
        }))
        .map(move |end| &key[..end])
}

/// How many labels a key has.
pub fn label_count(key: &[u8]) -> usize {
    key.iter().filter(|&&b| b == 0).count()
}

/// The name a key stands for; the root for bytes that are not a key (never made here).
pub fn name_of(key: &[u8]) -> Name {
    let mut labels: Vec<Vec<u8>> = Vec::new();
    let mut label = Vec::new();
    let mut bytes = key.iter();
    while let Some(&b) = bytes.next() {
        match b {
            0 => labels.push(std::mem::take(&mut label)),
            1 => match bytes.next() {
                Some(1) => label.push(0),
                Some(2) => label.push(1),
                _ => return Name::root(),
            },
            b => label.push(b),
        }
    }
    labels.reverse();
    let mut name = Name::from_labels(labels).unwrap_or_else(|_| Name::root());
    name.set_fqdn(true);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name from text, `\\NNN` giving a raw byte (binary labels, as in RFC 4034's example).
    fn n(s: &str) -> Name {
        let labels: Vec<Vec<u8>> = s
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(|l| match l.strip_prefix('\\') {
                Some(code) => vec![code.parse::<u8>().unwrap()],
                None => l.as_bytes().to_vec(),
            })
            .collect();
        let mut name = Name::from_labels(labels).unwrap();
        name.set_fqdn(true);
        name
    }

    #[test]
    fn byte_order_is_canonical_order_and_names_round_trip() {
        // RFC 4034 §6.1's example, in canonical order.
        let ordered = [
            "example.",
            "a.example.",
            "yljkjljk.a.example.",
            "Z.a.example.",
            "zABC.a.EXAMPLE.",
            "z.example.",
            "\\001.z.example.",
            "*.z.example.",
            "\\200.z.example.",
        ];
        let keys: Vec<Owner> = ordered.iter().map(|s| Owner::new(&n(s))).collect();
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        for (s, k) in ordered.iter().zip(&keys) {
            assert_eq!(k.name(), n(s).to_lowercase(), "{s}");
        }
        // The same order as hickory's (case-insensitive, canonical) comparison of names.
        for (a, ka) in ordered.iter().zip(&keys) {
            for (b, kb) in ordered.iter().zip(&keys) {
                assert_eq!(ka.cmp(kb), n(a).cmp(&n(b)), "{a} vs {b}");
            }
        }
        assert_eq!(
            Owner::new(&n("\\0.\\1.example.")).name(),
            n("\\0.\\1.example.")
        );
        assert_eq!(Owner::new(&Name::root()).key(), b"");
    }

    #[test]
    fn ancestors_are_prefixes_ending_after_a_label() {
        let k = Owner::new(&n("www.Example.com."));
        let a: Vec<Name> = ancestors(k.key()).map(name_of).collect();
        assert_eq!(
            a,
            [n("."), n("com."), n("example.com."), n("www.example.com.")]
        );
        assert_eq!(label_count(k.key()), 3);
    }
}
