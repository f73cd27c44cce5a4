//! The controller's policy as plain state machines, like the session's `ReconnectPolicy` and
//! the trust-on-first-use verdict (`connect::after_failure`): the user's call controls
//! ([`Controls`]: mute, deafen, push to talk, per-person volume and local mute → what the
//! engine is told) and the call's view-model ([`ViewModel`]: the session's statistics and
//! roster in, the call screen's [`CallView`] out, with the join/leave cue to play, the
//! latency-history samples to keep and whether the picture changed). Neither reads a clock
//! or touches the session: time is passed in, effects come back as values, and the actor
//! (`view.rs`, `actor.rs`) carries them out. The tests below drive them with simulated time.

use super::contract::*;
use crate::engine::EngineStats;
use crate::engine::receive::PeerStats;
use crate::history::Sample;
use crate::transport::control::{CallState, Joined};
use crate::ui::sounds::Cue;
use natter_proto::invite::Invite;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// How often the latency meter and link numbers change on screen (the plot's history is
/// sampled twice as often).
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// How often the latency history takes a sample per person.
pub const HISTORY_INTERVAL: Duration = Duration::from_millis(500);

/// The window over which "recent loss" is measured.
pub const RECENT_LOSS_WINDOW: Duration = Duration::from_secs(5);

/// What the user set with the call's buttons and sliders.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    pub muted: bool,
    pub deafened: bool,
    /// The push-to-talk key is held.
    pub talking: bool,
    /// Per-person playback volume by name, 0–2 (1 when unset).
    volumes: HashMap<String, f32>,
    /// People muted for us alone, by name.
    local_mutes: HashSet<String>,
}

impl Controls {
    /// Whether the microphone is off: muted, deafened (hearing nothing, you say nothing), or
    /// push to talk without the key held.
    pub fn effective_mute(&self, push_to_talk: bool) -> bool {
        self.muted || self.deafened || (push_to_talk && !self.talking)
    }

    pub fn set_volume(&mut self, name: String, volume: f32) {
        self.volumes.insert(name, volume.clamp(0.0, 2.0));
    }

    pub fn set_local_mute(&mut self, name: String, muted: bool) {
        if muted {
            self.local_mutes.insert(name);
        } else {
            self.local_mutes.remove(&name);
        }
    }

    pub fn volume(&self, name: &str) -> f32 {
        self.volumes.get(name).copied().unwrap_or(1.0)
    }

    pub fn locally_muted(&self, name: &str) -> bool {
        self.local_mutes.contains(name)
    }

    /// The playback gain for each SSRC in the roster. Volumes are kept by name, so they
    /// survive a rejoin (new SSRCs) and apply to whoever has the name now.
    pub fn gains(&self, state: &CallState) -> Vec<(u32, f32)> {
        state
            .roster
            .values()
            .map(|p| {
                let gain = if self.locally_muted(&p.name) {
                    0.0
                } else {
                    self.volume(&p.name)
                };
                (p.ssrc, gain)
            })
            .collect()
    }
}

/// Everything the view-model reads for one update.
pub struct ViewInput<'a> {
    pub stats: &'a EngineStats,
    pub state: &'a CallState,
    pub joined: &'a Joined,
    /// The audio devices in use (input, output), for a device call.
    pub devices: Option<(String, String)>,
    /// The invite we joined with (for the relay's name and the invite others can use).
    pub invite: Option<&'a Invite>,
    /// The edge the session is on.
    pub edge: Option<&'a crate::session::EdgeChoice>,
    pub controls: &'a Controls,
    pub push_to_talk: bool,
}

/// What one update produced, for the actor to carry out.
pub struct ViewUpdate {
    pub view: CallView,
    /// Someone joined or left (or we arrived): the cue to play, if sounds are on.
    pub cue: Option<Cue>,
    /// Latency-history samples to record: (name, sample).
    pub history: Vec<(String, Sample)>,
    /// Whether the call screen would look different than after the previous update.
    pub changed: bool,
}

/// Per person: the counters at the start of the current loss window, and the loss over the
/// previous window.
#[derive(Debug, Clone, Copy)]
struct LossMark {
    since: Instant,
    received: u64,
    lost: i64,
    loss: f64,
}

