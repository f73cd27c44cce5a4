//! Calls through a real relay: who hears whom, and how late.
//!
//! Every call runs in real time, so signals are short (3 s) and each test keeps at most three
//! calls going at once. Latency lines are printed; see them with `--nocapture`
//! (`cargo nextest run -p natter-e2e --no-capture`).

use natter_e2e::{
    Call, CallStats, RelayProcess, SignalMatch, TempDir, find_signal, find_signal_windows, natter,
    read_wav, rms, signal_file, write_wav,
};
use std::path::Path;
use std::time::Duration;

/// Seconds of speech each speaker sends.
const SPEECH_SECS: f32 = 3.0;

/// Opus speech after the whole chain (encode, relay, jitter buffer, decode) keeps its waveform
/// well: the signal cut into 500 ms windows, each window's normalised cross-correlation with
/// the recording peaks at 0.96–0.99 (median over windows, repeated runs). Matching the whole
/// 3 s at one delay gives 0.73–0.99: lower when the jitter buffer moves the delay by a few ms
/// mid-signal, which is why windows are used. 0.6 is far above chance and far below normal.
const MIN_SPEECH_NCC: f32 = 0.6;

/// In a mix of two equally loud talkers each one's share of the energy is about halved, so its
/// window NCC against the mix drops to 0.53–0.84 (median over windows, repeated runs).
const MIN_MIXED_NCC: f32 = 0.35;

/// A signal that was not sent scores at most this against a recording (measured: 0.06–0.10
/// for a whole 3 s signal).
const MAX_ABSENT_NCC: f32 = 0.25;

/// Plausible mouth-to-ear latency on loopback: at least a frame plus the device period, at
/// most a few frames plus the jitter buffer.
const LATENCY_MS: std::ops::RangeInclusive<f64> = 10.0..=150.0;

/// Delays searched: generous, so a wrong lag is reported rather than missed.
const MAX_LAG_MS: f64 = 500.0;

/// Windows the sent signal is cut into when looking for it.
const WINDOW_MS: f64 = 500.0;

/// Time a receiver that joined after the sender is given before it must hear everything.
const JOIN_MARGIN_MS: f64 = 200.0;

/// Silence before the speech in the multi-party tests, so everyone is in the room before
/// anyone talks even though the calls start one after another.
const LEAD_IN_SECS: f32 = 0.7;

#[track_caller]
fn assert_heard(what: &str, m: &SignalMatch, min_ncc: f32) {
    println!("{what}: {m}");
    assert!(
        m.median_score() >= min_ncc,
        "{what}: speech not found (need median NCC >= {min_ncc}): {m}"
    );
    assert!(
        LATENCY_MS.contains(&m.median_lag_ms()),
        "{what}: implausible latency (want {LATENCY_MS:?} ms): {m}"
    );
}

#[track_caller]
fn assert_not_heard(
    what: &str,
    sent: &[f32],
    sender: &CallStats,
    rec: &[f32],
    receiver: &CallStats,
) {
    let d = find_signal(sent, sender, rec, receiver, MAX_LAG_MS, JOIN_MARGIN_MS);
    println!("{what} (must be absent): {d}");
    assert!(
        d.score < MAX_ABSENT_NCC,
        "{what}: found a signal that must not be there: {d}"
    );
}

/// Speech with `LEAD_IN_SECS` of silence in front, written to `path`; returns the samples.
fn padded_speech(path: &Path, seed: u64) -> Vec<f32> {
    let lead = (LEAD_IN_SECS * 48_000.0) as usize;
    let samples: Vec<f32> = std::iter::repeat_n(0.0, lead)
        .chain(natter::measure::speech_like(48_000, SPEECH_SECS, seed))
        .collect();
    write_wav(path, &samples);
    samples
}

