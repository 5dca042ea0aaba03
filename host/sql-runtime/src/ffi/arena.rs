//! The runtime's state: a bump arena over the memory after the static data, holding the payload
//! buffer (kept across messages), the values built while a message runs and the output object
//! under construction (both reset at every message).
//!
//! One `&mut State` per exported call: [`with_state`] is the only place a reference to the state
//! is made; each export calls it once and passes the reference down. The values built here are
//! `&'static [u8]` slices of the memory: they live until the next message resets the arena, and
//! no export keeps one across calls (generated code keeps the address and length as bits).

use super::mem::{self, PAGE};
use crate::shared::MAX_TOP_FIELDS;
use crate::text::Sink;

/// A `fields` slot whose root member the payload does not have.
pub(crate) const NO_FIELD: u32 = u32::MAX;

/// Everything the runtime keeps between exported calls.
pub(crate) struct State {
    inited: bool,
    /// The arena's first free byte.
    top: usize,
    /// The end of the memory.
    end: usize,
    /// Where the arena starts (after the payload buffer).
    arena_base: usize,
    pay_ptr: usize,
    pay_cap: usize,
    /// The current message's payload.
    payload_addr: usize,
    payload_len: usize,
    /// The output object under construction: address, length, capacity and members written.
    out_ptr: usize,
    out_len: usize,
    out_cap: usize,
    out_items: u32,
    /// Where the value of each root member the rule reads starts in the payload (`rt_begin`'s
    /// field list, in order); [`NO_FIELD`] when the payload has no such member.
    pub(crate) fields: [u32; MAX_TOP_FIELDS],
}

impl State {
    const NEW: State = State {
        inited: false,
        top: 0,
        end: 0,
        arena_base: 0,
        pay_ptr: 0,
        pay_cap: 0,
        payload_addr: 0,
        payload_len: 0,
        out_ptr: 0,
        out_len: 0,
        out_cap: 0,
        out_items: 0,
        fields: [NO_FIELD; MAX_TOP_FIELDS],
    };

    #[inline]
    fn init(&mut self) {
        if !self.inited {
            self.top = (mem::heap_base() + 15) & !15;
            self.arena_base = self.top;
            self.end = mem::size();
            self.inited = true;
        }
    }

    /// Makes room for `n` more bytes at the top, growing the memory (or trapping when it cannot).
    #[inline]
    fn ensure(&mut self, n: usize) {
        let want = self.top.saturating_add(n);
        if want > self.end {
            let pages = (want - self.end).div_ceil(PAGE);
            if !mem::grow(pages) {
                mem::trap();
            }
            self.end += pages * PAGE;
        }
    }

    /// Reserves `n` bytes at the top of the arena; returns their address.
    #[inline]
    pub(crate) fn alloc(&mut self, n: usize) -> usize {
        self.ensure(n);
        let p = self.top;
        self.top += n;
        p
    }

    /// Appends `b` at the top of the arena.
    #[inline]
    fn push(&mut self, b: &[u8]) {
        self.ensure(b.len());
        // Safety: `ensure` reserved the bytes; nothing refers to bytes at or above the top, and
        // `b` (payload, constants or arena below the top) does not overlap them.
        unsafe { mem::copy_to(self.top, b) };
        self.top += b.len();
    }

    /// The payload buffer of at least `size` bytes, reused while large enough. A larger one
    /// replaces it at the start of the arena, so this runs between messages.
    pub(crate) fn payload_buffer(&mut self, size: usize) -> usize {
        if size > self.pay_cap {
            let cap = size.max(4096).next_power_of_two();
            self.top = self.arena_base;
            let p = self.alloc(cap);
            self.pay_ptr = p;
            self.pay_cap = cap;
            self.arena_base = self.top;
        }
        self.pay_ptr
    }

    /// Starts a message whose payload is the `len` bytes at `addr`: empties the arena and the
    /// output. Every slice of the previous message is dead from here on.
    pub(crate) fn begin(&mut self, addr: usize, len: usize) {
        self.top = self.arena_base;
        self.out_len = 0;
        self.out_cap = 0;
        self.out_items = 0;
        self.payload_addr = addr;
        self.payload_len = len;
    }

