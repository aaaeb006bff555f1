//! Private keys for certificates: ECDSA P-256 (the default, as certbot's) or RSA.
//!
//! ring, rcgen's backend, signs with RSA keys but cannot generate them, so RSA keys come from the
//! `rsa` crate (RustCrypto) and are handed to rcgen as PKCS#8.

use rsa::pkcs8::EncodePrivateKey;

/// certbot's `--key-type` and `--rsa-key-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    #[default]
    EcdsaP256,
    Rsa(usize),
}

impl KeyType {
    /// From `key_type` and `rsa_key_size` as the config writes them.
    pub fn parse(key_type: Option<&str>, rsa_key_size: Option<usize>) -> Result<KeyType, String> {
        match (key_type.unwrap_or("ecdsa"), rsa_key_size) {
            ("ecdsa", None) => Ok(KeyType::EcdsaP256),
            ("ecdsa", Some(_)) => Err("rsa_key_size is for key_type = \"rsa\"".into()),
            ("rsa", None) => Ok(KeyType::Rsa(2048)),
            ("rsa", Some(bits @ (2048 | 3072 | 4096))) => Ok(KeyType::Rsa(bits)),
            ("rsa", Some(bits)) => Err(format!(
                "rsa_key_size = {bits}: CAs accept 2048, 3072 or 4096"
            )),
            (other, _) => Err(format!("unknown key_type {other:?}")),
        }
    }

    pub fn name(&self) -> String {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256".into(),
            KeyType::Rsa(bits) => format!("rsa-{bits}"),
        }
    }

    pub fn generate(&self) -> Result<rcgen::KeyPair, String> {
        match self {
            KeyType::EcdsaP256 => rcgen::KeyPair::generate().map_err(|e| e.to_string()),
            KeyType::Rsa(bits) => {
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, *bits)
                    .map_err(|e| format!("cannot generate an RSA key: {e}"))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| format!("cannot encode the RSA key: {e}"))?;
                let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
                rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_parse_like_certbot_and_rsa_keys_sign() {
        assert_eq!(KeyType::parse(None, None), Ok(KeyType::EcdsaP256));
        assert_eq!(KeyType::parse(Some("rsa"), None), Ok(KeyType::Rsa(2048)));
        assert_eq!(
            KeyType::parse(Some("rsa"), Some(4096)),
            Ok(KeyType::Rsa(4096))
        );
        assert!(KeyType::parse(Some("rsa"), Some(1024))
            .unwrap_err()
            .contains("2048"));
        assert!(KeyType::parse(Some("dsa"), None).is_err());
        let key = KeyType::Rsa(2048).generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["rsa.example".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        assert_eq!(
            x509.public_key().algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.1",
            "rsaEncryption"
        );
    }
}
