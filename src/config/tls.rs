//! A listener's TLS: certificate/key pairs read, checked and turned into a
//! rustls `ServerConfig` when the config is loaded.
//!
//! Loading at config time means a reload re-reads the files, a broken pair
//! makes the whole reload invalid (the old pair keeps serving), and the
//! data plane only clones an `Arc<ServerConfig>` per new connection: open
//! connections keep the pair they were handshaken with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How close to expiry a certificate gets a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// A listener's TLS settings, ready to handshake with.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The lowest version accepted.
    pub min_version: TlsVersion,
    /// Each certificate, in config order (the first is the default).
    pub certs: Vec<CertInfo>,
    /// The rustls configuration every new connection is accepted with.
    pub server: Arc<ServerConfig>,
}

/// What a loaded certificate says about itself.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The PEM chain file.
    pub cert: PathBuf,
    /// The PEM key file.
    pub key: PathBuf,
    /// The DNS names it covers (subject alternative names, else the CN).
    pub names: Vec<String>,
    /// When it expires.
    pub not_after: SystemTime,
    /// [`pair_digest`] of the two files as loaded.
    pub digest: u64,
}

/// A digest of a certificate file's and a key file's bytes, so a watcher
/// can tell whether the files on disk are the ones loaded.
pub fn pair_digest(cert: &[u8], key: &[u8]) -> u64 {
    let mut both = Vec::with_capacity(cert.len() + key.len() + 1);
    both.extend_from_slice(cert);
    both.push(0);
    both.extend_from_slice(key);
    super::digest(&both)
}

/// A certificate and key read from disk and checked.
pub struct LoadedPair {
    /// What it says about itself.
    pub info: CertInfo,
    /// The key and chain, as rustls signs with them.
    pub key: Arc<CertifiedKey>,
}

/// Why a certificate and key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Whether it is the key file (else the certificate file).
        is_key: bool,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file is not a PEM chain.
    #[error("{}: not a PEM certificate chain: {reason}", path.display())]
    NotAChain {
        /// The certificate file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("{}: holds no PEM certificate", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file is not a PEM private key.
    #[error("{}: not a PEM private key: {reason}", path.display())]
    NotAKey {
        /// The key file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("{}: unsupported private key: {reason}", path.display())]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("{} does not belong to the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate does not parse as X.509.
    #[error("{}: cannot parse the certificate: {reason}", path.display())]
    Unparsable {
        /// The certificate file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The leaf certificate has expired.
    #[error("{}: the certificate expired at {}", path.display(), humantime::format_rfc3339_seconds(*not_after))]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// When it expired.
        not_after: SystemTime,
    },
}

impl PairError {
    /// Whether the key file is at fault (else the certificate file).
    pub fn is_the_keys(&self) -> bool {
        match self {
            PairError::Unreadable { is_key, .. } => *is_key,
            PairError::NotAKey { .. }
            | PairError::UnsupportedKey { .. }
            | PairError::Mismatch { .. } => true,
            PairError::NotAChain { .. }
            | PairError::NoCertificate { .. }
            | PairError::Unparsable { .. }
            | PairError::Expired { .. } => false,
        }
    }
}

/// Reads the chain at `cert` and the key at `key`, and checks that they
/// parse, match each other, and have not expired.
pub fn load_pair(cert: &Path, key: &Path, now: SystemTime) -> Result<LoadedPair, PairError> {
    let read = |path: &Path, is_key: bool| {
        super::read::regular_file(path).map_err(|source| PairError::Unreadable {
            path: path.to_owned(),
            is_key,
            source,
        })
    };
    let cert_pem = read(cert, false)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PairError::NotAChain {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(PairError::NoCertificate {
            path: cert.to_owned(),
        });
    };
    let key_pem = read(key, true)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| PairError::NotAKey {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
        PairError::UnsupportedKey {
            path: key.to_owned(),
            reason: e.to_string(),
        }
    })?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().map_err(|_| PairError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| PairError::Unparsable {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    let not_after = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0));
    if not_after <= now {
        return Err(PairError::Expired {
            path: cert.to_owned(),
            not_after,
        });
    }
    let mut names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    Some(dns.to_ascii_lowercase())
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(LoadedPair {
        info: CertInfo {
            cert: cert.to_owned(),
            key: key.to_owned(),
            names,
            not_after,
            digest: pair_digest(&cert_pem, &key_pem),
        },
        key: Arc::new(certified),
    })
}

/// The rustls configuration for `pairs` (the first is the default), ALPN
/// offering `h2` and `http/1.1`.
pub fn server_config(min_version: TlsVersion, pairs: &[LoadedPair]) -> Arc<ServerConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(pairs)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// TLS to a pool's upstreams.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// How upstream certificates are verified (the given CA, or the
    /// system's roots).
    pub client: Arc<rustls::ClientConfig>,
    /// The CA file, if one was given.
    pub ca_file: Option<PathBuf>,
    /// The name to send as SNI and verify, instead of the upstream's host.
    pub server_name: Option<String>,
}

/// Why trust roots could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The CA file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The CA file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An entry of the CA file is not a PEM certificate.
    #[error("{}: not a PEM certificate: {reason}", path.display())]
    NotACertificate {
        /// The CA file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// A certificate of the CA file cannot be a trust root.
    #[error("{}: unusable CA certificate: {reason}", path.display())]
    Unusable {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The CA file holds no certificate.
    #[error("{} holds no certificate", path.display())]
    Empty {
        /// The CA file.
        path: PathBuf,
    },
    /// The system has no CA certificates (a slim container image).
    #[error("no system CA certificates were found")]
    NoSystemRoots,
}

/// The certificates of a CA file, as trust roots.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, RootsError> {
    let pem = super::read::regular_file(path).map_err(|source| RootsError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| RootsError::NotACertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| RootsError::Unusable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(RootsError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The system's trust roots (the web PKI, as the OS ships it).
pub fn system_roots() -> Result<rustls::RootCertStore, RootsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(RootsError::NoSystemRoots);
    }
    Ok(roots)
}

/// A client configuration verifying against `roots`.
pub fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Picks a certificate by SNI: an exact name, then a wildcard, then the
/// first certificate (for clients without SNI or with an unknown name).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)` for `*.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn new(pairs: &[LoadedPair]) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for pair in pairs {
            for name in &pair.info.names {
                match name.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        wildcard.push((suffix.to_owned(), pair.key.clone()));
                    }
                    _ => {
                        exact
                            .entry(name.clone())
                            .or_insert_with(|| pair.key.clone());
                    }
                }
            }
        }
        SniResolver {
            exact,
            wildcard,
            default: pairs.first().map(|p| p.key.clone()),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = client_hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.exact.get(&name).cloned().or_else(|| {
                // `*.example.com` covers exactly one more label.
                let (_, parent) = name.split_once('.')?;
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| suffix[1..] == *parent)
                    .map(|(_, key)| key.clone())
            })
        });
        chosen.or_else(|| self.default.clone())
    }
}
