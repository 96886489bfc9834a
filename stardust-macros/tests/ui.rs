//! Compile-time behaviour of `#[trace]`: every supported shape compiles without a
//! warning (`ui/ok`), and every misuse fails with the message and span committed in
//! `ui/err/*.stderr`. Regenerate those with `TRYBUILD=overwrite cargo test --test ui`
//! and read every changed file before committing it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/ok/*.rs");
    t.compile_fail("tests/ui/err/*.rs");
}