/// A speaks, B listens: B's recording holds A's speech, about a frame or two late, and B's
/// statistics name A and count its packets.
#[test]
fn speech_from_alice_reaches_bob() {
    let dir = TempDir::new("speech");
    let relay = RelayProcess::start();
    let speech = signal_file("speech", &dir.join("alice.wav"), SPEECH_SECS, 1);
    assert_eq!(speech.len(), 3 * 48_000, "natter signal --seconds 3 length");

    // Bob listens first, so he hears all of Alice's speech.
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .recording_in(&dir)
        .duration(4.5)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let alice = Call::new(relay.invite(), "lobby", "alice")
        .input(&dir.join("alice.wav"))
        .stats_json(&dir.join("alice.json"))
        .duration(5.5)
        .spawn();
    let bob_done = bob.finish();
    alice.finish();

    let a = CallStats::read(&dir.join("alice.json"));
    let b = CallStats::read(&dir.join("bob.json"));
    let heard = read_wav(&dir.join("bob-heard.wav"));
    assert!(
        (heard.len() as f64 - 4.5 * 48_000.0).abs() < 4800.0,
        "bob's recording should be --duration long: {} samples",
        heard.len()
    );

    let m = find_signal_windows(&speech, &a, &heard, &b, MAX_LAG_MS, 0.0, WINDOW_MS);
    assert_heard("alice -> bob speech", &m, MIN_SPEECH_NCC);
    assert!(
        m.whole.to_ms - m.whole.from_ms >= 2900.0,
        "all of alice's speech should fit in bob's recording: {m}"
    );
    println!(
        "alice -> bob mouth-to-ear latency: {:.2} ms",
        m.median_lag_ms()
    );
    // A speech signal nobody sent is not "found": the threshold means something.
    let other = natter::measure::speech_like(48_000, SPEECH_SECS, 99);
    assert_not_heard(
        "never-sent speech in bob's recording",
        &other,
        &a,
        &heard,
        &b,
    );

    assert_eq!(a.room, "lobby");
    assert_eq!(b.room, "lobby");
    assert_ne!(a.ssrc, b.ssrc, "the relay assigns distinct SSRCs");
    assert_ne!(a.participant_id, b.participant_id);
    assert!(
        a.packets_sent >= 140,
        "alice sent 3 s of 20 ms frames: {a:#?}"
    );
    assert_eq!(b.packets_sent, 0, "bob has no microphone: {b:#?}");
    assert!(a.peers.is_empty(), "nobody sent to alice: {a:#?}");
    // Alice, who hears nobody, still learns from bob's reports how he hears her: the round
    // trip to him through the relay (about two relay RTTs on loopback) and his loss.
    assert_eq!(a.listeners.len(), 1, "bob reports on alice: {a:#?}");
    let bob_reports = &a.listeners[0];
    assert_eq!(
        (bob_reports.ssrc, bob_reports.name.as_deref()),
        (b.ssrc, Some("bob"))
    );
    assert!(
        bob_reports.rtt_ms.is_some_and(|rtt| rtt < 50.0),
        "{bob_reports:#?}"
    );
    assert_eq!(bob_reports.loss_pct, 0.0, "{bob_reports:#?}");
    assert_eq!(b.peers.len(), 1, "bob hears exactly alice: {b:#?}");
    let from_alice = b.peer(a.ssrc);
    assert_eq!(from_alice.name.as_deref(), Some("alice"), "{b:#?}");
    assert!(from_alice.packets_received > 100, "{from_alice:#?}");
    assert!(
        from_alice.packets_received <= a.packets_sent,
        "bob cannot receive more than alice sent: {from_alice:#?} vs {}",
        a.packets_sent
    );
    assert_eq!(
        from_alice.packets_lost, 0,
        "loopback loses nothing: {from_alice:#?}"
    );
    assert_eq!(from_alice.duplicates, 0, "{from_alice:#?}");
    assert_eq!(b.malformed_datagrams, 0);
    assert!(b.relay_rtt_ms.is_some_and(|rtt| rtt < 100.0), "{b:#?}");
    assert!(a.ended_by_relay.is_none() && b.ended_by_relay.is_none());
    assert!(
        bob_done.stdout.contains("peer \"alice\""),
        "bob's summary names alice:\n{bob_done}"
    );
}

