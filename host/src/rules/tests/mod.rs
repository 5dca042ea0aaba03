//! Unit tests of the rule sandbox as a whole, by topic.

mod sandbox;
