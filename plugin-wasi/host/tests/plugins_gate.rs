//! The verification gate: bad plugins are refused with a clear error and the active plugin
//! stays in place.

mod support;

use std::time::Duration;

use dbguard_core::ErrorClass;
use dbguard_core::retry::PolicyVerdict;
use dbguard_plugin_host::{HostConfig, PluginError, PluginHost};
use support::info;

fn host_with_active_plugin() -> (PluginHost, String) {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let handle = host
        .load_retry_policy_named(Some("fixed-a"), &dbguard_tests::guest!("fixture-fixed-delay-a"))
        .expect("fixture a loads");
    (host, handle.content_hash)
}

fn assert_still_active(host: &PluginHost, hash: &str) {
    let stats = host.retry_policy().stats().expect("a plugin is active");
    assert_eq!(stats.handle.content_hash, hash, "the active plugin changed");
    assert_eq!(
        host.retry_policy().decide(&info(ErrorClass::Busy, 1, None)),
        PolicyVerdict::RetryAfter(Duration::from_millis(100))
    );
}

#[test]
fn a_core_module_is_refused() {
    let (host, hash) = host_with_active_plugin();
    // The smallest valid core module: magic number and version 1.
    let error = host.load_retry_policy(b"\0asm\x01\0\0\0").unwrap_err();
    assert_eq!(error, PluginError::CoreModule);
    assert!(error.to_string().contains("not a component"), "{error}");
    assert_still_active(&host, &hash);
}

#[test]
fn random_bytes_are_refused() {
    let (host, hash) = host_with_active_plugin();
    let mut state = 0x1234_5678_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    assert!(matches!(host.load_retry_policy(&noise), Err(PluginError::NotWasm(_))));
    // A component header followed by garbage gets past the sniff and fails to compile.
    let mut fake = b"\0asm\x0d\0\x01\0".to_vec();
    fake.extend_from_slice(&noise);
    let error = host.load_retry_policy(&fake).unwrap_err();
    assert!(matches!(error, PluginError::Compile(_)), "{error:?}");
    assert!(host.load_retry_policy(&[]).is_err());
    assert_still_active(&host, &hash);
}

#[test]
fn a_component_of_the_wrong_world_is_refused() {
    let (host, hash) = host_with_active_plugin();
    let error = host.load_retry_policy(&dbguard_tests::guest!("fixture-wrong-world")).unwrap_err();
    assert!(matches!(error, PluginError::WrongWorld { expected: "retry-policy", .. }), "{error:?}");
    assert!(error.to_string().contains("decide"), "the error should name the missing export: {error}");
    assert_still_active(&host, &hash);
}

#[test]
fn a_component_importing_what_the_host_does_not_provide_is_refused() {
    let (host, hash) = host_with_active_plugin();
    let error = host.load_retry_policy(&dbguard_tests::guest!("fixture-extra-import")).unwrap_err();
    assert!(matches!(error, PluginError::UnsupportedImport(_)), "{error:?}");
    assert!(error.to_string().contains("steal-secret"), "the error should name the import: {error}");
    assert_still_active(&host, &hash);
}

#[test]
fn a_plugin_that_never_returns_is_refused_at_its_deadline() {
    let (host, hash) = host_with_active_plugin();
    // The guest never returns: that loading does, with the deadline's error, is the interruption.
    let error = host.load_retry_policy(&dbguard_tests::guest!("fixture-spin-forever")).unwrap_err();
    assert_eq!(error, PluginError::Timeout(host.config().get_call_timeout()));
    assert_still_active(&host, &hash);
}

#[test]
fn a_plugin_growing_past_its_memory_limit_is_refused() {
    let (host, hash) = host_with_active_plugin();
    let error = host.load_retry_policy(&dbguard_tests::guest!("fixture-grow-memory")).unwrap_err();
    assert_eq!(error, PluginError::MemoryLimit { limit: 16 << 20 });
    assert_still_active(&host, &hash);
}

#[test]
fn a_plugin_asking_for_absurd_delays_is_refused() {
    // The trap fixture answers 50 ms normally; a host whose cap is below that refuses it.
    let host = PluginHost::new(HostConfig::default().max_retry_delay(Duration::from_millis(10))).expect("engine");
    let error = host.load_retry_policy(&dbguard_tests::guest!("fixture-trap")).unwrap_err();
    assert!(matches!(error, PluginError::InvalidDecision(_)), "{error:?}");
    assert!(host.retry_policy().stats().is_none());
}

#[test]
fn reloading_identical_bytes_reuses_the_compiled_component() {
    let (host, _) = host_with_active_plugin();
    assert_eq!(host.cached_components(), 1);
    host.load_retry_policy(&dbguard_tests::guest!("fixture-fixed-delay-a")).expect("loads again");
    assert_eq!(host.cached_components(), 1);
}
