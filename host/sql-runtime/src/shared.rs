// Constants shared by the SQL runtime (this crate) and the SQL compiler
// (`host/src/rules/sql/`, which `include!`s this file), so the two cannot drift.
// Plain items only: no attributes that would differ between the two crates.

/// Value tag: a path cache slot not computed yet (never a runtime value).
pub const TAG_NONE: i32 = 0;
/// Value tag: undefined (a path that does not exist).
pub const TAG_UNDEF: i32 = 1;
/// Value tag: JSON null.
pub const TAG_NULL: i32 = 2;
/// Value tag: boolean, bits 0 or 1.
pub const TAG_BOOL: i32 = 3;
/// Value tag: integer, bits are the i64.
pub const TAG_INT: i32 = 4;
/// Value tag: float, bits are the f64's bits.
pub const TAG_FLOAT: i32 = 5;
/// Value tag: UTF-8 string, bits are `ptr | len << 32`.
pub const TAG_STR: i32 = 6;
/// Value tag: raw JSON object or array text, bits are `ptr | len << 32`.
pub const TAG_JSON: i32 = 7;
/// Value tag: raw bytes (`*` as a function argument), bits are `ptr | len << 32`.
pub const TAG_BYTES: i32 = 8;
/// Value tag: a runtime error; `fail` was already called.
pub const TAG_ERR: i32 = 9;

/// Arithmetic operation codes for `rt_arith`.
pub const OP_ADD: i32 = 0;
/// `-`
pub const OP_SUB: i32 = 1;
/// `*`
pub const OP_MUL: i32 = 2;
/// `/`
pub const OP_DIV: i32 = 3;
/// `%` and `mod()`
pub const OP_MOD: i32 = 4;
/// unary `-` (second operand ignored)
pub const OP_NEG: i32 = 5;

/// Comparison operation codes for `rt_cmp`.
pub const CMP_EQ: i32 = 0;
/// `<>` and `!=`
pub const CMP_NE: i32 = 1;
/// `<`
pub const CMP_LT: i32 = 2;
/// `<=`
pub const CMP_LE: i32 = 3;
/// `>`
pub const CMP_GT: i32 = 4;
/// `>=`
pub const CMP_GE: i32 = 5;

/// Path descriptor flag: wrap the result in an array (leading `.`).
pub const PATH_WRAP: u8 = 1;
/// Path descriptor flag: the first step is a root member indexed by `rt_begin`; a u16 LE index
/// into the rule's field list follows the flags instead of that step's segment.
pub const PATH_TOP: u8 = 2;
/// Most root members one rule indexes while its payload is validated; paths starting at other
/// members walk from the root.
pub const MAX_TOP_FIELDS: usize = 64;
/// Path descriptor segment: an object key, then u16 LE length and the bytes.
pub const SEG_KEY: u8 = 1;
/// Path descriptor segment: an array index, then u32 LE.
pub const SEG_INDEX: u8 = 2;

/// Most arguments one function call passes through the argument area.
pub const MAX_ARGS: usize = 32;
/// Size of one argument slot: tag i32 at +0, bits i64 at +8.
pub const ARG_SLOT_BYTES: u32 = 16;
/// Bytes reserved for a rule's constants (strings, path descriptors, keys).
pub const CONSTS_CAP: usize = 64 * 1024;

/// The debug log line a json rule writes for a payload that is not a valid JSON object.
pub const INVALID_PAYLOAD_LOG: &str = "invalid_payload";
/// What a compiled SQL rule's `sluice_on_message` returns for that payload (after the log line):
/// no output. Not one of the ABI's statuses (`sluice_guest::abi::Status`); the host counts the
/// message as an invalid payload and otherwise treats it as OK.
pub const STATUS_INVALID_PAYLOAD: i32 = 2;
