//! Device names people recognise: cpal lists ALSA's PCM names ("sysdefault:CARD=PCH",
//! "front:CARD=Generic,DEV=0") and sound servers list theirs
//! ("alsa_input.usb-Logitech_USB_Headset-00.mono-fallback"); people know their devices as
//! "Built-in audio" or "Logitech USB Headset". These pure functions turn one into the other.
//! The raw name stays the device's id: settings keep it and the backend opens by it.
//!
//! The cards' own names come from ALSA's card list (`/proc/asound/cards`), read by the caller
//! and parsed here by [`Cards::parse`].

use std::collections::BTreeMap;

/// The sound cards ALSA knows: card id ("PCH", "Headset") → what to call it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cards(BTreeMap<String, String>);

impl Cards {
    /// Parses ALSA's card list, whose entries look like
    /// ` 0 [PCH            ]: HDA-Intel - HDA Intel PCH` followed by a detail line. A card
    /// driven by HDA-Intel is the computer's own sound chip ("Built-in audio") unless it is
    /// the graphics card's HDMI/DisplayPort output.
    pub fn parse(text: &str) -> Self {
        let mut cards = BTreeMap::new();
        for line in text.lines() {
            let Some((head, rest)) = line.split_once("]:") else {
                continue;
            };
            let Some((_, id)) = head.split_once('[') else {
                continue;
            };
            let (driver, long) = rest.split_once(" - ").unwrap_or((rest, rest));
            let (id, driver, long) = (id.trim(), driver.trim(), long.trim());
            let hdmi = ["HDMI", "NVidia", "NVIDIA", "ATI", "AMD"]
                .iter()
                .any(|w| id.contains(w) || long.contains(w));
            let name = match driver {
                "HDA-Intel" | "sof-hda-dsp" | "sof-audio-pci" if hdmi => {
                    "HDMI/DisplayPort audio".to_string()
                }
                "HDA-Intel" | "sof-hda-dsp" | "sof-audio-pci" => "Built-in audio".to_string(),
                _ if !long.is_empty() => long.to_string(),
                _ => id.to_string(),
            };
            cards.insert(id.to_string(), name);
        }
        Self(cards)
    }

    /// What to call the card with this id: its name from the card list, else the id as people
    /// would write it.
    fn name(&self, id: &str) -> String {
        match self.0.get(id) {
            Some(name) => name.clone(),
            None if id == "PCH" || id.starts_with("Generic") => "Built-in audio".into(),
            None if id.starts_with("HDMI") || id.starts_with("NVidia") => {
                "HDMI/DisplayPort audio".into()
            }
            None => id.replace('_', " "),
        }
    }
}

