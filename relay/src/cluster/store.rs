//! The directory's Redis shell: carries out what [`DirectoryCore`] decides, on a task of its
//! own, and reads the directory back for whoever asks (other relays, tests, tools).
//!
//! Nothing here is on the media path. Every Redis call has a deadline, and a failure only
//! makes the core retry later: a call in progress never waits on Redis, and a relay whose
//! Redis is down keeps serving its rooms.

use super::directory::{DirectoryCore, Health, Op, RELAYS_KEY, RelayRecord, relay_key, room_key};
use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Longest wait for Redis to accept a connection or answer a batch.
const REDIS_DEADLINE: Duration = Duration::from_secs(1);

/// Most relays or rooms a read returns: a directory is not a place to page through millions,
/// and a corrupted one must not make a relay allocate without bound.
const MAX_READ: usize = 10_000;

/// A connection to the directory, made on first use and again after any failure.
pub struct Store {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
}

/// Why a directory call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("directory: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("directory: no answer within {} s", REDIS_DEADLINE.as_secs())]
    Timeout,
}

impl Store {
    /// `url`: `redis://[:password@]host:port[/db]` or `redis+unix:///path/to/redis.sock`.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: None,
        })
    }

    async fn conn(&mut self) -> Result<&mut MultiplexedConnection, StoreError> {
        if self.conn.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(REDIS_DEADLINE))
                .set_response_timeout(Some(REDIS_DEADLINE));
            let conn = tokio::time::timeout(
                REDIS_DEADLINE,
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|_| StoreError::Timeout)??;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just made"))
    }

    /// Runs `pipe` with the deadline; a failed connection is dropped, to be made afresh.
    async fn run<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let conn = self.conn().await?;
        let result = match tokio::time::timeout(REDIS_DEADLINE, pipe.query_async(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Writes one batch of the core's ops for relay `id`, atomically (MULTI/EXEC).
    pub async fn write(&mut self, id: &str, ops: &[Op]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for op in ops {
            match op {
                Op::Register {
                    record,
                    expires_at_ms,
                    ttl_ms,
                } => {
                    pipe.cmd("SET")
                        .arg(relay_key(id))
                        .arg(record.to_json())
                        .arg("PX")
                        .arg(*ttl_ms)
                        .ignore();
                    pipe.cmd("ZADD")
                        .arg(RELAYS_KEY)
                        .arg(*expires_at_ms)
                        .arg(id)
                        .ignore();
                }
                Op::HostRoom {
                    room,
                    expires_at_ms,
                    ttl_ms,
                } => {
                    pipe.cmd("ZADD")
                        .arg(room_key(room))
                        .arg(*expires_at_ms)
                        .arg(id)
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(room_key(room))
                        .arg(*ttl_ms)
                        .ignore();
                }
                Op::LeaveRoom { room } => {
                    pipe.cmd("ZREM").arg(room_key(room)).arg(id).ignore();
                }
                Op::SweepRelays { before_ms } => {
                    pipe.cmd("ZREMRANGEBYSCORE")
                        .arg(RELAYS_KEY)
                        .arg("-inf")
                        .arg(format!("({before_ms}"))
                        .ignore();
                }
            }
        }
        self.run::<()>(&pipe).await
    }

    /// Removes relay `id` and its places in `rooms` (a graceful stop: drained edges leave the
    /// directory at once instead of after their TTL).
    pub async fn withdraw(&mut self, id: &str, rooms: &BTreeSet<String>) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(relay_key(id)).ignore();
        pipe.cmd("ZREM").arg(RELAYS_KEY).arg(id).ignore();
        for room in rooms {
            pipe.cmd("ZREM").arg(room_key(room)).arg(id).ignore();
        }
        self.run::<()>(&pipe).await
    }

    /// Ids whose entry in the set at `key` has not expired at `now_ms`.
    async fn live_ids(&mut self, key: &str, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg(now_ms)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_READ);
        let (ids,): (Vec<String>,) = self.run(&pipe).await?;
        Ok(ids)
    }

    /// Every live relay at `now_ms` (Unix ms) whose record is well formed; malformed ones are
    /// skipped with a warning.
    pub async fn relays(&mut self, now_ms: u64) -> Result<Vec<RelayRecord>, StoreError> {
        let ids = self.live_ids(RELAYS_KEY, now_ms).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let keys: Vec<String> = ids.iter().map(|id| relay_key(id)).collect();
        pipe.cmd("MGET").arg(keys);
        let (texts,): (Vec<Option<String>>,) = self.run(&pipe).await?;
        Ok(texts
            .into_iter()
            .flatten()
            .filter_map(|text| match RelayRecord::from_json(&text) {
                Ok(record) => Some(record),
                Err(e) => {
                    warn!(error = %e, "skipping a malformed relay record in the directory");
                    None
                }
            })
            .collect())
    }

    /// For each of `rooms`, which of the live `relays` host members of it at `now_ms`.
    pub async fn peers(
        &mut self,
        rooms: &BTreeSet<String>,
        relays: &[RelayRecord],
        now_ms: u64,
    ) -> Result<BTreeMap<String, Vec<RelayRecord>>, StoreError> {
        let mut found = BTreeMap::new();
        for room in rooms {
            let ids = self.room_relays(room, now_ms).await?;
            let hosting = relays
                .iter()
                .filter(|r| ids.contains(&r.id))
                .cloned()
                .collect();
            found.insert(room.clone(), hosting);
        }
        Ok(found)
    }

    /// Ids of the live relays hosting members of `room` at `now_ms`.
    pub async fn room_relays(
        &mut self,
        room: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        self.live_ids(&room_key(room), now_ms).await
    }
}

