//! The logic both stamp crates share (included by path, so each crate exports its own rule).

use serde::{Deserialize, Serialize};
use sluice_guest::{Message, Outcome};

#[derive(Deserialize)]
struct Reading {
    seq: u64,
}

/// What the rule sends: enough to check loss, duplicates, order and the version that ran.
#[derive(Serialize)]
struct Stamped<'a> {
    device: &'a str,
    seq: u64,
    version: u32,
}

/// Forwards `{"device","seq","version"}` to every action; drops payloads without `seq`.
pub fn stamp(msg: &Message, version: u32) -> Outcome {
    let Ok(reading) = msg.json::<Reading>() else {
        return Outcome::Drop;
    };
    let device = msg.device_name();
    let body = match serde_json::to_vec(&Stamped {
        device: &device,
        seq: reading.seq,
        version,
    }) {
        Ok(body) => body,
        Err(e) => return Outcome::Fail(format!("cannot encode: {e}")),
    };
    match sluice_guest::emit_output(&body) {
        Ok(()) => Outcome::Ok,
        Err(status) => Outcome::Fail(format!("output refused: {}", status.name())),
    }
}

#[cfg(test)]
mod tests {
    use sluice_guest::testing::{self, Decision, TestHost};
    use sluice_guest::Outcome;

    #[test]
    fn the_output_carries_device_seq_and_this_crates_version() {
        let host = TestHost {
            device_name: "d7".into(),
            action_count: 1,
            ..TestHost::default()
        };
        let (outcome, host) = testing::run(host, br#"{"seq":42,"x":1}"#, super::super::rule);
        assert_eq!(outcome, Outcome::Ok);
        let expected = format!(
            r#"{{"device":"d7","seq":42,"version":{}}}"#,
            super::super::VERSION
        );
        assert_eq!(
            host.decisions,
            vec![Decision::Output(expected.into_bytes())]
        );
        let (outcome, _) = testing::run(TestHost::default(), b"{}", super::super::rule);
        assert_eq!(outcome, Outcome::Drop);
    }
}