/// A label for one device name.
pub fn readable(raw: &str, cards: &Cards) -> String {
    match raw {
        "default" => return "System default (ALSA)".into(),
        "pulse" => return "PulseAudio sound server".into(),
        "pipewire" => return "PipeWire sound server".into(),
        "jack" => return "JACK sound server".into(),
        "null" => return "No device (silence)".into(),
        _ => {}
    }
    if let Some(label) = sound_server_name(raw) {
        return label;
    }
    let Some((kind, args)) = raw.split_once(':') else {
        return raw.to_string();
    };
    let arg = |key: &str| {
        args.split(',')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let Some(card) = arg("CARD") else {
        return raw.to_string();
    };
    let card = cards.name(card);
    let dev: u32 = arg("DEV").and_then(|d| d.parse().ok()).unwrap_or(0);
    let what = match kind {
        "sysdefault" => return card,
        "front" => "analog".to_string(),
        "hdmi" => format!("HDMI {}", dev + 1),
        "iec958" => "digital (S/PDIF)".to_string(),
        "dmix" | "dsnoop" => "shared".to_string(),
        "hw" => "direct hardware".to_string(),
        "plughw" => "direct".to_string(),
        k if k.starts_with("surround") => surround(k),
        k => k.to_string(),
    };
    if dev > 0 && kind != "hdmi" {
        format!("{card}, {what} {}", dev + 1)
    } else {
        format!("{card}, {what}")
    }
}

/// "surround51" → "5.1 surround".
fn surround(kind: &str) -> String {
    let digits = kind.trim_start_matches("surround");
    match digits.as_bytes() {
        [a, b] => format!("{}.{} surround", *a as char, *b as char),
        _ => "surround".into(),
    }
}

/// PulseAudio and PipeWire node names: `alsa_output.pci-0000_00_1f.3.analog-stereo`,
/// `alsa_input.usb-Logitech_USB_Headset-00.mono-fallback`, `bluez_output.00_1B_66_AA_BB_CC.1`,
/// each possibly with `.monitor` (what an output plays, as an input).
fn sound_server_name(raw: &str) -> Option<String> {
    let (base, monitor) = match raw.strip_suffix(".monitor") {
        Some(base) => (base, true),
        None => (raw, false),
    };
    let (prefix, rest) = base.split_once('.')?;
    let name = match prefix {
        "alsa_input" | "alsa_output" => {
            // The profile is the part after the last dot, unless that dot is a PCI function's.
            let (bus, profile) = match rest.rsplit_once('.') {
                Some((bus, profile)) if !profile.chars().all(|c| c.is_ascii_digit()) => {
                    (bus, Some(profile))
                }
                _ => (rest, None),
            };
            let device = if let Some(usb) = bus.strip_prefix("usb-") {
                // usb-<Vendor_Product>-<interface>
                let product = usb.rsplit_once('-').map_or(usb, |(p, _)| p);
                product.replace('_', " ")
            } else if bus.starts_with("pci-") || bus.starts_with("platform-") {
                "Built-in audio".to_string()
            } else {
                bus.replace('_', " ")
            };
            match profile.map(profile_words) {
                Some(words) if !words.is_empty() => format!("{device}, {words}"),
                _ => device,
            }
        }
        "bluez_input" | "bluez_output" | "bluez_sink" | "bluez_source" => {
            "Bluetooth headset".to_string()
        }
        _ => return None,
    };
    Some(if monitor {
        format!("Sound of {name}")
    } else {
        name
    })
}

/// "analog-stereo" → "analog", "hdmi-stereo-extra1" → "HDMI 2", "mono-fallback" → "".
fn profile_words(profile: &str) -> String {
    let extra = profile
        .rsplit_once("-extra")
        .and_then(|(_, n)| n.parse::<u32>().ok());
    let what = if profile.starts_with("hdmi") {
        "HDMI"
    } else if profile.starts_with("iec958") {
        "digital (S/PDIF)"
    } else if profile.starts_with("analog-surround") {
        "surround"
    } else if profile.starts_with("analog") {
        "analog"
    } else {
        ""
    };
    match extra {
        Some(n) if !what.is_empty() => format!("{what} {}", n + 1),
        _ => what.to_string(),
    }
}

/// Labels for a whole list, each distinct: when two devices would read the same, the raw
/// name goes in brackets after each.
pub fn label_all<'a>(
    raw: impl IntoIterator<Item = &'a String>,
    cards: &Cards,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = raw
        .into_iter()
        .map(|r| (r.clone(), readable(r, cards)))
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for label in labels.values() {
        *seen.entry(label.clone()).or_default() += 1;
    }
    for (raw, label) in labels.iter_mut() {
        if seen[label.as_str()] > 1 {
            *label = format!("{label} ({raw})");
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARDS: &str = " 0 [PCH            ]: HDA-Intel - HDA Intel PCH
                      HDA Intel PCH at 0xf7f10000 irq 32
 1 [NVidia         ]: HDA-Intel - HDA NVidia
                      HDA NVidia at 0xf7080000 irq 17
 2 [Headset        ]: USB-Audio - Logitech USB Headset
                      Logitech Logitech USB Headset at usb-0000:00:14.0-1, full speed
";

    #[test]
    fn the_card_list_gives_names_people_know() {
        let cards = Cards::parse(CARDS);
        assert_eq!(cards.name("PCH"), "Built-in audio");
        assert_eq!(cards.name("NVidia"), "HDMI/DisplayPort audio");
        assert_eq!(cards.name("Headset"), "Logitech USB Headset");
        // Not in the list (no /proc, or a card since unplugged): guessed from the id.
        let none = Cards::default();
        assert_eq!(none.name("Generic_1"), "Built-in audio");
        assert_eq!(none.name("Yeti_Nano"), "Yeti Nano");
        assert_eq!(Cards::parse("--- no soundcards ---"), Cards::default());
    }

    #[test]
    fn alsa_names() {
        let cards = Cards::parse(CARDS);
        let r = |raw| readable(raw, &cards);
        assert_eq!(r("sysdefault:CARD=PCH"), "Built-in audio");
        assert_eq!(r("front:CARD=PCH,DEV=0"), "Built-in audio, analog");
        assert_eq!(
            r("surround51:CARD=PCH,DEV=0"),
            "Built-in audio, 5.1 surround"
        );
        assert_eq!(
            r("hdmi:CARD=NVidia,DEV=1"),
            "HDMI/DisplayPort audio, HDMI 2"
        );
        assert_eq!(
            r("iec958:CARD=PCH,DEV=0"),
            "Built-in audio, digital (S/PDIF)"
        );
        assert_eq!(r("sysdefault:CARD=Headset"), "Logitech USB Headset");
        assert_eq!(
            r("dsnoop:CARD=Headset,DEV=0"),
            "Logitech USB Headset, shared"
        );
        assert_eq!(
            r("hw:CARD=Headset,DEV=1"),
            "Logitech USB Headset, direct hardware 2"
        );
        assert_eq!(
            readable("front:CARD=Generic,DEV=0", &Cards::default()),
            "Built-in audio, analog"
        );
        assert_eq!(r("default"), "System default (ALSA)");
        assert_eq!(r("pulse"), "PulseAudio sound server");
        assert_eq!(r("pipewire"), "PipeWire sound server");
        assert_eq!(r("null"), "No device (silence)");
        // Anything else is shown as it is.
        assert_eq!(r("lavrate"), "lavrate");
        assert_eq!(r("My Mic"), "My Mic");
    }

    #[test]
    fn sound_server_names() {
        let r = |raw| readable(raw, &Cards::default());
        assert_eq!(
            r("alsa_output.pci-0000_00_1f.3.analog-stereo"),
            "Built-in audio, analog"
        );
        assert_eq!(
            r("alsa_output.pci-0000_00_1f.3.analog-stereo.monitor"),
            "Sound of Built-in audio, analog"
        );
        assert_eq!(
            r("alsa_input.usb-Logitech_USB_Headset-00.mono-fallback"),
            "Logitech USB Headset"
        );
        assert_eq!(
            r("alsa_output.pci-0000_01_00.1.hdmi-stereo-extra1"),
            "Built-in audio, HDMI 2"
        );
        assert_eq!(r("alsa_input.pci-0000_00_1f.3"), "Built-in audio");
        assert_eq!(r("bluez_output.00_1B_66_AA_BB_CC.1"), "Bluetooth headset");
    }

    #[test]
    fn every_label_in_a_list_is_distinct() {
        let raw: Vec<String> = [
            "sysdefault:CARD=PCH",
            "front:CARD=PCH,DEV=0",
            "dmix:CARD=PCH,DEV=0",
            "dsnoop:CARD=PCH,DEV=0",
        ]
        .map(String::from)
        .to_vec();
        let labels = label_all(&raw, &Cards::parse(CARDS));
        assert_eq!(labels["sysdefault:CARD=PCH"], "Built-in audio");
        assert_eq!(labels["front:CARD=PCH,DEV=0"], "Built-in audio, analog");
        assert_eq!(
            labels["dmix:CARD=PCH,DEV=0"],
            "Built-in audio, shared (dmix:CARD=PCH,DEV=0)"
        );
        let distinct: std::collections::BTreeSet<_> = labels.values().collect();
        assert_eq!(distinct.len(), raw.len());
    }
}
