//! The control messages waiting for one connection's control stream: bounded, with mute notices
//! about the same participant coalesced. Pure; the data plane's loop drains one per connection.

use natter_proto::control::Message;

/// Most control messages that may wait for one connection's writer. Replies and room notices
/// are a few a second for a client that reads; a client that stops reading (its stream's flow
/// control closed) would otherwise make the relay hold every reply and notice for it, without
/// bound. Past this the relay closes it with
/// [`ErrorCode::SlowReader`](natter_proto::control::ErrorCode::SlowReader).
pub const CONTROL_QUEUE_LIMIT: usize = 64;

/// The messages waiting, at most [`CONTROL_QUEUE_LIMIT`], with a MuteChanged replacing a
/// pending one about the same participant (the receiver only needs the latest state, and a
/// flapping member then costs each listener one slot, not one per toggle).
#[derive(Debug, Default)]
pub struct ControlQueue(std::collections::VecDeque<Message>);

/// The queue already holds [`CONTROL_QUEUE_LIMIT`] messages.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

impl ControlQueue {
    pub fn push(&mut self, msg: Message) -> Result<(), QueueFull> {
        if let Message::MuteChanged { id, .. } = msg
            && let Some(pending) = self
                .0
                .iter_mut()
                .find(|m| matches!(m, Message::MuteChanged { id: p, .. } if *p == id))
        {
            *pending = msg;
            return Ok(());
        }
        if self.0.len() >= CONTROL_QUEUE_LIMIT {
            return Err(QueueFull);
        }
        self.0.push_back(msg);
        Ok(())
    }

    pub fn pop(&mut self) -> Option<Message> {
        self.0.pop_front()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_queue_is_bounded_and_merges_mute_notices() {
        let mut q = ControlQueue::default();
        let mute = |id, muted| Message::MuteChanged { id, muted };
        // A member flapping its mute takes one slot per listener, holding the latest state.
        for i in 0..1_000 {
            assert_eq!(q.push(mute(7, i % 2 == 1)), Ok(()));
        }
        assert_eq!(q.push(mute(8, true)), Ok(()));
        assert_eq!(q.push(Message::ParticipantLeft { id: 9 }), Ok(()));
        assert_eq!(q.pop(), Some(mute(7, true)));
        assert_eq!(q.pop(), Some(mute(8, true)));
        assert_eq!(q.pop(), Some(Message::ParticipantLeft { id: 9 }));
        assert_eq!(q.pop(), None);
        // Anything else fills it, and then it refuses.
        for i in 0..CONTROL_QUEUE_LIMIT as u64 {
            assert_eq!(q.push(Message::ParticipantLeft { id: i }), Ok(()));
        }
        assert_eq!(q.push(Message::ParticipantLeft { id: 0 }), Err(QueueFull));
        assert_eq!(q.push(mute(1, true)), Err(QueueFull));
    }
}
