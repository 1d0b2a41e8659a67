//! The `--tls-*` flags, shared by every command that serves or calls gRPC (see
//! [`gatehouse_proto::tls`] for what each does and `docs/security.md`).

use std::path::PathBuf;

use gatehouse_proto::tls::{Tls, TlsError, TlsFiles};

/// TLS of the gRPC connections.
#[derive(clap::Args, Debug, Default)]
pub struct TlsOpts {
    /// PEM certificate chain this process serves gRPC with (coordinator; worker cache
    /// listener) and presents to servers that require client certificates.
    #[arg(long, global = true, env = "GATEHOUSE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "GATEHOUSE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle that servers' certificates (for https:// URLs; default: the
    /// system's trust store) and, with --tls-client-auth, clients' certificates are
    /// verified against.
    #[arg(long, global = true, env = "GATEHOUSE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Serve mutual TLS: require client certificates signed by --tls-ca.
    #[arg(long, global = true, env = "GATEHOUSE_TLS_CLIENT_AUTH")]
    tls_client_auth: bool,
    /// Check servers' certificates against this name instead of each URL's host (one
    /// certificate for nodes reached by IP address, such as cache nodes on pod IPs).
    #[arg(
        long,
        global = true,
        env = "GATEHOUSE_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    tls_server_name: Option<String>,
}

impl TlsOpts {
    /// Reads and checks the files.
    pub fn load(&self) -> Result<Tls, TlsError> {
        Tls::load(&TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
            client_auth: self.tls_client_auth,
            server_name: self.tls_server_name.clone(),
        })
    }
}
