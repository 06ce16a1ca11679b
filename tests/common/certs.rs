//! A throw-away PKI for TLS tests: a CA, a server certificate for 127.0.0.1 and localhost and a
//! client certificate, all signed by that CA, plus a second CA that signed nothing (to prove a
//! wrong CA is refused). Everything is written as PEM files into a temporary directory that goes
//! away with the [`Pki`].

use super::temp::TempDir;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The files of one PKI.
pub struct Pki {
    /// PEM of the CA certificate that signed the server and client certificates.
    pub ca_cert: PathBuf,
    /// PEM of a CA that signed neither: a client that trusts only it must refuse the server.
    pub other_ca_cert: PathBuf,
    /// Server certificate (SAN 127.0.0.1, localhost) and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate (for servers that check clients) and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    dir: TempDir,
}

impl Pki {
    /// Makes the certificates and writes them. Keys are written mode 0640 (PostgreSQL refuses a
    /// key that others can read).
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let (ca, ca_pem) = certificate_authority("orders test CA");
        let (_, other_ca_pem) = certificate_authority("orders test CA that signed nothing");
        let (server_pem, server_key) = leaf(
            &ca,
            "127.0.0.1",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key) = leaf(
            &ca,
            "orders",
            vec!["orders".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: &str, mode: u32| -> PathBuf {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("set a PEM file's mode");
            path
        };
        Pki {
            ca_cert: write("ca.crt", &ca_pem, 0o644),
            other_ca_cert: write("other-ca.crt", &other_ca_pem, 0o644),
            server_cert: write("server.crt", &server_pem, 0o644),
            server_key: write("server.key", &server_key, 0o640),
            client_cert: write("client.crt", &client_pem, 0o644),
            client_key: write("client.key", &client_key, 0o640),
            dir,
        }
    }

    /// The directory that holds the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A self-signed CA: its issuer (to sign with) and its certificate's PEM.
fn certificate_authority(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    (Issuer::new(params, key), cert.pem())
}

/// A certificate signed by `ca`: its PEM and its key's PEM.
fn leaf(
    ca: &Issuer<'_, KeyPair>,
    common_name: &str,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(names).expect("certificate params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("certificate key");
    let cert = params
        .signed_by(&key, ca)
        .expect("certificate signed by the CA");
    (cert.pem(), key.serialize_pem())
}
