use sluice_guest::{Message, Outcome};

#[sluice_guest::rule]
fn first(_msg: &Message<'_>) -> Outcome {
    Outcome::Ok
}

#[sluice_guest::rule]
fn second(_msg: &Message<'_>) -> Outcome {
    Outcome::Drop
}

fn main() {}
