//! The libopus decoder called directly through `opusic-sys` (re-exported by `opusic-c` as
//! `opusic_c::sys`, so the binary still holds exactly one libopus). This is the codec's only
//! unsafe code.
//!
//! Why not `opusic_c::Decoder`: it keeps its `OpusDecoder*` private, and its `Dred` wrapper
//! recovers only the frame right before a packet (it parses the packet and decodes one frame at
//! the packet's own length). Recovering a whole gap needs one parsed DRED state decoded at several
//! sample offsets into the same decoder state (`opus_decoder_dred_decode_float`), the pattern of
//! libopus's `opus_demo.c`.

use opusic_c::sys;
use std::ffi::{c_int, c_uchar};
use std::ptr::NonNull;

/// Output and RTP rate (RFC 7587).
const RATE: i32 = 48_000;

/// A libopus error code (negative), named by `opus_strerror`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibopusError(pub i32);

impl std::fmt::Display for LibopusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: opus_strerror accepts any integer and returns a pointer to a static,
        // NUL-terminated string (libopus's table or "unknown error").
        let msg = unsafe { std::ffi::CStr::from_ptr(sys::opus_strerror(self.0)) };
        write!(f, "libopus: {} ({})", msg.to_string_lossy(), self.0)
    }
}

impl std::error::Error for LibopusError {}

fn check(ret: c_int) -> Result<usize, LibopusError> {
    if ret < 0 {
        Err(LibopusError(ret))
    } else {
        Ok(ret as usize)
    }
}

/// A packet's length as libopus takes it; longer than any Opus packet is refused by libopus
/// anyway, so clamping cannot make a bad packet good.
fn len_of(packet: &[u8]) -> i32 {
    packet.len().min(i32::MAX as usize) as i32
}

/// A mono 48 kHz libopus decoder with a DRED decoder and one parsed DRED state.
pub struct RawDecoder {
    dec: NonNull<sys::OpusDecoder>,
    dred_dec: NonNull<sys::OpusDREDDecoder>,
    dred: NonNull<sys::OpusDRED>,
    /// What `dred` holds: `opus_dred_alloc` leaves it uninitialised, so it must not be decoded
    /// from before the first successful parse.
    dred_state: DredState,
}

/// How far the DRED state is along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DredState {
    Empty,
    /// Entropy-decoded only (`opus_dred_parse` with deferred processing): enough to know how far
    /// back the redundancy reaches, without DRED's neural decoder.
    Parsed,
    /// Run through DRED's neural decoder (`opus_dred_process`): ready to decode audio from.
    Processed,
}

// SAFETY: the three states are owned exclusively by this value (created here, freed in Drop,
// never shared), and libopus keeps no thread-affine or global mutable state for them: moving
// them to another thread is fine. All use goes through `&mut self`.
unsafe impl Send for RawDecoder {}

impl RawDecoder {
    /// Creates the decoder at `complexity` (0–10; ≥ 5 deep PLC; OSCE, 6 and 7, is not built).
    pub fn new(complexity: i32) -> Result<Self, LibopusError> {
        let mut err: c_int = 0;
        // SAFETY: `err` is a valid out-pointer; on failure the returned pointer is null and
        // nothing needs freeing.
        let dec = NonNull::new(unsafe { sys::opus_decoder_create(RATE, 1, &mut err) })
            .ok_or(LibopusError(err))?;
        // SAFETY: as above.
        let dred_dec = match NonNull::new(unsafe { sys::opus_dred_decoder_create(&mut err) }) {
            Some(p) => p,
            None => {
                // SAFETY: `dec` was created above and is not used again.
                unsafe { sys::opus_decoder_destroy(dec.as_ptr()) };
                return Err(LibopusError(err));
            }
        };
        // SAFETY: as above.
        let dred = match NonNull::new(unsafe { sys::opus_dred_alloc(&mut err) }) {
            Some(p) => p,
            None => {
                // SAFETY: both were created above and are not used again.
                unsafe {
                    sys::opus_dred_decoder_destroy(dred_dec.as_ptr());
                    sys::opus_decoder_destroy(dec.as_ptr());
                }
                return Err(LibopusError(err));
            }
        };
        let mut this = Self {
            dec,
            dred_dec,
            dred,
            dred_state: DredState::Empty,
        };
        this.set_complexity(complexity)?;
        Ok(this)
    }

    /// Sets the decoder's complexity (0–10; ≥ 5 deep PLC, 6 LACE, 7 NoLACE), mid-stream too.
    pub fn set_complexity(&mut self, complexity: i32) -> Result<(), LibopusError> {
        // SAFETY: a valid decoder; OPUS_SET_COMPLEXITY takes one opus_int32 argument.
        check(unsafe {
            sys::opus_decoder_ctl(
                self.dec.as_ptr(),
                sys::OPUS_SET_COMPLEXITY_REQUEST,
                complexity as c_int,
            )
        })
        .map(|_| ())
    }

