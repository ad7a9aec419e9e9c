//! Certificates (Security object mode 2): TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 with P-256
//! certificates from a test CA, over loopback UDP.
#![allow(clippy::unwrap_used)] // test fixtures: a failure is the test failing

mod common;

use common::{KNOWN, spawn_echo_server, wait_for};
use lwm2m_dtls::{
    CertificateConfig, ClientConfig, Credentials, DtlsError, FailureReason, Identity, ServerConfig,
    ServerEvent, UdpDtlsClient,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    date_time_ymd,
};

const SERVER_NAME: &str = "lwm2m.example";
const ENDPOINT: &str = "urn:imei:490154203237518";

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca { params, key, der }
}

/// A P-256 end-entity certificate issued by `ca`, with its PKCS#8 key.
fn issue(
    ca: &Ca,
    cn: &str,
    san: &[&str],
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
) -> (Vec<u8>, Vec<u8>) {
    let mut params =
        CertificateParams::new(san.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let der = params.signed_by(&key, &issuer).unwrap().der().to_vec();
    (der, key.serialize_der())
}

struct Pki {
    ca: Ca,
    server: CertificateConfig,
}

fn pki() -> Pki {
    let ca = ca("Harness test CA");
    let (chain, private_key) = issue(
        &ca,
        "lwm2m server",
        &[SERVER_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
    );
    let server = CertificateConfig {
        chain: vec![chain],
        private_key,
        trust_anchors: vec![ca.der.clone()],
    };
    Pki { ca, server }
}

fn client_config(issuer: &Ca, anchor: &[u8], expired: bool) -> ClientConfig {
    let (chain, private_key) = issue(
        issuer,
        ENDPOINT,
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        expired,
    );
    ClientConfig::new(&Credentials::Certificate {
        certificate: CertificateConfig {
            chain: vec![chain],
            private_key,
            trust_anchors: vec![anchor.to_vec()],
        },
        server_name: SERVER_NAME.into(),
    })
    .unwrap()
}

fn server_config(pki: &Pki) -> ServerConfig {
    ServerConfig {
        certificate: Some(pki.server.clone()),
        ..common::psk_table()
    }
}

#[tokio::test]
async fn certificate_handshake_reports_the_common_name() {
    let pki = pki();
    let (server, mut events) = spawn_echo_server(server_config(&pki));
    let mut client = UdpDtlsClient::connect(server, &client_config(&pki.ca, &pki.ca.der, false))
        .await
        .unwrap();
    let identity = wait_for(&mut events, |e| match e {
        ServerEvent::Established { identity, .. } => Some(identity.clone()),
        _ => None,
    })
    .await;
    assert_eq!(identity, Identity::Certificate(ENDPOINT.into()));
    assert_eq!(
        client.dtls().server_identity(),
        Some(&Identity::Certificate("lwm2m server".into()))
    );
    client.send(b"cert").await.unwrap();
    assert_eq!(
        client.recv().await.unwrap(),
        format!("{ENDPOINT}|cert").into_bytes()
    );

    // The same server still takes PSK clients.
    let (id, key) = KNOWN[0];
    let mut psk = UdpDtlsClient::connect(
        server,
        &ClientConfig::psk(id.as_bytes(), key.as_bytes()).unwrap(),
    )
    .await
    .unwrap();
    psk.send(b"psk").await.unwrap();
    assert_eq!(psk.recv().await.unwrap(), format!("{id}|psk").into_bytes());
}

async fn refused(config: ServerConfig, client: ClientConfig) -> FailureReason {
    let (server, mut events) = spawn_echo_server(config);
    let error = UdpDtlsClient::connect(server, &client).await.unwrap_err();
    let DtlsError::Handshake {
        reason: client_reason,
        ..
    } = error
    else {
        panic!("{error}")
    };
    let server_reason = wait_for(&mut events, |e| match e {
        ServerEvent::HandshakeFailed { reason, .. } => Some(reason.clone()),
        ServerEvent::Established { .. } => panic!("handshake accepted"),
        _ => None,
    })
    .await;
    assert!(
        matches!(server_reason, FailureReason::Protocol(_)),
        "{server_reason:?}"
    );
    client_reason
}

#[tokio::test]
async fn expired_client_certificates_are_refused() {
    let pki = pki();
    let reason = refused(
        server_config(&pki),
        client_config(&pki.ca, &pki.ca.der, true),
    )
    .await;
    assert_eq!(
        reason,
        FailureReason::PeerAlert(Some(42)),
        "bad_certificate"
    );
}

#[tokio::test]
async fn client_certificates_from_another_ca_are_refused() {
    let pki = pki();
    let rogue = ca("Rogue CA");
    let reason = refused(
        server_config(&pki),
        client_config(&rogue, &pki.ca.der, false),
    )
    .await;
    assert_eq!(
        reason,
        FailureReason::PeerAlert(Some(42)),
        "bad_certificate"
    );
}

#[tokio::test]
async fn clients_refuse_servers_they_do_not_trust() {
    let pki = pki();
    let other = ca("Other CA");
    let (server, _events) = spawn_echo_server(server_config(&pki));
    let error = UdpDtlsClient::connect(server, &client_config(&pki.ca, &other.der, false))
        .await
        .unwrap_err();
    assert!(matches!(error, DtlsError::Handshake { .. }), "{error}");
}
