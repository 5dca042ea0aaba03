//! The sandbox against one `.wat` fixture per failure case (fixtures/), and the overheat example
//! module as built by the build script.

use std::time::Duration;

use crate::rules::actions::{Action, Grant};
use crate::rules::runtime::*;

fn runtime() -> RuleRuntime {
    RuleRuntime::new(SandboxConfig {
        max_memory_bytes: 4 * 1024 * 1024,
        call_timeout: Duration::from_millis(50),
        epoch_tick: Duration::from_millis(5),
        ..SandboxConfig::default()
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
        ..Binding::default()
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

/// An instance of `republish_to_payload` (republishes to the topic its payload names) under the
/// grant `republish:{filter}`, reading `/pk/+/user/update`.
fn republish_to_payload(rt: &RuleRuntime, filter: &str) -> RuleInstance {
    let module = rt.load(&fixture("republish_to_payload")).unwrap();
    let mut grant = Grant::default();
    grant.add_spec(&format!("republish:{filter}")).unwrap();
    let binding = Binding {
        grant,
        from_filter: "/pk/+/user/update".into(),
        ..Binding::default()
    };
    rt.instantiate(&module, binding, Environment::default())
        .unwrap()
}

#[test]
fn republish_is_checked_against_grant_loop_and_status_topics() {
    let rt = runtime();
    let mut instance = republish_to_payload(&rt, "#");
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

#[test]
fn a_module_with_more_than_one_memory_or_table_is_refused_at_load() {
    let rt = runtime();
    let e = rt.load(&fixture("multi_memory_bomb")).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::TooMany {
                what: "linear memories",
                found: 8,
                max: 1
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("defines 8 linear memories") && text.contains("ABI"),
        "{text}"
    );
    let two_tables = "(module (memory (export \"memory\") 1) (table 1 funcref) (table 1 funcref) (func (export \"sluice_abi_version\") (result i32) i32.const 1) (func (export \"sluice_alloc\") (param i32) (result i32) i32.const 0) (func (export \"sluice_on_message\") (param i32 i32) (result i32) i32.const 0))";
    let e = rt.load(two_tables.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("defines 2 tables"), "{e}");
    assert_eq!(
        rt.usage().instances(),
        0,
        "no instance outlives a refused load"
    );
}

#[test]
fn the_memory_cap_counts_the_memory_and_the_table_together() {
    let rt = runtime();
    let cap = rt.config().max_memory_bytes as u64;
    let module = rt.load(&fixture("memory_and_table_bomb")).unwrap();
    let mut instance = rt
        .instantiate(&module, Binding::default(), Environment::default())
        .unwrap();
    let failure = instance.call(&input(b"{}")).unwrap_err();
    assert_eq!(failure.kind, FailureKind::OutOfMemory, "{failure}");
    let held = rt.usage().memory_bytes();
    assert!(held <= cap && held > cap - 65_536, "{held} of {cap}");
    drop(instance);
    assert_eq!(
        rt.usage().memory_bytes(),
        0,
        "a dropped instance gives it all back"
    );
    assert_eq!(rt.usage().instances(), 0);
}

/// CPU time of the calling thread: what a call cost, whatever else the machine was doing.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `host_call_loop` on `payload` and returns the failure, the CPU time and the fuel used.
fn run_host_call_loop(rt: &RuleRuntime, payload: &[u8]) -> (RuleFailure, Duration, u64) {
    let module = rt.load(&fixture("host_call_loop")).unwrap();
    let mut instance = rt
        .instantiate(&module, Binding::default(), Environment::default())
        .unwrap();
    let started = thread_cpu_time();
    let failure = instance.call(&input(payload)).unwrap_err();
    (
        failure,
        thread_cpu_time() - started,
        instance.last_fuel_used(),
    )
}

#[test]
fn a_loop_of_host_calls_runs_out_of_fuel_near_the_budget() {
    // Unmetered, the random_fill loop ran until the wall-clock backstop (20x the budget) with
    // almost no fuel used; metered, host calls spend the fuel and the call stops near the budget
    // of CPU. The now_ms loop is the calibration of HOST_CALL_FUEL: the cheapest call.
    let rt = runtime();
    let budget = rt.config().call_timeout;
    let fuel_budget = budget.as_millis() as u64 * FUEL_PER_MS;
    for payload in [&b"random"[..], b"now"] {
        let (failure, took, fuel) = run_host_call_loop(&rt, payload);
        let what = String::from_utf8_lossy(payload);
        println!("{what}: {failure} after {took:?} of CPU, {fuel} fuel");
        assert_eq!(failure.kind, FailureKind::Timeout, "{what}: {failure}");
        assert_eq!(
            fuel, fuel_budget,
            "{what}: stopped by fuel, not by the wall-clock backstop"
        );
        assert!(
            took < budget * 8,
            "{what}: {took:?} of CPU is far past the {budget:?} budget"
        );
    }
}

/// A `tracing` writer that keeps what is written, for counting log lines.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_log_loop_writes_at_most_the_caps_and_counts_the_rest() {
    let rt = runtime();
    let limits = rt.config().log;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let line = b"log line with a\nforged second line";
    let module = rt.load(&fixture("host_call_loop")).unwrap();
    let binding = Binding {
        log: std::sync::Arc::new(crate::rules::rule_log::RuleLog::new("chatty")),
        ..Binding::default()
    };
    let mut instance = rt
        .instantiate(&module, binding, Environment::default())
        .unwrap();
    let (failure, dropped) = tracing::subscriber::with_default(subscriber, || {
        let failure = instance.call(&input(line)).unwrap_err();
        (failure, instance.last_log_dropped())
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let written = text.matches("log line with a\\nforged").count();
    println!(
        "{failure}; {written} lines written, {dropped} dropped; log:\n{}",
        text.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(failure.kind, FailureKind::Timeout, "{failure}");
    assert_eq!(
        written as u32, limits.lines_per_message,
        "the first lines, up to the cap"
    );
    assert!(text.contains("rule=chatty"), "lines name the rule: {text}");
    assert!(
        !text.contains("\nforged"),
        "a log line cannot forge another line"
    );
    assert!(
        dropped > 1000,
        "every call past the cap is counted ({dropped})"
    );
    let summaries: Vec<&str> = text.lines().filter(|l| l.contains("dropped")).collect();
    assert_eq!(summaries.len(), 1, "one summary line: {summaries:?}");
    assert!(
        summaries[0].contains(&format!("dropped {dropped} log lines")),
        "{}",
        summaries[0]
    );
    assert_eq!(
        text.lines().count() as u32,
        limits.lines_per_message + 1,
        "nothing else"
    );
}

#[test]
fn republish_refuses_topics_with_wildcards_even_under_a_wildcard_grant() {
    let rt = runtime();
    let mut instance = republish_to_payload(&rt, "/pk/+/user/get");
    assert!(instance.call(&input(b"/pk/dev1/user/get")).is_ok());
    for bad in [
        &b"/pk/+/user/get"[..],
        b"/pk/#/user/get",
        b"/pk/dev\0/user/get",
    ] {
        let failure = instance.call(&input(bad)).unwrap_err();
        let what = String::from_utf8_lossy(bad);
        assert_eq!(
            failure.kind,
            FailureKind::MalformedDecision,
            "{what}: {failure}"
        );
        assert!(
            failure.message.contains("emit_republish"),
            "{what}: {failure}"
        );
    }
}
