//! Guard mutants for the proof suites (feature `guard-mutants` only): the env
//! var `VOX_MUTANT=<name>` switches off one named guard, so `.ci/proofs` can
//! show the model tests fail when that guard is missing. Without the feature
//! [`active`] is a constant `false` and every hook compiles away.

/// Whether the guard mutant `name` is switched on.
#[cfg(feature = "guard-mutants")]
pub(crate) fn active(name: &str) -> bool {
    std::env::var("VOX_MUTANT").is_ok_and(|value| value == name)
}

/// Always `false`: mutants exist only with the `guard-mutants` feature.
#[cfg(not(feature = "guard-mutants"))]
#[inline(always)]
pub(crate) const fn active(_name: &str) -> bool {
    false
}
