//! The store conformance suite against `MemoryStore`: one test per check.
#![cfg(feature = "conformance")]

use mcp_auth_core::conformance::MemoryFactory;

mcp_auth_core::store_conformance_tests!(MemoryFactory::new());

#[test]
fn suite_has_at_least_thirty_checks() {
    let names = mcp_auth_core::conformance::check_names();
    assert!(names.len() >= 30, "only {} checks", names.len());
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "duplicate check names");
}
