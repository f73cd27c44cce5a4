//! What a relay tells the cluster's directory, and when: a pure state machine in the manner
//! of quinn-proto. It never reads a clock or touches Redis: the shell ([`super::store`]) hands
//! it the relay's rooms and load with the time, asks [`DirectoryCore::poll_write`] for the
//! writes due, reports whether they went through, and sleeps until
//! [`DirectoryCore::poll_timeout`].
//!
//! Every entry it writes carries an expiry (a Redis TTL on the relay's record, an expiry
//! score on its place in each set), renewed by a heartbeat at a third of the TTL. A relay that
//! dies therefore disappears from the directory within its TTL without anyone deleting it, and
//! a Redis that restarted empty is filled again by the next heartbeat, since each heartbeat
//! writes the relay's whole state rather than changes.

use natter_proto::control::{ClusterEdge, MAX_CLUSTER_EDGES};
use natter_proto::invite::{Edge, parse_authority, parse_fingerprint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Redis key of a relay's record (a JSON [`RelayRecord`], with a TTL).
pub fn relay_key(id: &str) -> String {
    format!("natter:relay:{id}")
}

/// Redis key of the set of live relays: member = relay id, score = expiry (Unix ms). Readers
/// ask only for scores in the future, so a dead relay's entry is invisible once it expires
/// (and the next writer sweeps it away).
pub const RELAYS_KEY: &str = "natter:relays";

/// Redis key of the set of relays hosting members of `room` (same scoring as
/// [`RELAYS_KEY`]; the key itself expires with its last member).
pub fn room_key(room: &str) -> String {
    format!("natter:room:{room}")
}

/// Longest relay id, region label or address a record may hold.
const MAX_FIELD: usize = 255;

/// A relay as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayRecord {
    /// Unique and stable across restarts (default: derived from the certificate).
    pub id: String,
    /// `host:port` clients and other relays reach it at.
    pub addr: String,
    /// SHA-256 of its certificate, hex: what an invite or a trunk pins.
    pub fingerprint: String,
    /// Free-form region label (`eu-west`, `shanghai`) for placement.
    pub region: String,
    /// Participants in its rooms right now.
    pub load: u32,
}

/// What the relay tells its clients about the cluster ([`Message::Edges`]): every live relay
/// whose record names a usable address, by id (so the list reads the same on every edge and
/// only changes when the cluster does), at most [`MAX_CLUSTER_EDGES`].
///
/// [`Message::Edges`]: natter_proto::control::Message::Edges
pub fn cluster_edges(records: &[RelayRecord]) -> Vec<ClusterEdge> {
    let mut records: Vec<&RelayRecord> = records.iter().collect();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    records
        .into_iter()
        .filter_map(|r| {
            let (host, port) = parse_authority(&r.addr).ok()?;
            let fingerprint = parse_fingerprint(&r.fingerprint).ok()?;
            Some(ClusterEdge {
                edge: Edge {
                    host,
                    port,
                    fingerprint: Some(fingerprint),
                },
                region: r.region.clone(),
            })
        })
        .take(MAX_CLUSTER_EDGES)
        .collect()
}

/// A record read back from the directory was not one a relay writes. Whatever is in Redis is
/// input like any other: checked, never trusted to be well formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("not a relay record: {0}")]
    Form(String),
    #[error("relay record field {0} is empty, too long or holds control characters")]
    Field(&'static str),
    #[error("relay record fingerprint is not 64 hex digits")]
    Fingerprint,
}

impl RelayRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record always serialises")
    }

    pub fn from_json(text: &str) -> Result<Self, RecordError> {
        let record: Self =
            serde_json::from_str(text).map_err(|e| RecordError::Form(e.to_string()))?;
        record.check()?;
        Ok(record)
    }

    /// Checks what a record read from Redis must hold before anyone dials it.
    pub fn check(&self) -> Result<(), RecordError> {
        let field_ok =
            |s: &str| !s.is_empty() && s.len() <= MAX_FIELD && !s.chars().any(char::is_control);
        for (name, value) in [
            ("id", &self.id),
            ("addr", &self.addr),
            ("region", &self.region),
        ] {
            if !field_ok(value) {
                return Err(RecordError::Field(name));
            }
        }
        if self.fingerprint.len() != 64 || !self.fingerprint.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(RecordError::Fingerprint);
        }
        Ok(())
    }
}

