use sluice_guest::{Message, Outcome};

#[sluice_guest::rule]
fn rule<'a>(msg: &Message<'a>) -> Outcome {
    if msg.payload().is_empty() {
        Outcome::Drop
    } else {
        Outcome::Ok
    }
}

fn main() {
    let _ = rule(&Message::new(b""));
}
