//! The stores in Redis (`serve --store redis://HOST:PORT/DB`), shared by every `serve`
//! instance of a cluster: registrations (expired by Redis), security credentials with
//! their PSK-identity index, and bootstrap configurations.
//!
//! Keys (all under `lwm2m:`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `reg:{endpoint}` | hash `data`, `owner`, `sleeping` | the registration (JSON), the instance whose socket the client last spoke to, queue-mode sleep; expires with the registration's lifetime |
//! | `regid:{id}` | string | the endpoint of a registration id; expires with it |
//! | `regs` | sorted set | endpoints by expiry (Unix ms): listing and counting, swept of expired members by any instance on every read |
//! | `sec` | hash | endpoint → credentials (JSON, **with the PSK key**: Redis must be protected like the key files) |
//! | `psk` | hash | PSK identity → endpoint |
//! | `bs:ep`, `bs:pat` | hash | endpoint / pattern → bootstrap configuration (YAML) |
//! | `bs:version` | counter | bumped on every bootstrap change: instances reload their copy when it moves |
//!
//! The store traits are synchronous (a DTLS handshake looks a key up in the middle of the
//! machine's work): calls block on a pooled connection to Redis, one round trip each. The
//! registration writes of the LwM2M Server driver are queued and sent in one pipeline per
//! batch of datagrams, before the answers leave ([`RegistrationStore::flush`]); reads send
//! what is queued first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::codec::link::{LinkNote, RegistrationLinks};
use lwm2m_proto::registration::{Lwm2mVersion, RegistrationFinding};
use lwm2m_proto::server::{ObservationRecord, Registration};
use redis::{Connection, Script};

use super::{
    BootstrapDoc, BootstrapMaps, BootstrapStore, ConfigKey, SecurityInfo, SecurityStore, StoreError,
};
use crate::registrations::{ClientEntry, RegistrationStore};

/// The prefix of every key.
pub const PREFIX: &str = "lwm2m:";

/// How long a Redis call may take before it fails.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::Redis {
        reason: e.to_string(),
    }
}

/// A Redis server: the client and a pool of blocking connections.
pub struct RedisConnection {
    client: redis::Client,
    pool: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field(
                "server",
                &self.client.get_connection_info().addr().to_string(),
            )
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Connects to `url` (`redis://HOST:PORT/DB`) and checks the server answers.
    pub fn open(url: &str) -> Result<Arc<Self>, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Invalid {
            what: "Redis URL",
            reason: format!("{url:?}: {e}"),
        })?;
        let me = Arc::new(Self {
            client,
            pool: Mutex::new(Vec::new()),
        });
        me.with(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(me)
    }

    /// The client (for asynchronous connections and pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Runs `f` on a pooled connection; a connection that failed is dropped.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut con = match pooled {
            Some(c) => c,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(IO_TIMEOUT)
                    .map_err(redis_error)?;
                c.set_read_timeout(Some(IO_TIMEOUT)).map_err(redis_error)?;
                c.set_write_timeout(Some(IO_TIMEOUT)).map_err(redis_error)?;
                c
            }
        };
        let result = f(&mut con);
        match &result {
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {}
            _ => self
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(con),
        }
        result.map_err(redis_error)
    }
}

fn key(parts: &[&str]) -> String {
    let mut k = String::from(PREFIX);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(':');
        }
        k.push_str(p);
    }
    k
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time of a monotonic instant (now: both clocks read once per call).
fn wall_of(at: Instant, now: Instant, wall_now: SystemTime) -> SystemTime {
    if at <= now {
        wall_now.checked_sub(now - at).unwrap_or(UNIX_EPOCH)
    } else {
        wall_now + (at - now)
    }
}

/// The monotonic instant of a wall-clock time.
fn instant_of(wall: SystemTime, now: Instant, wall_now: SystemTime) -> Instant {
    match wall_now.duration_since(wall) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(ahead) => now + ahead.duration(),
    }
}

/// A registration as Redis keeps it: the instants as Unix milliseconds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredRegistration {
    id: String,
    endpoint: String,
    version: Lwm2mVersion,
    lifetime: u32,
    binding: String,
    queue_mode: bool,
    sms: Option<String>,
    address: SocketAddr,
    links: RegistrationLinks,
    registered_at_ms: u64,
    last_update_ms: u64,
    findings: Vec<RegistrationFinding>,
    link_notes: Vec<LinkNote>,
}

