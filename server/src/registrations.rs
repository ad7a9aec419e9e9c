//! The registrations the REST API and the harness read: a copy of the server machine's
//! registrations, kept up to date from its events, sharded so that readers never wait on the
//! machine nor on each other for long.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::RwLock;

use lwm2m_proto::server::{ObservationRecord, Registration};

/// One registered client as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEntry {
    /// The registration (Core TS 1.1 §6.2.1).
    pub registration: Registration,
    /// A queue-mode client whose awake window closed (Core TS 1.1 §6.5).
    pub sleeping: bool,
}

/// Where the registrations of a server live; behind a trait so that a networked store
/// (shared by several server processes) can replace the in-memory one.
pub trait RegistrationStore: Send + Sync {
    /// The entry of an endpoint.
    fn get(&self, endpoint: &str) -> Option<ClientEntry>;
    /// Every entry, sorted by endpoint name.
    fn all(&self) -> Vec<ClientEntry>;
    /// How many clients are registered.
    fn len(&self) -> usize;
    /// Whether none is.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Adds or replaces the registration of its endpoint (Register, Update); the client
    /// is awake.
    fn upsert(&self, registration: Registration);
    /// Marks a queue-mode client asleep or awake.
    fn set_sleeping(&self, endpoint: &str, sleeping: bool);
    /// Removes an endpoint (De-register, expiry).
    fn remove(&self, endpoint: &str) -> Option<ClientEntry>;
    /// Sends the writes a networked store queued (the driver calls it before its answers
    /// leave, so that what an answer announces is readable everywhere). Nothing to do in
    /// memory.
    fn flush(&self) {}
    /// The registration with this id, in a store shared with other server instances (a
    /// cluster): an Update that names an id this instance does not hold is looked up here
    /// and the registration taken over. `None` for a store of one instance.
    fn by_id(&self, id: &str) -> Option<ClientEntry> {
        let _ = id;
        None
    }
    /// Whether other server instances share this store ([`RegistrationStore::by_id`]).
    fn is_shared(&self) -> bool {
        false
    }
    /// Keeps an established observation of an endpoint, so that it outlives this process
    /// (a shared store; nothing to do in memory, where it would not).
    fn save_observation(&self, endpoint: &str, record: &ObservationRecord) {
        let _ = (endpoint, record);
    }
    /// Forgets a kept observation (it ended).
    fn remove_observation(&self, endpoint: &str, token: &[u8]) {
        let _ = (endpoint, token);
    }
    /// The kept observations of an endpoint.
    fn observations_of(&self, endpoint: &str) -> Vec<ObservationRecord> {
        let _ = endpoint;
        Vec::new()
    }
    /// The registrations this server instance owns (its clients last spoke to its
    /// socket), to take up again after a restart; empty for a store of one instance.
    fn owned(&self) -> Vec<ClientEntry> {
        Vec::new()
    }
}

/// A [`RegistrationStore`] in memory: `N` shards of `RwLock<HashMap>` chosen by a hash of
/// the endpoint name.
#[derive(Debug)]
pub struct ShardedRegistrations {
    hasher: RandomState,
    shards: Vec<RwLock<HashMap<String, ClientEntry>>>,
}

impl ShardedRegistrations {
    /// A store with `shards` shards (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..shards.max(1)).map(|_| RwLock::default()).collect(),
        }
    }

    fn shard(&self, endpoint: &str) -> &RwLock<HashMap<String, ClientEntry>> {
        // `shards` is never empty; the modulo keeps the index in range.
        let i = (self.hasher.hash_one(endpoint) % self.shards.len() as u64) as usize;
        &self.shards[i]
    }

    fn write(
        &self,
        endpoint: &str,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ClientEntry>> {
        self.shard(endpoint)
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for ShardedRegistrations {
    /// 16 shards.
    fn default() -> Self {
        Self::new(16)
    }
}

impl RegistrationStore for ShardedRegistrations {
    fn get(&self, endpoint: &str) -> Option<ClientEntry> {
        self.shard(endpoint)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
            .cloned()
    }

    fn all(&self) -> Vec<ClientEntry> {
        let mut out: Vec<ClientEntry> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.registration.endpoint.cmp(&b.registration.endpoint));
        out
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn upsert(&self, registration: Registration) {
        let endpoint = registration.endpoint.clone();
        self.write(&endpoint).insert(
            endpoint,
            ClientEntry {
                registration,
                sleeping: false,
            },
        );
    }

    fn set_sleeping(&self, endpoint: &str, sleeping: bool) {
        if let Some(e) = self.write(endpoint).get_mut(endpoint) {
            e.sleeping = sleeping;
        }
    }

    fn remove(&self, endpoint: &str) -> Option<ClientEntry> {
        self.write(endpoint).remove(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn reg(ep: &str) -> Registration {
        Registration {
            id: format!("id-{ep}"),
            endpoint: ep.into(),
            version: lwm2m_proto::registration::Lwm2mVersion::V1_1,
            lifetime: 60,
            binding: "U".into(),
            queue_mode: false,
            sms: None,
            address: "127.0.0.1:5683".parse().unwrap(),
            links: Default::default(),
            registered_at: Instant::now(),
            last_update: Instant::now(),
            findings: vec![],
            link_notes: vec![],
        }
    }

    #[test]
    fn upsert_sleep_remove_across_shards() {
        let s = ShardedRegistrations::new(4);
        for i in 0..50 {
            s.upsert(reg(&format!("ep-{i:02}")));
        }
        assert_eq!(s.len(), 50);
        let all = s.all();
        assert_eq!(all[0].registration.endpoint, "ep-00");
        assert_eq!(all[49].registration.endpoint, "ep-49");
        s.set_sleeping("ep-07", true);
        assert!(s.get("ep-07").unwrap().sleeping);
        s.upsert(reg("ep-07"));
        assert!(!s.get("ep-07").unwrap().sleeping, "an update wakes it");
        assert!(s.remove("ep-07").is_some());
        assert!(s.get("ep-07").is_none());
        assert_eq!(s.len(), 49);
        s.set_sleeping("nobody", true);
        assert!(s.get("nobody").is_none());
    }
}
