//! What a rule costs per message, and how the rules stage scales with the number of rules on
//! one filter. A program, not a timed test: it prints messages/s and asserts nothing about speed.
//!
//! `cargo bench -p sluice --bench rules_wasm` (add `-- --quick` for a short run).
//!
//! 1. Per-message cost of the overheat logic, one run, the same 241-byte-class payloads:
//!    native Rust (serde into a typed struct, no sandbox); the SDK rule compiled natively
//!    (through `sluice_guest::testing`); the SDK rule as Wasm (JSON parsed in the guest) on one
//!    reused instance; the same through `RuleWorker::evaluate` (filter match, counters, latency
//!    histogram); and the same rule in SQL compiled to Wasm, when this build has the compiler.
//! 2. Throughput through `RuleWorker::evaluate` with 1, 10 and 100 overheat rules on one filter.
//!    Modules are compiled once and instances reused, as in the pipeline.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice::rules::runtime::{Binding, Environment, RuleInput};
use sluice::rules::{
    Action, DataType, Grant, MessageContext, Outcome, RuleEngine, RuleRuntime, RuleSource,
    RuleSpec, RuleState, SandboxConfig,
};

const OVERHEAT_WASM: &[u8] = include_bytes!(env!("SLUICE_OVERHEAT_WASM"));
const FILTER: &str = "/+/+/user/update";
const TOPIC: &str = "/a1hRrzD/dev1/user/update";
const INFINITE_LOOP_WAT: &str = include_str!("../src/rules/fixtures/infinite_loop.wat");
const HOST_CALL_LOOP_WAT: &str = include_str!("../src/rules/fixtures/host_call_loop.wat");
const OVERHEAT_SQL: &str = r#"SELECT temperature AS t, deviceName() AS device, location FROM "/+/+/user/update" WHERE temperature > 38"#;

/// Payloads like a device's property post (~240 bytes); half of them are hot.
fn payloads() -> Vec<Vec<u8>> {
    (0..64)
        .map(|i| {
            let t = 30.5 + (i % 16) as f64;
            format!(
                r#"{{"temperature":{t},"humidity":{h},"pressure":1013.25,"location":"building-7/floor-3/room-{i}","battery":0.87,"rssi":-71,"firmware":"2.4.1","uptime_s":86400,"status":"ok","seq":{i}}}"#,
                h = 40 + i % 20
            )
            .into_bytes()
        })
        .collect()
}

/// Runs `f` on the payloads round-robin for about `budget` and returns messages per second.
fn measure(budget: Duration, payloads: &[Vec<u8>], mut f: impl FnMut(&[u8])) -> f64 {
    // Warm up (instance buffers, caches, branch predictors).
    for p in payloads.iter().cycle().take(1000) {
        f(p);
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        for p in payloads {
            f(p);
        }
        n += payloads.len() as u64;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[derive(Deserialize)]
struct Reading<'a> {
    temperature: Option<f64>,
    #[serde(borrow)]
    location: Option<&'a serde_json::value::RawValue>,
}

#[derive(Serialize)]
struct Alert<'a> {
    t: f64,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a serde_json::value::RawValue>,
}

/// The overheat logic as plain native Rust: what the sandbox is compared against.
fn native_overheat(payload: &[u8], device: &str) -> Option<Vec<u8>> {
    let reading: Reading = serde_json::from_slice(payload).ok()?;
    let t = reading.temperature.filter(|t| *t > 38.0)?;
    serde_json::to_vec(&Alert {
        t,
        device,
        location: reading.location,
    })
    .ok()
}

fn spec(name: &str, module: Vec<u8>) -> RuleSpec {
    let actions = vec![Action::Forward {
        topic: "alerts".into(),
    }];
    RuleSpec {
        name: name.into(),
        source: RuleSource::Wasm { module },
        from_filter: FILTER.into(),
        data_type: DataType::Json,
        grant: Grant::from_actions(&actions),
        actions,
        error_action: None,
        state: RuleState::Running,
        version: 1,
        utc_offset_seconds: 0,
    }
}