/// The call screen's state between updates: who was there (for cues), loss windows, the
/// numbers last published and when, the history clock, and a digest of the last picture.
#[derive(Debug)]
pub struct ViewModel {
    roster_ids: Option<BTreeSet<u64>>,
    loss_marks: HashMap<u32, LossMark>,
    published_stats: HashMap<u32, PeerStats>,
    next_stats: Instant,
    stats_generation: u64,
    history_start: Instant,
    next_history: Instant,
    last_digest: u64,
}

impl ViewModel {
    pub fn new(now: Instant) -> Self {
        Self {
            roster_ids: None,
            loss_marks: HashMap::new(),
            published_stats: HashMap::new(),
            next_stats: now,
            stats_generation: 0,
            history_start: now,
            next_history: now,
            last_digest: 0,
        }
    }

    /// A new call began at `now`: our arrival is cued, loss windows and the history's time
    /// axis start afresh.
    pub fn joined(&mut self, now: Instant) {
        self.roster_ids = None;
        self.loss_marks.clear();
        self.history_start = now;
        self.next_history = now;
    }

    /// The session lost the relay and is rejoining: there is no room to show, and when it is
    /// back the roster is new (our arrival is cued again).
    pub fn reconnecting(&mut self) {
        self.roster_ids = None;
    }

    /// The session is back after a rejoin: loss windows start afresh.
    pub fn rejoined(&mut self) {
        self.loss_marks.clear();
    }

    /// The call ended.
    pub fn left(&mut self) {
        self.roster_ids = None;
    }

    /// Rebuilds the call view at `now`.
    pub fn update(&mut self, input: &ViewInput, now: Instant) -> ViewUpdate {
        let ViewInput {
            stats,
            state,
            joined,
            controls,
            ..
        } = input;
        let me = joined.participant_id;
        let muted = controls.effective_mute(input.push_to_talk);
        let cue = self.roster_cue(state, me);
        let mut participants = Vec::new();
        for p in state.roster.values() {
            let is_me = p.id == me;
            let peer = stats.peers.iter().find(|s| s.ssrc == p.ssrc).cloned();
            let recent_loss = peer.as_ref().map_or(0.0, |ps| self.recent_loss(ps, now));
            let quality = match (&peer, is_me) {
                (_, true) => state.relay_rtt_ms.map_or(LinkQuality::Unknown, |rtt| {
                    LinkQuality::assess(0.0, 0.0, Some(rtt))
                }),
                (Some(ps), false) if ps.packets_received > 0 => {
                    LinkQuality::assess(recent_loss, ps.jitter_ms, ps.rtt_ms)
                }
                _ => LinkQuality::Unknown,
            };
            participants.push(ParticipantView {
                id: p.id,
                ssrc: p.ssrc,
                name: p.name.clone(),
                is_me,
                muted: if is_me { muted } else { p.muted },
                speaking: if is_me {
                    stats.voice_active && !muted
                } else {
                    peer.as_ref().is_some_and(|s| s.speaking)
                },
                volume: controls.volume(&p.name),
                locally_muted: controls.locally_muted(&p.name),
                stats: if is_me { None } else { peer },
                quality,
                recent_loss,
            });
        }
        participants.sort_by_key(|p| (!p.is_me, p.name.to_lowercase(), p.id));
        self.publish_numbers(&mut participants, now);
        let history = self.history_samples(&participants, now);
        let (share_invite, needs_token) = input
            .invite
            .map(|invite| {
                let mut invite = invite.clone();
                invite.room = Some(joined.room.clone());
                let had_token = invite.token.take().is_some();
                (invite.to_string(), had_token)
            })
            .unwrap_or_default();
        let view = CallView {
            room: joined.room.clone(),
            relay: relay_label(input.edge, input.invite, state),
            share_invite,
            needs_token,
            participants,
            relay_rtt_ms: state.relay_rtt_ms,
            engine: EngineStatsView::from(*stats),
            devices: input.devices.clone(),
            chat: state.chat.iter().cloned().collect(),
            chat_count: state.chat_count,
        };
        let digest = visible_digest(&view, self.stats_generation);
        let changed = digest != self.last_digest;
        self.last_digest = digest;
        ViewUpdate {
            view,
            cue,
            history,
            changed,
        }
    }

    /// Join when someone else arrived (or we did), leave when someone else left.
    fn roster_cue(&mut self, state: &CallState, me: u64) -> Option<Cue> {
        let ids: BTreeSet<u64> = state.roster.keys().copied().collect();
        let cue = match &self.roster_ids {
            Some(prev) if prev != &ids => {
                if ids.difference(prev).any(|id| *id != me) {
                    Some(Cue::Join)
                } else if prev.difference(&ids).any(|id| *id != me) {
                    Some(Cue::Leave)
                } else {
                    None
                }
            }
            None => Some(Cue::Join),
            _ => None,
        };
        self.roster_ids = Some(ids);
        cue
    }

