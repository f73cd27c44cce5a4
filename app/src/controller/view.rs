//! The call view's shell: every 100 ms it reads the session (link status, statistics,
//! roster), hands them to the pure [`ViewModel`](super::view_model::ViewModel) and carries out
//! what comes back — the snapshot for the UI, the join/leave cue, history samples, gains to
//! re-apply, waking the UI.

use super::actor::Controller;
use super::contract::*;
use super::lock;
use super::notifier;
use super::view_model::{ViewInput, roster_names};
use crate::engine::EngineCommand;
use crate::session::LinkStatus;
use crate::ui::sounds;
use std::time::Instant;

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
                    self.view.rejoined();
                    self.set_phase(Phase::InCall);
                }
            }
            LinkStatus::Reconnecting { attempt, reason } => {
                let phase = Phase::Reconnecting { attempt, reason };
                self.view.reconnecting();
                self.alerts.reset_roster();
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
        let edge = session.edge();
        let input = ViewInput {
            stats: &stats,
            state: &state,
            joined: &joined,
            devices: session.device_names(),
            invite: self.target.as_ref().map(|t| &t.invite),
            edge: Some(&edge),
            controls: &self.controls,
            push_to_talk: self.push_to_talk(),
        };
        let update = self.view.update(&input, Instant::now());
        let show = !self.focused && self.settings.as_ref().is_none_or(|s| s.notifications);
        let alerts = self
            .alerts
            .update(&state, joined.participant_id, &joined.room, show);
        if !alerts.is_empty() {
            let bus = self.config.notification_bus.clone();
            let notifier = self.notifier.get_or_insert_with(|| notifier::spawn(bus));
            for alert in alerts {
                let _ = notifier.send(alert);
            }
        }
        let cue_played = match update.cue {
            Some(cue) if self.settings.as_ref().is_none_or(|s| s.sounds) => {
                session.command(EngineCommand::PlaySound(sounds::samples(cue)));
                true
            }
            _ => false,
        };
        if !update.history.is_empty() {
            let mut h = lock(&self.shared.history);
            for (name, sample) in &update.history {
                h.push(name, *sample);
            }
        }
        // Gains are kept by name: re-apply when who has which SSRC changes.
        let gains_stale = {
            let mut s = lock(&self.shared.snapshot);
            let stale = s.call.as_ref().map(roster_names) != Some(roster_names(&update.view));
            s.call = Some(update.view);
            s.muted = self.controls.muted;
            s.deafened = self.controls.deafened;
            s.talking = self.controls.talking;
            if cue_played {
                s.cues_played += 1;
            }
            stale
        };
        if gains_stale {
            self.apply_gains();
        }
        if gains_stale || update.changed {
            (self.shared.repaint)();
        }
    }
}
