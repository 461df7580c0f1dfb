//! Certificates made at test time (rcgen) for the TLS and QUIC tests: a
//! certificate authority per test and leaves it signs. No key is committed.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use vox_core::link::tls::rustls::RootCertStore;
use vox_core::link::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate chain and its key.
pub type Chain = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A certificate authority made for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("self-signed").der().clone();
        Ca { issuer: Issuer::new(params, key), der }
    }

    /// A root store trusting only this authority.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        roots
    }

    /// A valid leaf certificate for `dns` names.
    pub fn leaf(&self, dns: &[&str]) -> Chain {
        self.leaf_with(dns, None, false)
    }

    /// A leaf certificate for `dns` names, a `uri` if given, valid only in
    /// 2000 if `expired`.
    pub fn leaf_with(&self, dns: &[&str], uri: Option<&str>, expired: bool) -> Chain {
        let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into().expect("uri")));
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into())
    }
}
