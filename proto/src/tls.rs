//! TLS on the gRPC connections: coordinators and cache nodes serve it, workers, the CLI
//! and cache clients speak it to `https://` URLs, and mutual TLS is one flag away.
//!
//! One [`Tls`] per process, from the `--tls-*` flags ([`TlsFiles`]): PEM files read and
//! checked once at startup, so a missing file, a key that is not a key or a CA file
//! without certificates is a clear error naming the flag and the file before anything
//! listens or connects. The same settings serve both directions:
//!
//! - `cert` + `key`: what a server presents (the coordinator's gRPC port, a worker's
//!   cache listener), and what a client presents when the server asks for a client
//!   certificate;
//! - `ca`: the CA bundle peers are verified against: servers' certificates when
//!   connecting to an `https://` URL (without it, the system's trust store), and with
//!   `client_auth` the clients' certificates, which servers then require;
//! - `server_name`: the name servers' certificates are checked against instead of each
//!   URL's host, for nodes reached by IP address (cache nodes on pod IPs) with one
//!   shared certificate.
//!
//! `http://` URLs stay plaintext whatever is configured; whether a connection is
//! encrypted is always visible in its URL.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Largest PEM file read (a CA bundle of a few hundred certificates fits).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// The `--tls-*` flags, as given.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// `--tls-cert`: PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// `--tls-key`: PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// `--tls-ca`: PEM CA bundle peers are verified against.
    pub ca: Option<PathBuf>,
    /// `--tls-client-auth`: servers require client certificates signed by `ca`.
    pub client_auth: bool,
    /// `--tls-server-name`: the name servers' certificates must carry.
    pub server_name: Option<String>,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `--tls-cert` without `--tls-key`, or the other way round.
    #[error("{given} needs {missing}: a certificate and its key go together")]
    Half {
        given: &'static str,
        missing: &'static str,
    },
    /// A PEM file that cannot be read or holds the wrong thing.
    #[error("{flag} {}: {reason}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// `--tls-client-auth` without what it needs.
    #[error("--tls-client-auth needs {0}")]
    ClientAuth(&'static str),
    /// A `--tls-server-name` that is not a DNS name or IP address.
    #[error("--tls-server-name {0:?} is not a DNS name or IP address")]
    ServerName(String),
    /// An `https://` URL the client configuration cannot be applied to.
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
}

/// A process's TLS settings, checked. The default is no TLS at all. Its `Debug` shows
/// what is set, never the key.
#[derive(Clone, Default)]
pub struct Tls {
    /// Certificate chain and key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// CA bundle, PEM.
    ca: Option<Vec<u8>>,
    client_auth: bool,
    server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certificate", &self.identity.is_some())
            .field("ca", &self.ca.is_some())
            .field("client_auth", &self.client_auth)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Whether `url` is an `https://` URL (the scheme in any case).
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// Whether following a redirect from `from` to `to` would drop TLS: a server reached
/// over TLS that names a plaintext URL (a leader's address as proclaimed in etcd) must
/// not send clients or workers to plaintext.
pub fn is_downgrade(from: &str, to: &str) -> bool {
    is_https(from) && !is_https(to)
}

impl Tls {
    /// Reads and checks the files named by `files`.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let identity = match (&files.cert, &files.key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsError::Half {
                    given: "--tls-cert",
                    missing: "--tls-key",
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Half {
                    given: "--tls-key",
                    missing: "--tls-cert",
                });
            }
            (Some(cert), Some(key)) => {
                let cert_pem = read_pem("--tls-cert", cert)?;
                let chain = certificates("--tls-cert", cert, &cert_pem)?;
                let key_pem = read_pem("--tls-key", key)?;
                let key_err = |reason: String| TlsError::File {
                    flag: "--tls-key",
                    path: key.clone(),
                    reason,
                };
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| key_err(format!("no usable PEM private key ({e})")))?;
                rustls::sign::CertifiedKey::from_der(
                    chain,
                    key_der,
                    &rustls::crypto::ring::default_provider(),
                )
                .map_err(|e| {
                    key_err(format!(
                        "not the key of the certificate in {} ({e})",
                        cert.display()
                    ))
                })?;
                Some((cert_pem, key_pem))
            }
        };
        let ca = match &files.ca {
            None => None,
            Some(path) => {
                let pem = read_pem("--tls-ca", path)?;
                certificates("--tls-ca", path, &pem)?;
                Some(pem)
            }
        };
        if files.client_auth {
            if ca.is_none() {
                return Err(TlsError::ClientAuth(
                    "--tls-ca (the CA client certificates must be signed by)",
                ));
            }
            if identity.is_none() {
                return Err(TlsError::ClientAuth(
                    "--tls-cert and --tls-key (a server certificate to serve TLS with)",
                ));
            }
        }
        if let Some(name) = &files.server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err(TlsError::ServerName(name.clone()));
        }
        Ok(Self {
            identity,
            ca,
            client_auth: files.client_auth,
            server_name: files.server_name.clone(),
        })
    }

    /// Whether this process serves TLS (it has a certificate and key).
    pub fn serves(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether this process has a certificate to present.
    pub fn has_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether servers require client certificates.
    pub fn client_auth(&self) -> bool {
        self.client_auth
    }

    /// The scheme of this process's own URLs (`https` when it serves TLS).
    pub fn scheme(&self) -> &'static str {
        if self.serves() { "https" } else { "http" }
    }

    /// The server side: `None` without a certificate (plaintext).
    pub fn server_config(&self) -> Option<ServerTlsConfig> {
        let (cert, key) = self.identity.as_ref()?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if self.client_auth
            && let Some(ca) = &self.ca
        {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        Some(config)
    }

    /// The client side, for `https://` URLs.
    fn client_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        config
    }

    /// `reason` (why a connection or call to `url` failed) with what it most likely
    /// means when TLS is involved: transport errors name the symptom (a garbled frame, a
    /// closed connection, an alert), not the cause.
    pub fn explain(&self, url: &str, reason: String) -> String {
        match hint(url, &reason, self.has_certificate()) {
            Some(hint) => format!("{reason} ({hint})"),
            None => reason,
        }
    }

    /// An endpoint for `url`: TLS with these settings for `https://`, plaintext for
    /// `http://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| TlsError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        if !is_https(url) {
            return Ok(endpoint);
        }
        endpoint
            .tls_config(self.client_config())
            .map_err(|e| TlsError::Url {
                url: url.to_owned(),
                reason: format!("TLS settings: {e}"),
            })
    }
}