    /// The numbers (latency meter, link statistics) are published once a second: readable,
    /// and the window need not redraw ten times a second for digits that flicker. What moves
    /// — speaking, mute, the roster, the microphone level — is published at once.
    fn publish_numbers(&mut self, participants: &mut [ParticipantView], now: Instant) {
        if now >= self.next_stats {
            self.next_stats = now + STATS_INTERVAL;
            self.stats_generation += 1;
            self.published_stats = participants
                .iter()
                .filter_map(|p| p.stats.clone().map(|s| (p.ssrc, s)))
                .collect();
        } else {
            for p in participants {
                if let Some(old) = self.published_stats.get(&p.ssrc) {
                    p.stats = Some(old.clone());
                }
            }
        }
    }

    /// Every [`HISTORY_INTERVAL`], one sample per person whose latency stages are known.
    fn history_samples(
        &mut self,
        participants: &[ParticipantView],
        now: Instant,
    ) -> Vec<(String, Sample)> {
        if now < self.next_history {
            return Vec::new();
        }
        self.next_history = now + HISTORY_INTERVAL;
        let t = now.duration_since(self.history_start).as_secs_f64();
        participants
            .iter()
            .filter_map(|p| {
                let ps = p.stats.as_ref().filter(|s| s.stages.complete)?;
                Some((p.name.clone(), Sample::from_peer(t, ps)))
            })
            .collect()
    }

    /// Loss over the last complete [`RECENT_LOSS_WINDOW`], from the cumulative counters.
    fn recent_loss(&mut self, p: &PeerStats, now: Instant) -> f64 {
        let mark = self.loss_marks.entry(p.ssrc).or_insert(LossMark {
            since: now,
            received: p.packets_received,
            lost: p.packets_lost,
            loss: 0.0,
        });
        if now.duration_since(mark.since) >= RECENT_LOSS_WINDOW {
            let received = p.packets_received.saturating_sub(mark.received) as f64;
            let lost = (p.packets_lost - mark.lost).max(0) as f64;
            let loss = if received + lost > 0.0 {
                lost / (received + lost)
            } else {
                0.0
            };
            *mark = LossMark {
                since: now,
                received: p.packets_received,
                lost: p.packets_lost,
                loss,
            };
        }
        mark.loss
    }
}

/// A hash of what the call screen draws from `view` (the microphone level in 3–6 dB steps),
/// so the controller wakes the UI only when the picture would change.
/// Where the call is, as the header says it: the relay's address, or for a cluster the edge
/// the session chose (with its region, when the relays named one), its round trip, and out
/// of how many.
fn relay_label(
    edge: Option<&crate::session::EdgeChoice>,
    invite: Option<&Invite>,
    state: &CallState,
) -> String {
    let Some(edge) = edge else {
        return invite.map(Invite::authority).unwrap_or_default();
    };
    let at = edge.invite.authority();
    let known = state.edges.len().max(edge.candidates);
    if known <= 1 {
        return at;
    }
    let region = state
        .edges
        .iter()
        .find(|e| e.edge.authority() == at)
        .map(|e| e.region.as_str())
        .filter(|r| !r.is_empty());
    let rtt = state
        .relay_rtt_ms
        .map(|ms| format!(", {ms:.0} ms away"))
        .unwrap_or_default();
    match region {
        Some(region) => format!("edge {region} ({at}){rtt}, nearest of {known}"),
        None => format!("edge {at}{rtt}, nearest of {known}"),
    }
}

fn visible_digest(view: &CallView, stats_generation: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    stats_generation.hash(&mut h);
    for p in &view.participants {
        (p.id, &p.name, p.muted, p.speaking, p.locally_muted).hash(&mut h);
        ((p.volume * 100.0).round() as i32, p.quality as u8).hash(&mut h);
    }
    let e = &view.engine;
    (e.bitrate_bps, e.frame_ms.round() as i64, e.voice_active).hash(&mut h);
    e.device_missing.hash(&mut h);
    // The level meter moves while we speak; below that, 6 dB steps are all it shows.
    let level = if e.voice_active {
        (e.input_level_db / 3.0).round() as i32
    } else {
        (e.input_level_db.max(-60.0) / 6.0).round() as i32
    };
    level.hash(&mut h);
    view.relay_rtt_ms
        .map(|r| (r * 10.0).round() as i64)
        .hash(&mut h);
    (&view.devices, &view.room, &view.relay, view.chat_count).hash(&mut h);
    h.finish()
}