fn context(payload: &[u8]) -> MessageContext<'_> {
    MessageContext {
        topic: TOPIC,
        payload,
        message_id: "0123456789abcdef0123456789abcdef",
        product_key: "a1hRrzD",
        device_name: "dev1",
        timestamp_ms: 1_700_000_000_000,
    }
}

fn input(payload: &[u8]) -> RuleInput<'_> {
    RuleInput {
        topic: TOPIC,
        payload,
        raw_payload: payload,
        message_id: "0123456789abcdef0123456789abcdef",
        product_key: "a1hRrzD",
        device_name: "dev1",
        timestamp_ms: 1_700_000_000_000,
        tags: None,
    }
}

fn forwarded(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Emitted(d) => d.len(),
        Outcome::Dropped => 0,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    let payloads = payloads();
    let avg_len = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
    println!(
        "rules_wasm bench: {} payloads of ~{avg_len} bytes, half hot; {budget:?} per figure",
        payloads.len()
    );

    // Sanity: the three implementations agree on every payload before anything is timed.
    let runtime = Arc::new(RuleRuntime::new(SandboxConfig::default()).expect("wasm runtime"));
    let load_started = Instant::now();
    let module = runtime.load(OVERHEAT_WASM).expect("overheat module loads");
    println!(
        "compile + check + trial instance of the overheat module ({} bytes): {:?}",
        OVERHEAT_WASM.len(),
        load_started.elapsed()
    );
    let binding = Binding {
        grant: Grant::from_actions(&[Action::Forward {
            topic: "alerts".into(),
        }]),
        actions: vec![Action::Forward {
            topic: "alerts".into(),
        }],
        from_filter: FILTER.into(),
        ..Binding::default()
    };
    let mut instance = runtime
        .instantiate(&module, binding.clone(), Environment::default())
        .expect("instance");
    for p in &payloads {
        let wasm = instance
            .call(&input(p))
            .expect("the wasm rule does not fail");
        let native = native_overheat(p, "dev1");
        match (&wasm, &native) {
            (Outcome::Emitted(d), Some(body)) => assert_eq!(&d[0].payload, body),
            (Outcome::Dropped, None) => {}
            other => panic!("wasm and native disagree: {other:?}"),
        }
    }

    println!("\n1. per-message cost of the overheat rule");
    let mut out = 0usize;
    let native = measure(budget, &payloads, |p| {
        out += black_box(native_overheat(black_box(p), "dev1")).map_or(0, |b| b.len());
    });
    report("native Rust (typed serde, no sandbox)", native, native);

    let host = sluice_guest::testing::TestHost {
        device_name: "dev1".into(),
        ..Default::default()
    };
    let sdk_native = measure(budget, &payloads, |p| {
        let (outcome, h) =
            sluice_guest::testing::run(host.clone(), black_box(p), sluice_rule_overheat::overheat);
        out += h.decisions.len() + usize::from(outcome == sluice_guest::Outcome::Ok);
    });
    report("SDK rule compiled natively (test host)", sdk_native, native);

    let wasm_call = measure(budget, &payloads, |p| {
        out += instance
            .call(&input(black_box(p)))
            .map_or(0, |o| forwarded(&o));
    });
    report("SDK rule as Wasm, one reused instance", wasm_call, native);

    let engine = Arc::new(RuleEngine::new(runtime.clone(), None));
    engine
        .install(&spec("overheat", OVERHEAT_WASM.to_vec()))
        .expect("install");
    let mut worker = engine.worker();
    let wasm_worker = measure(budget, &payloads, |p| {
        for e in worker.evaluate(&context(black_box(p))) {
            out += e.result.map_or(0, |o| forwarded(&o));
        }
    });
    report(
        "SDK rule as Wasm via RuleWorker::evaluate",
        wasm_worker,
        native,
    );

    match sluice::rules::compile_sql(OVERHEAT_SQL, DataType::Json) {
        Ok(compiled) => {
            let sql_module = runtime.load(&compiled.wasm).expect("compiled SQL loads");
            let mut sql_instance = runtime
                .instantiate(&sql_module, binding.clone(), Environment::default())
                .expect("instance");
            let sql = measure(budget, &payloads, |p| {
                out += sql_instance
                    .call(&input(black_box(p)))
                    .map_or(0, |o| forwarded(&o));
            });
            report("the same rule in SQL compiled to Wasm", sql, native);
        }
        Err(e) => println!(
            "  {:<46} skipped: {e}",
            "the same rule in SQL compiled to Wasm"
        ),
    }

    let instantiate = {
        let started = Instant::now();
        let mut n = 0u32;
        while started.elapsed() < budget / 4 {
            let mut fresh = runtime
                .instantiate(&module, binding.clone(), Environment::default())
                .expect("instance");
            out += fresh
                .call(&input(&payloads[n as usize % payloads.len()]))
                .map_or(0, |o| forwarded(&o));
            n += 1;
        }
        f64::from(n) / started.elapsed().as_secs_f64()
    };
    report(
        "(for scale) a new instance per message",
        instantiate,
        native,
    );

    let fuel = {
        let mut probe = runtime
            .instantiate(&module, binding.clone(), Environment::default())
            .expect("instance");
        let _ = probe.call(&input(&payloads[1]));
        probe.last_fuel_used()
    };
    println!("  fuel per overheat call: {fuel} (about one unit per Wasm instruction)");

    // How long the CPU bound lets a runaway run: an infinite loop until its fuel is gone.
    let looping = runtime
        .load(INFINITE_LOOP_WAT.as_bytes())
        .expect("loop fixture loads");
    let mut runaway = runtime
        .instantiate(&looping, binding.clone(), Environment::default())
        .expect("instance");
    let started = Instant::now();
    let stopped = runaway.call(&input(b"{}"));
    println!(
        "  a runaway loop is stopped after {:?} ({} fuel, call_timeout {:?}): {:?}",
        started.elapsed(),
        runaway.last_fuel_used(),
        runtime.config().call_timeout,
        stopped.map_err(|f| f.kind.as_str())
    );
    // The same for loops of host calls, which pay fuel per call and per byte: how close to
    // call_timeout each stops is how well HOST_CALL_FUEL and HOST_FUEL_PER_BYTE match the CPU
    // the calls cost (`log` runs with no subscriber here, so its lines cost only the call).
    let host_loop = runtime
        .load(HOST_CALL_LOOP_WAT.as_bytes())
        .expect("host-call loop fixture loads");
    for mode in ["now", "random", "log"] {
        let mut runaway = runtime
            .instantiate(&host_loop, binding.clone(), Environment::default())
            .expect("instance");
        let started = Instant::now();
        let stopped = runaway.call(&input(mode.as_bytes()));
        println!(
            "  a loop of host calls ({mode}) is stopped after {:?}: {:?}",
            started.elapsed(),
            stopped.map_err(|f| f.kind.as_str())
        );
    }

    println!("\n2. throughput through RuleWorker::evaluate, N overheat rules on one filter");
    println!(
        "  {:>5}  {:>14}  {:>16}  {:>14}",
        "rules", "messages/s", "rule calls/s", "vs 1 rule"
    );
    let mut one_rule = 0.0;
    for n in [1usize, 10, 100] {
        let engine = Arc::new(RuleEngine::new(runtime.clone(), None));
        for i in 0..n {
            engine
                .install(&spec(&format!("overheat-{i}"), OVERHEAT_WASM.to_vec()))
                .expect("install");
        }
        let mut worker = engine.worker();
        let rate = measure(budget, &payloads, |p| {
            for e in worker.evaluate(&context(black_box(p))) {
                out += e.result.map_or(0, |o| forwarded(&o));
            }
        });
        if n == 1 {
            one_rule = rate;
        }
        println!(
            "  {n:>5}  {rate:>14.0}  {:>16.0}  {:>13.1}x",
            rate * n as f64,
            one_rule / rate
        );
        let c = engine.counters_for("overheat-0").snapshot();
        println!(
            "         rule overheat-0: {} messages, latency p50 {} ns, p99 {} ns",
            c.messages_in, c.latency_ns.p50, c.latency_ns.p99
        );
    }
    black_box(out);
}

fn report(what: &str, rate: f64, native: f64) {
    println!(
        "  {what:<46} {rate:>12.0} msg/s  {:>8.2} us/msg  {:>6.1}x native",
        1e6 / rate,
        native / rate
    );
}