impl StoredRegistration {
    fn of(r: &Registration, now: Instant, wall_now: SystemTime) -> Self {
        Self {
            id: r.id.clone(),
            endpoint: r.endpoint.clone(),
            version: r.version,
            lifetime: r.lifetime,
            binding: r.binding.clone(),
            queue_mode: r.queue_mode,
            sms: r.sms.clone(),
            address: r.address,
            links: r.links.clone(),
            registered_at_ms: unix_ms(wall_of(r.registered_at, now, wall_now)),
            last_update_ms: unix_ms(wall_of(r.last_update, now, wall_now)),
            findings: r.findings.clone(),
            link_notes: r.link_notes.clone(),
        }
    }

    fn registration(self, now: Instant, wall_now: SystemTime) -> Registration {
        let at = |ms: u64| instant_of(UNIX_EPOCH + Duration::from_millis(ms), now, wall_now);
        Registration {
            id: self.id,
            endpoint: self.endpoint,
            version: self.version,
            lifetime: self.lifetime,
            binding: self.binding,
            queue_mode: self.queue_mode,
            sms: self.sms,
            address: self.address,
            links: self.links,
            registered_at: at(self.registered_at_ms),
            last_update: at(self.last_update_ms),
            findings: self.findings,
            link_notes: self.link_notes,
        }
    }

    fn expires_ms(&self) -> u64 {
        self.last_update_ms + u64::from(self.lifetime) * 1000
    }
}

/// A queued registration write.
enum Write {
    Upsert(Box<StoredRegistration>),
    Sleeping(String, bool),
    Observation(String, ObservationRecord),
    Unobserve(String, Vec<u8>),
}

/// Upsert: KEYS reg, regid, regs, obs; ARGV data, owner, ttl ms, expiry ms, endpoint,
/// release channel prefix, registration id. Tells the previous owner instance (if another)
/// to let the registration go; a new registration (another id) drops the observations of
/// the old one.
const UPSERT: &str = r"
local prev = redis.call('HGET', KEYS[1], 'owner')
local previd = redis.call('HGET', KEYS[1], 'id')
if previd and previd ~= ARGV[7] then redis.call('DEL', KEYS[4]) end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'owner', ARGV[2], 'sleeping', '0', 'id', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
if prev and prev ~= ARGV[2] then
  redis.call('PUBLISH', ARGV[6] .. prev, ARGV[5])
end
return 1
";

/// Remove, if this instance owns it: KEYS reg, regs, obs; ARGV owner, endpoint, regid
/// prefix.
const REMOVE: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return false end
local d = redis.call('HGET', KEYS[1], 'data')
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[2])
if d then
  local ok, r = pcall(cjson.decode, d)
  if ok and type(r) == 'table' and r['id'] then redis.call('DEL', ARGV[3] .. r['id']) end
end
return d
";

/// An observation, if the registration exists: KEYS reg, obs; ARGV token (hex), JSON.
const OBSERVE: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
";

/// Sleep flag, if the registration exists: KEYS reg; ARGV flag.
const SLEEPING: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'sleeping', ARGV[1]) end
return 1
";

/// The registrations of a cluster in Redis. Each registration carries its owner: the
/// instance (`instance`) whose socket the client last spoke to.
pub struct RedisRegistrations {
    redis: Arc<RedisConnection>,
    instance: String,
    queued: Mutex<Vec<Write>>,
    remove: Script,
}

impl std::fmt::Debug for RedisRegistrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistrations")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// The pub/sub channel where an instance hears which endpoints another one took over.
pub fn release_channel(instance: &str) -> String {
    key(&["release", instance])
}