/// Three people talk at once, each with a different voice: everyone hears both others (and
/// not themselves), and sees exactly two peers.
#[test]
fn three_party_call_everyone_hears_both_others() {
    let dir = TempDir::new("three");
    let relay = RelayProcess::start();
    let names = ["alice", "bob", "carol"];
    let signals: Vec<Vec<f32>> = names
        .iter()
        .zip(11..)
        .map(|(name, seed)| padded_speech(&dir.join(&format!("{name}.wav")), seed))
        .collect();

    let mut calls = Vec::new();
    for name in names {
        calls.push(
            Call::new(relay.invite(), "party", name)
                .input(&dir.join(&format!("{name}.wav")))
                .recording_in(&dir)
                .duration(5.0)
                .spawn(),
        );
        relay.wait_for_join("party", name);
    }
    for call in calls {
        call.finish();
    }
    let stats: Vec<CallStats> = names
        .iter()
        .map(|n| CallStats::read(&dir.join(&format!("{n}.json"))))
        .collect();
    let heard: Vec<Vec<f32>> = names
        .iter()
        .map(|n| read_wav(&dir.join(&format!("{n}-heard.wav"))))
        .collect();

    let mut ssrcs: Vec<u32> = stats.iter().map(|s| s.ssrc).collect();
    ssrcs.sort_unstable();
    ssrcs.dedup();
    assert_eq!(ssrcs.len(), 3, "three distinct SSRCs: {stats:#?}");

    for (r, receiver) in stats.iter().enumerate() {
        let mut others: Vec<u32> = (0..3).filter(|&s| s != r).map(|s| stats[s].ssrc).collect();
        others.sort_unstable();
        assert_eq!(
            receiver.peer_ssrcs(),
            others,
            "{} must hear exactly the two others: {receiver:#?}",
            names[r]
        );
        for peer in &receiver.peers {
            assert!(peer.packets_received > 100, "{}: {peer:#?}", names[r]);
            assert_eq!(peer.packets_lost, 0, "{}: {peer:#?}", names[r]);
        }
        for (s, sender) in stats.iter().enumerate() {
            let what = format!("{} -> {}", names[s], names[r]);
            if s == r {
                assert_not_heard(
                    &format!("{what} (own voice)"),
                    &signals[s],
                    sender,
                    &heard[r],
                    receiver,
                );
                continue;
            }
            let m = find_signal_windows(
                &signals[s],
                sender,
                &heard[r],
                receiver,
                MAX_LAG_MS,
                JOIN_MARGIN_MS,
                WINDOW_MS,
            );
            assert_heard(&what, &m, MIN_MIXED_NCC);
        }
    }
}

