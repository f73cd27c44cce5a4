//! The call's view-model: the roster with each person's link quality, speaking and volume,
//! the engine's numbers, join/leave cues and the latency history, rebuilt from the session
//! every 100 ms; numbers that flicker are published once a second.

use super::actor::Controller;
use super::contract::*;
use super::lock;
use crate::engine::EngineCommand;
use crate::engine::receive::PeerStats;
use crate::history::Sample;
use crate::session::LinkStatus;
use crate::ui::sounds::{self, Cue};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

impl Controller {
    /// Rebuilds the call view from the session's stats and state.
    pub(super) fn refresh(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        // While the session rejoins there is no room to show; once back, the roster is new
        // (our arrival is cued again) and loss counts start afresh.
        match session.status() {
            LinkStatus::Connected => {
                if matches!(
                    lock(&self.shared.snapshot).phase,
                    Phase::Reconnecting { .. }
                ) {
                    self.loss_marks.clear();
                    self.set_phase(Phase::InCall);
                }
            }
            LinkStatus::Reconnecting { attempt, reason } => {
                let phase = Phase::Reconnecting { attempt, reason };
                self.roster_ids = None;
                let changed = {
                    let mut s = lock(&self.shared.snapshot);
                    let changed = s.phase != phase || s.call.is_some();
                    s.phase = phase;
                    s.call = None;
                    changed
                };
                if changed {
                    (self.shared.repaint)();
                }
                return;
            }
            // The actor loop hears of it and ends the call.
            LinkStatus::GaveUp { .. } => return,
        }
        let stats = session.stats();
        let state = session.state();
        let joined = session.joined();
        let me = joined.participant_id;
        let room = joined.room;
        let devices = session.device_names();
        let now = Instant::now();
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
            // Our own arrival.
            None => Some(Cue::Join),
            _ => None,
        };
        self.roster_ids = Some(ids);
        let mut cue_played = false;
        if let Some(cue) = cue
            && self.settings.as_ref().is_none_or(|s| s.sounds)
        {
            session.command(EngineCommand::PlaySound(sounds::samples(cue)));
            cue_played = true;
        }
        // Names can collide with gains keyed by name: re-apply when the roster changes.
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
                muted: if is_me {
                    self.effective_mute()
                } else {
                    p.muted
                },
                speaking: if is_me {
                    stats.voice_active && !self.effective_mute()
                } else {
                    peer.as_ref().is_some_and(|s| s.speaking)
                },
                volume: self.volumes.get(&p.name).copied().unwrap_or(1.0),
                locally_muted: self.local_mutes.contains(&p.name),
                stats: if is_me { None } else { peer },
                quality,
                recent_loss,
            });
        }
        participants.sort_by_key(|p| (!p.is_me, p.name.to_lowercase(), p.id));
        // The numbers (latency meter, link statistics) are published once a second: readable,
        // and the window need not redraw ten times a second for digits that flicker. What
        // moves — speaking, mute, the roster, the microphone level — is published at once.
        if now >= self.next_stats {
            self.next_stats = now + STATS_INTERVAL;
            self.stats_generation += 1;
            self.published_stats = participants
                .iter()
                .filter_map(|p| p.stats.clone().map(|s| (p.ssrc, s)))
                .collect();
        } else {
            for p in &mut participants {
                if let Some(old) = self.published_stats.get(&p.ssrc) {
                    p.stats = Some(old.clone());
                }
            }
        }
        // Histories: every 500 ms, one sample per participant we hear.
        if now >= self.next_history {
            self.next_history = now + Duration::from_millis(500);
            let t = now.duration_since(self.history_start).as_secs_f64();
            let mut h = lock(&self.shared.history);
            for p in &participants {
                if let Some(ps) = &p.stats
                    && ps.stages.complete
                {
                    h.push(&p.name, Sample::from_peer(t, ps));
                }
            }
        }
        let relay = self
            .target
            .as_ref()
            .map(|t| t.invite.authority())
            .unwrap_or_default();
        let view = CallView {
            room,
            relay,
            participants,
            relay_rtt_ms: state.relay_rtt_ms,
            engine: EngineStatsView::from(&stats),
            devices,
        };
        let digest = visible_digest(&view, self.stats_generation);
        let changed = digest != self.last_digest;
        self.last_digest = digest;
        let gains_stale = {
            let mut s = lock(&self.shared.snapshot);
            let stale = s.call.as_ref().map(roster_names) != Some(roster_names(&view));
            s.call = Some(view);
            s.muted = self.muted;
            s.deafened = self.deafened;
            s.talking = self.talking;
            if cue_played {
                s.cues_played += 1;
            }
            stale
        };
        if gains_stale {
            self.apply_gains();
        }
        if gains_stale || changed {
            (self.shared.repaint)();
        }
    }

    /// Loss over roughly the last five seconds, from the cumulative counters.
    pub(super) fn recent_loss(&mut self, p: &PeerStats, now: Instant) -> f64 {
        let mark =
            self.loss_marks
                .entry(p.ssrc)
                .or_insert((now, p.packets_received, p.packets_lost, 0.0));
        if now.duration_since(mark.0) >= Duration::from_secs(5) {
            let received = p.packets_received.saturating_sub(mark.1) as f64;
            let lost = (p.packets_lost - mark.2).max(0) as f64;
            let loss = if received + lost > 0.0 {
                lost / (received + lost)
            } else {
                0.0
            };
            *mark = (now, p.packets_received, p.packets_lost, loss);
        }
        mark.3
    }
}

/// How often the latency meter and link numbers change on screen (the plot's history is
/// sampled twice as often).
pub(super) const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// A hash of what the call screen draws from `view` (the microphone level in 3–6 dB steps),
/// so the controller wakes the UI only when the picture would change.
pub(super) fn visible_digest(view: &CallView, stats_generation: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    stats_generation.hash(&mut h);
    for p in &view.participants {
        (p.id, &p.name, p.muted, p.speaking, p.locally_muted).hash(&mut h);
        ((p.volume * 100.0).round() as i32, p.quality as u8).hash(&mut h);
    }
    let e = &view.engine;
    (e.bitrate_bps, e.frame_ms.round() as i64, e.voice_active).hash(&mut h);
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
    (&view.devices, &view.room, &view.relay).hash(&mut h);
    h.finish()
}

pub(super) fn roster_names(c: &CallView) -> Vec<(u32, String)> {
    c.participants
        .iter()
        .map(|p| (p.ssrc, p.name.clone()))
        .collect()
}
