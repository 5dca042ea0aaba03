//! The "frame-decoder" example rule (a `binary` rule): battery sensors send a fixed 15-byte
//! frame instead of JSON to save airtime; the rule decodes it into JSON for every action, so
//! applications never parse bytes. A frame that is not valid fails the message (`rule_error`),
//! which sends the raw bytes to the rule's error action for inspection.
//!
//! Frame layout, little-endian:
//!
//! | bytes | field | meaning |
//! |---|---|---|
//! | 0..2 | magic | `b"SL"` |
//! | 2 | version | `1` |
//! | 3 | flags | bit 0 low battery, bit 1 tamper |
//! | 4..8 | seq | `u32`, frame counter |
//! | 8..10 | temperature | `i16`, hundredths of a degree Celsius |
//! | 10..12 | humidity | `u16`, hundredths of a percent |
//! | 12..14 | battery | `u16`, millivolts |
//! | 14 | checksum | XOR of bytes 0..14 |

use serde::Serialize;
use sluice_guest::{Message, Outcome};

/// The frame's first two bytes.
pub const MAGIC: [u8; 2] = *b"SL";
/// The frame version this rule decodes.
pub const VERSION: u8 = 1;
/// Length of a version-1 frame.
pub const FRAME_LEN: usize = 15;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frame {
    /// Frame counter.
    pub seq: u32,
    /// Degrees Celsius.
    pub temperature: f64,
    /// Relative humidity, percent.
    pub humidity: f64,
    /// Battery voltage.
    pub battery_v: f64,
    /// Bit 0 of the flags.
    pub low_battery: bool,
    /// Bit 1 of the flags.
    pub tamper: bool,
}

/// Why a payload is not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer or more bytes than a frame has.
    Length(usize),
    /// The first two bytes are not `SL`.
    Magic([u8; 2]),
    /// A frame version this rule does not know.
    Version(u8),
    /// The checksum byte does not match the frame.
    Checksum {
        /// What the bytes add up to.
        computed: u8,
        /// What the frame says.
        found: u8,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Length(n) => write!(f, "frame of {n} bytes; expected {FRAME_LEN}"),
            FrameError::Magic(m) => write!(f, "frame starts with {m:02x?}; expected \"SL\""),
            FrameError::Version(v) => write!(f, "frame version {v}; this rule decodes {VERSION}"),
            FrameError::Checksum { computed, found } => write!(
                f,
                "checksum 0x{found:02x} does not match the frame (0x{computed:02x})"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Decodes one frame.
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    let b: &[u8; FRAME_LEN] = bytes
        .try_into()
        .map_err(|_| FrameError::Length(bytes.len()))?;
    if b[0..2] != MAGIC {
        return Err(FrameError::Magic([b[0], b[1]]));
    }
    if b[2] != VERSION {
        return Err(FrameError::Version(b[2]));
    }
    let computed = checksum(&b[..FRAME_LEN - 1]);
    if computed != b[FRAME_LEN - 1] {
        return Err(FrameError::Checksum {
            computed,
            found: b[FRAME_LEN - 1],
        });
    }
    Ok(Frame {
        seq: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        temperature: f64::from(i16::from_le_bytes([b[8], b[9]])) / 100.0,
        humidity: f64::from(u16_at(b, 10)) / 100.0,
        battery_v: f64::from(u16_at(b, 12)) / 1000.0,
        low_battery: b[3] & 1 != 0,
        tamper: b[3] & 2 != 0,
    })
}

/// XOR of `bytes`: the frame's checksum.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// Builds a frame (for tests and device simulators): the inverse of [`decode`].
pub fn encode(frame: &Frame) -> [u8; FRAME_LEN] {
    let mut b = [0u8; FRAME_LEN];
    b[0..2].copy_from_slice(&MAGIC);
    b[2] = VERSION;
    b[3] = u8::from(frame.low_battery) | (u8::from(frame.tamper) << 1);
    b[4..8].copy_from_slice(&frame.seq.to_le_bytes());
    b[8..10].copy_from_slice(&((frame.temperature * 100.0).round() as i16).to_le_bytes());
    b[10..12].copy_from_slice(&((frame.humidity * 100.0).round() as u16).to_le_bytes());
    b[12..14].copy_from_slice(&((frame.battery_v * 1000.0).round() as u16).to_le_bytes());
    b[14] = checksum(&b[..14]);
    b
}

#[derive(Serialize)]
struct Decoded<'a> {
    device: &'a str,
    #[serde(flatten)]
    frame: Frame,
}

/// The rule: decode the frame and send it as JSON to every action.
#[sluice_guest::rule]
pub fn frame_decoder(msg: &Message) -> Outcome {
    let frame = match decode(msg.payload()) {
        Ok(frame) => frame,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let device = msg.device_name();
    let body = match serde_json::to_vec(&Decoded {
        device: &device,
        frame,
    }) {
        Ok(body) => body,
        Err(e) => return Outcome::Fail(format!("cannot encode the frame: {e}")),
    };
    match sluice_guest::emit_output(&body) {
        Ok(()) => Outcome::Ok,
        Err(status) => Outcome::Fail(format!("output refused: {}", status.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_guest::testing::{self, Decision, TestHost};

    fn sample() -> Frame {
        Frame {
            seq: 0x0102_0304,
            temperature: -12.5,
            humidity: 55.25,
            battery_v: 3.3,
            low_battery: false,
            tamper: true,
        }
    }

    #[test]
    fn a_frame_is_little_endian_field_by_field() {
        let bytes = encode(&sample());
        assert_eq!(
            &bytes[4..8],
            &[0x04, 0x03, 0x02, 0x01],
            "seq is little-endian"
        );
        assert_eq!(i16::from_le_bytes([bytes[8], bytes[9]]), -1250);
        assert_eq!(bytes[3], 0b10);
        assert_eq!(decode(&bytes), Ok(sample()));
    }

    #[test]
    fn the_rule_emits_the_decoded_frame_as_json() {
        let host = TestHost {
            device_name: "sensor-9".into(),
            action_count: 1,
            ..TestHost::default()
        };
        let (outcome, host) = testing::run(host, &encode(&sample()), frame_decoder);
        assert_eq!(outcome, Outcome::Ok);
        let [Decision::Output(body)] = host.decisions.as_slice() else {
            panic!("one output expected: {:?}", host.decisions)
        };
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"device":"sensor-9","seq":16909060,"temperature":-12.5,"humidity":55.25,"battery_v":3.3,"low_battery":false,"tamper":true})
        );
    }

    #[test]
    fn bad_frames_fail_the_message_and_say_why() {
        let good = encode(&sample());
        let mut bad_sum = good;
        bad_sum[9] ^= 0xff;
        let mut bad_version = good;
        bad_version[2] = 2;
        let mut bad_magic = good;
        bad_magic[0] = b'X';
        let cases: [(&[u8], &str); 5] = [
            (&good[..10], "10 bytes"),
            (b"{\"json\":true}", "13 bytes"),
            (&bad_sum, "checksum"),
            (&bad_version, "version 2"),
            (&bad_magic, "expected \"SL\""),
        ];
        for (payload, want) in cases {
            let (outcome, host) = testing::run(TestHost::default(), payload, frame_decoder);
            match outcome {
                Outcome::Fail(text) => assert!(text.contains(want), "{want}: {text}"),
                other => panic!("{want}: expected a failure, got {other:?}"),
            }
            assert!(host.decisions.is_empty());
        }
    }
}
