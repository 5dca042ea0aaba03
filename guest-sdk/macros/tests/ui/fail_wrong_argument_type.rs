use sluice_guest::Outcome;

#[sluice_guest::rule]
fn rule(_msg: &str) -> Outcome {
    Outcome::Ok
}

fn main() {}
