//! End-to-end tests of the real `sluice` binary live in `tests/`; this library is empty.