    /// The current message's payload.
    #[inline]
    pub(crate) fn payload(&self) -> &'static [u8] {
        // Safety: the host wrote the payload before `rt_begin` named it; it stays until the next
        // message.
        unsafe { mem::bytes(self.payload_addr, self.payload_len) }
    }

    /// A value built at the top of the arena; nothing else allocates while it lives.
    pub(crate) fn builder(&mut self) -> Builder<'_> {
        let start = self.top;
        Builder { st: self, start }
    }

    /// Runs `f`, then gives back the arena it used: for temporary values only (a slice built in
    /// `f` must not outlive it).
    pub(crate) fn scratch<R>(&mut self, f: impl FnOnce(&mut State) -> R) -> R {
        let top = self.top;
        let r = f(self);
        self.top = top;
        r
    }

    /// `n` fresh bytes at the top of the arena, written by `fill`.
    pub(crate) fn fill(&mut self, n: usize, fill: impl FnOnce(&mut [u8])) -> &'static [u8] {
        let p = self.alloc(n);
        // Safety: `alloc` reserved the bytes and nothing else refers to them.
        fill(unsafe { mem::bytes_mut(p, n) });
        // Safety: as above; they stay until the next message.
        unsafe { mem::bytes(p, n) }
    }

    /// Lets the host write a value at the top of the arena: `call(ptr, cap)` writes at most
    /// `cap` bytes and returns the length of the whole value (negative for none), and is called
    /// again with that capacity when the value did not fit. `None` for a negative length.
    pub(crate) fn host_fill(
        &mut self,
        mut cap: usize,
        mut call: impl FnMut(*mut u8, i32) -> i32,
    ) -> Option<&'static [u8]> {
        loop {
            let p = self.alloc(cap);
            let n = call(mem::ptr(p), cap as i32);
            if n < 0 {
                self.top = p;
                return None;
            }
            let n = n as usize;
            if n <= cap {
                self.top = p + n;
                // Safety: the host wrote `n` bytes in the reserved `[p, p + cap)`.
                return Some(unsafe { mem::bytes(p, n) });
            }
            self.top = p;
            cap = n;
        }
    }

    /// Starts the output object (empty).
    pub(crate) fn out_begin(&mut self) {
        self.out_len = 0;
        self.out_items = 0;
    }

    /// The output object, to write to.
    #[inline]
    pub(crate) fn out(&mut self) -> Out<'_> {
        Out(self)
    }

    /// A comma before every member but the first.
    #[inline]
    pub(crate) fn out_sep(&mut self) {
        if self.out_items > 0 {
            self.out().put(b",");
        }
        self.out_items += 1;
    }

    /// The output written so far.
    pub(crate) fn out_bytes(&self) -> &'static [u8] {
        // Safety: the output buffer is arena of this message.
        unsafe { mem::bytes(self.out_ptr, self.out_len) }
    }

    /// The arena's start and top (tests).
    #[cfg(test)]
    pub(crate) fn arena(&self) -> (usize, usize) {
        (self.arena_base, self.top)
    }
}

/// Builds one value at the top of the arena.
pub(crate) struct Builder<'s> {
    st: &'s mut State,
    start: usize,
}

impl Builder<'_> {
    /// The value built.
    pub(crate) fn bytes(self) -> &'static [u8] {
        // Safety: the bytes were pushed to the arena and stay until the next message.
        unsafe { mem::bytes(self.start, self.st.top - self.start) }
    }
}

impl Sink for Builder<'_> {
    #[inline]
    fn put(&mut self, b: &[u8]) {
        self.st.push(b);
    }
}

/// The output object under construction: a buffer in the arena, moved to the top and doubled
/// when full.
pub(crate) struct Out<'s>(&'s mut State);

impl Sink for Out<'_> {
    #[inline]
    fn put(&mut self, b: &[u8]) {
        let s = &mut *self.0;
        if s.out_len + b.len() > s.out_cap {
            let cap = (s.out_cap * 2).max(s.out_len + b.len()).max(512);
            let p = s.alloc(cap);
            // Safety: `[p, p + cap)` is fresh arena above the old buffer, and `cap >= out_len`.
            unsafe { mem::copy_to(p, s.out_bytes()) };
            s.out_ptr = p;
            s.out_cap = cap;
        }
        // Safety: within the buffer's reserved capacity, past what was written; `b` is a value
        // (payload, constants or arena outside the buffer).
        unsafe { mem::copy_to(s.out_ptr + s.out_len, b) };
        s.out_len += b.len();
    }
}

#[cfg(target_arch = "wasm32")]
static mut ST: State = State::NEW;

/// Runs `f` with the runtime's state; each export calls this once.
#[cfg(target_arch = "wasm32")]
#[inline]
pub(crate) fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // Safety: the guest is single-threaded and no export is re-entered (no import calls back
    // into the module); this is the only place a reference to `ST` is made, so it is the only
    // one while `f` runs. The native build checks the nesting with a `RefCell`.
    let s = unsafe { &mut *core::ptr::addr_of_mut!(ST) };
    s.init();
    f(s)
}

#[cfg(not(target_arch = "wasm32"))]
std::thread_local! {
    static ST: core::cell::RefCell<State> = const { core::cell::RefCell::new(State::NEW) };
}

/// Runs `f` with this thread's runtime state (one thread plays one instance); panics when
/// nested, which the Wasm build must never be.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    ST.with(|st| {
        let mut s = st.borrow_mut();
        s.init();
        f(&mut s)
    })
}
