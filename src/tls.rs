//! The TLS crypto provider that chatd, `chat` and the loadgen share.

use std::sync::Arc;

use rustls::crypto::ring::kx_group;
use rustls::crypto::CryptoProvider;

/// ring's provider with X25519 first among the key exchange groups.
///
/// rustls 0.23.48 lists ring's groups as P-384, X25519, P-256, so a rustls client sends a P-384
/// key share and a server of the same provider takes it without a retry. ring computes P-384
/// with generic bignum code: on chatd it was half the CPU of a TLS connection under
/// `loadgen churn --tls` (perf: `bn_mul_mont_nohw` 54%). X25519 is what browsers and OpenSSL
/// offer first and costs a fraction of it; P-256 and P-384 stay for clients that want them.
/// ring, not aws-lc-rs, because aws-lc's build needs cmake (see Cargo.toml); rustls deprecates
/// ring's provider for its lack of post-quantum key exchange.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x25519_comes_first() {
        let provider = crypto_provider();
        let names: Vec<_> = provider
            .kx_groups
            .iter()
            .map(|group| group.name())
            .collect();
        assert_eq!(
            names,
            [
                rustls::NamedGroup::X25519,
                rustls::NamedGroup::secp256r1,
                rustls::NamedGroup::secp384r1
            ]
        );
    }
}
