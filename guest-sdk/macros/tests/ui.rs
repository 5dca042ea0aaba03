//! Compile-fail tests: each misuse of `#[sluice_guest::rule]` is a compile error with a span,
//! never a panic inside the macro (a panic would show as "proc macro panicked" in the .stderr).

#[test]
fn misuse_is_a_compile_error_with_a_span() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