impl RedisRegistrations {
    /// The registrations in `redis`, written by the instance named `instance`.
    pub fn new(redis: Arc<RedisConnection>, instance: impl Into<String>) -> Self {
        Self {
            redis,
            instance: instance.into(),
            queued: Mutex::new(Vec::new()),
            remove: Script::new(REMOVE),
        }
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The instance that owns an endpoint's registration (whose socket it last spoke to).
    pub fn owner(&self, endpoint: &str) -> Result<Option<String>, StoreError> {
        self.flush();
        self.redis.with(|c| {
            redis::cmd("HGET")
                .arg(key(&["reg", endpoint]))
                .arg("owner")
                .query(c)
        })
    }

    fn entry(fields: (Option<String>, Option<String>)) -> Option<ClientEntry> {
        let (data, sleeping) = fields;
        let stored: StoredRegistration = match serde_json::from_str(&data?) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("Redis: a registration that does not decode: {e}");
                return None;
            }
        };
        Some(ClientEntry {
            registration: stored.registration(Instant::now(), SystemTime::now()),
            sleeping: sleeping.as_deref() == Some("1"),
        })
    }

    fn try_get(&self, endpoint: &str) -> Result<Option<ClientEntry>, StoreError> {
        self.flush();
        let fields = self.redis.with(|c| {
            redis::cmd("HMGET")
                .arg(key(&["reg", endpoint]))
                .arg("data")
                .arg("sleeping")
                .query(c)
        })?;
        Ok(Self::entry(fields))
    }

    /// The registration with this id (the one an Update names), if still alive.
    pub fn try_by_id(&self, id: &str) -> Result<Option<ClientEntry>, StoreError> {
        self.flush();
        let endpoint: Option<String> = self
            .redis
            .with(|c| redis::cmd("GET").arg(key(&["regid", id])).query(c))?;
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        Ok(self.try_get(&endpoint)?.filter(|e| e.registration.id == id))
    }

    /// Sweeps expired members of the index, then lists the live endpoints.
    fn swept(&self, c: &mut Connection) -> redis::RedisResult<Vec<String>> {
        let now = unix_ms(SystemTime::now());
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(key(&["regs"]))
            .arg("-inf")
            .arg(now)
            .query::<()>(c)?;
        redis::cmd("ZRANGE")
            .arg(key(&["regs"]))
            .arg(0)
            .arg(-1)
            .query(c)
    }

    fn try_all(&self) -> Result<Vec<ClientEntry>, StoreError> {
        self.flush();
        let endpoints = self.redis.with(|c| self.swept(c))?;
        let mut out = Vec::with_capacity(endpoints.len());
        for chunk in endpoints.chunks(1000) {
            let rows: Vec<(Option<String>, Option<String>)> = self.redis.with(|c| {
                let mut pipe = redis::pipe();
                for ep in chunk {
                    pipe.cmd("HMGET")
                        .arg(key(&["reg", ep]))
                        .arg("data")
                        .arg("sleeping");
                }
                pipe.query(c)
            })?;
            out.extend(rows.into_iter().filter_map(Self::entry));
        }
        out.sort_by(|a, b| a.registration.endpoint.cmp(&b.registration.endpoint));
        Ok(out)
    }

    fn try_len(&self) -> Result<usize, StoreError> {
        self.flush();
        self.redis.with(|c| {
            let now = unix_ms(SystemTime::now());
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(key(&["regs"]))
                .arg("-inf")
                .arg(now)
                .query::<()>(c)?;
            redis::cmd("ZCARD").arg(key(&["regs"])).query(c)
        })
    }

    fn try_flush(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let now_ms = unix_ms(SystemTime::now());
        let release = release_channel("");
        self.redis.with(|c| {
            let mut pipe = redis::pipe();
            for w in &writes {
                match w {
                    Write::Upsert(s) => {
                        let expires = s.expires_ms();
                        let ttl = expires.saturating_sub(now_ms).max(1);
                        let data = serde_json::to_string(s).unwrap_or_default();
                        pipe.cmd("EVAL")
                            .arg(UPSERT)
                            .arg(4)
                            .arg(key(&["reg", &s.endpoint]))
                            .arg(key(&["regid", &s.id]))
                            .arg(key(&["regs"]))
                            .arg(key(&["obs", &s.endpoint]))
                            .arg(data)
                            .arg(&self.instance)
                            .arg(ttl)
                            .arg(expires)
                            .arg(&s.endpoint)
                            .arg(&release)
                            .arg(&s.id)
                            .ignore();
                    }
                    Write::Observation(ep, record) => {
                        let json = serde_json::to_string(record).unwrap_or_default();
                        // Only while the registration lives, and with its expiry.
                        pipe.cmd("EVAL")
                            .arg(OBSERVE)
                            .arg(2)
                            .arg(key(&["reg", ep]))
                            .arg(key(&["obs", ep]))
                            .arg(crate::store::hex(&record.token))
                            .arg(json)
                            .ignore();
                    }
                    Write::Unobserve(ep, token) => {
                        pipe.cmd("HDEL")
                            .arg(key(&["obs", ep]))
                            .arg(crate::store::hex(token))
                            .ignore();
                    }
                    Write::Sleeping(ep, sleeping) => {
                        pipe.cmd("EVAL")
                            .arg(SLEEPING)
                            .arg(1)
                            .arg(key(&["reg", ep]))
                            .arg(if *sleeping { "1" } else { "0" })
                            .ignore();
                    }
                }
            }
            pipe.query::<()>(c)
        })
    }

    fn try_remove(&self, endpoint: &str) -> Result<Option<ClientEntry>, StoreError> {
        self.flush();
        let data: Option<String> = self.redis.with(|c| {
            self.remove
                .key(key(&["reg", endpoint]))
                .key(key(&["regs"]))
                .key(key(&["obs", endpoint]))
                .arg(&self.instance)
                .arg(endpoint)
                .arg(key(&["regid", ""]))
                .invoke(c)
        })?;
        Ok(Self::entry((data, None)))
    }

    fn try_observations(&self, endpoint: &str) -> Result<Vec<ObservationRecord>, StoreError> {
        self.flush();
        let all: BTreeMap<String, String> = self
            .redis
            .with(|c| redis::cmd("HGETALL").arg(key(&["obs", endpoint])).query(c))?;
        Ok(all
            .values()
            .filter_map(|j| match serde_json::from_str(j) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(
                        "Redis: an observation of {endpoint:?} that does not decode: {e}"
                    );
                    None
                }
            })
            .collect())
    }

    fn try_owned(&self) -> Result<Vec<ClientEntry>, StoreError> {
        self.flush();
        let endpoints = self.redis.with(|c| self.swept(c))?;
        let mut out = Vec::new();
        for chunk in endpoints.chunks(1000) {
            let rows: Vec<(Option<String>, Option<String>, Option<String>)> =
                self.redis.with(|c| {
                    let mut pipe = redis::pipe();
                    for ep in chunk {
                        pipe.cmd("HMGET")
                            .arg(key(&["reg", ep]))
                            .arg("data")
                            .arg("sleeping")
                            .arg("owner");
                    }
                    pipe.query(c)
                })?;
            out.extend(
                rows.into_iter()
                    .filter(|(_, _, owner)| owner.as_deref() == Some(self.instance.as_str()))
                    .filter_map(|(data, sleeping, _)| Self::entry((data, sleeping))),
            );
        }
        Ok(out)
    }

    fn queue(&self, w: Write) {
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(w);
    }
}