/// Rooms are separate: A and B talk in "one", C talks in "two". B hears A and only A; C and A
/// hear nothing at all.
#[test]
fn rooms_are_isolated() {
    let dir = TempDir::new("rooms");
    let relay = RelayProcess::start();
    let alice_says = padded_speech(&dir.join("alice.wav"), 21);
    let carol_says = padded_speech(&dir.join("carol.wav"), 22);

    let bob = Call::new(relay.invite(), "one", "bob")
        .recording_in(&dir)
        .duration(5.0)
        .spawn();
    relay.wait_for_join("one", "bob");
    let carol = Call::new(relay.invite(), "two", "carol")
        .input(&dir.join("carol.wav"))
        .recording_in(&dir)
        .duration(5.0)
        .spawn();
    relay.wait_for_join("two", "carol");
    let alice = Call::new(relay.invite(), "one", "alice")
        .input(&dir.join("alice.wav"))
        .recording_in(&dir)
        .duration(5.5)
        .spawn();
    bob.finish();
    carol.finish();
    alice.finish();

    let a = CallStats::read(&dir.join("alice.json"));
    let b = CallStats::read(&dir.join("bob.json"));
    let c = CallStats::read(&dir.join("carol.json"));
    let bob_heard = read_wav(&dir.join("bob-heard.wav"));
    let carol_heard = read_wav(&dir.join("carol-heard.wav"));
    let alice_heard = read_wav(&dir.join("alice-heard.wav"));

    assert_eq!(
        (a.room.as_str(), b.room.as_str(), c.room.as_str()),
        ("one", "one", "two")
    );
    assert!(c.packets_sent > 100, "carol did talk: {c:#?}");
    assert!(a.packets_sent > 100, "alice did talk: {a:#?}");

    // Bob: alice, not carol.
    assert_eq!(b.peer_ssrcs(), vec![a.ssrc], "bob hears only alice: {b:#?}");
    assert_eq!(b.peer(a.ssrc).name.as_deref(), Some("alice"), "{b:#?}");
    let m = find_signal_windows(
        &alice_says,
        &a,
        &bob_heard,
        &b,
        MAX_LAG_MS,
        JOIN_MARGIN_MS,
        WINDOW_MS,
    );
    assert_heard("alice -> bob (room one)", &m, MIN_SPEECH_NCC);
    assert_not_heard(
        "carol (room two) in bob's recording",
        &carol_says,
        &c,
        &bob_heard,
        &b,
    );

    // Carol: nothing at all, neither packets nor sound.
    assert!(c.peers.is_empty(), "carol is alone in room two: {c:#?}");
    let carol_rms = rms(&carol_heard);
    println!("carol's recording RMS: {carol_rms}");
    assert!(
        carol_heard.len() > 4 * 48_000,
        "carol recorded her whole call"
    );
    assert!(
        carol_rms < 1e-3,
        "carol's recording is not silent: RMS {carol_rms}"
    );

    // Alice: bob is silent and carol is elsewhere.
    assert!(a.peers.is_empty(), "alice hears nobody: {a:#?}");
    assert!(rms(&alice_heard) < 1e-3, "alice's recording is not silent");
}

/// One client with --echo: the relay sends its own chirps back, and `natter latency` finds
/// them in its recording with a plausible loopback latency. A bystander in the same room
/// hears nothing of it: an echo test disturbs nobody.
#[test]
fn echo_loopback_latency() {
    let dir = TempDir::new("echo");
    let relay = RelayProcess::start();
    let seconds = 4.0;
    let seed = 7;
    let probe = signal_file("chirps", &dir.join("chirps.wav"), seconds, seed);
    let train = natter::measure::chirp_train(48_000, seconds, 500, seed);
    assert_eq!(probe.len(), train.samples.len());
    assert!(
        probe
            .iter()
            .zip(&train.samples)
            .all(|(a, b)| (a - b).abs() < 1e-3),
        "`natter signal chirps` writes chirp_train(48000, seconds, 500, seed)"
    );

    let bystander = Call::new(relay.invite(), "mirror", "echo")
        .recording_in(&dir)
        .duration(f64::from(seconds) + 1.0)
        .spawn();
    relay.wait_for_join("mirror", "echo");
    let me = Call::new(relay.invite(), "mirror", "narcissus")
        .input(&dir.join("chirps.wav"))
        .output(&dir.join("heard.wav"))
        .stats_json(&dir.join("me.json"))
        .echo()
        .duration(f64::from(seconds) + 0.6)
        .spawn()
        .finish();
    bystander.finish();
    let stats = CallStats::read(&dir.join("me.json"));
    let theirs = CallStats::read(&dir.join("echo.json"));
    assert!(
        theirs.peers.is_empty(),
        "the bystander received nothing of the echo test: {theirs:#?}"
    );
    assert!(
        rms(&read_wav(&dir.join("echo-heard.wav"))) < 1e-3,
        "the bystander's recording is silent"
    );
    assert_eq!(
        stats.peer_ssrcs(),
        vec![stats.ssrc],
        "with --echo the only stream heard is our own: {stats:#?}\n{me}"
    );
    assert!(stats.peer(stats.ssrc).packets_received > 100, "{stats:#?}");

    let heard = dir.join("heard.wav");
    let out = natter(
        [
            "latency".as_ref(),
            heard.as_os_str(),
            "--seconds".as_ref(),
            "4".as_ref(),
            "--seed".as_ref(),
            "7".as_ref(),
        ] as [&std::ffi::OsStr; 6],
        Duration::from_secs(30),
    );
    out.assert_success();
    println!("echo loopback: {}", out.stdout.trim());
    let (median, found, expected) = parse_latency_line(&out.stdout);
    assert!(
        found * 5 >= expected * 4,
        "fewer than 80% of the chirps came back: {}",
        out.stdout
    );
    assert!(
        (10.0..=200.0).contains(&median),
        "implausible loopback latency: {}",
        out.stdout
    );

    // The library's detector agrees with the CLI.
    let recording = read_wav(&heard);
    let lags = natter::measure::find_lags(&train, &recording, 1000.0, 0.5);
    let lib = natter::measure::LatencyStats::from_lags(&lags, train.onsets.len())
        .expect("chirps found by find_lags");
    assert_eq!((lib.count, lib.expected), (found, expected));
    assert!(
        (lib.median_ms - median).abs() < 0.01,
        "{lib} vs {}",
        out.stdout
    );
}

