//! A development certificate authority and a server certificate it signs.
//!
//! Operators bring real certificates; engineers running the bench and the tests need a CA
//! they can trust on the client side without touching the system trust store. The CA signs
//! one server certificate for `localhost`, `127.0.0.1`, `::1` and any extra names asked for.

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

/// Generates a fresh CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and `extra`.
pub fn generate(extra: &[String]) -> Result<DevCerts, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "metrics dev CA (not for production)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;

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
    let server_key = KeyPair::generate()?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let server_cert = params.signed_by(&server_key, &issuer)?;

    Ok(DevCerts {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}