fn logged<T>(what: &str, r: Result<T, StoreError>, otherwise: T) -> T {
    r.unwrap_or_else(|e| {
        tracing::error!("Redis registrations: {what}: {e}");
        otherwise
    })
}

impl RegistrationStore for RedisRegistrations {
    fn get(&self, endpoint: &str) -> Option<ClientEntry> {
        logged("get", self.try_get(endpoint), None)
    }

    fn all(&self) -> Vec<ClientEntry> {
        logged("list", self.try_all(), Vec::new())
    }

    fn len(&self) -> usize {
        logged("count", self.try_len(), 0)
    }

    fn upsert(&self, registration: Registration) {
        let stored = StoredRegistration::of(&registration, Instant::now(), SystemTime::now());
        self.queue(Write::Upsert(Box::new(stored)));
    }

    fn set_sleeping(&self, endpoint: &str, sleeping: bool) {
        self.queue(Write::Sleeping(endpoint.to_owned(), sleeping));
    }

    /// Removes the registration if this instance owns it: another instance that took the
    /// client over keeps it (this one's copy expiring or ending is not the client's).
    fn remove(&self, endpoint: &str) -> Option<ClientEntry> {
        logged("remove", self.try_remove(endpoint), None)
    }

    fn flush(&self) {
        let writes = std::mem::take(&mut *self.queued.lock().unwrap_or_else(|p| p.into_inner()));
        logged("write", self.try_flush(writes), ());
    }