    /// Decodes `packet` (or with `fec`, the in-band FEC of the frame before it, exactly
    /// `out.len()` samples) into `out`; returns the samples written.
    pub fn decode(
        &mut self,
        packet: &[u8],
        out: &mut [f32],
        fec: bool,
    ) -> Result<usize, LibopusError> {
        // SAFETY: `packet` is readable for its length, `out` writable for `out.len()` samples
        // (mono), which is what frame_size tells libopus; the decoder is valid and exclusive.
        check(unsafe {
            sys::opus_decode_float(
                self.dec.as_ptr(),
                packet.as_ptr(),
                len_of(packet),
                out.as_mut_ptr(),
                out.len().min(i32::MAX as usize) as c_int,
                c_int::from(fec),
            )
        })
    }

    /// Conceals `out.len()` samples (a multiple of 2.5 ms): deep PLC at complexity ≥ 5.
    pub fn conceal(&mut self, out: &mut [f32]) -> Result<usize, LibopusError> {
        // SAFETY: a null packet asks for concealment; `out` is writable for frame_size samples.
        check(unsafe {
            sys::opus_decode_float(
                self.dec.as_ptr(),
                std::ptr::null::<c_uchar>(),
                0,
                out.as_mut_ptr(),
                out.len().min(i32::MAX as usize) as c_int,
                0,
            )
        })
    }

    /// Parses the DRED data of `packet` into the DRED state, enough of it to reach `max_samples`
    /// back from the packet's first sample (at most 1 s). Returns how far back the redundancy
    /// reaches, samples (0: the packet carries none). Only the entropy decoding runs here: DRED's
    /// neural decoder, most of a parse's cost, waits for [`Self::dred_decode`], so asking how far
    /// a packet reaches (the burst look-ahead) costs little, and a parse that is superseded by a
    /// deeper one before anything is decoded never runs it.
    pub fn parse_dred(&mut self, packet: &[u8], max_samples: usize) -> Result<usize, LibopusError> {
        let mut end: c_int = 0;
        self.dred_state = DredState::Empty;
        // SAFETY: both states are valid and exclusive; `packet` is readable for its length
        // (libopus only reads it, and an empty slice's dangling pointer is never dereferenced
        // for length 0); `end` is a valid out-pointer.
        let reach = check(unsafe {
            sys::opus_dred_parse(
                self.dred_dec.as_ptr(),
                self.dred.as_ptr(),
                packet.as_ptr(),
                len_of(packet),
                max_samples.min(RATE as usize) as i32,
                RATE,
                &mut end,
                1,
            )
        })?;
        self.dred_state = DredState::Parsed;
        Ok(reach)
    }

    /// Decodes `out.len()` samples (a multiple of 2.5 ms) that start `offset` samples before the
    /// first sample of the packet last given to [`Self::parse_dred`], from its redundancy. Where
    /// the redundancy does not reach, libopus continues with deep PLC. The first decode after a
    /// parse runs DRED's neural decoder over the parsed redundancy.
    pub fn dred_decode(&mut self, offset: usize, out: &mut [f32]) -> Result<usize, LibopusError> {
        match self.dred_state {
            DredState::Empty => return Err(LibopusError(sys::OPUS_BAD_ARG)),
            DredState::Parsed => {
                // SAFETY: both states are valid and exclusive, the DRED state initialised by a
                // successful parse; processing in place (src == dst) is what libopus's own
                // non-deferred parse does.
                check(unsafe {
                    sys::opus_dred_process(
                        self.dred_dec.as_ptr(),
                        self.dred.as_ptr(),
                        self.dred.as_ptr(),
                    )
                })?;
                self.dred_state = DredState::Processed;
            }
            DredState::Processed => {}
        }
        // SAFETY: the decoder and the DRED state are valid, the state parsed and processed;
        // `out` is writable for frame_size samples.
        check(unsafe {
            sys::opus_decoder_dred_decode_float(
                self.dec.as_ptr(),
                self.dred.as_ptr(),
                offset.min(i32::MAX as usize) as i32,
                out.as_mut_ptr(),
                out.len().min(i32::MAX as usize) as i32,
            )
        })
    }

    /// Whether `packet` carries in-band FEC (LBRR) for the frame before it. Decoding FEC from a
    /// packet without it silently conceals instead.
    pub fn has_lbrr(packet: &[u8]) -> bool {
        // SAFETY: `packet` is readable for its length; libopus validates the packet.
        unsafe { sys::opus_packet_has_lbrr(packet.as_ptr(), len_of(packet)) > 0 }
    }
}

impl Drop for RawDecoder {
    fn drop(&mut self) {
        // SAFETY: each pointer was created in `new` by its matching constructor and is freed
        // exactly once, here.
        unsafe {
            sys::opus_dred_free(self.dred.as_ptr());
            sys::opus_dred_decoder_destroy(self.dred_dec.as_ptr());
            sys::opus_decoder_destroy(self.dec.as_ptr());
        }
    }
}
