//! Unit tests of the MNS face, by topic.

mod xml_fuzz;