/// One write to the directory. A heartbeat is a batch of them, sent as one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `SET relay_key(id) json PX ttl` and `ZADD RELAYS_KEY expires_at id`.
    Register {
        record: RelayRecord,
        expires_at_ms: u64,
        ttl_ms: u64,
    },
    /// `ZADD room_key(room) expires_at id` and `PEXPIRE room_key(room) ttl`.
    HostRoom {
        room: String,
        expires_at_ms: u64,
        ttl_ms: u64,
    },
    /// `ZREM room_key(room) id`: the last local member left.
    LeaveRoom { room: String },
    /// `ZREMRANGEBYSCORE` on the relay set: entries whose expiry has passed (any relay may
    /// sweep; readers ignore them anyway).
    SweepRelays { before_ms: u64 },
}

/// Where the relay stands with the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Nothing written yet.
    Starting,
    /// The last write went through.
    Up,
    /// The last write failed; retrying. Calls in progress do not notice: media never waits on
    /// the directory.
    Down,
}

/// Retry delays after failed writes (ms): quick at first (a Redis restart takes a moment),
/// never slower than the heartbeat.
const RETRY_MS: [u64; 4] = [250, 500, 1_000, 2_000];

/// The relay's side of the directory.
#[derive(Debug)]
pub struct DirectoryCore {
    record: RelayRecord,
    ttl_ms: u64,
    heartbeat_ms: u64,
    /// Rooms with local members now, as the relay last said.
    wanted: BTreeSet<String>,
    /// Rooms the directory lists us in (as far as we know): what a failed leave left there
    /// stays here until a write removes it.
    listed: BTreeSet<String>,
    /// When the next write is due.
    due_ms: u64,
    /// The rooms a write in flight will list, if one is in flight.
    in_flight: Option<BTreeSet<String>>,
    health: Health,
    failures: usize,
}

