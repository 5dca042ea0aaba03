use sluice_guest::{Message, Outcome};

#[sluice_guest::rule]
async fn rule(_msg: &Message<'_>) -> Outcome {
    Outcome::Ok
}

fn main() {}