fn hint(url: &str, reason: &str, has_certificate: bool) -> Option<&'static str> {
    let has = |needle: &str| reason.contains(needle);
    if !is_https(url) {
        // A TLS server answers an HTTP/2 preface with an alert, read as an oversized
        // frame, or closes the connection.
        return (has("frame with invalid size") || has("broken pipe"))
            .then_some("does the server serve TLS? then use https://");
    }
    if has("InvalidContentType") {
        return Some("does the server serve plaintext? then use http://");
    }
    if has("invalid peer certificate") {
        return Some("check --tls-ca, and --tls-server-name if the certificate names another host");
    }
    if has("CertificateRequired") {
        return Some("the server requires a client certificate: give --tls-cert and --tls-key");
    }
    if has_certificate && has("received fatal alert") {
        return Some(
            "the server refused the certificate: does the server trust the CA of --tls-cert?",
        );
    }
    // A server that refuses a client certificate may just close the connection; so may
    // one that is going away. Say so as a possibility only.
    if has("broken pipe") || has("connection closed") {
        return Some(if has_certificate {
            "if this persists: does the server trust the CA of --tls-cert?"
        } else {
            "if the server requires client certificates, give --tls-cert and --tls-key"
        });
    }
    None
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |reason: String| TlsError::File {
        flag,
        path: path.to_owned(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(err(format!(
            "{len} bytes is more than a PEM file may have ({MAX_PEM_BYTES})"
        )));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// The certificates in `pem`: at least one, and nothing unreadable.
fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        flag,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("unreadable PEM ({e})")))?;
    if certs.is_empty() {
        return Err(err(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(certs)
}

/// The test certificates in `proto/testdata/tls` (see `make.sh` there): `name` `test`
/// or `other`, each a CA and a leaf for `gatehouse.test`, `localhost` and 127.0.0.1.
/// For tests only: the keys are public.
#[cfg(test)]
fn test_certificates(name: &str) -> TlsFiles {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls");
    TlsFiles {
        cert: Some(dir.join(format!("{name}.pem"))),
        key: Some(dir.join(format!("{name}-key.pem"))),
        ca: Some(dir.join(format!("{name}-ca.pem"))),
        client_auth: false,
        server_name: None,
    }
}

#[cfg(test)]
fn test_files(client_auth: bool) -> TlsFiles {
    TlsFiles {
        client_auth,
        server_name: Some("gatehouse.test".into()),
        ..test_certificates("test")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(_dir: &Path) -> TlsFiles {
        test_files(true)
    }

    #[test]
    fn no_flags_is_plaintext() {
        let tls = Tls::load(&TlsFiles::default()).expect("loads");
        assert!(!tls.serves());
        assert_eq!(tls.scheme(), "http");
        assert!(tls.server_config().is_none());
        assert!(tls.endpoint("http://127.0.0.1:1").is_ok());
        assert!(format!("{tls:?}").contains("certificate: false"));
    }

    #[test]
    fn schemes_and_downgrades() {
        assert!(is_https("https://a:1") && is_https("HTTPS://a:1"));
        assert!(!is_https("http://a:1") && !is_https("a:1") && !is_https(""));
        assert!(is_downgrade("https://a:1", "http://b:1"));
        assert!(is_downgrade("HTTPS://a:1", "b:1"));
        assert!(!is_downgrade("https://a:1", "https://b:1"));
        assert!(!is_downgrade("http://a:1", "http://b:1"));
        assert!(!is_downgrade("http://a:1", "https://b:1"));
    }

    #[test]
    fn the_key_stays_out_of_debug_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::load(&files(dir.path())).expect("loads");
        let shown = format!("{tls:?}");
        assert!(shown.contains("certificate: true"), "{shown}");
        assert!(
            !shown.contains("PRIVATE") && !shown.contains("BEGIN"),
            "{shown}"
        );
    }

    #[test]
    fn failures_get_a_hint_when_tls_is_the_likely_cause() {
        let plain = Tls::default();
        let explain = |tls: &Tls, url: &str, reason: &str| tls.explain(url, reason.into());
        let https = "https://c:1";
        for (tls, url, reason, hint) in [
            (
                &plain,
                "http://c:1",
                "h2: frame with invalid size",
                "use https://",
            ),
            (
                &plain,
                https,
                "corrupt message of type InvalidContentType",
                "use http://",
            ),
            (
                &plain,
                https,
                "invalid peer certificate: UnknownIssuer",
                "check --tls-ca",
            ),
            (
                &plain,
                https,
                "received fatal alert: CertificateRequired",
                "give --tls-cert",
            ),
            (
                &plain,
                https,
                "connection closed",
                "if the server requires client certificates",
            ),
        ] {
            let said = explain(tls, url, reason);
            assert!(said.starts_with(reason) && said.contains(hint), "{said}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let with_cert = Tls::load(&files(dir.path())).expect("loads");
        let said = explain(&with_cert, https, "received fatal alert: UnknownCA");
        assert!(
            said.contains("refused the certificate: does the server trust the CA of --tls-cert?"),
            "{said}"
        );
        // Anything else is left as it is.
        let refused = "tcp connect error: Connection refused";
        assert_eq!(explain(&with_cert, https, refused), refused);
        assert_eq!(explain(&plain, "http://c:1", refused), refused);
    }

    #[test]
    fn good_files_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::load(&files(dir.path())).expect("loads");
        assert!(tls.serves() && tls.client_auth());
        assert_eq!(tls.scheme(), "https");
        assert!(tls.server_config().is_some());
        assert!(tls.endpoint("https://10.0.0.1:7701").is_ok());
    }

    #[test]
    fn bad_settings_name_the_flag_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = files(dir.path());
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").expect("write");
        let cases: Vec<(TlsFiles, &str)> = vec![
            (
                TlsFiles {
                    key: None,
                    ..good.clone()
                },
                "--tls-cert needs --tls-key",
            ),
            (
                TlsFiles {
                    cert: None,
                    ..good.clone()
                },
                "--tls-key needs --tls-cert",
            ),
            (
                TlsFiles {
                    cert: Some(missing.clone()),
                    ..good.clone()
                },
                "--tls-cert",
            ),
            (
                TlsFiles {
                    key: Some(not_pem.clone()),
                    ..good.clone()
                },
                "no usable PEM private key",
            ),
            (
                TlsFiles {
                    key: good.cert.clone(),
                    ..good.clone()
                },
                "--tls-key",
            ),
            (
                TlsFiles {
                    key: good.key.as_ref().map(|k| k.with_file_name("other-key.pem")),
                    ..good.clone()
                },
                "not the key of the certificate",
            ),
            (
                TlsFiles {
                    ca: Some(not_pem.clone()),
                    ..good.clone()
                },
                "no PEM certificate",
            ),
            (
                TlsFiles {
                    ca: None,
                    ..good.clone()
                },
                "--tls-client-auth needs --tls-ca",
            ),
            (
                TlsFiles {
                    cert: None,
                    key: None,
                    ..good.clone()
                },
                "--tls-client-auth needs --tls-cert",
            ),
            (
                TlsFiles {
                    server_name: Some("not a name".into()),
                    ..good.clone()
                },
                "not a DNS name",
            ),
        ];
        for (files, needle) in cases {
            let err = Tls::load(&files).expect_err(needle).to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let err = Tls::load(&TlsFiles {
            cert: Some(missing.clone()),
            ..good
        })
        .expect_err("missing");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }
}