/// `mouth-to-ear latency: median 41.20 ms (p5 …) over 9/10 chirps` → (41.2, 9, 10).
fn parse_latency_line(stdout: &str) -> (f64, usize, usize) {
    let parse = || -> Option<(f64, usize, usize)> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("mouth-to-ear latency: median "))?;
        let median = line["mouth-to-ear latency: median ".len()..]
            .split(' ')
            .next()?
            .parse()
            .ok()?;
        let counts = line.rsplit(" over ").next()?.strip_suffix(" chirps")?;
        let (found, expected) = counts.split_once('/')?;
        Some((median, found.parse().ok()?, expected.parse().ok()?))
    };
    parse().unwrap_or_else(|| panic!("unexpected `natter latency` output: {stdout:?}"))
}

/// A peer who hangs up before the listener does is still named in the listener's statistics
/// and summary (the roster forgets people who left; the statistics must not).
#[test]
fn peer_that_left_first_keeps_its_name() {
    let dir = TempDir::new("left-first");
    let relay = RelayProcess::start();
    signal_file("speech", &dir.join("alice.wav"), 1.0, 3);
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .stats_json(&dir.join("bob.json"))
        .duration(3.5)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    Call::new(relay.invite(), "lobby", "alice")
        .input(&dir.join("alice.wav"))
        .duration(1.5)
        .spawn()
        .finish();
    let done = bob.finish();
    let b = CallStats::read(&dir.join("bob.json"));
    assert_eq!(b.peers.len(), 1, "{b:#?}");
    assert!(b.peers[0].packets_received > 30, "{b:#?}");
    assert_eq!(b.peers[0].name.as_deref(), Some("alice"), "{b:#?}\n{done}");
    assert!(done.stdout.contains("peer \"alice\""), "{done}");
}

