use sluice_guest::{Message, Outcome};

#[sluice_guest::rule]
#[sluice_guest::rule]
fn rule(_msg: &Message<'_>) -> Outcome {
    Outcome::Ok
}

fn main() {}
