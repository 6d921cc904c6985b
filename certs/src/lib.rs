//! A development certificate authority and the certificates it signs.
//!
//! Operators bring real certificates; engineers running the bench and the tests need a CA
//! they can trust on the client side without touching the system trust store. [`generate`]
//! makes a CA and one server certificate for `localhost`, `127.0.0.1`, `::1` and any extra
//! names asked for. [`Authority`] is the same CA as a value, for tests that need more: a
//! second server certificate (a renewal), an intermediate CA (a full chain), client
//! certificates for mutual TLS, or a second, unrelated CA.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM texts of a CA and a server certificate signed by it.
#[derive(Clone, Debug)]
pub struct DevCerts {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// A certificate and its private key, as PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority (root or intermediate) that signs server and client certificates.
pub struct Authority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

fn ca_params(name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

impl Authority {
    /// A fresh self-signed root CA named `name`.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let params = ca_params(name)?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            params,
            key,
            cert_pem,
        })
    }

    /// An intermediate CA named `name`, signed by this one. A server certificate it signs is
    /// served as `leaf + intermediate` ([`Issued::cert_pem`] followed by
    /// [`Authority::cert_pem`]); clients trust the root.
    pub fn intermediate(&self, name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let params = ca_params(name)?;
        let cert_pem = params.signed_by(&key, &self.issuer())?.pem();
        Ok(Self {
            params,
            key,
            cert_pem,
        })
    }

    /// This CA's certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// This CA's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A server certificate for `localhost`, `127.0.0.1`, `::1` and `extra`, with a fresh key.
    pub fn server(&self, extra: &[String]) -> Result<Issued, rcgen::Error> {
        let mut names = vec!["localhost".to_string()];
        names.extend(extra.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params)
    }

    /// A client certificate (for mutual TLS) whose common name is `name`, with a fresh key.
    pub fn client(&self, name: &str) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer())?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Generates a fresh CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and `extra`.
pub fn generate(extra: &[String]) -> Result<DevCerts, rcgen::Error> {
    let ca = Authority::new("metrics dev CA (not for production)")?;
    let server = ca.server(extra)?;
    Ok(DevCerts {
        ca_cert_pem: ca.cert_pem.clone(),
        ca_key_pem: ca.key_pem(),
        server_cert_pem: server.cert_pem,
        server_key_pem: server.key_pem,
    })
}