/// The latency meter's stages (sender's capture, processing and encode from its RTCP APP
/// report; network, jitter buffer, decode and playback measured by the receiver) add up to the
/// mouth-to-ear latency measured with chirps: each chirp is compared with the meter's reading
/// at the moment it was heard (`--latency-csv`, sampled every 100 ms), because the jitter
/// buffer's delay may legitimately step during the call (a CPU stall on a loaded machine).
#[test]
fn latency_stages_add_up_to_the_measured_latency() {
    let dir = TempDir::new("stages");
    let relay = RelayProcess::start();
    let secs = 8.0;
    signal_file("chirps", &dir.join("probe.wav"), secs, 5);
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .recording_in(&dir)
        .arg("--latency-csv")
        .arg(dir.join("bob-latency.csv"))
        .duration(f64::from(secs) + 2.0)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let alice = Call::new(relay.invite(), "lobby", "alice")
        .input(&dir.join("probe.wav"))
        .stats_json(&dir.join("alice.json"))
        .duration(f64::from(secs) + 1.0)
        .spawn();
    alice.finish();
    bob.finish();
    let a = CallStats::read(&dir.join("alice.json"));
    let b = CallStats::read(&dir.join("bob.json"));
    let heard = natter_e2e::align_recording(&read_wav(&dir.join("bob-heard.wav")), &a, &b);
    let train = natter::measure::chirp_train(48_000, secs, 500, 5);
    let lags = natter::measure::find_lags(&train, &heard, 500.0, 0.5);
    let measured =
        natter::measure::LatencyStats::from_lags(&lags, train.onsets.len()).expect("chirps found");
    println!("measured: {measured}");

    let stages = &b.peer(a.ssrc).stages;
    assert!(stages.complete, "alice's stages arrived: {stages:?}");
    let sum = stages.capture_ms
        + stages.processing_ms
        + stages.encode_ms
        + stages.network_ms
        + stages.jitter_buffer_ms
        + stages.decode_ms
        + stages.playback_ms;
    assert!(
        (sum - stages.total_ms).abs() < 0.01,
        "total is the sum: {stages:?}"
    );

    // The meter's history: (seconds on bob's audio axis, mouth-to-ear ms) for alice.
    let csv = std::fs::read_to_string(dir.join("bob-latency.csv")).expect("latency CSV written");
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("time_s,participant,mouth_to_ear_ms,"),
        "{csv}"
    );
    let meter: Vec<(f64, f64)> = lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[1] == "alice")
        .map(|f| (f[0].parse().unwrap(), f[2].parse().unwrap()))
        .collect();
    assert!(meter.len() > 50, "about 10 samples a second: {csv}");
    // Bob's time axis starts this many seconds after alice's.
    let bob_after_alice_s = natter_e2e::start_offset_samples(&a, &b) as f64 / 48_000.0;
    let mut errors = Vec::new();
    // Skip the first 2 s: the sender's latency report (RTCP APP) arrives once a second.
    for lag in lags.iter().filter(|l| l.onset >= 2 * 48_000) {
        let heard_s = lag.onset as f64 / 48_000.0 + lag.lag_ms / 1000.0 - bob_after_alice_s;
        let &(t, estimate) = meter
            .iter()
            .min_by(|x, y| (x.0 - heard_s).abs().total_cmp(&(y.0 - heard_s).abs()))
            .unwrap();
        assert!(
            (t - heard_s).abs() < 0.3,
            "meter sampled near {heard_s:.2} s"
        );
        println!(
            "chirp at {heard_s:.2} s: measured {:.1} ms, meter {estimate:.1} ms",
            lag.lag_ms
        );
        errors.push((estimate - lag.lag_ms).abs());
    }
    assert!(errors.len() >= 10, "chirps after the first 2 s: {errors:?}");
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    assert!(
        median <= 3.0,
        "the meter is off by {median:.1} ms (median over chirps): {errors:?}"
    );
}

/// A bot streams raw PCM on standard input (`--input -`) in 2 s bursts written at once, ahead of
/// time as a speech synthesizer does: the session buffers and paces them, so Bob hears the
/// speech at the usual latency, and Alice's call ends when her stream has played out — six
/// seconds of audio take six seconds, not the three it took to write them.
#[test]
fn streamed_input_in_bursts_is_paced() {
    let speech = natter::measure::speech_like(48_000, 6.0, 9);
    let pcm: Vec<u8> = speech
        .iter()
        .flat_map(|s| ((s * 32767.0).round() as i16).to_le_bytes())
        .collect();
    let bytes_per_second = 2 * 48_000;
    stream_to_bob("stream", &speech, &pcm, 2 * bytes_per_second);
}

/// The same with what many synthesizers write instead: a WAV stream whose length fields say
/// "unknown", here 32-bit float stereo at 24 kHz. It is recognised by its header, mixed down
/// and resampled to 48 kHz as it streams.
#[test]
fn a_streamed_wav_at_another_rate_is_heard() {
    let speech = natter::measure::speech_like(48_000, 6.0, 9);
    let rate = 24_000u32;
    let low = natter::audio::resample::resample(&speech, 48_000, rate).expect("resampled");
    let mut wav = b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\x03\0\x02\0".to_vec();
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 8).to_le_bytes());
    wav.extend_from_slice(b"\x08\0\x20\0data\xff\xff\xff\xff");
    for s in &low {
        wav.extend_from_slice(&s.to_le_bytes());
        wav.extend_from_slice(&s.to_le_bytes());
    }
    // 3 s bursts: the debug build's decoding and resampling take a while for 1.2 MB of
    // float stereo, and writing must still be clearly faster than playing.
    let bytes_per_second = 8 * rate as usize;
    stream_to_bob("stream-wav", &speech, &wav, 3 * bytes_per_second);
}

