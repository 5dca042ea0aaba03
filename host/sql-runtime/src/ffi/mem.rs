//! The linear memory as the runtime sees it. An address is a `usize` (an `i32` across the
//! boundary). On wasm32 an address is the pointer itself; natively (the unit tests, Miri) the
//! memory is one simulated block per thread and an address is an offset into it, so the same
//! runtime code runs on both.
//!
//! Every raw-pointer access of the runtime is here: the fixed slots generated code reads and
//! writes (`RET`, `ARGS`, `CONSTS`), byte slices at an address, stores into reserved bytes, and
//! the memory's size and growth.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::*;
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::*;

/// A Wasm page.
pub(crate) const PAGE: usize = 65536;

/// One argument slot (`ARG_SLOT_BYTES`): tag at +0, bits at +8.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) tag: i32,
    _pad: i32,
    pub(crate) bits: i64,
}

#[cfg(target_arch = "wasm32")]
impl Slot {
    const ZERO: Slot = Slot {
        tag: 0,
        _pad: 0,
        bits: 0,
    };
}

/// The address an `i32` from the boundary names (never sign-extended).
#[inline]
pub(crate) fn at(addr: i32) -> usize {
    addr as u32 as usize
}

/// The `n` bytes at `addr` (an empty slice at `addr`, or anywhere for address 0, when `n` is 0).
///
/// # Safety
/// `[addr, addr + n)` is inside the memory and is not written while the slice is used. The
/// runtime's slices are bytes of the current message (payload, constants, arena below its top),
/// which nothing writes before the next message.
#[inline]
pub(crate) unsafe fn bytes(addr: usize, n: usize) -> &'static [u8] {
    if n == 0 && addr == 0 {
        return &[];
    }
    check(addr, n);
    // Safety: the caller's contract.
    unsafe { core::slice::from_raw_parts(ptr(addr), n) }
}

/// The `n` bytes at `addr`, to be written.
///
/// # Safety
/// `[addr, addr + n)` is inside the memory and nothing else refers to it while the slice lives.
#[inline]
pub(crate) unsafe fn bytes_mut<'a>(addr: usize, n: usize) -> &'a mut [u8] {
    if n == 0 {
        return &mut [];
    }
    check(addr, n);
    // Safety: the caller's contract.
    unsafe { core::slice::from_raw_parts_mut(ptr(addr), n) }
}

