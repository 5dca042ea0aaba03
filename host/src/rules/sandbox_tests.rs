//! The sandbox against one `.wat` fixture per failure case (fixtures/), and the overheat example
//! module as built by the build script.

use std::time::Duration;

use super::actions::{Action, Grant};
use super::runtime::*;

fn runtime() -> RuleRuntime {
    RuleRuntime::new(SandboxConfig {
        max_memory_bytes: 4 * 1024 * 1024,
        call_timeout: Duration::from_millis(50),
        epoch_tick: Duration::from_millis(5),
    })
    .unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/src/rules/fixtures/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn input<'a>(payload: &'a [u8]) -> RuleInput<'a> {
    RuleInput {
        topic: "/pk/dev1/user/update",
        payload,
        raw_payload: payload,
        message_id: "0123456789abcdef0123456789abcdef",
        product_key: "pk",
        device_name: "dev1",
        timestamp_ms: 1_524_448_722_000,
        tags: None,
    }
}

fn forward_binding(topic: &str) -> Binding {
    let actions = vec![Action::Forward {
        topic: topic.into(),
    }];
    Binding {
        grant: Grant::from_actions(&actions),
        actions,
        from_filter: "/pk/+/user/update".into(),
    }
}

fn run(rt: &RuleRuntime, name: &str, payload: &[u8]) -> Result<Outcome, RuleFailure> {
    let module = rt.load(&fixture(name)).unwrap();
    let mut instance = rt
        .instantiate(&module, forward_binding("alerts"), Environment::default())
        .unwrap();
    instance.call(&input(payload))
}

#[test]
fn echo_forwards_to_every_action_and_instances_are_reused() {
    let rt = runtime();
    let module = rt.load(&fixture("echo")).unwrap();
    let mut instance = rt
        .instantiate(&module, forward_binding("alerts"), Environment::default())
        .unwrap();
    for i in 0..1000 {
        let payload = format!("{{\"n\":{i}}}");
        let out = instance.call(&input(payload.as_bytes())).unwrap();
        assert_eq!(
            out,
            Outcome::Emitted(vec![Decision {
                target: Target::Forward("alerts".into()),
                payload: payload.into_bytes(),
            }])
        );
    }
    // A payload larger than the first buffer makes the host ask for a bigger one.
    let big = vec![b'x'; 20_000];
    assert!(matches!(instance.call(&input(&big)), Ok(Outcome::Emitted(d)) if d[0].payload == big));
}

#[test]
fn each_failure_is_classified_by_kind() {
    let rt = runtime();
    let cases = [
        ("trap", FailureKind::Trap),
        ("infinite_loop", FailureKind::Timeout),
        ("memory_bomb", FailureKind::OutOfMemory),
        ("stack_overflow", FailureKind::StackOverflow),
        ("bad_pointer", FailureKind::BadPointer),
        ("forward_outside_grant", FailureKind::MalformedDecision),
        ("bad_status", FailureKind::BadStatus),
    ];
    for (name, kind) in cases {
        let failure = run(&rt, name, b"{}").unwrap_err();
        println!("{name}: {failure}");
        assert_eq!(failure.kind, kind, "{name}: {failure}");
    }
}

#[test]
fn an_instance_that_trapped_is_poisoned_so_the_worker_replaces_it() {
    let rt = runtime();
    let module = rt.load(&fixture("trap")).unwrap();
    let mut instance = rt
        .instantiate(&module, Binding::default(), Environment::default())
        .unwrap();
    assert!(!instance.is_poisoned());
    assert!(instance.call(&input(b"")).is_err());
    assert!(instance.is_poisoned());
}

#[test]
fn context_imports_and_fail_reach_the_rule() {
    let rt = runtime();
    assert_eq!(
        run(&rt, "context", b"x").unwrap(),
        Outcome::Emitted(vec![Decision {
            target: Target::Forward("alerts".into()),
            payload: b"dev1".to_vec(),
        }])
    );
    let failure = run(&rt, "context", b"").unwrap_err();
    assert_eq!(failure.kind, FailureKind::RuleError);
    assert_eq!(failure.message, "no /pk/dev1/user/update");
}

#[test]
fn bad_modules_are_refused_at_load_with_the_reason() {
    let rt = runtime();
    let err = |name: &str| rt.load(&fixture(name)).unwrap_err().to_string();
    assert!(err("missing_export").contains("does not export `sluice_on_message`"));
    let e = err("foreign_import");
    assert!(e.contains("wasi_snapshot_preview1::fd_write"), "{e}");
    assert!(err("wrong_version").contains("ABI version 2"));
    assert!(rt
        .load(b"not wasm")
        .unwrap_err()
        .to_string()
        .contains("not a valid WebAssembly module"));
    let too_big = "(module (memory (export \"memory\") 200) (func (export \"sluice_abi_version\") (result i32) i32.const 1) (func (export \"sluice_alloc\") (param i32) (result i32) i32.const 0) (func (export \"sluice_on_message\") (param i32 i32) (result i32) i32.const 0))";
    let e = rt.load(too_big.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("memory"), "{e}");
    let wrong_sig = "(module (import \"sluice_v1\" \"emit_output\" (func (param i64)))  (memory (export \"memory\") 1) (func (export \"sluice_abi_version\") (result i32) i32.const 1) (func (export \"sluice_alloc\") (param i32) (result i32) i32.const 0) (func (export \"sluice_on_message\") (param i32 i32) (result i32) i32.const 0))";
    let e = rt.load(wrong_sig.as_bytes()).unwrap_err().to_string();
    assert!(
        e.contains("emit_output") && e.contains("wrong signature"),
        "{e}"
    );
}

#[test]
fn republish_is_checked_against_grant_loop_and_status_topics() {
    let rt = runtime();
    let module = rt.load(&fixture("republish_to_payload")).unwrap();
    let mut grant = Grant::default();
    grant.add_spec("republish:#").unwrap();
    let binding = Binding {
        actions: vec![],
        grant,
        from_filter: "/pk/+/user/update".into(),
    };
    let mut instance = rt
        .instantiate(&module, binding, Environment::default())
        .unwrap();
    assert!(instance.call(&input(b"/pk/dev1/user/get")).is_ok());
    for looped in ["/pk/dev1/user/update", "/as/mqtt/status/pk/dev1"] {
        let failure = instance.call(&input(looped.as_bytes())).unwrap_err();
        assert_eq!(failure.kind, FailureKind::MalformedDecision, "{looped}");
    }
}

#[test]
fn the_embedded_overheat_example_runs_in_the_sandbox() {
    let rt = runtime();
    let wasm = std::fs::read(env!("SLUICE_OVERHEAT_WASM")).unwrap();
    let module = rt.load(&wasm).unwrap();
    let mut instance = rt
        .instantiate(&module, forward_binding("alerts"), Environment::default())
        .unwrap();
    let out = instance
        .call(&input(br#"{"temperature":39.5,"location":"x"}"#))
        .unwrap();
    assert_eq!(
        out,
        Outcome::Emitted(vec![Decision {
            target: Target::Forward("alerts".into()),
            payload: br#"{"t":39.5,"device":"dev1","location":"x"}"#.to_vec(),
        }])
    );
    assert_eq!(
        instance.call(&input(br#"{"temperature":20}"#)).unwrap(),
        Outcome::Dropped
    );
    // The same module bound without `alerts` in its grant: a malformed decision, not a write.
    let mut ungranted = rt
        .instantiate(&module, forward_binding("other"), Environment::default())
        .unwrap();
    let failure = ungranted
        .call(&input(br#"{"temperature":40}"#))
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::MalformedDecision);
}