impl DirectoryCore {
    /// A relay described by `record` whose entries live `ttl_ms`; the first write is due at
    /// once.
    pub fn new(record: RelayRecord, ttl_ms: u64, now_ms: u64) -> Self {
        let ttl_ms = ttl_ms.max(1_000);
        Self {
            record,
            ttl_ms,
            heartbeat_ms: ttl_ms / 3,
            wanted: BTreeSet::new(),
            listed: BTreeSet::new(),
            due_ms: now_ms,
            in_flight: None,
            health: Health::Starting,
            failures: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// The rooms with local members, as last set.
    pub fn hosted_rooms(&self) -> &BTreeSet<String> {
        &self.wanted
    }

    pub fn record(&self) -> &RelayRecord {
        &self.record
    }

    /// The relay's rooms with members and its participant count at `now_ms`. A room gained or
    /// lost makes a write due at once (another edge may be waiting to trunk to us); a changed
    /// load waits for the heartbeat.
    pub fn set_local(&mut self, rooms: BTreeSet<String>, load: u32, now_ms: u64) {
        self.record.load = load;
        if rooms != self.wanted {
            self.wanted = rooms;
            if self.health != Health::Down {
                self.due_ms = self.due_ms.min(now_ms);
            }
        }
    }

    /// The writes due at `now_ms`, as one batch; `None` when nothing is due or a batch is
    /// still in flight (answer it with [`DirectoryCore::on_written`]).
    pub fn poll_write(&mut self, now_ms: u64) -> Option<Vec<Op>> {
        if self.in_flight.is_some() || now_ms < self.due_ms {
            return None;
        }
        let expires_at_ms = now_ms + self.ttl_ms;
        let mut ops = vec![
            Op::Register {
                record: self.record.clone(),
                expires_at_ms,
                ttl_ms: self.ttl_ms,
            },
            Op::SweepRelays { before_ms: now_ms },
        ];
        ops.extend(self.wanted.iter().map(|room| Op::HostRoom {
            room: room.clone(),
            expires_at_ms,
            ttl_ms: self.ttl_ms,
        }));
        ops.extend(
            self.listed
                .difference(&self.wanted)
                .map(|room| Op::LeaveRoom { room: room.clone() }),
        );
        self.in_flight = Some(self.wanted.clone());
        Some(ops)
    }

    /// The batch from the last [`DirectoryCore::poll_write`] went through (`ok`) or failed,
    /// at `now_ms`.
    pub fn on_written(&mut self, ok: bool, now_ms: u64) {
        let Some(written) = self.in_flight.take() else {
            return;
        };
        if ok {
            self.listed = written;
            self.health = Health::Up;
            self.failures = 0;
            // Rooms that changed while the batch was in flight go out at once.
            self.due_ms = if self.listed == self.wanted {
                now_ms + self.heartbeat_ms
            } else {
                now_ms
            };
        } else {
            // A failed batch may have been applied in part: anything it listed may be there.
            self.listed.extend(written);
            self.health = Health::Down;
            let retry = RETRY_MS[self.failures.min(RETRY_MS.len() - 1)];
            self.failures += 1;
            self.due_ms = now_ms + retry.min(self.heartbeat_ms);
        }
    }

    /// When the shell must call [`DirectoryCore::poll_write`] next (`None` while a batch is in
    /// flight).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.in_flight.is_none().then_some(self.due_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RelayRecord {
        RelayRecord {
            id: "edge-a".into(),
            addr: "a.example.org:4433".into(),
            fingerprint: "ab".repeat(32),
            region: "eu-west".into(),
            load: 0,
        }
    }

    #[test]
    fn clients_hear_of_every_usable_edge_by_id() {
        let b = RelayRecord {
            id: "edge-b".into(),
            addr: "[::1]:4434".into(),
            region: "us-east".into(),
            ..record()
        };
        let unusable = RelayRecord {
            id: "edge-c".into(),
            addr: "no port:x".into(),
            ..record()
        };
        let edges = cluster_edges(&[b, unusable, record()]);
        let seen: Vec<(String, &str)> = edges
            .iter()
            .map(|e| (e.edge.authority(), e.region.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("a.example.org:4433".to_string(), "eu-west"),
                ("[::1]:4434".to_string(), "us-east")
            ]
        );
        assert_eq!(edges[0].edge.fingerprint, Some([0xab; 32]));
    }

    fn rooms(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn hosted(ops: &[Op]) -> Vec<&str> {
        ops.iter()
            .filter_map(|op| match op {
                Op::HostRoom { room, .. } => Some(room.as_str()),
                _ => None,
            })
            .collect()
    }

    fn left(ops: &[Op]) -> Vec<&str> {
        ops.iter()
            .filter_map(|op| match op {
                Op::LeaveRoom { room } => Some(room.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn registers_at_once_then_beats_at_a_third_of_the_ttl() {
        let mut d = DirectoryCore::new(record(), 9_000, 1_000);
        assert_eq!(d.health(), Health::Starting);
        let ops = d.poll_write(1_000).expect("first write due at once");
        assert_eq!(
            ops[0],
            Op::Register {
                record: record(),
                expires_at_ms: 10_000,
                ttl_ms: 9_000
            }
        );
        assert_eq!(ops[1], Op::SweepRelays { before_ms: 1_000 });
        assert_eq!(d.poll_write(1_000), None, "one batch in flight at a time");
        assert_eq!(d.poll_timeout(), None);
        d.on_written(true, 1_010);
        assert_eq!(d.health(), Health::Up);
        assert_eq!(d.poll_timeout(), Some(4_010));
        assert_eq!(d.poll_write(4_009), None);
        let beat = d.poll_write(4_010).unwrap();
        assert!(matches!(
            beat[0],
            Op::Register {
                expires_at_ms: 13_010,
                ..
            }
        ));
    }

    #[test]
    fn a_new_room_goes_out_at_once_and_a_load_change_waits() {
        let mut d = DirectoryCore::new(record(), 9_000, 0);
        d.poll_write(0).unwrap();
        d.on_written(true, 0);
        d.set_local(BTreeSet::new(), 5, 100);
        assert_eq!(
            d.poll_timeout(),
            Some(3_000),
            "load alone waits for the beat"
        );
        d.set_local(rooms(&["friday"]), 6, 200);
        assert_eq!(d.poll_timeout(), Some(200));
        let ops = d.poll_write(200).unwrap();
        assert_eq!(hosted(&ops), ["friday"]);
        assert!(matches!(&ops[0], Op::Register { record, .. } if record.load == 6));
        d.on_written(true, 210);
        // Every beat renews every room.
        let ops = d.poll_write(3_210).unwrap();
        assert_eq!(hosted(&ops), ["friday"]);
        d.on_written(true, 3_210);
        // The last member leaves: withdrawn at once.
        d.set_local(BTreeSet::new(), 0, 4_000);
        let ops = d.poll_write(4_000).unwrap();
        assert_eq!(left(&ops), ["friday"]);
        assert!(hosted(&ops).is_empty());
        d.on_written(true, 4_000);
        assert!(left(&d.poll_write(7_000).unwrap()).is_empty(), "said once");
    }

    #[test]
    fn changes_during_a_write_follow_it_at_once() {
        let mut d = DirectoryCore::new(record(), 9_000, 0);
        d.poll_write(0).unwrap();
        d.set_local(rooms(&["a"]), 1, 5);
        d.on_written(true, 10);
        assert_eq!(d.poll_timeout(), Some(10));
        assert_eq!(hosted(&d.poll_write(10).unwrap()), ["a"]);
    }

    /// Redis down: retries come quickly and back off up to 2 s (never slower than the beat);
    /// a leave that failed is said again; once Redis answers, the whole state is written.
    #[test]
    fn failed_writes_are_retried_and_nothing_is_forgotten() {
        let mut d = DirectoryCore::new(record(), 9_000, 0);
        d.set_local(rooms(&["a", "b"]), 2, 0);
        d.poll_write(0).unwrap();
        d.on_written(true, 0);
        d.set_local(rooms(&["a"]), 1, 100);
        let mut now = 100;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let ops = d.poll_write(now).expect("due");
            assert_eq!(left(&ops), ["b"]);
            d.on_written(false, now);
            assert_eq!(d.health(), Health::Down);
            let next = d.poll_timeout().unwrap();
            waits.push(next - now);
            now = next;
        }
        assert_eq!(waits, [250, 500, 1_000, 2_000, 2_000, 2_000]);
        let ops = d.poll_write(now).unwrap();
        assert_eq!((hosted(&ops), left(&ops)), (vec!["a"], vec!["b"]));
        d.on_written(true, now);
        assert_eq!(d.health(), Health::Up);
        assert_eq!(d.poll_timeout(), Some(now + 3_000));
        assert!(left(&d.poll_write(now + 3_000).unwrap()).is_empty());
    }

    #[test]
    fn records_from_the_directory_are_checked() {
        let r = record();
        assert_eq!(RelayRecord::from_json(&r.to_json()), Ok(r.clone()));
        let bad_fp = RelayRecord {
            fingerprint: "zz".repeat(32),
            ..r.clone()
        };
        assert_eq!(
            RelayRecord::from_json(&bad_fp.to_json()),
            Err(RecordError::Fingerprint)
        );
        let bad_id = RelayRecord {
            id: "a\nb".into(),
            ..r.clone()
        };
        assert_eq!(
            RelayRecord::from_json(&bad_id.to_json()),
            Err(RecordError::Field("id"))
        );
        let long = RelayRecord {
            region: "x".repeat(300),
            ..r
        };
        assert_eq!(
            RelayRecord::from_json(&long.to_json()),
            Err(RecordError::Field("region"))
        );
        assert!(matches!(
            RelayRecord::from_json("{}"),
            Err(RecordError::Form(_))
        ));
        assert!(matches!(
            RelayRecord::from_json("not json"),
            Err(RecordError::Form(_))
        ));
    }
}
