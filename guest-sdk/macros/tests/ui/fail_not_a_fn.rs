#[sluice_guest::rule]
struct Rule;

fn main() {}