/// Copies `b` to `dst`. The output is written in many small pieces; `memory.copy` (what
/// `copy_nonoverlapping` becomes) is a call out of the sandbox in wasmtime, dearer than a few
/// word moves for those, so short pieces are moved by hand.
///
/// # Safety
/// `[dst, dst + b.len())` is inside the memory, does not overlap `b`, and nothing refers to it.
#[inline]
pub(crate) unsafe fn copy_to(dst: usize, b: &[u8]) {
    check(dst, b.len());
    let p = ptr(dst);
    if b.len() > 32 {
        // Safety: the caller's contract.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), p, b.len()) };
        return;
    }
    let mut i = 0;
    while let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        // Safety: the caller's contract; `i + 8 <= b.len()`. Unaligned stores are fine.
        unsafe { core::ptr::write_unaligned(p.add(i).cast::<[u8; 8]>(), *chunk) };
        i += 8;
    }
    while i < b.len() {
        // Safety: as above, `i < b.len()`.
        unsafe { *p.add(i) = b[i] };
        i += 1;
    }
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    use core::arch::wasm32;
    use core::ptr::{addr_of, addr_of_mut};

    use super::{Slot, PAGE};
    use crate::shared::{CONSTS_CAP, MAX_ARGS};

    // The slots generated code reads and writes: their addresses are exported (`rt_*_addr`), and
    // the compiler reads them from those exports' bodies. Only raw-pointer reads and writes
    // touch them; no reference to them is ever made.
    static mut RET: i64 = 0;
    static mut ARGS: [Slot; MAX_ARGS] = [Slot::ZERO; MAX_ARGS];
    static mut CONSTS: [u8; CONSTS_CAP] = [0; CONSTS_CAP];

    extern "C" {
        static __heap_base: u8;
    }

    /// The pointer at `addr`.
    #[inline]
    pub(crate) fn ptr(addr: usize) -> *mut u8 {
        addr as *mut u8
    }

    /// The address of `b`'s first byte.
    #[inline]
    pub(crate) fn addr_of_bytes(b: &[u8]) -> usize {
        b.as_ptr() as usize
    }

    /// In bounds by construction on wasm32: an access outside the memory traps.
    #[inline(always)]
    pub(super) fn check(_addr: usize, _n: usize) {}

    /// Where the return bits go.
    #[inline]
    pub(crate) fn ret_addr() -> usize {
        addr_of!(RET) as usize
    }

    /// Where the argument slots start.
    #[inline]
    pub(crate) fn args_addr() -> usize {
        addr_of!(ARGS) as usize
    }

    /// Where the constants start (the compiler's data segment fills them).
    #[inline]
    pub(crate) fn consts_addr() -> usize {
        addr_of!(CONSTS) as usize
    }

    /// Leaves the bits of a helper's result where generated code reads them.
    #[inline]
    pub(crate) fn set_ret(bits: i64) {
        // Safety: single-threaded; a plain store to the static, no reference is made.
        unsafe { *addr_of_mut!(RET) = bits };
    }

    /// Argument slot `i` as generated code left it (a volatile read: only generated code writes
    /// it). Panics (traps) past `MAX_ARGS`.
    #[inline]
    pub(crate) fn arg(i: usize) -> Slot {
        // Safety: single-threaded; a read of the static by raw pointer, index bounds-checked.
        unsafe { core::ptr::read_volatile(addr_of!(ARGS[i])) }
    }

    /// The first address after the module's static data.
    #[inline]
    pub(crate) fn heap_base() -> usize {
        addr_of!(__heap_base) as usize
    }

    /// The memory's size in bytes.
    #[inline]
    pub(crate) fn size() -> usize {
        wasm32::memory_size(0) * PAGE
    }

    /// Grows the memory by `pages`; false when it cannot.
    #[inline]
    pub(crate) fn grow(pages: usize) -> bool {
        wasm32::memory_grow(0, pages) != usize::MAX
    }

    /// Ends the call (a trap the host reports).
    #[inline]
    pub(crate) fn trap() -> ! {
        wasm32::unreachable()
    }
}

