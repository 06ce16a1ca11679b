//! `DATABASE_URL` and TLS: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, read out of
//! the URL (or the `key=value` form) before tokio-postgres parses the rest, and a rustls
//! connector that does with them what libpq does. tokio-postgres itself knows only
//! `sslmode=disable|prefer|require`, verifies nothing, and rejects the other parameters as an
//! "invalid connection string"; managed PostgreSQL services hand out URLs with all of them.
//!
//! | sslmode | TLS | chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `allow`, `prefer` (the default) | when the server offers it | only with `sslrootcert` | no |
//! | `require` | always | only with `sslrootcert` (libpq: it then acts as `verify-ca`) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes, for each host of a multi-host URL |
//!
//! Roots are `sslrootcert`'s file, or the system's when it is absent or `system` (libpq 16;
//! which, as there, implies `verify-full` and refuses a weaker mode). `allow` tries TLS first,
//! where libpq tries plain first: tokio-postgres has no plain-first mode, and the end is the same
//! against a server that insists on either.

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What is wrong with `DATABASE_URL`. Never carries the URL itself: it may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("sslmode={0:?} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    UnknownSslMode(String),
    #[error("sslrootcert=system needs sslmode=verify-full, not {0}")]
    WeakModeWithSystemRoots(&'static str),
    #[error("{param}={path}: cannot read the file")]
    Unreadable {
        param: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{param}={path}: no PEM certificate in the file")]
    NoCertificate { param: &'static str, path: String },
    #[error("{param}={path}: not a PEM certificate file")]
    BadCertificate {
        param: &'static str,
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("sslkey={path}: not a PEM private key")]
    BadKey {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{given} is set without {missing}: a client certificate needs both")]
    HalfClientCertificate {
        given: &'static str,
        missing: &'static str,
    },
    #[error("sslrootcert: no usable certificate among the system's roots ({0})")]
    NoSystemRoots(String),
    #[error("{0}: not valid percent-encoded UTF-8")]
    BadEncoding(&'static str),
    #[error("the TLS settings are refused")]
    Tls(#[source] rustls::Error),
    #[error("invalid connection string")]
    Parse(#[source] tokio_postgres::Error),
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, UrlError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(UrlError::UnknownSslMode(other.to_string())),
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the roots that sign the server's chain come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    System,
    File(String),
}

/// The TLS parameters of a `DATABASE_URL`, as libpq reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsParams {
    mode: SslMode,
    roots: Roots,
    /// `sslrootcert` was given: libpq then checks the chain in the modes that do not ask for it.
    explicit_roots: bool,
    client: Option<(String, String)>,
}

/// How to reach PostgreSQL: the tokio-postgres configuration (with its `sslmode` set) and the
/// connector that does the TLS it asks for.
pub struct Connection {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// Reads `DATABASE_URL`, in the URL form (`postgres://…?sslmode=…`) or libpq's `key=value` form.
pub fn connection(url: &str) -> Result<Connection, UrlError> {
    let (rest, found) = split_tls_params(url)?;
    let params = tls_params(found)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(UrlError::Parse)?;
    config.ssl_mode(match params.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let tls = MakeRustlsConnect::new(client_config(&params)?);
    Ok(Connection { config, tls })
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// The TLS parameters found (the last of each wins, as in libpq), and the string without them.
type Found = Vec<(&'static str, String)>;

fn split_tls_params(url: &str) -> Result<(String, Found), UrlError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_url {
        split_url(url)
    } else {
        Ok(split_key_values(url))
    }
}

fn split_url(url: &str) -> Result<(String, Found), UrlError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut found = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match TLS_KEYS.iter().find(|k| **k == key) {
            Some(&key) => {
                let value = percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| UrlError::BadEncoding(key))?;
                found.push((key, value.into_owned()));
            }
            None => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, found))
}

/// libpq's `key=value key2='quoted \' value'` form: the TLS keys taken out, the others written
/// back quoted.
fn split_key_values(text: &str) -> (String, Found) {
    let mut kept = Vec::new();
    let mut found = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        // A key without `=` is left for tokio-postgres to refuse.
        if chars.next_if_eq(&'=').is_none() {
            kept.push(key);
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '\'' if quoted => break,
                c if c.is_whitespace() && !quoted => break,
                c => value.push(c),
            }
        }
        match TLS_KEYS.iter().find(|k| **k == key) {
            Some(&key) => found.push((key, value)),
            None => {
                let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
                kept.push(format!("{key}='{escaped}'"));
            }
        }
    }
    (kept.join(" "), found)
}

fn tls_params(found: Found) -> Result<TlsParams, UrlError> {
    let last = |key: &str| {
        found
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    };
    let given_mode = last("sslmode").map(|m| SslMode::parse(&m)).transpose()?;
    let root_cert = last("sslrootcert");
    let (roots, mode) = match root_cert.as_deref() {
        // libpq 16: `system` makes verify-full the default and refuses anything weaker.
        Some("system") => match given_mode.unwrap_or(SslMode::VerifyFull) {
            SslMode::VerifyFull => (Roots::System, SslMode::VerifyFull),
            weak => return Err(UrlError::WeakModeWithSystemRoots(weak.name())),
        },
        Some(path) => (
            Roots::File(path.to_string()),
            given_mode.unwrap_or(SslMode::Prefer),
        ),
        None => (Roots::System, given_mode.unwrap_or(SslMode::Prefer)),
    };
    let client = match (last("sslcert"), last("sslkey")) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(UrlError::HalfClientCertificate {
                given: "sslcert",
                missing: "sslkey",
            })
        }
        (None, Some(_)) => {
            return Err(UrlError::HalfClientCertificate {
                given: "sslkey",
                missing: "sslcert",
            })
        }
    };
    Ok(TlsParams {
        mode,
        explicit_roots: matches!(roots, Roots::File(_)),
        roots,
        client,
    })
}

/// What the server's certificate is checked against.
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The provider is named rather than taken from the process default, so that another crate's
/// rustls features cannot make the default ambiguous (rustls then panics).
fn client_config(params: &TlsParams) -> Result<ClientConfig, UrlError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = verifier(params, &provider)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UrlError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    // `disable` never uses the connector: its files are not read (libpq ignores them too).
    match &params.client {
        _ if params.mode == SslMode::Disable => Ok(builder.with_no_client_auth()),
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates("sslcert", cert)?;
            let key_pem = read("sslkey", key)?;
            let key =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| UrlError::BadKey {
                    path: key.clone(),
                    source,
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(UrlError::Tls)
        }
    }
}

/// What checks the server's certificate in `params.mode`.
fn verifier(
    params: &TlsParams,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, UrlError> {
    let check = match params.mode {
        SslMode::Disable => Check::Nothing,
        SslMode::Prefer | SslMode::Require if params.explicit_roots => Check::Chain,
        SslMode::Prefer | SslMode::Require => Check::Nothing,
        SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::ChainAndName,
    };
    let algorithms = provider.signature_verification_algorithms;
    let webpki = |roots: &Roots| -> Result<Arc<WebPkiServerVerifier>, UrlError> {
        WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider.clone())
            .build()
            .map_err(|e| UrlError::Tls(rustls::Error::General(e.to_string())))
    };
    Ok(match check {
        Check::Nothing => Arc::new(Lenient {
            chain: None,
            algorithms,
        }),
        Check::Chain => Arc::new(Lenient {
            chain: Some(webpki(&params.roots)?),
            algorithms,
        }),
        Check::ChainAndName => webpki(&params.roots)?,
    })
}

fn read(param: &'static str, path: &str) -> Result<Vec<u8>, UrlError> {
    std::fs::read(path).map_err(|source| UrlError::Unreadable {
        param,
        path: path.to_string(),
        source,
    })
}

/// Every certificate of a PEM file; at least one.
fn certificates(param: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, UrlError> {
    let pem = read(param, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| UrlError::BadCertificate {
            param,
            path: path.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(UrlError::NoCertificate {
            param,
            path: path.to_string(),
        });
    }
    Ok(certs)
}

fn root_store(roots: &Roots) -> Result<RootCertStore, UrlError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            for cert in certificates("sslrootcert", path)? {
                store.add(cert).map_err(UrlError::Tls)?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_string(), |e| e.to_string());
                return Err(UrlError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

/// The modes that check less than `verify-full`, as libpq does. With `chain`, the chain must
/// lead to a root whatever name the certificate is for (`verify-ca`, or `prefer`/`require` with
/// `sslrootcert`): webpki checks the chain before the name, so a name mismatch means the chain
/// was good. Without, any certificate will do (`prefer`, `require`). Either way the handshake's
/// signatures are checked, so the session is with the holder of the certificate's key.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: &str) -> Result<(String, TlsParams), UrlError> {
        let (rest, found) = split_tls_params(url)?;
        Ok((rest, tls_params(found)?))
    }

    #[test]
    fn a_plain_url_prefers_tls_and_checks_nothing() {
        let (rest, p) = params("postgres://u:secret@h:5432/db").unwrap();
        assert_eq!(rest, "postgres://u:secret@h:5432/db");
        assert_eq!(p.mode, SslMode::Prefer);
        assert!(!p.explicit_roots);
        assert!(connection("postgres://u:secret@h:5432/db").is_ok());
    }

    #[test]
    fn the_libpq_parameters_are_taken_out_and_the_rest_kept() {
        let url = "postgres://u@h1:5432,h2:5433/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem\
                   &target_session_attrs=read-write&application_name=x";
        let (rest, p) = params(url).unwrap();
        assert_eq!(
            rest,
            "postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write&application_name=x"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.roots, Roots::File("/tmp/ca.pem".into()));
    }

    #[test]
    fn the_key_value_form_is_read_too() {
        let (rest, p) =
            params("host=h port=5433 sslmode = require password='a \\'b c' sslrootcert=/ca.pem")
                .unwrap();
        assert_eq!(rest, "host='h' port='5433' password='a \\'b c'");
        assert_eq!(p.mode, SslMode::Require);
        assert!(p.explicit_roots);
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a 'b c"[..]));
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let (_, p) = params("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!((p.mode, p.roots), (SslMode::VerifyFull, Roots::System));
        let weak = params("postgres://h/db?sslrootcert=system&sslmode=require").unwrap_err();
        assert_eq!(
            weak.to_string(),
            "sslrootcert=system needs sslmode=verify-full, not require"
        );
    }

    #[test]
    fn mistakes_name_the_parameter_and_never_the_password() {
        let cases = [
            (
                "postgres://u:hunter2@h/db?sslmode=verify",
                "sslmode=\"verify\"",
            ),
            (
                "postgres://u:hunter2@h/db?sslcert=/c.pem",
                "sslcert is set without sslkey",
            ),
            (
                "postgres://u:hunter2@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert=/nonexistent/ca.pem: cannot read the file",
            ),
            (
                "postgres://u:hunter2@h/db?bogus=1",
                "invalid connection string",
            ),
        ];
        let ignored = "postgres://h/db?sslmode=disable&sslcert=/nonexistent&sslkey=/nonexistent";
        assert!(connection(ignored).is_ok());
        for (url, expected) in cases {
            let Err(e) = connection(url) else {
                panic!("{url} was accepted");
            };
            let text = crate::telemetry::cause_chain(&e);
            assert!(text.contains(expected), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
        }
    }

    /// A CA's PEM and a certificate it signed for `db.internal` (DER).
    fn ca_and_leaf(name: &str) -> (String, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["db.internal".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        (ca.pem(), leaf.der().clone())
    }

    #[test]
    fn verify_ca_checks_the_chain_and_verify_full_the_name_too() {
        let (ca, leaf) = ca_and_leaf("the CA");
        let (other_ca, _) = ca_and_leaf("another CA");
        let dir = std::env::temp_dir().join(format!("orders-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path.display().to_string()
        };
        let (ca, other_ca) = (write("ca.pem", &ca), write("other.pem", &other_ca));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let check = |mode: SslMode, roots: Option<&str>, host: &str| {
            let params = TlsParams {
                mode,
                roots: roots.map_or(Roots::System, |r| Roots::File(r.to_string())),
                explicit_roots: roots.is_some(),
                client: None,
            };
            let name = ServerName::try_from(host.to_string()).unwrap();
            verifier(&params, &provider)
                .unwrap()
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .map(|_| ())
        };
        let unknown = Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(check(SslMode::VerifyFull, Some(&ca), "db.internal"), Ok(()));
        assert!(matches!(
            check(SslMode::VerifyFull, Some(&ca), "elsewhere"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ));
        assert_eq!(check(SslMode::VerifyCa, Some(&ca), "elsewhere"), Ok(()));
        assert_eq!(
            check(SslMode::VerifyCa, Some(&other_ca), "db.internal"),
            unknown
        );
        assert_eq!(
            check(SslMode::Require, Some(&other_ca), "db.internal"),
            unknown
        );
        assert_eq!(check(SslMode::Require, None, "elsewhere"), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