/// Who is in the view, by SSRC and name: when it changes, the gains (kept by name) must be
/// sent to the engine again.
pub fn roster_names(c: &CallView) -> Vec<(u32, String)> {
    c.participants
        .iter()
        .map(|p| (p.ssrc, p.name.clone()))
        .collect()
}

/// The left end of the input level meters (the call's and the microphone test's), dBFS; the
/// right end is full scale. A quiet room sits near the left, a voice around the middle.
pub const METER_FLOOR_DB: f32 = -70.0;

/// Where `db` sits on a level meter, from 0 (its left end) to 1 (full scale).
pub fn meter_fraction(db: f32) -> f32 {
    ((db - METER_FLOOR_DB) / -METER_FLOOR_DB).clamp(0.0, 1.0)
}

/// The microphone test's reading against the voice-activation threshold: what the meter
/// draws and the sentence under it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MicReading {
    pub level_db: f32,
    pub threshold_db: f32,
}

impl MicReading {
    /// Whether voice activation would take this level for a voice (the detector also wants it
    /// clearly above the room's noise, which a steady sound is not for long).
    pub fn above_threshold(&self) -> bool {
        self.level_db > self.threshold_db
    }

    /// One sentence for the user.
    pub fn describe(&self) -> &'static str {
        if self.level_db <= METER_FLOOR_DB {
            "No sound from this microphone. Is it muted or unplugged?"
        } else if self.above_threshold() {
            "Loud enough: voice activation sends this."
        } else {
            "Below the threshold: voice activation stays quiet."
        }
    }
}

/// What the tray icon reflects: whether we are in a call, muted, and chat lines not yet seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrayState {
    /// The room, while in a call.
    pub room: Option<String>,
    pub muted: bool,
    pub unread: u64,
}

/// The mark drawn on the tray icon's corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayBadge {
    /// Unread chat (it asks for attention).
    Unread,
    /// In a call with the microphone off.
    Muted,
    /// In a call.
    InCall,
}

/// How the tray shows a [`TrayState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayLook {
    pub badge: Option<TrayBadge>,
    /// The tray host should draw the eye to it (StatusNotifierItem `NeedsAttention`).
    pub attention: bool,
    /// One line saying all of it.
    pub tooltip: String,
}

