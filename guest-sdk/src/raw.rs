//! The raw imports of ABI v1 (module `sluice_v1`). Kept apart from the friendly API in `lib.rs`;
//! signatures must match `ABI.md` exactly.

#[link(wasm_import_module = "sluice_v1")]
unsafe extern "C" {
    pub fn msg_topic(buf_ptr: i32, buf_cap: i32) -> i32;
    pub fn msg_id(buf_ptr: i32, buf_cap: i32) -> i32;
    pub fn msg_product_key(buf_ptr: i32, buf_cap: i32) -> i32;
    pub fn msg_device_name(buf_ptr: i32, buf_cap: i32) -> i32;
    pub fn msg_timestamp_ms() -> i64;
    pub fn msg_raw_payload(buf_ptr: i32, buf_cap: i32) -> i32;
    pub fn now_ms() -> i64;
    pub fn format_time(
        epoch_ms: i64,
        utc: i32,
        pattern_ptr: i32,
        pattern_len: i32,
        buf_ptr: i32,
        buf_cap: i32,
    ) -> i32;
    pub fn random_fill(buf_ptr: i32, buf_len: i32) -> i32;
    pub fn device_tag(key_ptr: i32, key_len: i32, buf_ptr: i32, buf_cap: i32) -> i32;
    pub fn action_count() -> i32;
    pub fn emit_output(payload_ptr: i32, payload_len: i32) -> i32;
    pub fn emit_action(index: i32, payload_ptr: i32, payload_len: i32) -> i32;
    pub fn emit_forward(topic_ptr: i32, topic_len: i32, payload_ptr: i32, payload_len: i32) -> i32;
    pub fn emit_republish(
        topic_ptr: i32,
        topic_len: i32,
        payload_ptr: i32,
        payload_len: i32,
        qos: i32,
    ) -> i32;
    pub fn fail(msg_ptr: i32, msg_len: i32) -> i32;
    pub fn log(level: i32, msg_ptr: i32, msg_len: i32) -> i32;
}

/// Slice-based wrappers over the imports: the only place pointers are made from slices.
pub mod sys {
    fn p(bytes: &[u8]) -> (i32, i32) {
        (bytes.as_ptr() as i32, bytes.len() as i32)
    }

    fn pm(bytes: &mut [u8]) -> (i32, i32) {
        (bytes.as_mut_ptr() as i32, bytes.len() as i32)
    }

    pub fn msg_topic(buf: &mut [u8]) -> i32 {
        let (b, c) = pm(buf);
        unsafe { super::msg_topic(b, c) }
    }
    pub fn msg_id(buf: &mut [u8]) -> i32 {
        let (b, c) = pm(buf);
        unsafe { super::msg_id(b, c) }
    }
    pub fn msg_product_key(buf: &mut [u8]) -> i32 {
        let (b, c) = pm(buf);
        unsafe { super::msg_product_key(b, c) }
    }
    pub fn msg_device_name(buf: &mut [u8]) -> i32 {
        let (b, c) = pm(buf);
        unsafe { super::msg_device_name(b, c) }
    }
    pub fn msg_timestamp_ms() -> i64 {
        unsafe { super::msg_timestamp_ms() }
    }
    pub fn msg_raw_payload(buf: &mut [u8]) -> i32 {
        let (b, c) = pm(buf);
        unsafe { super::msg_raw_payload(b, c) }
    }
    pub fn now_ms() -> i64 {
        unsafe { super::now_ms() }
    }
    pub fn format_time(epoch_ms: i64, utc: bool, pattern: &str, buf: &mut [u8]) -> i32 {
        let (pp, pl) = p(pattern.as_bytes());
        let (b, c) = pm(buf);
        unsafe { super::format_time(epoch_ms, utc as i32, pp, pl, b, c) }
    }
    pub fn random_fill(buf: &mut [u8]) -> i32 {
        let (b, c) = pm(buf);
        unsafe { super::random_fill(b, c) }
    }
    pub fn device_tag(key: &str, buf: &mut [u8]) -> i32 {
        let (kp, kl) = p(key.as_bytes());
        let (b, c) = pm(buf);
        unsafe { super::device_tag(kp, kl, b, c) }
    }
    pub fn action_count() -> i32 {
        unsafe { super::action_count() }
    }
    pub fn emit_output(payload: &[u8]) -> i32 {
        let (pp, pl) = p(payload);
        unsafe { super::emit_output(pp, pl) }
    }
    pub fn emit_action(index: i32, payload: &[u8]) -> i32 {
        let (pp, pl) = p(payload);
        unsafe { super::emit_action(index, pp, pl) }
    }
    pub fn emit_forward(topic: &str, payload: &[u8]) -> i32 {
        let (tp, tl) = p(topic.as_bytes());
        let (pp, pl) = p(payload);
        unsafe { super::emit_forward(tp, tl, pp, pl) }
    }
    pub fn emit_republish(topic: &str, payload: &[u8], qos: i32) -> i32 {
        let (tp, tl) = p(topic.as_bytes());
        let (pp, pl) = p(payload);
        unsafe { super::emit_republish(tp, tl, pp, pl, qos) }
    }
    pub fn fail(text: &str) -> i32 {
        let (tp, tl) = p(text.as_bytes());
        unsafe { super::fail(tp, tl) }
    }
    pub fn log(level: i32, text: &str) -> i32 {
        let (tp, tl) = p(text.as_bytes());
        unsafe { super::log(level, tp, tl) }
    }
}