    fn by_id(&self, id: &str) -> Option<ClientEntry> {
        logged("look-up by id", self.try_by_id(id), None)
    }

    fn save_observation(&self, endpoint: &str, record: &ObservationRecord) {
        self.queue(Write::Observation(endpoint.to_owned(), record.clone()));
    }

    fn remove_observation(&self, endpoint: &str, token: &[u8]) {
        self.queue(Write::Unobserve(endpoint.to_owned(), token.to_vec()));
    }

    fn observations_of(&self, endpoint: &str) -> Vec<ObservationRecord> {
        logged("observations", self.try_observations(endpoint), Vec::new())
    }

    fn owned(&self) -> Vec<ClientEntry> {
        logged("own registrations", self.try_owned(), Vec::new())
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// Security credentials in Redis. Put: KEYS sec, psk; ARGV endpoint, JSON, identity ('' if
/// none). Refuses an identity another endpoint holds; drops the old identity.
const SEC_PUT: &str = r"
if ARGV[3] ~= '' then
  local owner = redis.call('HGET', KEYS[2], ARGV[3])
  if owner and owner ~= ARGV[1] then return {'taken', owner} end
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local ok, o = pcall(cjson.decode, old)
  if ok and type(o) == 'table' and type(o['credentials']) == 'table' and o['credentials']['identity'] then
    redis.call('HDEL', KEYS[2], o['credentials']['identity'])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[1]) end
return {'ok', old or ''}
";

/// Remove: KEYS sec, psk; ARGV endpoint.
const SEC_REMOVE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return false end
local ok, o = pcall(cjson.decode, old)
if ok and type(o) == 'table' and type(o['credentials']) == 'table' and o['credentials']['identity'] then
  redis.call('HDEL', KEYS[2], o['credentials']['identity'])
end
redis.call('HDEL', KEYS[1], ARGV[1])
return old
";

/// By identity: KEYS sec, psk; ARGV identity.
const SEC_BY_IDENTITY: &str = r"
local ep = redis.call('HGET', KEYS[2], ARGV[1])
if not ep then return false end
return redis.call('HGET', KEYS[1], ep)
";

/// Security credentials (with the PSK-identity index) in Redis, shared by the cluster.
/// The keys are in Redis in clear: protect it like the key files (and never log them).
pub struct RedisSecurityStore {
    redis: Arc<RedisConnection>,
    put: Script,
    remove: Script,
    by_identity: Script,
}

impl std::fmt::Debug for RedisSecurityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSecurityStore").finish_non_exhaustive()
    }
}

fn decode_info(json: Option<String>) -> Result<Option<SecurityInfo>, StoreError> {
    match json.filter(|j| !j.is_empty()) {
        None => Ok(None),
        Some(j) => serde_json::from_str(&j)
            .map(Some)
            .map_err(|e| StoreError::Redis {
                reason: format!("credentials that do not decode: {e}"),
            }),
    }
}

impl RedisSecurityStore {
    /// The credentials in `redis`.
    pub fn new(redis: Arc<RedisConnection>) -> Self {
        Self {
            redis,
            put: Script::new(SEC_PUT),
            remove: Script::new(SEC_REMOVE),
            by_identity: Script::new(SEC_BY_IDENTITY),
        }
    }

    fn try_by_endpoint(&self, endpoint: &str) -> Result<Option<SecurityInfo>, StoreError> {
        let j: Option<String> = self
            .redis
            .with(|c| redis::cmd("HGET").arg(key(&["sec"])).arg(endpoint).query(c))?;
        decode_info(j)
    }

    fn try_by_identity(&self, identity: &str) -> Result<Option<SecurityInfo>, StoreError> {
        let j: Option<String> = self.redis.with(|c| {
            self.by_identity
                .key(key(&["sec"]))
                .key(key(&["psk"]))
                .arg(identity)
                .invoke(c)
        })?;
        decode_info(j)
    }

