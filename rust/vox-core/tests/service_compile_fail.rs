//! Signatures `#[service]` rejects, each with a clear message pointing at
//! the offending code (`tests/ui/*.rs`, expected output in `*.stderr`).
//! Regenerate the expected output with `TRYBUILD=overwrite`.

#[test]
fn rejected_service_signatures() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
