//! Speech quality of a real call, scored like the bench does it (`scripts/bench-call-quality.sh`):
//! real speech that is not in this repository (Debian's codec2-examples, fetched now with
//! `apt-get download`), a real relay and two `natter call` processes on loopback, PESQ-WB
//! (ITU-T P.862.2, PyPI `pesq` in the venv `scripts/setup.sh test` creates under
//! `$NATTER_CACHE/bench-venv`) of the listener's recording against what the talker sent.
//!
//! The first sentence of a stream is where the live engine used to lose most (start-up delay
//! accelerated away inside the words, device underruns while the playout guard was capped at a
//! period): the old engine scored 2.3–2.7 here on a busy machine (the bench's "direct" rows).
//! The bench holds the real target (4.3, median of runs); this single run on a machine that may
//! be busy needs slack to not flake: alone, at load 2–5 with the test processes at nice 15, it
//! scored 3.83, 3.88, 4.15, 4.18 (the lower ones with 10–40 ms of device underruns).

use natter_e2e::{Call, RelayProcess, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Least PESQ-WB for the first sentence of a clean loopback call (the issue asks 4.0 on a quiet
/// machine; see the module docs for what a busy one gives).
const MIN_FIRST_SENTENCE_PESQ: f64 = 3.7;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The venv with `pesq`, as `scripts/setup.sh test` makes it.
fn python() -> PathBuf {
    let cache = std::env::var_os("NATTER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache"));
    let py = cache.join("bench-venv/bin/python");
    assert!(
        py.is_file(),
        "{} missing: run `scripts/setup.sh test` (make test does) to install PESQ",
        py.display()
    );
    py
}

/// Downloads codec2-examples into `dir` and returns its 16 kHz speech file (10.8 s).
fn fetch_speech(dir: &Path) -> PathBuf {
    let pkg = dir.join("apt");
    std::fs::create_dir_all(&pkg).unwrap();
    // apt-get download runs as the unprivileged _apt user when it can write the directory.
    let _ = Command::new("chmod").arg("777").arg(&pkg).status();
    let out = Command::new("apt-get")
        .args(["download", "codec2-examples"])
        .current_dir(&pkg)
        .output()
        .expect("apt-get runs");
    assert!(
        out.status.success(),
        "cannot download codec2-examples (run `apt-get update` once): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(&pkg)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb downloaded");
    // Only the one file (the package holds ~20 MB of other samples).
    let root = dir.join("pkg");
    std::fs::create_dir_all(&root).unwrap();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" ./usr/share/codec2/raw/speech_orig_16k.wav"#)
        .arg("sh")
        .arg(&deb)
        .arg(&root)
        .status()
        .expect("dpkg-deb and tar run");
    assert!(
        ok.success(),
        "cannot extract speech_orig_16k.wav from {}",
        deb.display()
    );
    let speech = root.join("usr/share/codec2/raw/speech_orig_16k.wav");
    assert!(speech.is_file(), "{} missing", speech.display());
    speech
}

#[test]
fn a_clean_calls_first_sentence_scores_well_on_pesq_wb() {
    let dir = TempDir::new("quality");
    let py = python();
    let speech = fetch_speech(dir.path());
    let script = repo().join("scripts/call_quality_score.py");
    // The talker sends the sentence first thing, then a pause.
    let made = Command::new(&py)
        .arg(&script)
        .args(["make_talk"])
        .arg(dir.path())
        .arg(&speech)
        .arg(&speech)
        .args(["A", "1.0"])
        .status()
        .expect("python runs");
    assert!(made.success());

    let relay = RelayProcess::start();
    let bob = Call::new(relay.invite(), "quality", "bob")
        .recording_in(&dir)
        .duration(15.0)
        .spawn();
    relay.wait_for_join("quality", "bob");
    let alice = Call::new(relay.invite(), "quality", "alice")
        .input(&dir.join("talk.wav"))
        .stats_json(&dir.join("alice.json"))
        .duration(13.0)
        .spawn();
    alice.finish();
    bob.finish();

    let out = Command::new(&py)
        .arg(&script)
        .arg(dir.join("talk.json"))
        .arg(dir.join("bob-heard.wav"))
        .arg(dir.join("alice.json"))
        .arg(dir.join("bob.json"))
        .output()
        .expect("python runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scoring failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON score");
    let pesq = v["segments"][0]["pesq"]
        .as_f64()
        .unwrap_or_else(|| panic!("the sentence was not heard: {text}"));
    assert!(
        pesq >= MIN_FIRST_SENTENCE_PESQ,
        "first sentence PESQ-WB {pesq:.2} < {MIN_FIRST_SENTENCE_PESQ}: {text}"
    );
}
