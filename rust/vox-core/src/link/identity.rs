//! The verified identity of a link's peer (rule `transport.tls`).
//!
//! A TLS link records the certificate its peer presented and that the TLS
//! layer verified (the server's, against the client's roots and the
//! expected name; the client's, under mutual TLS, against the server's
//! client-certificate verifier). Acceptors see it on the link
//! ([`LinkRx::peer_identity`](super::LinkRx::peer_identity)) and handlers in
//! their `CallContext`.

use bytes::Bytes;
use std::sync::Arc;

/// A peer's verified certificate and the names it was issued for.
///
/// Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity(Arc<Inner>);

#[derive(PartialEq, Eq)]
struct Inner {
    certificate: Bytes,
    dns_names: Vec<String>,
    uris: Vec<String>,
    ip_addresses: Vec<std::net::IpAddr>,
}

impl PeerIdentity {
    /// The identity of the end-entity certificate `der` (DER-encoded), with
    /// its subject alternative names read from it. A certificate whose
    /// extensions cannot be read gives no names (the TLS layer has already
    /// verified it; this only reads).
    pub fn from_der(der: impl Into<Bytes>) -> PeerIdentity {
        let certificate = der.into();
        let mut inner = Inner { certificate, dns_names: Vec::new(), uris: Vec::new(), ip_addresses: Vec::new() };
        if let Some(names) = san::general_names(&inner.certificate) {
            for (tag, value) in names {
                match tag {
                    // dNSName [2] and uniformResourceIdentifier [6], IA5String.
                    0x82 => inner.dns_names.push(String::from_utf8_lossy(value).into_owned()),
                    0x86 => inner.uris.push(String::from_utf8_lossy(value).into_owned()),
                    // iPAddress [7]: 4 or 16 octets.
                    0x87 => match value.len() {
                        4 => inner.ip_addresses.push(<[u8; 4]>::try_from(value).expect("4 octets").into()),
                        16 => inner.ip_addresses.push(<[u8; 16]>::try_from(value).expect("16 octets").into()),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        PeerIdentity(Arc::new(inner))
    }

    /// The peer's end-entity certificate, DER-encoded.
    pub fn certificate(&self) -> &[u8] {
        &self.0.certificate
    }

    /// The DNS names among its subject alternative names.
    pub fn dns_names(&self) -> &[String] {
        &self.0.dns_names
    }

    /// The URIs among its subject alternative names (SPIFFE ids, for example).
    pub fn uris(&self) -> &[String] {
        &self.0.uris
    }

    /// The IP addresses among its subject alternative names.
    pub fn ip_addresses(&self) -> &[std::net::IpAddr] {
        &self.0.ip_addresses
    }
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("certificate_len", &self.0.certificate.len())
            .field("dns_names", &self.0.dns_names)
            .field("uris", &self.0.uris)
            .field("ip_addresses", &self.0.ip_addresses)
            .finish()
    }
}

/// Just enough DER to find a certificate's subject alternative names
/// (RFC 5280 4.1, 4.2.1.6). Every read is bounds-checked; anything
/// unexpected gives `None`.
mod san {
    /// One TLV: its tag, its contents, and what follows it.
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    /// The TLVs inside `contents`, in order.
    fn children(mut contents: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
        std::iter::from_fn(move || {
            let (tag, value, rest) = tlv(contents)?;
            contents = rest;
            Some((tag, value))
        })
    }

    /// Object identifier 2.5.29.17 (subjectAltName), its contents.
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

    /// The GeneralNames of the certificate's subjectAltName extension, as
    /// (context tag, contents) pairs.
    pub(super) fn general_names(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
        let (0x30, certificate, _) = tlv(cert)? else { return None };
        let (0x30, tbs, _) = tlv(certificate)? else { return None };
        // extensions [3] EXPLICIT, the last optional field of the TBS.
        let (_, extensions) = children(tbs).find(|(tag, _)| *tag == 0xa3)?;
        let (0x30, extensions, _) = tlv(extensions)? else { return None };
        for (tag, extension) in children(extensions) {
            if tag != 0x30 {
                return None;
            }
            let mut fields = children(extension);
            let (0x06, oid) = fields.next()? else { return None };
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            // critical BOOLEAN DEFAULT FALSE, then extnValue OCTET STRING.
            let value = fields.find(|(tag, _)| *tag == 0x04)?.1;
            let (0x30, names, _) = tlv(value)? else { return None };
            return Some(children(names).collect());
        }
        Some(Vec::new())
    }
}