/// Alice streams `bytes` (six seconds of `speech`) on standard input in bursts of `burst`
/// bytes a second apart; Bob must hear the speech, and Alice's call must last as long as the
/// audio, not as long as writing it took.
fn stream_to_bob(name: &str, speech: &[f32], bytes: &[u8], burst: usize) {
    use std::io::Write;
    let dir = TempDir::new(name);
    let relay = RelayProcess::start();
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .recording_in(&dir)
        .duration(10.0)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let mut alice = Call::new(relay.invite(), "lobby", "alice")
        .arg("--input")
        .arg("-")
        .stats_json(&dir.join("alice.json"))
        .spawn();
    let mut stdin = alice.take_stdin();
    let written = std::time::Instant::now();
    for chunk in bytes.chunks(burst) {
        stdin.write_all(chunk).expect("natter reads its input");
        std::thread::sleep(Duration::from_millis(1_000));
    }
    drop(stdin);
    let wrote_in = written.elapsed();
    let a = alice.wait(Duration::from_secs(20));
    a.assert_success();
    bob.finish();
    let alice_stats = CallStats::read(&dir.join("alice.json"));
    let bob_stats = CallStats::read(&dir.join("bob.json"));
    assert!(
        alice_stats.duration_s > 5.8 && wrote_in < Duration::from_secs(4),
        "6 s of audio written in {wrote_in:?} lasted {:.1} s",
        alice_stats.duration_s
    );
    let heard = read_wav(&dir.join("bob-heard.wav"));
    let m = find_signal_windows(
        speech,
        &alice_stats,
        &heard,
        &bob_stats,
        MAX_LAG_MS,
        JOIN_MARGIN_MS,
        WINDOW_MS,
    );
    assert_heard(
        &format!("alice's streamed speech at bob ({name})"),
        &m,
        MIN_SPEECH_NCC,
    );
}

/// Text chat between two headless calls: Alice's messages reach Bob, printed on his standard
/// error with control characters escaped (a member must not drive his terminal) and kept in
/// his stats as written; Alice's stats keep them as her own.
#[test]
fn chat_reaches_the_room_and_cannot_drive_a_terminal() {
    let dir = TempDir::new("chat");
    let relay = RelayProcess::start();
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .stats_json(&dir.join("bob.json"))
        .duration(4.0)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let alice = Call::new(relay.invite(), "lobby", "alice")
        .arg("--chat")
        .arg("hello bob")
        .arg("--chat")
        .arg("\u{1b}[2Jred\nline")
        .stats_json(&dir.join("alice.json"))
        .duration(3.0)
        .spawn();
    let b = bob.finish();
    alice.finish();
    assert!(b.stderr.contains("chat alice: hello bob"), "{b}");
    assert!(b.stderr.contains("chat alice: \\u{1b}[2Jred\\nline"), "{b}");
    assert!(!b.stderr.contains('\u{1b}'), "{b}");
    let bob_stats = CallStats::read(&dir.join("bob.json"));
    let texts: Vec<(&str, &str, bool)> = bob_stats
        .chat
        .iter()
        .map(|l| (l.from.as_str(), l.text.as_str(), l.own))
        .collect();
    assert_eq!(
        texts,
        [
            ("alice", "hello bob", false),
            ("alice", "\u{1b}[2Jred\nline", false)
        ]
    );
    let alice_stats = CallStats::read(&dir.join("alice.json"));
    assert_eq!(alice_stats.chat.len(), 2, "{:?}", alice_stats.chat);
    assert!(alice_stats.chat.iter().all(|l| l.own && l.from == "alice"));
}
