//! Connecting to PostgreSQL: the client configuration from the URL, TLS (rustls with ring) as
//! `sslmode` asks, and the connection pool.

use crate::config::{DatabaseTls, PostgresUrl};
use crate::store::StoreError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long connecting (TCP, TLS, authentication) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sslmode=prefer|require` as libpq means them: encrypted, the certificate not checked (the
/// handshake's signatures still are). `verify-full` is the mode that authenticates the server.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS connector for `tls`, trusting the web's roots and `ca_file` for `verify-full`.
fn connector(tls: DatabaseTls, ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let fail = |e: &dyn std::fmt::Display| StoreError::Storage(format!("database TLS: {e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?;
    let config = match tls {
        DatabaseTls::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(path) = ca_file {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| fail(&format!("{}: {e}", path.display())))?;
                for cert in certs {
                    let cert = cert.map_err(|e| fail(&format!("{}: {e}", path.display())))?;
                    roots.add(cert).map_err(|e| fail(&e))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        DatabaseTls::Disable | DatabaseTls::Prefer | DatabaseTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The client configuration of `url`.
pub fn client_config(url: &PostgresUrl) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .url
        .parse()
        .map_err(|e| StoreError::Storage(format!("database URL {}: {e}", url.masked())))?;
    config.ssl_mode(match url.tls {
        DatabaseTls::Disable => SslMode::Disable,
        DatabaseTls::Prefer => SslMode::Prefer,
        DatabaseTls::Require | DatabaseTls::VerifyFull => SslMode::Require,
    });
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("portcullis");
    }
    Ok(config)
}

/// Everything needed to open connections to one database.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// For messages: the URL with its password masked.
    pub name: String,
}

impl Target {
    pub fn new(url: &PostgresUrl, ca_file: Option<&Path>) -> Result<Target, StoreError> {
        Ok(Target {
            config: client_config(url)?,
            tls: connector(url.tls, ca_file)?,
            name: url.masked(),
        })
    }

    /// A pool of at most `size` connections. Connections are made when first needed, on the
    /// runtime that asks (the store's own).
    pub fn pool(&self, size: usize) -> Result<Pool, StoreError> {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Storage(format!("database pool: {e}")))
    }

    /// One connection of its own, named `application_name` (in `pg_stat_activity`), with its
    /// connection task: the caller drives it (and reads notifications from it).
    pub async fn connect(
        &self,
        application_name: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        tokio_postgres::Error,
    > {
        let mut config = self.config.clone();
        config.application_name(application_name);
        config.connect(self.tls.clone()).await
    }
}
