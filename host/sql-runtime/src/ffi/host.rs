//! The `sluice_v1` imports the runtime calls. Pointers are into the memory ([`super::mem`]).
//! Natively (tests, Miri) they are a simulated host per thread (`sim`) with the same
//! signatures and copy-out rules as the real one (`host/src/rules/runtime.rs`).

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "sluice_v1")]
extern "C" {
    pub(crate) fn msg_topic(ptr: *mut u8, cap: i32) -> i32;
    pub(crate) fn msg_id(ptr: *mut u8, cap: i32) -> i32;
    pub(crate) fn msg_product_key(ptr: *mut u8, cap: i32) -> i32;
    pub(crate) fn msg_device_name(ptr: *mut u8, cap: i32) -> i32;
    pub(crate) fn msg_raw_payload(ptr: *mut u8, cap: i32) -> i32;
    pub(crate) fn now_ms() -> i64;
    pub(crate) fn format_time(
        ms: i64,
        utc: i32,
        pp: *const u8,
        pl: i32,
        bp: *mut u8,
        bc: i32,
    ) -> i32;
    pub(crate) fn random_fill(p: *mut u8, l: i32) -> i32;
    pub(crate) fn device_tag(kp: *const u8, kl: i32, bp: *mut u8, bc: i32) -> i32;
    pub(crate) fn emit_output(p: *const u8, l: i32) -> i32;
    pub(crate) fn fail(p: *const u8, l: i32) -> i32;
    pub(crate) fn log(level: i32, p: *const u8, l: i32) -> i32;
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use sim::*;

/// A host for the native tests: what a message gives the rule, and what the rule did.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod sim {
    use std::cell::RefCell;

    /// One thread's host.
    #[derive(Default)]
    pub(crate) struct Host {
        pub(crate) topic: Vec<u8>,
        pub(crate) message_id: Vec<u8>,
        pub(crate) product_key: Vec<u8>,
        pub(crate) device_name: Vec<u8>,
        pub(crate) raw_payload: Vec<u8>,
        pub(crate) now_ms: i64,
        /// Device tags, key and value.
        pub(crate) tags: Vec<(Vec<u8>, Vec<u8>)>,
        /// The next byte `random_fill` writes (counts up).
        pub(crate) random: u8,
        /// What the rule emitted, failed with and logged.
        pub(crate) outputs: Vec<Vec<u8>>,
        pub(crate) failures: Vec<Vec<u8>>,
        pub(crate) logs: Vec<(i32, Vec<u8>)>,
    }

    std::thread_local! {
        static HOST: RefCell<Host> = RefCell::new(Host::default());
    }

    /// Runs `f` with this thread's host.
    pub(crate) fn with_host<R>(f: impl FnOnce(&mut Host) -> R) -> R {
        HOST.with(|h| f(&mut h.borrow_mut()))
    }

    /// # Safety
    /// `[p, p + l)` is readable.
    unsafe fn read(p: *const u8, l: i32) -> Vec<u8> {
        assert!(l >= 0, "negative length {l}");
        if l == 0 {
            return Vec::new();
        }
        // Safety: the caller's contract.
        unsafe { core::slice::from_raw_parts(p, l as usize) }.to_vec()
    }

    /// Writes what fits of `value` at `p` and returns its whole length, as the host's
    /// `copy_out` does.
    ///
    /// # Safety
    /// `[p, p + cap)` is writable.
    unsafe fn copy_out(value: &[u8], p: *mut u8, cap: i32) -> i32 {
        let n = value.len().min(cap.max(0) as usize);
        // Safety: the caller's contract.
        unsafe { core::ptr::copy_nonoverlapping(value.as_ptr(), p, n) };
        value.len() as i32
    }

    macro_rules! field {
        ($name:ident, $field:ident) => {
            pub(crate) unsafe extern "C" fn $name(p: *mut u8, cap: i32) -> i32 {
                let value = with_host(|h| h.$field.clone());
                // Safety: the runtime reserved `cap` bytes at `p`.
                unsafe { copy_out(&value, p, cap) }
            }
        };
    }

    field!(msg_topic, topic);
    field!(msg_id, message_id);
    field!(msg_product_key, product_key);
    field!(msg_device_name, device_name);
    field!(msg_raw_payload, raw_payload);

    pub(crate) unsafe fn now_ms() -> i64 {
        with_host(|h| h.now_ms)
    }

    /// Not the host's date formatter: `<pattern>@<ms>` in UTC, `<pattern>@<ms>L` in local time,
    /// and status -2 (bad argument) for the pattern `bad`.
    pub(crate) unsafe fn format_time(
        ms: i64,
        utc: i32,
        pp: *const u8,
        pl: i32,
        bp: *mut u8,
        bc: i32,
    ) -> i32 {
        // Safety: the runtime passes a readable pattern.
        let pat = unsafe { read(pp, pl) };
        if pat == b"bad" {
            return -2;
        }
        let mut text = pat;
        text.extend_from_slice(format!("@{ms}").as_bytes());
        if utc == 0 {
            text.push(b'L');
        }
        // Safety: the runtime reserved `bc` bytes at `bp`.
        unsafe { copy_out(&text, bp, bc) }
    }

    pub(crate) unsafe fn random_fill(p: *mut u8, l: i32) -> i32 {
        for i in 0..l.max(0) as usize {
            let b = with_host(|h| {
                h.random = h.random.wrapping_add(1);
                h.random
            });
            // Safety: the runtime passes `l` writable bytes.
            unsafe { *p.add(i) = b };
        }
        0
    }

    pub(crate) unsafe fn device_tag(kp: *const u8, kl: i32, bp: *mut u8, bc: i32) -> i32 {
        // Safety: the runtime passes a readable key.
        let key = unsafe { read(kp, kl) };
        match with_host(|h| h.tags.iter().find(|(k, _)| *k == key).map(|t| t.1.clone())) {
            // Safety: the runtime reserved `bc` bytes at `bp`.
            Some(v) => unsafe { copy_out(&v, bp, bc) },
            None => -7,
        }
    }

    pub(crate) unsafe fn emit_output(p: *const u8, l: i32) -> i32 {
        // Safety: the runtime passes its output.
        let out = unsafe { read(p, l) };
        with_host(|h| h.outputs.push(out));
        0
    }

    pub(crate) unsafe fn fail(p: *const u8, l: i32) -> i32 {
        // Safety: the runtime passes its message.
        let m = unsafe { read(p, l) };
        with_host(|h| h.failures.push(m));
        0
    }

    pub(crate) unsafe fn log(level: i32, p: *const u8, l: i32) -> i32 {
        // Safety: the runtime passes its line.
        let m = unsafe { read(p, l) };
        with_host(|h| h.logs.push((level, m)));
        0
    }
}
