//! Skips, in one place: which tests may skip in CI, and why.
//!
//! A test that cannot run (a tool it calls is missing, the machine cannot do what it
//! needs) calls [`skip`] and returns. Outside CI that prints `SKIP <test>: <why>` where
//! the test's output is seen, and the test passes. When the `CI` environment variable is
//! set (`.ci/run` sets it) a skip is a failure, unless the test is listed in
//! [`ALLOWED_IN_CI`] with its reason: `.ci/setup` installs every tool the suite calls,
//! so a tool missing in CI is a broken setup, never a reason to pass.
#![allow(dead_code)]

/// Tests that may skip even in CI, with the reason a CI machine may legitimately lack
/// what they need. Everything not listed here fails in CI instead of skipping.
pub const ALLOWED_IN_CI: &[(&str, &str)] = &[
    (
        "install_dry_run_changes_nothing_and_writes_a_valid_config",
        "only its default-config part skips, on a machine where /etc/sluice/sluice.toml already exists \
         (a real install): the dry run must not be checked against an operator's file",
    ),
    (
        "debug_connections_is_refused_to_a_non_loopback_admin_client",
        "needs an address of the machine that is not loopback (a default route); a sandbox with only `lo` \
         has none, and the loopback check is unit-tested (conn::admin::tests)",
    ),
    (
        "keep_alive_legs_use_table_slots_and_close_for_real_when_let_go",
        "needs Linux 6.13 or later, the first to release a registered file as soon as nothing uses it; \
         Sluice registers no file table on older kernels (uring/src/files.rs), so there is nothing to test",
    ),
];

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The running test's name (the test harness names each test's thread after it).
fn current_test() -> String {
    let name = std::thread::current().name().unwrap_or("?").to_string();
    name.rsplit("::").next().unwrap_or(&name).to_string()
}

/// Skips the calling test because of `why`: printed outside CI, a failure in CI unless
/// the test is in [`ALLOWED_IN_CI`].
pub fn skip(why: &str) {
    let test = current_test();
    if in_ci() && !ALLOWED_IN_CI.iter().any(|(t, _)| *t == test) {
        panic!(
            "{test} cannot run: {why}. CI must run every test: fix .ci/setup, or list the skip with its \
             reason in tests/support/skips.rs"
        );
    }
    eprintln!("SKIP {test}: {why}");
}
