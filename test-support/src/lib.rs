//! Real helper processes for sluice's end-to-end tests and benchmarks. Nothing here is part of
//! the product: it is a dev-dependency only.

pub mod nats;
