//! Text logs that a peer cannot forge lines in or send terminal escapes through.
//!
//! The relay logs only what it has validated (names without control characters, token
//! errors by kind), but a log line is a bad place to rely on every call site getting that
//! right. [`EscapingWriter`] sits between the text formatter and stderr and escapes every
//! control character in an event except its final line break: a newline, carriage return,
//! ESC or C1 control inside a field comes out as `\n`, `\r`, `\x1b`, `\u{9b}`. With colours
//! on (a terminal), the formatter's own SGR colour sequences (`ESC [ digits ; … m`) are kept;
//! a peer could at most colour text with one, not move the cursor or clear the screen.
//! JSON logs need none of this: JSON strings are escaped by construction.

use std::io::{self, Write};

/// Appends `event` to `out` with control characters escaped (see the module docs). `keep_sgr`
/// keeps SGR colour sequences.
pub fn escape_controls(event: &[u8], keep_sgr: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while i < event.len() {
        let b = event[i];
        match b {
            b'\n' if i + 1 == event.len() => out.push(b),
            0x1b if keep_sgr && sgr_len(&event[i..]).is_some() => {
                let n = sgr_len(&event[i..]).unwrap_or(1);
                out.extend_from_slice(&event[i..i + n]);
                i += n;
                continue;
            }
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\x{b:02x}");
            }
            // U+0080..U+009F (C1 controls, e.g. U+009B, a one-character CSI) are C2 80..9F.
            0xc2 if matches!(event.get(i + 1), Some(0x80..=0x9f)) => {
                let _ = write!(out, "\\u{{{:x}}}", event[i + 1]);
                i += 2;
                continue;
            }
            _ => out.push(b),
        }
        i += 1;
    }
}

/// Length of the SGR sequence (`ESC [ [0-9;]* m`) at the start of `s`, if there is one.
fn sgr_len(s: &[u8]) -> Option<usize> {
    let rest = s.strip_prefix(b"\x1b[")?;
    let params = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b';')
        .count();
    (rest.get(params) == Some(&b'm')).then_some(2 + params + 1)
}

/// Escapes each write (the text formatter writes one whole event per call) into `inner`.
#[derive(Debug)]
pub struct EscapingWriter<W> {
    inner: W,
    keep_sgr: bool,
    buf: Vec<u8>,
}

impl<W: Write> EscapingWriter<W> {
    pub fn new(inner: W, keep_sgr: bool) -> Self {
        Self {
            inner,
            keep_sgr,
            buf: Vec::new(),
        }
    }
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, event: &[u8]) -> io::Result<usize> {
        self.buf.clear();
        escape_controls(event, self.keep_sgr, &mut self.buf);
        self.inner.write_all(&self.buf)?;
        Ok(event.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str, keep_sgr: bool) -> String {
        let mut out = Vec::new();
        escape_controls(s.as_bytes(), keep_sgr, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_forged_line_stays_on_its_line() {
        assert_eq!(
            escaped("INFO join room=a\nERROR relay compromised\n", false),
            "INFO join room=a\\nERROR relay compromised\n"
        );
        assert_eq!(escaped("a\r\tb\u{7f}\0\n", false), "a\\r\\tb\\x7f\\x00\n");
    }

    #[test]
    fn terminal_escapes_are_defused_and_colours_kept_only_when_asked() {
        let clear = "name=\x1b[2J\x1b]0;title\x07 \u{9b}31m\n";
        assert_eq!(
            escaped(clear, true),
            "name=\\x1b[2J\\x1b]0;title\\x07 \\u{9b}31m\n"
        );
        let coloured = "\x1b[32m INFO\x1b[0m \x1b[1mjoin\x1b[0m é ü\n";
        assert_eq!(escaped(coloured, true), coloured);
        assert_eq!(
            escaped(coloured, false),
            "\\x1b[32m INFO\\x1b[0m \\x1b[1mjoin\\x1b[0m é ü\n"
        );
    }

    #[test]
    fn the_writer_escapes_each_event() {
        let mut w = EscapingWriter::new(Vec::new(), false);
        w.write_all(b"one\ntwo\n").unwrap();
        w.write_all(b"three\n").unwrap();
        assert_eq!(w.inner, b"one\\ntwo\nthree\n");
    }
}