impl TrayState {
    /// Unread messages matter most (they need the user), then a muted microphone (easy to
    /// forget), then being in a call.
    pub fn look(&self) -> TrayLook {
        let Some(room) = &self.room else {
            return TrayLook {
                badge: None,
                attention: false,
                tooltip: "Not in a call".into(),
            };
        };
        let mut parts = vec![format!("In {room}")];
        if self.muted {
            parts.push("microphone off".into());
        }
        match self.unread {
            0 => {}
            1 => parts.push("1 new message".into()),
            n => parts.push(format!("{n} new messages")),
        }
        let badge = if self.unread > 0 {
            TrayBadge::Unread
        } else if self.muted {
            TrayBadge::Muted
        } else {
            TrayBadge::InCall
        };
        TrayLook {
            badge: Some(badge),
            attention: self.unread > 0,
            tooltip: parts.join(" · "),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    use crate::latency_stages::LatencyStages;
    use natter_proto::control::Participant;

    pub(in crate::controller) fn person(id: u64, name: &str) -> Participant {
        Participant {
            id,
            ssrc: 0x100 + id as u32,
            name: name.into(),
            muted: false,
        }
    }

    fn room(people: &[Participant]) -> CallState {
        let mut state = CallState::default();
        for p in people {
            state.upsert(p.clone());
        }
        state
    }

    fn heard(p: &Participant, received: u64, lost: i64) -> PeerStats {
        PeerStats {
            ssrc: p.ssrc,
            packets_received: received,
            packets_lost: lost,
            stages: LatencyStages::from_values([1.0; 7], true),
            ..PeerStats::default()
        }
    }

    /// One call of 1 s steps: the actor's update loop without the session.
    struct Call {
        model: ViewModel,
        joined: Joined,
        controls: Controls,
        start: Instant,
    }

    impl Call {
        fn new() -> Self {
            let start = Instant::now();
            Self {
                model: ViewModel::new(start),
                joined: Joined {
                    participant_id: 1,
                    ssrc: 0x101,
                    room: "lobby".into(),
                },
                controls: Controls::default(),
                start,
            }
        }

        fn at(&mut self, ms: u64, state: &CallState, stats: &EngineStats) -> ViewUpdate {
            let invite: Invite = "natter://relay.example:4433/lobby?token=secret"
                .parse()
                .unwrap();
            let input = ViewInput {
                stats,
                state,
                joined: &self.joined,
                devices: None,
                invite: Some(&invite),
                edge: None,
                controls: &self.controls,
                push_to_talk: false,
            };
            self.model
                .update(&input, self.start + Duration::from_millis(ms))
        }
    }

    #[test]
    fn cues_our_arrival_then_each_join_and_leave_of_others() {
        let mut call = Call::new();
        let (me, bob, carol) = (person(1, "me"), person(2, "bob"), person(3, "carol"));
        let stats = EngineStats::default();
        let cues: Vec<Option<Cue>> = [
            room(&[me.clone(), bob.clone()]),
            room(&[me.clone(), bob.clone()]),
            room(&[me.clone(), bob.clone(), carol.clone()]),
            room(&[me.clone(), carol.clone()]),
        ]
        .iter()
        .enumerate()
        .map(|(i, state)| call.at(100 * i as u64, state, &stats).cue)
        .collect();
        assert_eq!(
            cues,
            [Some(Cue::Join), None, Some(Cue::Join), Some(Cue::Leave)]
        );
        // Back from a rejoin: our arrival again.
        call.model.reconnecting();
        let cue = call.at(500, &room(&[me, carol]), &stats).cue;
        assert_eq!(cue, Some(Cue::Join));
    }

    #[test]
    fn numbers_are_published_once_a_second_and_history_twice() {
        let mut call = Call::new();
        let (me, bob) = (person(1, "me"), person(2, "bob"));
        let state = room(&[me, bob.clone()]);
        let mut stats = EngineStats::default();
        let mut shown = Vec::new();
        let mut samples = 0;
        for step in 0..20u64 {
            stats.peers = vec![heard(&bob, 10 * step, 0)];
            let update = call.at(100 * step, &state, &stats);
            let bob_view = update.view.participants.iter().find(|p| !p.is_me).unwrap();
            shown.push(bob_view.stats.as_ref().unwrap().packets_received);
            samples += update.history.len();
        }
        // Published at 0, 1000 ms: the counts on screen change twice in 2 s.
        assert_eq!(shown[..10], [0; 10]);
        assert_eq!(shown[10..], [100; 10]);
        assert_eq!(samples, 4, "a sample every 500 ms");
    }

    #[test]
    fn recent_loss_covers_the_last_five_seconds() {
        let mut call = Call::new();
        let (me, bob) = (person(1, "me"), person(2, "bob"));
        let state = room(&[me, bob.clone()]);
        let mut stats = EngineStats::default();
        let loss_at = |call: &mut Call, stats: &EngineStats, ms| {
            let update = call.at(ms, &state, stats);
            update.view.participants[1].recent_loss
        };
        stats.peers = vec![heard(&bob, 0, 0)];
        assert_eq!(loss_at(&mut call, &stats, 0), 0.0);
        // 5 s: 225 received, 25 lost (10 %).
        stats.peers = vec![heard(&bob, 225, 25)];
        assert!((loss_at(&mut call, &stats, 5_000) - 0.1).abs() < 1e-9);
        // Then a clean window: the old loss is forgotten.
        stats.peers = vec![heard(&bob, 475, 25)];
        assert!((loss_at(&mut call, &stats, 7_000) - 0.1).abs() < 1e-9);
        assert_eq!(loss_at(&mut call, &stats, 10_000), 0.0);
    }

    #[test]
    fn the_shared_invite_names_the_room_and_never_carries_the_token() {
        let mut call = Call::new();
        let state = room(&[person(1, "me")]);
        let update = call.at(0, &state, &EngineStats::default());
        assert!(update.view.needs_token);
        assert!(!update.view.share_invite.contains("secret"));
        assert!(update.view.share_invite.contains("lobby"));
        assert_eq!(update.view.relay, "relay.example:4433");
        // Nothing moved: no reason to redraw.
        assert!(update.changed);
        assert!(!call.at(100, &state, &EngineStats::default()).changed);
    }

    #[test]
    fn the_header_names_the_edge_its_region_and_how_many_there_were() {
        use natter_proto::control::ClusterEdge;
        let invite: Invite = "natter://a.example:4433/lobby?edge=b.example:4434"
            .parse()
            .unwrap();
        let mut state = room(&[person(1, "me")]);
        let lone = crate::session::EdgeChoice {
            invite: invite.candidates()[0].clone(),
            handshake: Duration::from_millis(3),
            candidates: 1,
        };
        assert_eq!(
            relay_label(Some(&lone), Some(&invite), &state),
            "a.example:4433"
        );
        let edge = crate::session::EdgeChoice {
            invite: invite.candidates()[1].clone(),
            candidates: 2,
            ..lone
        };
        assert_eq!(
            relay_label(Some(&edge), Some(&invite), &state),
            "edge b.example:4434, nearest of 2"
        );
        // The relays listed three edges, with regions.
        state.edges = ["a.example:4433", "b.example:4434", "c.example:4435"]
            .iter()
            .zip(["eu-west", "us-east", ""])
            .map(|(at, region)| ClusterEdge {
                edge: natter_proto::invite::Edge {
                    host: at.split(':').next().unwrap().into(),
                    port: at.split(':').nth(1).unwrap().parse().unwrap(),
                    fingerprint: None,
                },
                region: region.into(),
            })
            .collect();
        assert_eq!(
            relay_label(Some(&edge), Some(&invite), &state),
            "edge us-east (b.example:4434), nearest of 3"
        );
        state.relay_rtt_ms = Some(23.4);
        assert_eq!(
            relay_label(Some(&edge), Some(&invite), &state),
            "edge us-east (b.example:4434), 23 ms away, nearest of 3"
        );
    }

    #[test]
    fn controls_decide_the_microphone_and_each_persons_gain() {
        let mut c = Controls::default();
        assert!(!c.effective_mute(false));
        assert!(c.effective_mute(true), "push to talk, key up");
        c.talking = true;
        assert!(!c.effective_mute(true));
        c.deafened = true;
        assert!(c.effective_mute(true), "deafened means muted");
        let state = room(&[person(2, "bob"), person(3, "carol"), person(4, "dan")]);
        c.set_volume("bob".into(), 5.0);
        c.set_local_mute("carol".into(), true);
        let gains: HashMap<u32, f32> = c.gains(&state).into_iter().collect();
        assert_eq!(gains[&0x102], 2.0, "clamped");
        assert_eq!(gains[&0x103], 0.0);
        assert_eq!(gains[&0x104], 1.0);
        c.set_local_mute("carol".into(), false);
        assert_eq!(c.gains(&state)[1], (0x103, 1.0));
    }

    #[test]
    fn the_meter_scale_and_the_mic_readings_words() {
        assert_eq!(meter_fraction(-100.0), 0.0);
        assert_eq!(meter_fraction(-35.0), 0.5);
        assert_eq!(meter_fraction(3.0), 1.0);
        let reading = |level_db| MicReading {
            level_db,
            threshold_db: -55.0,
        };
        assert!(reading(-30.0).above_threshold());
        assert!(reading(-30.0).describe().starts_with("Loud enough"));
        assert!(!reading(-60.0).above_threshold());
        assert!(reading(-60.0).describe().starts_with("Below the threshold"));
        assert!(reading(-100.0).describe().starts_with("No sound"));
    }

    #[test]
    fn the_tray_shows_unread_then_muted_then_in_call() {
        let idle = TrayState::default().look();
        assert_eq!((idle.badge, idle.attention), (None, false));
        assert_eq!(idle.tooltip, "Not in a call");
        let mut state = TrayState {
            room: Some("lounge".into()),
            ..TrayState::default()
        };
        assert_eq!(state.look().badge, Some(TrayBadge::InCall));
        assert_eq!(state.look().tooltip, "In lounge");
        state.muted = true;
        assert_eq!(state.look().badge, Some(TrayBadge::Muted));
        assert_eq!(state.look().tooltip, "In lounge · microphone off");
        state.unread = 3;
        let look = state.look();
        assert_eq!(
            (look.badge, look.attention),
            (Some(TrayBadge::Unread), true)
        );
        assert_eq!(look.tooltip, "In lounge · microphone off · 3 new messages");
        state.muted = false;
        state.unread = 1;
        assert_eq!(state.look().tooltip, "In lounge · 1 new message");
    }
}
