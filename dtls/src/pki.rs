//! A certificate authority for tests (feature `pki`): a self-signed CA made in the run that
//! issues P-256 end-entity certificates, the shape `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`
//! needs (RFC 7925 §4.4; Security mode 2, Core TS 1.1 §7.1.8: a client certificate carries
//! the endpoint name as its subject common name).
//!
//! Keys come from the operating system's random source, so certificates differ from run to
//! run; nothing else about a handshake depends on them. A CA can also be loaded
//! ([`TestCa::from_der`]: a user's own, so that a server trusting it accepts simulated
//! clients). Not for production use: no revocation, no policy, one level under the root.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    date_time_ymd,
};

use crate::{CertificateConfig, DtlsError};

/// What an issued certificate is for (its extended key usage, RFC 5280 §4.2.1.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `id-kp-serverAuth`: a DTLS server.
    Server,
    /// `id-kp-clientAuth`: a DTLS client.
    Client,
}

/// When an issued certificate is valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Validity {
    /// From now (the signing moment) for rcgen's default span.
    #[default]
    Current,
    /// 2019-01-01 to 2020-01-01: expired, for negative cases.
    Expired,
}

/// A certificate and its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, DER.
    pub certificate: Vec<u8>,
    /// Its private key, PKCS#8 DER.
    pub private_key: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("certificate", &self.certificate.len())
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// A certificate authority that issues certificates (see the module documentation).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("certificate", &self.der.len())
            .finish_non_exhaustive()
    }
}

fn pki_error(what: &str, e: rcgen::Error) -> DtlsError {
    DtlsError::Config(format!("test CA: {what}: {e}"))
}

impl TestCa {
    /// A new CA whose subject common name is `name`, with a fresh P-256 key.
    pub fn new(name: &str) -> Result<TestCa, DtlsError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_error(name, e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().map_err(|e| pki_error("key", e))?;
        let der = params
            .self_signed(&key)
            .map_err(|e| pki_error("self-signing", e))?
            .der()
            .to_vec();
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            der,
        })
    }

    /// An existing CA: its certificate (DER) and its private key (PKCS#8 DER, P-256 or
    /// another key rcgen signs with). Refused when the key is not the certificate's.
    pub fn from_der(certificate: &[u8], private_key: &[u8]) -> Result<TestCa, DtlsError> {
        let key = KeyPair::try_from(private_key).map_err(|e| pki_error("CA key", e))?;
        // The certificate holds its public key as it is (inside its SubjectPublicKeyInfo).
        let public = key.public_key_raw();
        if public.is_empty() || !certificate.windows(public.len()).any(|w| w == public) {
            return Err(DtlsError::Config(
                "test CA: the key does not belong to the CA certificate".to_owned(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&certificate.into(), key)
            .map_err(|e| pki_error("CA certificate", e))?;
        Ok(TestCa {
            issuer,
            der: certificate.to_vec(),
        })
    }

    /// The CA's private key, PKCS#8 DER (to hand the CA to a tool that loads one with
    /// [`TestCa::from_der`], as a vendor hands over theirs).
    pub fn private_key(&self) -> Vec<u8> {
        self.issuer.key().serialize_der()
    }

    /// The CA's own certificate, DER: the trust anchor of what it issues.
    pub fn certificate(&self) -> &[u8] {
        &self.der
    }

    /// A certificate for `common_name` with subjectAltNames `names` (IP literals become
    /// iPAddress entries, anything else dNSName), for `purpose`, valid as `validity` says.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        purpose: Purpose,
        validity: Validity,
    ) -> Result<Issued, DtlsError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(|e| pki_error("names", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![match purpose {
            Purpose::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Purpose::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        if validity == Validity::Expired {
            params.not_before = date_time_ymd(2019, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().map_err(|e| pki_error("key", e))?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| pki_error(common_name, e))?
            .der()
            .to_vec();
        Ok(Issued {
            certificate,
            private_key: key.serialize_der(),
        })
    }

    /// `issued` as one side's certificate configuration, trusting this CA for the peer.
    pub fn config(&self, issued: Issued) -> CertificateConfig {
        CertificateConfig {
            chain: vec![issued.certificate],
            private_key: issued.private_key,
            trust_anchors: vec![self.der.clone()],
        }
    }
}

/// The subject common name of a DER certificate (RFC 5280 §4.1.2.6), if it has one: the
/// identity a certificate client authenticates as.
pub fn common_name(der: &[u8]) -> Option<String> {
    crate::config::common_name(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_holder() {
        let ca = TestCa::new("unit CA").unwrap();
        let issued = ca
            .issue("dev-1", &[], Purpose::Client, Validity::Current)
            .unwrap();
        assert_eq!(common_name(&issued.certificate).as_deref(), Some("dev-1"));
        assert_eq!(common_name(ca.certificate()).as_deref(), Some("unit CA"));
        let config = ca.config(issued);
        assert_eq!(config.trust_anchors, vec![ca.certificate().to_vec()]);
        assert!(format!("{config:?}").contains("redacted"));
        // Its key hands the CA over whole.
        let again = TestCa::from_der(ca.certificate(), &ca.private_key()).unwrap();
        assert_eq!(again.certificate(), ca.certificate());
    }

    #[test]
    fn a_ca_of_ones_own_is_loaded_with_its_key() {
        let self_signed = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            let der = params.self_signed(&key).unwrap().der().to_vec();
            (der, key.serialize_der())
        };
        let (der, key) = self_signed("vendor CA");
        let ca = TestCa::from_der(&der, &key).unwrap();
        assert_eq!(ca.certificate(), &der[..]);
        let issued = ca
            .issue("dev-2", &[], Purpose::Client, Validity::Current)
            .unwrap();
        assert_eq!(common_name(&issued.certificate).as_deref(), Some("dev-2"));
        // Another CA's key, or no key at all: refused.
        let (_, other) = self_signed("other CA");
        let e = TestCa::from_der(&der, &other).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        assert!(TestCa::from_der(&der, b"garbage").is_err());
    }
}
