//! The DTLS accounts of simulated clients: which of our servers an account is for, the
//! credentials it authenticates with, and how they are written into a client's Security
//! object (Core TS 1.1 Appendix E.1). The feature backends, the scenario runner and
//! `simulate` all give clients accounts this way; reading them back is
//! [`lwm2m_simulator::security::account_credentials`].

use std::fmt;
use std::net::SocketAddr;

use lwm2m_proto::client::ObjectTree;
use lwm2m_proto::{InstanceId, ObjectId, ResourceId, ResourceValue, Value};
use lwm2m_simulator::security::{MODE_CERTIFICATE, MODE_PSK};

/// Which of our servers an account, a session or a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerRole {
    /// The LwM2M Server.
    Lwm2m,
    /// The Bootstrap Server.
    Bootstrap,
}

impl fmt::Display for ServerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lwm2m => "LwM2M Server",
            Self::Bootstrap => "Bootstrap Server",
        })
    }
}

/// What a client's server account authenticates with (written into its Security
/// instance by [`write_account`]).
#[derive(Clone, PartialEq, Eq)]
pub enum SecureAccount {
    /// Mode 0: PSK identity and key.
    Psk {
        /// /0/x/3.
        identity: Vec<u8>,
        /// /0/x/5.
        key: Vec<u8>,
    },
    /// Mode 2: own certificate and key, and the trust anchor for the server's.
    Certificate {
        /// /0/x/3, DER.
        certificate: Vec<u8>,
        /// /0/x/5, PKCS#8 DER.
        private_key: Vec<u8>,
        /// /0/x/4, DER.
        trust_anchor: Vec<u8>,
    },
}

impl std::fmt::Debug for SecureAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Psk { identity, .. } => write!(
                f,
                "PSK identity {:?}",
                String::from_utf8_lossy(identity).as_ref()
            ),
            Self::Certificate { certificate, .. } => write!(
                f,
                "certificate of {:?}",
                lwm2m_dtls::pki::common_name(certificate).unwrap_or_default()
            ),
        }
    }
}

/// Points the client's account of `role` (the first Security instance whose Bootstrap-Server
/// flag /0/x/1 says so) at `server` over `coaps://` with `account`'s credentials; returns
/// that instance's id.
pub fn write_account(
    tree: &mut ObjectTree,
    role: ServerRole,
    server: SocketAddr,
    account: &SecureAccount,
) -> anyhow::Result<InstanceId> {
    let security = ObjectId(0);
    let (id, mut instance) = tree
        .instance_ids(security)
        .into_iter()
        .filter_map(|i| tree.instance(security, i).map(|inst| (i, inst.clone())))
        .find(|(_, inst)| {
            let bootstrap = matches!(
                inst.get(&ResourceId(1)),
                Some(ResourceValue::Single(Value::Boolean(true)))
            );
            bootstrap == (role == ServerRole::Bootstrap)
        })
        .ok_or_else(|| anyhow::anyhow!("the client has no {role} account to secure"))?;
    let (mode, identity, public_key, secret) = match account {
        SecureAccount::Psk { identity, key } => (MODE_PSK, identity, &Vec::new(), key),
        SecureAccount::Certificate {
            certificate,
            private_key,
            trust_anchor,
        } => (MODE_CERTIFICATE, certificate, trust_anchor, private_key),
    };
    let mut put = |r: u16, v: Value| {
        instance.insert(ResourceId(r), ResourceValue::Single(v));
    };
    put(0, Value::String(format!("coaps://{server}")));
    put(2, Value::Integer(mode));
    put(3, Value::Opaque(identity.clone()));
    put(4, Value::Opaque(public_key.clone()));
    put(5, Value::Opaque(secret.clone()));
    tree.put_instance(security, id, instance);
    Ok(id)
}
