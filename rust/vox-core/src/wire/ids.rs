//! Identifier newtypes and id parity.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The parity of this id (`Odd` or `Even`).
            pub fn parity(self) -> Parity {
                Parity::of(self.0)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A connection within a session. `0` is the root connection; virtual
    /// connections use ids of the opener's session parity.
    ConnectionId
);
id_type!(
    /// A request within a connection, allocated by the caller with the
    /// connection's parity.
    RequestId
);
id_type!(
    /// A channel within a connection, allocated by the caller of the request
    /// that announces it, with the connection's parity.
    ChannelId
);
id_type!(
    /// A 64-bit method id: the first 8 bytes (little endian) of
    /// BLAKE3(`kebab(service) + "." + kebab(method)`). See [`MethodId::from_names`].
    MethodId
);

impl ConnectionId {
    /// The root connection, which exists from the handshake on.
    pub const ROOT: ConnectionId = ConnectionId(0);

    /// Whether this is the root connection.
    pub fn is_root(self) -> bool {
        self.0 == 0
    }
}

impl MethodId {
    /// Computes the method id of `service.method`; both names are converted
    /// to kebab case first, so `MethodId::from_names("Testbed", "echo_bytes")`
    /// hashes `testbed.echo-bytes`.
    ///
    /// ```
    /// use vox_core::wire::MethodId;
    /// assert_eq!(
    ///     MethodId::from_names("Testbed", "echo_bytes"),
    ///     MethodId::from_names("testbed", "echo-bytes"),
    /// );
    /// ```
    pub fn from_names(service: &str, method: &str) -> MethodId {
        let text = format!("{}.{}", kebab(service), kebab(method));
        let hash = blake3::hash(text.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        MethodId(u64::from_le_bytes(first))
    }
}

/// Converts `CamelCase`, `snake_case` or `kebab-case` to `kebab-case`.
pub fn kebab(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower_or_digit = false;
    for ch in name.chars() {
        if ch == '_' || ch == '-' {
            if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
            prev_lower_or_digit = false;
        } else if ch.is_uppercase() {
            if prev_lower_or_digit && !out.ends_with('-') {
                out.push('-');
            }
            out.extend(ch.to_lowercase());
            prev_lower_or_digit = false;
        } else {
            out.push(ch);
            prev_lower_or_digit = true;
        }
    }
    out
}

/// Partitions an id space so both sides allocate without coordination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Parity {
    /// Ids 1, 3, 5, ...
    Odd,
    /// Ids 2, 4, 6, ... (0 is reserved for the root connection).
    Even,
}

impl Parity {
    /// The parity of a raw id.
    pub fn of(id: u64) -> Parity {
        if id % 2 == 1 { Parity::Odd } else { Parity::Even }
    }

    /// The other parity.
    pub fn opposite(self) -> Parity {
        match self {
            Parity::Odd => Parity::Even,
            Parity::Even => Parity::Odd,
        }
    }

    /// The first id a side of this parity allocates (never 0).
    pub fn first(self) -> u64 {
        match self {
            Parity::Odd => 1,
            Parity::Even => 2,
        }
    }
}

/// Allocates increasing ids of one parity. Returns `None` once the space is
/// exhausted rather than wrapping, because ids must only ever increase.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    next: Option<u64>,
}

impl IdAllocator {
    /// An allocator that hands out ids of `parity`, starting at its first id.
    pub fn new(parity: Parity) -> Self {
        IdAllocator { next: Some(parity.first()) }
    }

    /// Continues where `self` stands; the ids `self` handed out are never
    /// handed out again by either (used when a connection's state is rebuilt
    /// on a resumed session: new request and channel ids stay above the old).
    pub fn continuation(&self) -> IdAllocator {
        self.clone()
    }

    /// The next id, or `None` when the id space is exhausted.
    pub fn allocate(&mut self) -> Option<u64> {
        let id = self.next?;
        self.next = id.checked_add(2);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab_handles_camel_snake_and_kebab() {
        assert_eq!(kebab("Testbed"), "testbed");
        assert_eq!(kebab("FileTransfer"), "file-transfer");
        assert_eq!(kebab("echo_bytes"), "echo-bytes");
        assert_eq!(kebab("generate-retry-idem"), "generate-retry-idem");
        assert_eq!(kebab("sleepMs"), "sleep-ms");
    }

    #[test]
    fn allocator_yields_ids_of_its_parity_and_stops_at_the_end() {
        let mut odd = IdAllocator::new(Parity::Odd);
        assert_eq!(odd.allocate(), Some(1));
        assert_eq!(odd.allocate(), Some(3));
        let mut even = IdAllocator::new(Parity::Even);
        assert_eq!(even.allocate(), Some(2));
        let mut end = IdAllocator { next: Some(u64::MAX) };
        assert_eq!(end.allocate(), Some(u64::MAX));
        assert_eq!(end.allocate(), None);
    }
}
