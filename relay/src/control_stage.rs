//! Where a connection's control session is and what that allows: a connection must say Hello
//! within the hello timeout and Join within the join timeout after it, or it is closed, so it
//! cannot hold a slot by saying nothing. Pure; the data plane's loop follows it.

use crate::core::Close;
use natter_proto::control::{ErrorCode, Message};
use std::time::Duration;

/// The control session's stage, for the deadline its next message has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    AwaitHello,
    AwaitJoin,
    Joined,
}

/// What a stage change means for the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Unchanged.
    Keep,
    /// A new one, this long from now.
    In(Duration),
    /// None any more.
    Clear,
}

impl Stage {
    /// The stage after the core handled `msg` without closing the connection, and what happens
    /// to the deadline (a Join's starts with its Hello).
    pub fn after(self, msg: &Message, join_timeout: Duration) -> (Stage, Deadline) {
        match (self, msg) {
            (Stage::AwaitHello, Message::Hello { .. }) => {
                (Stage::AwaitJoin, Deadline::In(join_timeout))
            }
            (Stage::AwaitJoin, Message::Join { .. }) => (Stage::Joined, Deadline::Clear),
            _ => (self, Deadline::Keep),
        }
    }

    /// Why the connection is closed when this stage's deadline passes.
    pub fn missed(self, join_timeout: Duration) -> Close {
        if self == Stage::AwaitHello {
            Close::Error(
                ErrorCode::HelloRequired,
                "no Hello within the hello timeout".into(),
            )
        } else {
            Close::Error(
                ErrorCode::Timeout,
                format!("no Join within {} s of Hello", join_timeout.as_secs_f32()),
            )
        }
    }
}

/// The room, name and participant id of a member the core just welcomed, from the messages it
/// answered a Join with (for the join's log line, written only once the core has checked both
/// names and the token).
pub fn welcomed<H>(sends: &[(H, Message)], joining: bool) -> Option<(String, String, u64)> {
    sends
        .first()
        .filter(|_| joining)
        .and_then(|(_, m)| match m {
            Message::Welcome {
                participant_id,
                room,
                roster,
                ..
            } => roster
                .iter()
                .find(|p| p.id == *participant_id)
                .map(|p| (room.clone(), p.name.clone(), p.id)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOIN: Duration = Duration::from_secs(10);

    fn hello() -> Message {
        Message::Hello {
            versions: vec![1],
            software: "t".into(),
        }
    }

    fn join() -> Message {
        Message::Join {
            room: "r".into(),
            name: "n".into(),
            token: None,
            flags: 0,
        }
    }

    #[test]
    fn hello_then_join_moves_the_deadline_and_anything_else_keeps_it() {
        assert_eq!(
            Stage::AwaitHello.after(&join(), JOIN),
            (Stage::AwaitHello, Deadline::Keep)
        );
        assert_eq!(
            Stage::AwaitHello.after(&hello(), JOIN),
            (Stage::AwaitJoin, Deadline::In(JOIN))
        );
        assert_eq!(
            Stage::AwaitJoin.after(&hello(), JOIN),
            (Stage::AwaitJoin, Deadline::Keep)
        );
        assert_eq!(
            Stage::AwaitJoin.after(&join(), JOIN),
            (Stage::Joined, Deadline::Clear)
        );
        assert_eq!(
            Stage::Joined.after(&join(), JOIN),
            (Stage::Joined, Deadline::Keep)
        );
        assert_eq!(
            Stage::AwaitHello.missed(JOIN).code(),
            Some(ErrorCode::HelloRequired)
        );
        assert_eq!(
            Stage::AwaitJoin.missed(JOIN).code(),
            Some(ErrorCode::Timeout)
        );
    }
}
