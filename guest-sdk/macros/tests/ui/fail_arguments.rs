use sluice_guest::{Message, Outcome};

#[sluice_guest::rule(from = "/+/+/user/update")]
fn rule(_msg: &Message<'_>) -> Outcome {
    Outcome::Ok
}

fn main() {}