/// One simulated memory per thread (one thread plays one instance): a block reserved for
/// [`native::MAX_PAGES`] pages, of which [`native::size`] bytes are "in" the memory. The slots
/// sit at fixed addresses below the heap, as the statics do in the Wasm build.
#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
    use std::cell::Cell;

    use super::{Slot, PAGE};
    use crate::shared::{ARG_SLOT_BYTES, CONSTS_CAP, MAX_ARGS};

    /// Address 0 is never valid (the host reads 0 from `sluice_alloc` as failure).
    const RET_AT: usize = 16;
    const ARGS_AT: usize = 32;
    const CONSTS_AT: usize = ARGS_AT + MAX_ARGS * ARG_SLOT_BYTES as usize;
    const HEAP_AT: usize = CONSTS_AT + CONSTS_CAP;
    /// The pages a fresh memory has: the static data and one page of heap.
    pub(crate) const INITIAL_PAGES: usize = HEAP_AT.div_ceil(PAGE) + 1;
    /// The most pages the memory grows to (then `grow` fails, as under a memory cap).
    pub(crate) const MAX_PAGES: usize = 32;

    fn layout() -> Layout {
        match Layout::from_size_align(MAX_PAGES * PAGE, 16) {
            Ok(l) => l,
            Err(_) => unreachable!("a constant layout"),
        }
    }

    /// The block; freed when the thread ends.
    struct Block {
        base: *mut u8,
        pages: Cell<usize>,
    }

    impl Block {
        fn new() -> Block {
            // Safety: the layout has a non-zero size.
            let base = unsafe { alloc_zeroed(layout()) };
            if base.is_null() {
                handle_alloc_error(layout());
            }
            Block {
                base,
                pages: Cell::new(INITIAL_PAGES),
            }
        }
    }

    impl Drop for Block {
        fn drop(&mut self) {
            // Safety: allocated in `new` with this layout; no address outlives the thread.
            unsafe { dealloc(self.base, layout()) };
        }
    }

    thread_local! {
        static MEM: Block = Block::new();
    }

    fn base() -> *mut u8 {
        MEM.with(|m| m.base)
    }

    /// The pointer at `addr` (derived from the block, so it carries the block's provenance).
    /// Panics past the reserved block.
    #[inline]
    pub(crate) fn ptr(addr: usize) -> *mut u8 {
        assert!(addr <= MAX_PAGES * PAGE, "address {addr} past the memory");
        // Safety: within the block (or one past its end).
        unsafe { base().add(addr) }
    }

    /// The address of `b`'s first byte. An empty slice outside the memory (a `b""` constant)
    /// is address 0; a non-empty one is a bug of the runtime.
    pub(crate) fn addr_of_bytes(b: &[u8]) -> usize {
        let off = (b.as_ptr() as usize).wrapping_sub(base() as usize);
        if b.is_empty() && off > MAX_PAGES * PAGE {
            return 0;
        }
        assert!(
            off + b.len() <= size(),
            "a value of {} bytes outside the memory",
            b.len()
        );
        off
    }

    /// Panics when `[addr, addr + n)` is not inside the memory (the Wasm build traps).
    pub(super) fn check(addr: usize, n: usize) {
        assert!(
            addr.checked_add(n).is_some_and(|end| end <= size()),
            "access of {n} bytes at {addr}, past the memory ({} bytes)",
            size()
        );
    }

    /// Where the return bits go.
    pub(crate) fn ret_addr() -> usize {
        RET_AT
    }

    /// Where the argument slots start.
    pub(crate) fn args_addr() -> usize {
        ARGS_AT
    }

    /// Where the constants start.
    pub(crate) fn consts_addr() -> usize {
        CONSTS_AT
    }

    /// Leaves the bits of a helper's result where generated code reads them.
    pub(crate) fn set_ret(bits: i64) {
        // Safety: the slot is inside the block and aligned (the block is 16-aligned).
        unsafe { ptr(RET_AT).cast::<i64>().write(bits) };
    }

    /// Argument slot `i`. Panics past `MAX_ARGS`.
    pub(crate) fn arg(i: usize) -> Slot {
        assert!(i < MAX_ARGS, "argument {i} past the argument area");
        // Safety: inside the block, 8-aligned; the block is zeroed, so every slot is initialised.
        unsafe {
            core::ptr::read_volatile(ptr(ARGS_AT + i * ARG_SLOT_BYTES as usize).cast::<Slot>())
        }
    }

    /// The first address after the static data.
    pub(crate) fn heap_base() -> usize {
        HEAP_AT
    }

    /// The memory's size in bytes.
    pub(crate) fn size() -> usize {
        MEM.with(|m| m.pages.get()) * PAGE
    }

    /// Grows the memory by `pages`; false past [`MAX_PAGES`].
    pub(crate) fn grow(pages: usize) -> bool {
        MEM.with(|m| {
            let now = m.pages.get();
            if now + pages > MAX_PAGES {
                return false;
            }
            m.pages.set(now + pages);
            true
        })
    }

    /// Ends the call: the Wasm build traps, a test sees a panic.
    pub(crate) fn trap() -> ! {
        panic!("trap: unreachable")
    }

    /// Writes `b` at `addr`, as the host or a data segment would (tests only).
    #[cfg(test)]
    pub(crate) fn host_write(addr: usize, b: &[u8]) {
        check(addr, b.len());
        // Safety: inside the memory; the runtime holds no reference across exports.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), ptr(addr), b.len()) };
    }

    /// The `n` bytes at `addr`, copied out as the host reads them (tests only).
    #[cfg(test)]
    pub(crate) fn host_read(addr: usize, n: usize) -> Vec<u8> {
        check(addr, n);
        // Safety: inside the memory; copied before the runtime runs again.
        unsafe { core::slice::from_raw_parts(ptr(addr), n) }.to_vec()
    }
}
