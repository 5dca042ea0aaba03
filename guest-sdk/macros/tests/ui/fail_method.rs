use sluice_guest::{Message, Outcome};

struct Rules;

impl Rules {
    #[sluice_guest::rule]
    fn rule(&self) -> Outcome {
        Outcome::Ok
    }
}

fn main() {
    let _ = Rules;
    let _ = Message::new(b"");
}