/// Where the directory task reports, after each write, the relays hosting each of this
/// relay's rooms (the mesh opens trunks from it).
pub type PeersFeed = Box<dyn Fn(BTreeMap<String, Vec<RelayRecord>>) + Send + Sync>;

/// Where the directory task reports, after each write, every live relay of the cluster (the
/// relay tells its clients, who move to another edge when theirs fails).
pub type EdgesFeed = Box<dyn Fn(Vec<RelayRecord>) + Send + Sync>;

/// What the directory task reads back after each write, and who gets it.
#[derive(Default)]
pub struct Feeds {
    pub peers: Option<PeersFeed>,
    pub edges: Option<EdgesFeed>,
}

/// What the relay's shell gives the directory task: its rooms with members and its load, read
/// from the relay's core when the task asks.
pub type LocalState = Box<dyn Fn() -> (BTreeSet<String>, u32) + Send + Sync>;

/// The running directory task.
pub struct DirectoryHandle {
    health: Arc<Mutex<Health>>,
    task: tokio::task::JoinHandle<Store>,
    stop: Arc<Notify>,
    id: String,
}

impl DirectoryHandle {
    /// Starts keeping `record` (and the rooms `local` reports) in the directory at `store`,
    /// entries living `ttl`. The relay pokes `changed` when a room gains its first or loses
    /// its last local member, so that goes out at once rather than at the next heartbeat.
    pub fn spawn(
        store: Store,
        record: RelayRecord,
        ttl: Duration,
        local: LocalState,
        changed: Arc<Notify>,
        feeds: Feeds,
    ) -> Self {
        let stop = Arc::new(Notify::new());
        let health = Arc::new(Mutex::new(Health::Starting));
        let id = record.id.clone();
        let core = DirectoryCore::new(record, ttl.as_millis() as u64, crate::server::unix_ms());
        let task = tokio::spawn(run(
            store,
            core,
            local,
            feeds,
            changed,
            stop.clone(),
            health.clone(),
        ));
        Self {
            health,
            task,
            stop,
            id,
        }
    }

    pub fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the heartbeat and removes this relay from the directory (best effort, within the
    /// Redis deadline): other edges and new clients stop choosing it at once.
    pub async fn withdraw(self, rooms: &BTreeSet<String>) {
        self.stop.notify_one();
        if let Ok(mut store) = self.task.await
            && let Err(e) = store.withdraw(&self.id, rooms).await
        {
            warn!(error = %e, "could not withdraw from the directory; its entries expire by themselves");
        }
    }
}

/// After a write: the live relays for the clients, and those hosting our rooms for the mesh.
async fn read_back(store: &mut Store, core: &DirectoryCore, feeds: &Feeds) {
    if feeds.peers.is_none() && feeds.edges.is_none() {
        return;
    }
    let now = crate::server::unix_ms();
    let relays = match store.relays(now).await {
        Ok(relays) => relays,
        Err(e) => return debug!(error = %e, "could not read the live relays"),
    };
    if let Some(feed) = &feeds.peers {
        match store.peers(core.hosted_rooms(), &relays, now).await {
            Ok(found) => feed(found),
            Err(e) => debug!(error = %e, "could not read the rooms' relays"),
        }
    }
    if let Some(feed) = &feeds.edges {
        feed(relays);
    }
}

async fn run(
    mut store: Store,
    mut core: DirectoryCore,
    local: LocalState,
    feeds: Feeds,
    changed: Arc<Notify>,
    stop: Arc<Notify>,
    health: Arc<Mutex<Health>>,
) -> Store {
    loop {
        let now = crate::server::unix_ms();
        let (rooms, load) = local();
        core.set_local(rooms, load, now);
        if let Some(ops) = core.poll_write(now) {
            let id = core.record().id.clone();
            let result = store.write(&id, &ops).await;
            if result.is_ok() {
                read_back(&mut store, &core, &feeds).await;
            }
            let before = core.health();
            core.on_written(result.is_ok(), crate::server::unix_ms());
            match (before, core.health(), result) {
                (Health::Down, Health::Up, _) => info!("directory reachable again; registered"),
                (Health::Starting, Health::Up, _) => info!(id = %id, "registered in the directory"),
                (Health::Starting | Health::Up, Health::Down, Err(e)) => {
                    warn!(error = %e, "directory unreachable; calls go on, retrying")
                }
                _ => {}
            }
            *health.lock().unwrap_or_else(|p| p.into_inner()) = core.health();
        }
        let Some(due) = core.poll_timeout() else {
            continue;
        };
        let wait = Duration::from_millis(due.saturating_sub(crate::server::unix_ms()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed.notified() => {}
            _ = stop.notified() => return store,
        }
    }
}
