//! What someone away from the window wants to hear about: a chat message from someone else,
//! a person joining or leaving. Pure: the call state goes in, with whether the window is in
//! front and whether the user wants notifications; the alerts to show come out. The shell
//! (`notifier.rs`) shows them as desktop notifications.

use crate::transport::control::CallState;
use std::collections::BTreeMap;

/// At most this many alerts from one update; a burst beyond it becomes one summary.
const BURST: usize = 3;

/// Longest chat text shown in a notification, in characters.
const BODY_CHARS: usize = 200;

/// One desktop notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub summary: String,
    pub body: String,
}

/// What was already seen: who was in the room (by participant id) and how many chat lines.
#[derive(Debug, Default)]
pub struct Alerts {
    roster: Option<BTreeMap<u64, String>>,
    chat_seen: Option<u64>,
}

impl Alerts {
    /// The call ended or is rejoining: the next roster is taken as it is, without alerts (our
    /// own arrival is no news, nor is everyone "joining" again after a reconnect).
    pub fn reset_roster(&mut self) {
        self.roster = None;
    }

    /// A new call: nothing seen yet.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// What changed since the last update, as alerts when the window is not in front and the
    /// user wants them (what happens while it is in front is seen there, never alerted late).
    pub fn update(&mut self, state: &CallState, me: u64, room: &str, show: bool) -> Vec<Alert> {
        let roster: BTreeMap<u64, String> = state
            .roster
            .values()
            .filter(|p| p.id != me)
            .map(|p| (p.id, p.name.clone()))
            .collect();
        let mut alerts = Vec::new();
        if let Some(before) = &self.roster {
            for (id, name) in &roster {
                if !before.contains_key(id) {
                    alerts.push(Alert {
                        summary: format!("{name} joined"),
                        body: format!("in {room}"),
                    });
                }
            }
            for (id, name) in before {
                if !roster.contains_key(id) {
                    alerts.push(Alert {
                        summary: format!("{name} left"),
                        body: room.to_string(),
                    });
                }
            }
        }
        self.roster = Some(roster);
        let seen = self.chat_seen.replace(state.chat_count);
        let new_lines = seen.map_or(0, |s| state.chat_count.saturating_sub(s)) as usize;
        let new_lines = new_lines.min(state.chat.len());
        for line in state.chat.iter().skip(state.chat.len() - new_lines) {
            if !line.own {
                alerts.push(Alert {
                    summary: format!("{} in {room}", line.from),
                    body: shorten(&line.text),
                });
            }
        }
        if !show {
            return Vec::new();
        }
        if alerts.len() > BURST {
            return vec![Alert {
                summary: format!("{} things happened in {room}", alerts.len()),
                body: alerts
                    .iter()
                    .map(|a| a.summary.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }];
        }
        alerts
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::view_model::tests::person;
    use crate::transport::control::ChatLine;

    const ME: u64 = 1;

    fn room(people: &[(u64, &str)]) -> CallState {
        let mut state = CallState::default();
        for (id, name) in people {
            state.upsert(person(*id, name));
        }
        state
    }

    fn say(state: &mut CallState, from: &str, text: &str, own: bool) {
        state.add_chat(ChatLine {
            from: from.into(),
            text: text.into(),
            own,
        });
    }

    #[test]
    fn joins_leaves_and_others_messages_while_away() {
        let mut alerts = Alerts::default();
        let mut state = room(&[(ME, "Ada"), (2, "Grace")]);
        say(&mut state, "Grace", "before we arrived", false);
        // What was there when we arrived is no news.
        assert!(alerts.update(&state, ME, "lounge", true).is_empty());
        state.roster.remove(&2);
        state.upsert(person(3, "Linus"));
        say(&mut state, "Ada", "my own line", true);
        say(&mut state, "Linus", "hi all", false);
        assert_eq!(
            alerts.update(&state, ME, "lounge", true),
            [
                Alert {
                    summary: "Linus joined".into(),
                    body: "in lounge".into()
                },
                Alert {
                    summary: "Grace left".into(),
                    body: "lounge".into()
                },
                Alert {
                    summary: "Linus in lounge".into(),
                    body: "hi all".into()
                },
            ]
        );
        assert!(alerts.update(&state, ME, "lounge", true).is_empty(), "once");
    }

    #[test]
    fn nothing_while_the_window_is_in_front_or_turned_off_and_not_later_either() {
        let mut alerts = Alerts::default();
        let mut state = room(&[(ME, "Ada")]);
        alerts.update(&state, ME, "lounge", false);
        say(&mut state, "Grace", "seen in the window", false);
        assert!(alerts.update(&state, ME, "lounge", false).is_empty());
        assert!(alerts.update(&state, ME, "lounge", true).is_empty());
    }

    #[test]
    fn a_reconnect_is_not_everyone_joining_again() {
        let mut alerts = Alerts::default();
        let state = room(&[(ME, "Ada"), (2, "Grace")]);
        alerts.update(&state, ME, "lounge", true);
        alerts.reset_roster();
        // Back under new ids.
        let state = room(&[(7, "Ada"), (8, "Grace")]);
        assert!(alerts.update(&state, 7, "lounge", true).is_empty());
    }

    #[test]
    fn a_burst_is_one_summary_and_long_messages_are_shortened() {
        let mut alerts = Alerts::default();
        let mut state = room(&[(ME, "Ada")]);
        alerts.update(&state, ME, "lounge", true);
        for i in 0..5 {
            say(&mut state, "Grace", &format!("line {i}"), false);
        }
        let burst = alerts.update(&state, ME, "lounge", true);
        assert_eq!(burst.len(), 1);
        assert_eq!(burst[0].summary, "5 things happened in lounge");
        say(&mut state, "Grace", &"é".repeat(300), false);
        let long = alerts.update(&state, ME, "lounge", true);
        assert_eq!(long[0].body.chars().count(), BODY_CHARS + 1);
        assert!(long[0].body.ends_with('…'));
    }
}
