//! A certificate authority and a server certificate made at run time with rcgen, in PEM files
//! of a fresh temp directory (never committed), for the tests of the TLS front doors
//! (tests/tls.rs with rustls clients, tests/browser.rs with Chromium).

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// A certificate authority and a server certificate for `localhost` and 127.0.0.1 signed by
/// it, in PEM files of a fresh temp directory (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
    pub ca_der: CertificateDer<'static>,
    pub cert_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new(label: &str) -> Pki {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-tls-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut pki = Pki {
            dir,
            ca_der: CertificateDer::from(Vec::new()),
            cert_der: CertificateDer::from(Vec::new()),
        };
        pki.issue();
        pki
    }

    /// A new CA and a new server certificate signed by it, written over the files.
    pub fn issue(&mut self) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchboard test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        // rcgen makes "127.0.0.1" an IP address entry, which a browser at https://127.0.0.1/
        // matches.
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let params = rcgen::CertificateParams::new(names).expect("params");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
        std::fs::write(self.cert_path(), cert.pem()).expect("write the certificate");
        std::fs::write(self.key_path(), key.serialize_pem()).expect("write the key");
        self.ca_der = ca.der().clone();
        self.cert_der = cert.der().clone();
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            path_arg(&self.cert_path()),
            "--tls-key".into(),
            path_arg(&self.key_path()),
        ]
    }

    /// A client configuration trusting this PKI's CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config(&self.ca_der)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temp path").to_string()
}

pub fn client_config(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("the CA");
    #[allow(deprecated)] // ring, as the server; see Cargo.toml
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