    fn try_all(&self) -> Result<Vec<SecurityInfo>, StoreError> {
        let all: BTreeMap<String, String> = self
            .redis
            .with(|c| redis::cmd("HGETALL").arg(key(&["sec"])).query(c))?;
        all.into_values()
            .filter_map(|j| decode_info(Some(j)).transpose())
            .collect()
    }
}

impl SecurityStore for RedisSecurityStore {
    fn by_endpoint(&self, endpoint: &str) -> Option<SecurityInfo> {
        self.try_by_endpoint(endpoint).unwrap_or_else(|e| {
            tracing::error!("Redis credentials of {endpoint:?}: {e}");
            None
        })
    }

    fn by_psk_identity(&self, identity: &str) -> Option<SecurityInfo> {
        self.try_by_identity(identity).unwrap_or_else(|e| {
            tracing::error!("Redis credentials by PSK identity: {e}");
            None
        })
    }

    fn put(&self, info: SecurityInfo) -> Result<Option<SecurityInfo>, StoreError> {
        info.validate()?;
        let json = serde_json::to_string(&info).map_err(|e| StoreError::Invalid {
            what: "security info",
            reason: e.to_string(),
        })?;
        let identity = info.psk_identity().unwrap_or_default().to_owned();
        let (status, detail): (String, String) = self.redis.with(|c| {
            self.put
                .key(key(&["sec"]))
                .key(key(&["psk"]))
                .arg(&info.endpoint)
                .arg(json)
                .arg(&identity)
                .invoke(c)
        })?;
        if status == "taken" {
            return Err(StoreError::IdentityTaken {
                identity,
                owner: detail,
            });
        }
        decode_info(Some(detail))
    }

    fn remove(&self, endpoint: &str) -> Result<Option<SecurityInfo>, StoreError> {
        let old: Option<String> = self.redis.with(|c| {
            self.remove
                .key(key(&["sec"]))
                .key(key(&["psk"]))
                .arg(endpoint)
                .invoke(c)
        })?;
        decode_info(old)
    }

    fn all(&self) -> Vec<SecurityInfo> {
        self.try_all().unwrap_or_else(|e| {
            tracing::error!("Redis credentials: {e}");
            Vec::new()
        })
    }
}

/// Bootstrap configurations in Redis. Each instance keeps an indexed copy (the same
/// look-ups as [`super::FileBootstrapStore`]) and reloads it when `bs:version` moved;
/// changes are optimistic transactions on that counter (WATCH), checked against the
/// latest configurations.
pub struct RedisBootstrapStore {
    redis: Arc<RedisConnection>,
    cache: Mutex<(Option<u64>, Arc<BootstrapMaps>)>,
}

impl std::fmt::Debug for RedisBootstrapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBootstrapStore")
            .finish_non_exhaustive()
    }
}

type Hashes = (BTreeMap<String, String>, BTreeMap<String, String>);

impl RedisBootstrapStore {
    /// The configurations in `redis`.
    pub fn new(redis: Arc<RedisConnection>) -> Self {
        Self {
            redis,
            cache: Mutex::new((None, Arc::default())),
        }
    }

    fn decode(hashes: Hashes) -> Result<BootstrapMaps, StoreError> {
        let parse = |name: &str, yaml: &str| {
            serde_yaml::from_str::<BootstrapConfig>(yaml).map_err(|e| StoreError::Redis {
                reason: format!("bootstrap configuration {name:?} does not decode: {e}"),
            })
        };
        let mut doc = BootstrapDoc::default();
        for (name, yaml) in &hashes.0 {
            doc.endpoints.insert(name.clone(), parse(name, yaml)?);
        }
        for (name, yaml) in &hashes.1 {
            doc.patterns.insert(name.clone(), parse(name, yaml)?);
        }
        BootstrapMaps::new(doc, |_, _| Ok(()))
    }

    fn load(c: &mut Connection) -> redis::RedisResult<(Option<u64>, Hashes)> {
        let (version, endpoints, patterns) = redis::pipe()
            .cmd("GET")
            .arg(key(&["bs", "version"]))
            .cmd("HGETALL")
            .arg(key(&["bs", "ep"]))
            .cmd("HGETALL")
            .arg(key(&["bs", "pat"]))
            .query(c)?;
        Ok((version, (endpoints, patterns)))
    }

