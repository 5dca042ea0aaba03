use sluice_guest::Message;

#[sluice_guest::rule]
fn rule(_msg: &Message<'_>) -> bool {
    true
}

fn main() {}
