use sluice_guest::{Message, Outcome};

#[sluice_guest::rule]
fn rule(_msg: &Message<'_>, _extra: u32) -> Outcome {
    Outcome::Ok
}

fn main() {}
