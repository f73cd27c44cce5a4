//! The one place the client reads the wall clock. The cores (RTCP session, control session,
//! reconnect policy) never do: their shells read it here and pass the time in.

/// Wall clock in microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