    /// The configurations as of now.
    fn current(&self) -> Result<Arc<BootstrapMaps>, StoreError> {
        let version: Option<u64> = self
            .redis
            .with(|c| redis::cmd("GET").arg(key(&["bs", "version"])).query(c))?;
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.0 == version && version.is_some() {
                return Ok(cache.1.clone());
            }
        }
        let (version, hashes) = self.redis.with(Self::load)?;
        let maps = Arc::new(Self::decode(hashes)?);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = (version, maps.clone());
        Ok(maps)
    }

    fn read<T>(&self, f: impl FnOnce(&BootstrapMaps) -> T, otherwise: T) -> T {
        match self.current() {
            Ok(maps) => f(&maps),
            Err(e) => {
                tracing::error!("Redis bootstrap configurations: {e}");
                otherwise
            }
        }
    }

    /// Applies `change` to the latest configurations and writes the entry it names,
    /// atomically against other instances' changes.
    fn change<T>(
        &self,
        key_of: &ConfigKey,
        change: impl Fn(&mut BootstrapMaps) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (hash, name) = match key_of {
            ConfigKey::Endpoint(e) => ("ep", e),
            ConfigKey::Pattern(p) => ("pat", p),
        };
        for _ in 0..32 {
            let outcome = self.redis.with(|c| {
                redis::cmd("WATCH")
                    .arg(key(&["bs", "version"]))
                    .query::<()>(c)?;
                let (_, hashes) = Self::load(c)?;
                let mut maps = match Self::decode(hashes) {
                    Ok(m) => m,
                    Err(e) => {
                        redis::cmd("UNWATCH").query::<()>(c)?;
                        return Ok(Err(e));
                    }
                };
                let result = match change(&mut maps) {
                    Ok(r) => r,
                    Err(e) => {
                        redis::cmd("UNWATCH").query::<()>(c)?;
                        return Ok(Err(e));
                    }
                };
                let mut pipe = redis::pipe();
                pipe.atomic();
                match maps.get(key_of) {
                    Some(config) => {
                        let yaml = serde_yaml::to_string(config).unwrap_or_default();
                        pipe.cmd("HSET")
                            .arg(key(&["bs", hash]))
                            .arg(name)
                            .arg(yaml)
                            .ignore();
                    }
                    None => {
                        pipe.cmd("HDEL").arg(key(&["bs", hash])).arg(name).ignore();
                    }
                }
                pipe.cmd("INCR").arg(key(&["bs", "version"])).ignore();
                let done: Option<()> = pipe.query(c)?;
                Ok(Ok(done.map(|()| result)))
            })?;
            match outcome? {
                Some(r) => return Ok(r),
                // Another instance changed the configurations meanwhile: again.
                None => continue,
            }
        }
        Err(StoreError::Redis {
            reason: "bootstrap configurations kept changing under this change; try again".into(),
        })
    }
}

impl BootstrapStore for RedisBootstrapStore {
    fn lookup(&self, endpoint: &str) -> Option<(ConfigKey, BootstrapConfig)> {
        self.read(|m| m.lookup(endpoint), None)
    }

    fn get(&self, key: &ConfigKey) -> Option<BootstrapConfig> {
        self.read(|m| m.get(key).cloned(), None)
    }

    fn put(&self, key: ConfigKey, config: BootstrapConfig) -> Result<(), StoreError> {
        self.change(&key, |maps| maps.insert(key.clone(), config.clone()))
    }

    fn remove(&self, key: &ConfigKey) -> Result<Option<BootstrapConfig>, StoreError> {
        self.change(key, |maps| Ok(maps.remove(key)))
    }

    fn all(&self) -> Vec<(ConfigKey, BootstrapConfig)> {
        self.read(
            |m| {
                m.doc
                    .endpoints
                    .iter()
                    .map(|(e, c)| (ConfigKey::Endpoint(e.clone()), c.clone()))
                    .chain(
                        m.doc
                            .patterns
                            .iter()
                            .map(|(p, c)| (ConfigKey::Pattern(p.clone()), c.clone())),
                    )
                    .collect()
            },
            Vec::new(),
        )
    }

    fn by_psk_identity(&self, identity: &str) -> Option<SecurityInfo> {
        self.read(|m| m.by_psk_identity(identity), None)
    }
}
