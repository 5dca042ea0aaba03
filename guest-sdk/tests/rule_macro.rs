//! The attribute and the older `export_rule!` leave the rule an ordinary function that runs
//! natively against the test host; `Message::json` parses typed payloads (feature `serde`).

use sluice_guest::testing::{self, Decision, TestHost};
use sluice_guest::{Message, Outcome};

#[sluice_guest::rule]
fn shout(msg: &Message) -> Outcome {
    let Some(text) = msg.payload_str() else {
        return Outcome::Fail("not UTF-8".into());
    };
    match sluice_guest::forward("loud", text.to_uppercase().as_bytes()) {
        Ok(()) => Outcome::Ok,
        Err(s) => Outcome::Fail(s.name().into()),
    }
}

mod legacy {
    use sluice_guest::{Message, Outcome};

    pub fn drop_all(_msg: &Message) -> Outcome {
        Outcome::Drop
    }

    sluice_guest::export_rule!(drop_all);
}

#[test]
fn an_attributed_rule_is_still_a_plain_function() {
    let (outcome, host) = testing::run(TestHost::default(), b"hi", shout);
    assert_eq!(outcome, Outcome::Ok);
    assert_eq!(
        host.decisions,
        vec![Decision::Forward("loud".into(), b"HI".to_vec())]
    );
    let (outcome, _) = testing::run(TestHost::default(), b"\xff", shout);
    assert_eq!(outcome, Outcome::Fail("not UTF-8".into()));
}

#[test]
fn export_rule_keeps_working() {
    let (outcome, _) = testing::run(TestHost::default(), b"x", legacy::drop_all);
    assert_eq!(outcome, Outcome::Drop);
}

#[cfg(feature = "serde")]
#[test]
fn json_parses_typed_payloads_borrowing_strings_and_forward_json_encodes() {
    #[derive(serde::Deserialize)]
    struct Reading<'a> {
        id: &'a str,
        t: f64,
    }
    fn rule(msg: &Message) -> Outcome {
        let Ok(r) = msg.json::<Reading>() else {
            return Outcome::Drop;
        };
        match sluice_guest::forward_json("out", &serde_json::json!({"id": r.id, "t2": r.t * 2.0})) {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Fail(e.to_string()),
        }
    }
    let (outcome, host) = testing::run(TestHost::default(), br#"{"id":"a","t":1.5,"x":[]}"#, rule);
    assert_eq!(outcome, Outcome::Ok);
    assert_eq!(
        host.decisions,
        vec![Decision::Forward(
            "out".into(),
            br#"{"id":"a","t2":3.0}"#.to_vec()
        )]
    );
    let (outcome, _) = testing::run(TestHost::default(), br#"{"id":1}"#, rule);
    assert_eq!(outcome, Outcome::Drop);
}
