use sluice_guest::Message;

#[sluice_guest::rule]
fn rule(_msg: &Message<'_>) {}

fn main() {}
