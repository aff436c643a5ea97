//! The sandboxed JavaScript runtime that runs constitutions and ballots.
//!
//! Every call gets a fresh QuickJS runtime and context on a thread of its own, so that a script
//! can never leave state behind for the next call, the stack limit is measured against a stack
//! of known size, and a panic anywhere inside stays an error. The global environment is
//! deterministic: there is no `Math.random`, no `Date.now`, no `new Date()` without arguments,
//! no `performance`, no `WeakRef`, no timers and no I/O. There is no `RegExp` either: QuickJS's
//! regular expression engine never polls the interrupt handler, so a backtracking pattern
//! could run for ever. Execution is bounded by a fuel counter
//! kept by the interrupt handler (QuickJS polls it every 10,000 function calls and backward
//! jumps), memory by the QuickJS heap limit and recursion by the QuickJS stack limit, all taken
//! from [`JsRuntimeOptions`].
//!
//! Scripts reach the store through the global `ccf` object, modelled on CCF's so that CCF-style
//! constitutions port easily: `ccf.kv["map"]` (`get`, `has`, `set`, `delete`, `forEach`, `size`
//! over `ArrayBuffer` keys and values), `ccf.strToBuf`, `ccf.bufToStr`,
//! `ccf.jsonCompatibleToBuf`, `ccf.bufToJsonCompatible`, `ccf.crypto.pemToId` and
//! `ccf.crypto.isValidX509CertBundle`. Only maps under [`GOV_MAP_PREFIX`] and
//! [`INTERNAL_MAP_PREFIX`] are reachable, and only [`KvAccess::ReadWrite`] calls (`apply`)
//! may write them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use charter_kv::{Snapshot, Tx};
use rquickjs::allocator::{Allocator, RustAllocator};
use rquickjs::context::intrinsic;
use rquickjs::function::{Opt, Rest};
use rquickjs::{
    Array, ArrayBuffer, Context, Ctx, Exception, Function, Module, Object, Runtime, Value,
};

pub use crate::constitution::Constitution;
use crate::tables::{JsRuntimeOptions, GOV_MAP_PREFIX, INTERNAL_MAP_PREFIX};

/// Smallest stack limit a run gets, whatever the options say (QuickJS reads 0 as "no limit").
pub const JS_STACK_BYTES_MIN: u64 = 64 << 10;
/// Largest stack limit a run gets: the run's thread reserves this much address space.
pub const JS_STACK_BYTES_MAX: u64 = 64 << 20;
/// Stack the run's thread has beyond the QuickJS limit, for the Rust frames around the
/// interpreter and for the C frames QuickJS pushes between two limit checks.
const THREAD_STACK_MARGIN_BYTES: u64 = 2 << 20;
/// Allocated bytes that cost one unit of fuel, about what one poll's worth of interpretation
/// (10,000 ticks) takes in time.
pub const ALLOCATED_BYTES_PER_FUEL: u64 = 16 << 10;
/// Bytes QuickJS may allocate, past every limit, to build the uncatchable error with which the
/// interrupt handler stops a script (an error object, its message and a short stack trace).
const INTERRUPT_ALLOWANCE_BYTES: usize = 64 << 10;
/// Largest allocation admitted once the fuel is gone (until the next poll stops the script).
const EXHAUSTED_ALLOCATION_BYTES_MAX: usize = 16 << 10;
/// Entries one native scan returns to `forEach`; the script pages through larger maps.
pub const KV_SCAN_PAGE_ENTRIES: usize = 256;

const _: () = assert!(JS_STACK_BYTES_MIN < JS_STACK_BYTES_MAX);
const _: () = assert!(JS_STACK_BYTES_MAX + THREAD_STACK_MARGIN_BYTES <= usize::MAX as u64);
const _: () = assert!(KV_SCAN_PAGE_ENTRIES > 0);

/// Why a constitution or ballot run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsError {
    /// A syntax error, or a missing export.
    #[error("script does not compile: {0}")]
    Compile(String),
    /// An uncaught exception (message and stack, if available).
    #[error("uncaught exception: {0}")]
    Exception(String),
    /// The execution fuel ran out.
    #[error("execution fuel exhausted")]
    OutOfTime,
    /// The heap limit was hit.
    #[error("JavaScript heap limit reached")]
    OutOfMemory,
    /// A returned value has the wrong shape.
    #[error("bad result: {0}")]
    BadResult(String),
    /// The script tried to reach a map it may not (any map outside the governance prefixes,
    /// or a write outside `apply`). Reported even if the script caught the exception.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The runtime itself failed: its thread could not start, or it panicked (a bug).
    #[error("JavaScript runtime failure: {0}")]
    Internal(String),
}

/// What a constitution's `validate` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Whether the proposal is well-formed.
    pub valid: bool,
    /// Why not (or a short confirmation).
    pub description: String,
}

/// What a run may do to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvAccess {
    /// Reads of governance maps only (`validate`, `resolve`, ballots).
    ReadOnly,
    /// Reads and writes of governance maps (`apply`).
    ReadWrite,
}

/// An argument passed to an exported function.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    /// A JavaScript string.
    Str(&'a str),
    /// An array of `{member_id, vote}` objects.
    Votes(&'a [(String, bool)]),
}

/// One run of a module: compile `source`, evaluate it, check that `exports` are functions,
/// and call `invoke` if given.
#[derive(Clone, Debug)]
pub(crate) struct Call<'a> {
    /// Module name, shown in stack traces.
    pub module_name: &'a str,
    /// Module source.
    pub source: &'a str,
    /// Exports that must exist and be functions.
    pub exports: &'a [&'a str],
    /// Export to call, with its arguments.
    pub invoke: Option<(&'a str, &'a [Arg<'a>])>,
    /// What the run may do to the store.
    pub access: KvAccess,
}

/// Evaluates a ballot module exporting `vote(proposal, proposerId)` and returns its boolean.
///
/// `proposal_json` is the proposal body as a JSON string, as in CCF. The ballot may read the
/// governance maps through `tx` but not write them.
///
/// # Errors
///
/// Any [`JsError`]; [`JsError::BadResult`] if `vote` returns anything but a boolean.
pub fn run_ballot(
    ballot_source: &str,
    tx: &mut Tx,
    proposal_json: &str,
    proposer_id: &str,
    limits: JsRuntimeOptions,
) -> Result<bool, JsError> {
    let args = [Arg::Str(proposal_json), Arg::Str(proposer_id)];
    let call = Call {
        module_name: "ballot",
        source: ballot_source,
        exports: &["vote"],
        invoke: Some(("vote", &args)),
        access: KvAccess::ReadOnly,
    };
    match run(&call, tx, limits)? {
        Some(serde_json::Value::Bool(vote)) => Ok(vote),
        other => Err(JsError::BadResult(format!(
            "vote must return a boolean, not {}",
            describe_json(&other)
        ))),
    }
}

/// A short description of a returned value for error messages.
pub(crate) fn describe_json(value: &Option<serde_json::Value>) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    match value {
        None => "undefined".to_owned(),
        Some(value) => {
            let text = value.to_string();
            if text.chars().count() <= SHOWN_CHARS_MAX {
                text
            } else {
                let shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
                format!("{shown}...")
            }
        }
    }
}

/// Runs `call` in a fresh sandbox with `tx` lent to the script, and returns what the invoked
/// function returned, as JSON (`None` for `undefined`, or when nothing is invoked).
///
/// # Errors
///
/// Any [`JsError`]. Writes the script made before failing stay in `tx`; callers discard the
/// transaction on error.
pub(crate) fn run(
    call: &Call<'_>,
    tx: &mut Tx,
    limits: JsRuntimeOptions,
) -> Result<Option<serde_json::Value>, JsError> {
    let stack_bytes = limits
        .max_stack_bytes
        .clamp(JS_STACK_BYTES_MIN, JS_STACK_BYTES_MAX);
    // Cannot truncate: bounded by JS_STACK_BYTES_MAX + margin, asserted to fit usize above.
    let thread_stack_bytes = (stack_bytes + THREAD_STACK_MARGIN_BYTES) as usize;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("charter-js".to_owned())
            .stack_size(thread_stack_bytes)
            .spawn_scoped(scope, || run_here(call, tx, limits, stack_bytes))
            .map_err(|error| JsError::Internal(format!("cannot start thread: {error}")))?;
        handle
            .join()
            .map_err(|_| JsError::Internal("the JavaScript runtime panicked".to_owned()))?
    })
}

/// Fuel and heap accounting for one run, shared by the interrupt handler and the allocator.
///
/// Fuel burns two ways, both deterministic: one unit per interrupt-handler poll (QuickJS polls
/// every 10,000 function calls and backward jumps), and one unit per
/// [`ALLOCATED_BYTES_PER_FUEL`] bytes allocated (cumulatively, freed or not). Without the
/// second, a loop that allocates a megabyte per iteration would run 10,000 iterations between
/// two polls; with it, the allocator itself stops the run.
struct Meter {
    polls: Cell<u64>,
    /// Bytes allocated since metering started.
    allocated_bytes: Cell<u64>,
    /// Whether allocations are charged (not while the runtime and `ccf` are being built).
    charging: Cell<bool>,
    max_fuel: u64,
    exhausted: Cell<bool>,
    /// Bytes currently allocated (usable sizes, so the same on every platform).
    heap_bytes: Cell<usize>,
    max_heap_bytes: usize,
    /// Whether an allocation was refused for lack of heap.
    heap_refused: Cell<bool>,
    /// Bytes the interrupt's error may still allocate once the fuel is gone.
    allowance_bytes: Cell<usize>,
}

impl Meter {
    fn fuel_used(&self) -> u64 {
        self.polls
            .get()
            .saturating_add(self.allocated_bytes.get() / ALLOCATED_BYTES_PER_FUEL)
    }

    /// Called by the interrupt handler: burns one unit; true stops the script.
    fn poll(&self) -> bool {
        self.polls.set(self.polls.get().saturating_add(1));
        if self.fuel_used() > self.max_fuel {
            self.exhausted.set(true);
        }
        if self.exhausted.get() {
            // QuickJS now builds the uncatchable "interrupted" error. If the heap were full
            // and that allocation failed, it would throw a catchable null instead, and a
            // script catching in a loop would never stop; so the error has room past the
            // heap limit.
            self.allowance_bytes.set(INTERRUPT_ALLOWANCE_BYTES);
        }
        self.exhausted.get()
    }

    /// Admits an allocation of `bytes` that gives back `released` bytes, or records why not.
    ///
    /// The heap limit refuses (the interrupt's allowance may go past it), and so does a large
    /// allocation once the fuel is gone. Refusing every allocation for lack of fuel crashed
    /// QuickJS (it does not recover from every failed small allocation), so running out of
    /// fuel otherwise just marks the run exhausted, and the interrupt handler stops it at its
    /// next poll.
    fn admit(&self, bytes: usize, released: usize) -> bool {
        if self.exhausted.get() && bytes > EXHAUSTED_ALLOCATION_BYTES_MAX {
            // Out of fuel: no more large buffers until the next poll stops the script. Only
            // large ones are refused: QuickJS handles those failing (strings, arrays and
            // array buffers over the memory limit), unlike some small internal ones.
            self.heap_refused.set(true);
            return false;
        }
        let used = self.heap_bytes.get().saturating_sub(released);
        let within_heap = used
            .checked_add(bytes)
            .is_some_and(|total| total <= self.max_heap_bytes);
        if !within_heap {
            let allowance = self.allowance_bytes.get();
            if bytes <= allowance {
                self.allowance_bytes.set(allowance - bytes);
                return true;
            }
            self.heap_refused.set(true);
            return false;
        }
        if self.charging.get() {
            let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
            self.allocated_bytes
                .set(self.allocated_bytes.get().saturating_add(bytes));
            if self.fuel_used() > self.max_fuel {
                self.exhausted.set(true);
            }
        }
        true
    }

    fn allocated(&self, usable: usize) {
        self.heap_bytes
            .set(self.heap_bytes.get().saturating_add(usable));
    }

    fn freed(&self, usable: usize) {
        self.heap_bytes
            .set(self.heap_bytes.get().saturating_sub(usable));
    }
}

/// QuickJS's allocator for a run: Rust's global allocator (through rquickjs's
/// [`RustAllocator`]) under a byte budget. Unlike QuickJS's own limit, which counts libc's
/// `malloc_usable_size`, the count is the same on every platform, and a refusal is recorded so
/// that it reads as [`JsError::OutOfMemory`] even when QuickJS has no memory left to build the
/// "out of memory" error.
struct BudgetAllocator {
    meter: Rc<Meter>,
}

// SAFETY: every pointer comes from, and goes back to, `RustAllocator`, which upholds the
// contract (a usize-aligned region of at least the requested size, and its usable size);
// this wrapper only refuses (returns null) before calling it and keeps a count of the usable
// sizes. QuickJS never calls `realloc` with a null pointer or a zero size (js_realloc_rt
// turns those into malloc and free).
unsafe impl Allocator for BudgetAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.meter.admit(size, 0) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.alloc(size);
        if !ptr.is_null() {
            // SAFETY: `ptr` was just returned by RustAllocator and is not null.
            let usable = unsafe { RustAllocator::usable_size(ptr) };
            self.meter.allocated(usable);
        }
        ptr
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        let Some(total) = count.checked_mul(size) else {
            self.meter.heap_refused.set(true);
            return std::ptr::null_mut();
        };
        if !self.meter.admit(total, 0) {
            return std::ptr::null_mut();
        }
        let ptr = RustAllocator.calloc(count, size);
        if !ptr.is_null() {
            // SAFETY: as in `alloc`.
            let usable = unsafe { RustAllocator::usable_size(ptr) };
            self.meter.allocated(usable);
        }
        ptr
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        // SAFETY: the caller passes a live pointer from this allocator.
        let usable = unsafe { RustAllocator::usable_size(ptr) };
        self.meter.freed(usable);
        // SAFETY: as above.
        unsafe { RustAllocator.dealloc(ptr) }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a live, non-null pointer from this allocator.
        let old_usable = unsafe { RustAllocator::usable_size(ptr) };
        if !self.meter.admit(new_size, old_usable) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above; on failure the old block stays valid and counted.
        let new_ptr = unsafe { RustAllocator.realloc(ptr, new_size) };
        if !new_ptr.is_null() {
            // SAFETY: `new_ptr` was just returned by RustAllocator and is not null.
            let new_usable = unsafe { RustAllocator::usable_size(new_ptr) };
            self.meter.freed(old_usable);
            self.meter.allocated(new_usable);
        }
        new_ptr
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: the caller passes a live pointer from this allocator.
        unsafe { RustAllocator::usable_size(ptr) }
    }
}

/// The store as the natives see it during a run.
struct KvState {
    tx: Tx,
    access: KvAccess,
    /// The first forbidden access, if any.
    forbidden: Option<String>,
}

/// Lends the caller's transaction to the natives for the length of a run and gives it back on
/// drop, even if the run unwinds.
struct Lent<'a> {
    caller: &'a mut Tx,
    state: Rc<RefCell<KvState>>,
}

impl<'a> Lent<'a> {
    fn new(caller: &'a mut Tx, access: KvAccess) -> Lent<'a> {
        // A placeholder over an empty snapshot takes the caller's place while the run holds the
        // real transaction; it is swapped back in `drop`.
        let mut placeholder = Tx::new(Snapshot::default());
        std::mem::swap(caller, &mut placeholder);
        let state = Rc::new(RefCell::new(KvState {
            tx: placeholder,
            access,
            forbidden: None,
        }));
        Lent { caller, state }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        // No native holds a borrow once the run has returned or unwound past the runtime.
        if let Ok(mut state) = self.state.try_borrow_mut() {
            std::mem::swap(self.caller, &mut state.tx);
        }
    }
}

/// The body of [`run`], on the run's own thread.
fn run_here(
    call: &Call<'_>,
    tx: &mut Tx,
    limits: JsRuntimeOptions,
    stack_bytes: u64,
) -> Result<Option<serde_json::Value>, JsError> {
    let lent = Lent::new(tx, call.access);
    let meter = Rc::new(Meter {
        polls: Cell::new(0),
        allocated_bytes: Cell::new(0),
        charging: Cell::new(false),
        max_fuel: limits.max_execution_fuel,
        exhausted: Cell::new(false),
        heap_bytes: Cell::new(0),
        max_heap_bytes: usize::try_from(limits.max_heap_bytes).unwrap_or(usize::MAX),
        heap_refused: Cell::new(false),
        allowance_bytes: Cell::new(0),
    });
    let allocator = BudgetAllocator {
        meter: Rc::clone(&meter),
    };
    let runtime = Runtime::new_with_alloc(allocator).map_err(|_| JsError::OutOfMemory)?;
    // Cannot truncate: clamped to JS_STACK_BYTES_MAX, asserted to fit usize above.
    runtime.set_max_stack_size(stack_bytes as usize);
    let handler_meter = Rc::clone(&meter);
    runtime.set_interrupt_handler(Some(Box::new(move || handler_meter.poll())));
    let context = Context::custom::<(
        intrinsic::Date,
        intrinsic::Eval,
        intrinsic::Json,
        intrinsic::Proxy,
        intrinsic::MapSet,
        intrinsic::TypedArrays,
        intrinsic::Promise,
        intrinsic::BigInt,
    )>(&runtime)
    .map_err(|_| JsError::OutOfMemory)?;
    let outcome = context.with(|ctx| {
        let result = evaluate(&ctx, call, &lent.state, &meter);
        result.map_err(|failure| classify(&ctx, failure))
    });
    let forbidden = lent.state.borrow_mut().forbidden.take();
    let outcome = if meter.exhausted.get() {
        Err(JsError::OutOfTime)
    } else if let Some(what) = forbidden {
        Err(JsError::Forbidden(what))
    } else if outcome.is_err() && meter.heap_refused.get() {
        // A script may catch an "out of memory" error and carry on; only a run that failed
        // after running out of heap counts as out of memory.
        Err(JsError::OutOfMemory)
    } else {
        outcome
    };
    drop(context);
    drop(runtime);
    drop(lent);
    outcome
}

/// How a run failed, before the exception value is read.
enum Failure {
    /// Compiling the module failed.
    Compile(rquickjs::Error),
    /// Running it failed.
    Run(rquickjs::Error),
    /// Something else, already described.
    Done(JsError),
}

/// Turns a failure into a [`JsError`], reading the pending exception if there is one.
fn classify(ctx: &Ctx<'_>, failure: Failure) -> JsError {
    let (error, compiling) = match failure {
        Failure::Done(error) => return error,
        Failure::Compile(error) => (error, true),
        Failure::Run(error) => (error, false),
    };
    let text = match error {
        rquickjs::Error::Allocation => return JsError::OutOfMemory,
        rquickjs::Error::Exception => {
            let value = ctx.catch();
            if let Some(exception) = value.as_exception() {
                let message = exception.message().unwrap_or_default();
                if message == "out of memory" {
                    return JsError::OutOfMemory;
                }
                let name: Option<String> = exception.get("name").ok();
                let mut text = match name {
                    Some(name) if !name.is_empty() => format!("{name}: {message}"),
                    _ => message,
                };
                if let Some(stack) = exception.stack().filter(|stack| !stack.is_empty()) {
                    text.push('\n');
                    text.push_str(stack.trim_end());
                }
                text
            } else {
                describe_value(ctx, value)
            }
        }
        other => other.to_string(),
    };
    if compiling {
        JsError::Compile(text)
    } else {
        JsError::Exception(text)
    }
}

/// Describes a thrown value that is not an `Error`.
fn describe_value<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> String {
    if let Some(text) = value.as_string().and_then(|text| text.to_string().ok()) {
        return text;
    }
    match ctx.json_stringify(value) {
        Ok(Some(text)) => text
            .to_string()
            .unwrap_or_else(|_| "a value that is not valid UTF-8".to_owned()),
        _ => "a value that cannot be shown".to_owned(),
    }
}

/// Installs `ccf`, compiles and evaluates the module, checks its exports and makes the call.
fn evaluate<'js>(
    ctx: &Ctx<'js>,
    call: &Call<'_>,
    state: &Rc<RefCell<KvState>>,
    meter: &Meter,
) -> Result<Option<serde_json::Value>, Failure> {
    install_globals(ctx, state).map_err(Failure::Run)?;
    // The script's own work starts here; building the sandbox costs it nothing.
    meter.charging.set(true);
    let module =
        Module::declare(ctx.clone(), call.module_name, call.source).map_err(Failure::Compile)?;
    let (module, promise) = module.eval().map_err(Failure::Run)?;
    promise.finish::<()>().map_err(Failure::Run)?;
    let mut functions = Vec::with_capacity(call.exports.len());
    for export in call.exports {
        let value: Value<'js> = module.get(*export).map_err(Failure::Run)?;
        match value.into_function() {
            Some(function) => functions.push((*export, function)),
            None => {
                return Err(Failure::Done(JsError::Compile(format!(
                    "the module does not export a function named {export}"
                ))))
            }
        }
    }
    let Some((name, args)) = call.invoke else {
        return Ok(None);
    };
    let function = match functions.iter().find(|(export, _)| *export == name) {
        Some((_, function)) => function.clone(),
        None => module
            .get::<_, Value<'js>>(name)
            .map_err(Failure::Run)?
            .into_function()
            .ok_or_else(|| {
                Failure::Done(JsError::Compile(format!(
                    "the module does not export a function named {name}"
                )))
            })?,
    };
    let mut values = Vec::with_capacity(args.len());
    for arg in args {
        values.push(arg_value(ctx, *arg).map_err(Failure::Run)?);
    }
    let mut result: Value<'js> = function.call((Rest(values),)).map_err(Failure::Run)?;
    if let Some(promise) = result.as_promise() {
        // An async export: drive the job queue (still under the fuel limit) until it settles.
        let settled = promise.finish::<Value<'js>>();
        result = match settled {
            Err(rquickjs::Error::WouldBlock) => {
                return Err(Failure::Done(JsError::BadResult(format!(
                    "{name} returned a promise that never settles"
                ))))
            }
            other => other.map_err(Failure::Run)?,
        };
    }
    to_json(ctx, result, name)
}

/// Converts a returned value to JSON.
fn to_json<'js>(
    ctx: &Ctx<'js>,
    value: Value<'js>,
    name: &str,
) -> Result<Option<serde_json::Value>, Failure> {
    if value.is_undefined() {
        return Ok(None);
    }
    if let Some(flag) = value.as_bool() {
        return Ok(Some(serde_json::Value::Bool(flag)));
    }
    let Some(text) = ctx.json_stringify(value).map_err(Failure::Run)? else {
        return Err(Failure::Done(JsError::BadResult(format!(
            "{name} returned a value with no JSON form"
        ))));
    };
    let text = text.to_string().map_err(Failure::Run)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| Failure::Done(JsError::BadResult(format!("{name}: {error}"))))
}

/// Builds one argument.
fn arg_value<'js>(ctx: &Ctx<'js>, arg: Arg<'_>) -> rquickjs::Result<Value<'js>> {
    match arg {
        Arg::Str(text) => Ok(rquickjs::String::from_str(ctx.clone(), text)?.into_value()),
        Arg::Votes(votes) => {
            let array = Array::new(ctx.clone())?;
            for (index, (member_id, vote)) in votes.iter().enumerate() {
                let entry = Object::new(ctx.clone())?;
                entry.set("member_id", member_id.as_str())?;
                entry.set("vote", *vote)?;
                array.set(index, entry)?;
            }
            Ok(array.into_value())
        }
    }
}

/// Throws a JavaScript `Error` with `message`.
fn throw(ctx: &Ctx<'_>, message: &str) -> rquickjs::Error {
    Exception::throw_message(ctx, message)
}

/// Checks that the run may read (and, if `write`, write) `map`; records and throws otherwise.
fn check_map(ctx: &Ctx<'_>, state: &mut KvState, map: &str, write: bool) -> rquickjs::Result<()> {
    let reachable = map.starts_with(GOV_MAP_PREFIX) || map.starts_with(INTERNAL_MAP_PREFIX);
    let refusal = if !reachable {
        Some(format!(
            "map {map:?} is not a governance map (names start with {GOV_MAP_PREFIX:?} or \
             {INTERNAL_MAP_PREFIX:?})"
        ))
    } else if write && state.access == KvAccess::ReadOnly {
        Some(format!(
            "map {map:?} is read-only here: only apply may write"
        ))
    } else {
        None
    };
    match refusal {
        None => Ok(()),
        Some(refusal) => {
            let error = throw(ctx, &refusal);
            state.forbidden.get_or_insert(refusal);
            Err(error)
        }
    }
}

/// The bytes of an `ArrayBuffer` argument.
fn bytes_of<'js>(ctx: &Ctx<'js>, buffer: &ArrayBuffer<'js>) -> rquickjs::Result<Vec<u8>> {
    buffer
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| throw(ctx, "the ArrayBuffer is detached"))
}

/// Borrows the store state, or throws if a native is re-entered (which cannot happen: natives
/// call no JavaScript).
fn borrow_state<'s, 'js>(
    ctx: &Ctx<'js>,
    state: &'s Rc<RefCell<KvState>>,
) -> rquickjs::Result<std::cell::RefMut<'s, KvState>> {
    state
        .try_borrow_mut()
        .map_err(|_| throw(ctx, "the store is busy"))
}

/// Creates the natives and runs the prelude that builds `ccf` and removes the clock and RNG.
fn install_globals<'js>(ctx: &Ctx<'js>, state: &Rc<RefCell<KvState>>) -> rquickjs::Result<()> {
    let native = Object::new(ctx.clone())?;

    let s = Rc::clone(state);
    let kv_check = move |ctx: Ctx<'js>, map: String| -> rquickjs::Result<()> {
        let mut state = borrow_state(&ctx, &s)?;
        check_map(&ctx, &mut state, &map, false)
    };
    native.set("kvCheck", Function::new(ctx.clone(), kv_check)?)?;

    let s = Rc::clone(state);
    let kv_get = move |ctx: Ctx<'js>,
                       map: String,
                       key: ArrayBuffer<'js>|
          -> rquickjs::Result<Option<ArrayBuffer<'js>>> {
        let mut state = borrow_state(&ctx, &s)?;
        check_map(&ctx, &mut state, &map, false)?;
        let key = bytes_of(&ctx, &key)?;
        match state.tx.get(&map, &key) {
            Some(value) => Ok(Some(ArrayBuffer::new(ctx.clone(), value)?)),
            None => Ok(None),
        }
    };
    native.set("kvGet", Function::new(ctx.clone(), kv_get)?)?;

    let s = Rc::clone(state);
    let kv_has =
        move |ctx: Ctx<'js>, map: String, key: ArrayBuffer<'js>| -> rquickjs::Result<bool> {
            let mut state = borrow_state(&ctx, &s)?;
            check_map(&ctx, &mut state, &map, false)?;
            let key = bytes_of(&ctx, &key)?;
            Ok(state.tx.get(&map, &key).is_some())
        };
    native.set("kvHas", Function::new(ctx.clone(), kv_has)?)?;

    let s = Rc::clone(state);
    let kv_set = move |ctx: Ctx<'js>,
                       map: String,
                       key: ArrayBuffer<'js>,
                       value: ArrayBuffer<'js>|
          -> rquickjs::Result<()> {
        let mut state = borrow_state(&ctx, &s)?;
        check_map(&ctx, &mut state, &map, true)?;
        let key = bytes_of(&ctx, &key)?;
        let value = bytes_of(&ctx, &value)?;
        state
            .tx
            .try_put(&map, &key, &value)
            .map_err(|error| throw(&ctx, &error.to_string()))
    };
    native.set("kvSet", Function::new(ctx.clone(), kv_set)?)?;

    let s = Rc::clone(state);
    let kv_delete =
        move |ctx: Ctx<'js>, map: String, key: ArrayBuffer<'js>| -> rquickjs::Result<()> {
            let mut state = borrow_state(&ctx, &s)?;
            check_map(&ctx, &mut state, &map, true)?;
            let key = bytes_of(&ctx, &key)?;
            state
                .tx
                .try_remove(&map, &key)
                .map_err(|error| throw(&ctx, &error.to_string()))
        };
    native.set("kvDelete", Function::new(ctx.clone(), kv_delete)?)?;

    let s = Rc::clone(state);
    let kv_scan = move |ctx: Ctx<'js>,
                        map: String,
                        start_after: Opt<ArrayBuffer<'js>>|
          -> rquickjs::Result<Array<'js>> {
        let mut state = borrow_state(&ctx, &s)?;
        check_map(&ctx, &mut state, &map, false)?;
        let start_after = match &start_after.0 {
            Some(buffer) => Some(bytes_of(&ctx, buffer)?),
            None => None,
        };
        let page = state
            .tx
            .scan_prefix(&map, b"", start_after.as_deref(), KV_SCAN_PAGE_ENTRIES);
        drop(state);
        assert!(page.len() <= KV_SCAN_PAGE_ENTRIES);
        let array = Array::new(ctx.clone())?;
        for (index, (key, value)) in page.into_iter().enumerate() {
            let pair = Array::new(ctx.clone())?;
            pair.set(0, ArrayBuffer::new(ctx.clone(), key)?)?;
            pair.set(1, ArrayBuffer::new(ctx.clone(), value)?)?;
            array.set(index, pair)?;
        }
        Ok(array)
    };
    native.set("kvScan", Function::new(ctx.clone(), kv_scan)?)?;

    let str_to_buf = |ctx: Ctx<'js>, text: String| -> rquickjs::Result<ArrayBuffer<'js>> {
        ArrayBuffer::new(ctx, text.into_bytes())
    };
    native.set("strToBuf", Function::new(ctx.clone(), str_to_buf)?)?;

    let buf_to_str = |ctx: Ctx<'js>, buffer: ArrayBuffer<'js>| -> rquickjs::Result<String> {
        let bytes = bytes_of(&ctx, &buffer)?;
        String::from_utf8(bytes).map_err(|_| throw(&ctx, "the buffer is not valid UTF-8"))
    };
    native.set("bufToStr", Function::new(ctx.clone(), buf_to_str)?)?;

    let pem_to_id = |ctx: Ctx<'js>, pem: String| -> rquickjs::Result<String> {
        charter_crypto::Certificate::from_pem(&pem)
            .map(|cert| cert.fingerprint_hex())
            .map_err(|error| throw(&ctx, &format!("invalid certificate: {error}")))
    };
    native.set("pemToId", Function::new(ctx.clone(), pem_to_id)?)?;

    let is_bundle = |pem: String| -> bool { is_valid_cert_bundle(&pem) };
    native.set(
        "isValidX509CertBundle",
        Function::new(ctx.clone(), is_bundle)?,
    )?;

    let prelude: Function<'js> = ctx.eval(PRELUDE)?;
    prelude.call::<_, ()>((native, KV_SCAN_PAGE_ENTRIES))
}

/// True if `pem` is one or more PEM certificates that parse, and nothing else but whitespace.
pub fn is_valid_cert_bundle(pem: &str) -> bool {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = pem.trim();
    let mut count = 0usize;
    while !rest.is_empty() {
        if !rest.starts_with(BEGIN) {
            return false;
        }
        let Some(end) = rest.find(END) else {
            return false;
        };
        let block = &rest[..end + END.len()];
        if charter_crypto::Certificate::from_pem(block).is_err() {
            return false;
        }
        count += 1;
        rest = rest[end + END.len()..].trim_start();
    }
    count > 0
}

/// Builds `ccf` from the natives and makes the global environment deterministic. Evaluated as
/// a script; returns a function of the natives and the scan page size.
const PRELUDE: &str = r#"
(function (native, pageEntries) {
  "use strict";
  // The clock and the RNG: a constitution must give the same result on every node.
  const RealDate = Date;
  function SafeDate(...args) {
    if (new.target === undefined) {
      throw new TypeError("Date() reads the clock and is not available");
    }
    if (args.length === 0) {
      throw new TypeError("new Date() without arguments reads the clock and is not available");
    }
    return Reflect.construct(RealDate, args, new.target);
  }
  Object.defineProperty(SafeDate, "name", { value: "Date" });
  SafeDate.prototype = RealDate.prototype;
  Object.defineProperty(RealDate.prototype, "constructor", {
    value: SafeDate, writable: true, configurable: true, enumerable: false,
  });
  SafeDate.UTC = RealDate.UTC;
  SafeDate.parse = RealDate.parse;
  Object.defineProperty(globalThis, "Date", {
    value: SafeDate, writable: true, configurable: true, enumerable: false,
  });
  delete Math.random;

  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const isView = ArrayBuffer.isView;

  function toBuf(value, what) {
    if (value instanceof ArrayBuffer) {
      return value;
    }
    if (isView(value)) {
      return value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength);
    }
    throw new TypeError(what + " must be an ArrayBuffer");
  }

  function makeMap(name) {
    native.kvCheck(name);
    const map = {
      get(key) {
        return native.kvGet(name, toBuf(key, "key"));
      },
      has(key) {
        return native.kvHas(name, toBuf(key, "key"));
      },
      set(key, value) {
        native.kvSet(name, toBuf(key, "key"), toBuf(value, "value"));
        return map;
      },
      delete(key) {
        native.kvDelete(name, toBuf(key, "key"));
      },
      forEach(callback) {
        if (typeof callback !== "function") {
          throw new TypeError("forEach needs a function");
        }
        let after;
        for (;;) {
          const page = after === undefined ? native.kvScan(name) : native.kvScan(name, after);
          if (page.length === 0) {
            return;
          }
          after = page[page.length - 1][0].slice(0);
          for (const [key, value] of page) {
            callback(value, key, map);
          }
          if (page.length < pageEntries) {
            return;
          }
        }
      },
      get size() {
        let count = 0;
        map.forEach(() => {
          count += 1;
        });
        return count;
      },
    };
    return Object.freeze(map);
  }

  const kv = new Proxy(Object.freeze({}), {
    get(_target, name) {
      return typeof name === "string" ? makeMap(name) : undefined;
    },
    has(_target, name) {
      return typeof name === "string";
    },
    set() {
      throw new TypeError("ccf.kv is read-only; use ccf.kv[name].set");
    },
    deleteProperty() {
      throw new TypeError("ccf.kv is read-only; use ccf.kv[name].delete");
    },
  });

  const crypto = Object.freeze({
    pemToId(pem) {
      if (typeof pem !== "string") {
        throw new TypeError("pemToId needs a PEM string");
      }
      return native.pemToId(pem);
    },
    isValidX509CertBundle(pem) {
      return typeof pem === "string" && native.isValidX509CertBundle(pem);
    },
  });

  const ccf = Object.freeze({
    kv,
    crypto,
    strToBuf(text) {
      if (typeof text !== "string") {
        throw new TypeError("strToBuf needs a string");
      }
      return native.strToBuf(text);
    },
    bufToStr(buffer) {
      return native.bufToStr(toBuf(buffer, "buffer"));
    },
    jsonCompatibleToBuf(value) {
      const text = stringify(value);
      if (text === undefined) {
        throw new TypeError("the value has no JSON form");
      }
      return native.strToBuf(text);
    },
    bufToJsonCompatible(buffer) {
      return parse(native.bufToStr(toBuf(buffer, "buffer")));
    },
  });
  Object.defineProperty(globalThis, "ccf", {
    value: ccf, writable: false, configurable: false, enumerable: false,
  });
})
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{MEMBERS_MAP, SERVICE_CONFIG_MAP};
    use charter_kv::{Store, WriteSet};
    use std::time::Instant;

    fn limits() -> JsRuntimeOptions {
        JsRuntimeOptions {
            max_heap_bytes: 32 << 20,
            max_stack_bytes: 512 << 10,
            max_execution_fuel: 200,
        }
    }

    fn store() -> Store {
        let mut ws = WriteSet::new();
        ws.put(MEMBERS_MAP, b"m1", br#"{"cert":"x","status":"Active"}"#);
        ws.put("public:kv", b"k", b"v");
        ws.put("private", b"k", b"v");
        let mut store = Store::new();
        store.apply(&ws, 1);
        store
    }

    /// Runs `export function f()` from `body` with the given access and returns its result.
    fn run_fn(
        tx: &mut Tx,
        body: &str,
        access: KvAccess,
    ) -> Result<Option<serde_json::Value>, JsError> {
        let source = format!("export function f() {{ {body} }}");
        let call = Call {
            module_name: "test",
            source: &source,
            exports: &["f"],
            invoke: Some(("f", &[])),
            access,
        };
        run(&call, tx, limits())
    }

    fn eval(body: &str) -> Result<Option<serde_json::Value>, JsError> {
        let mut tx = Tx::new(store().snapshot());
        run_fn(&mut tx, body, KvAccess::ReadWrite)
    }

    #[test]
    fn returns_json() {
        assert_eq!(eval("return 1 + 2;").unwrap(), Some(serde_json::json!(3)));
        assert_eq!(eval("return;").unwrap(), None);
        assert_eq!(
            eval("return {a: [true, 'x']};").unwrap(),
            Some(serde_json::json!({"a": [true, "x"]}))
        );
        assert!(matches!(
            eval("return () => 1;"),
            Err(JsError::BadResult(_))
        ));
        assert!(matches!(eval("return 1n;"), Err(JsError::Exception(_))));
    }

    #[test]
    fn async_exports_settle() {
        let source = "export async function f() { await null; return 7; }";
        let call = Call {
            module_name: "test",
            source,
            exports: &["f"],
            invoke: Some(("f", &[])),
            access: KvAccess::ReadOnly,
        };
        let mut tx = Tx::new(store().snapshot());
        assert_eq!(
            run(&call, &mut tx, limits()).unwrap(),
            Some(serde_json::json!(7))
        );
        let source = "export function f() { return new Promise(() => {}); }";
        let call = Call { source, ..call };
        assert!(matches!(
            run(&call, &mut tx, limits()),
            Err(JsError::BadResult(_))
        ));
    }

    #[test]
    fn exceptions_carry_message_and_stack() {
        match eval("throw new RangeError('nope');") {
            Err(JsError::Exception(text)) => {
                assert!(text.starts_with("RangeError: nope"), "{text}");
                assert!(text.contains("at f"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        match eval("throw 'plain';") {
            Err(JsError::Exception(text)) => assert_eq!(text, "plain"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_and_missing_exports() {
        let mut tx = Tx::new(store().snapshot());
        let call = Call {
            module_name: "test",
            source: "export function f( {",
            exports: &["f"],
            invoke: None,
            access: KvAccess::ReadOnly,
        };
        assert!(matches!(
            run(&call, &mut tx, limits()),
            Err(JsError::Compile(_))
        ));
        let call = Call {
            source: "export const f = 1;",
            ..call
        };
        assert!(matches!(
            run(&call, &mut tx, limits()),
            Err(JsError::Compile(_))
        ));
        let call = Call {
            source: "import x from 'other'; export function f() {}",
            ..call
        };
        assert!(run(&call, &mut tx, limits()).is_err());
    }

    #[test]
    fn infinite_loop_runs_out_of_fuel_quickly() {
        let started = Instant::now();
        assert!(matches!(eval("while (true) {}"), Err(JsError::OutOfTime)));
        // Catching does not help: the interrupt is uncatchable.
        assert!(matches!(
            eval("for (;;) { try { while (true) {} } catch (e) {} }"),
            Err(JsError::OutOfTime)
        ));
        assert!(matches!(
            eval("function g() { return g(); } try { g(); } catch (e) {} while (true) {}"),
            Err(JsError::OutOfTime)
        ));
        let elapsed = started.elapsed();
        assert!(elapsed.as_millis() < 1000, "took {elapsed:?}");
        assert_eq!(eval("return 5;").unwrap(), Some(serde_json::json!(5)));
    }

    #[test]
    fn catching_in_a_loop_cannot_outlast_the_limits() {
        let started = Instant::now();
        for body in [
            // The heap fills up and every allocation throws a catchable "out of memory".
            "const a = []; for (;;) { try { a.push(new Array(1e5)); } catch (e) {} }",
            "const a = []; for (;;) { try { a.push({}); } catch (e) {} }",
            // Every iteration allocates a megabyte.
            "for (;;) { try { 'x'.repeat(1e6); } catch (e) {} }",
            "for (;;) { try { throw null; } catch (e) {} }",
            "function g() { try { g(); } catch (e) { g(); } } for (;;) { try { g(); } catch (e) {} }",
            "function g() { try { return g(); } finally { g(); } } for (;;) { try { g(); } catch (e) {} }",
            // A full heap and a stack overflow: the interrupt's error still gets built.
            "const a = []; try { for (;;) a.push([1]); } catch (e) {} \
             function g() { try { g(); } catch (e) { g(); } } for (;;) { try { g(); } catch (e) {} }",
        ] {
            let result = eval(body);
            assert!(
                matches!(result, Err(JsError::OutOfTime | JsError::OutOfMemory)),
                "{body}: {result:?}"
            );
        }
        let elapsed = started.elapsed();
        assert!(elapsed.as_millis() < 5000, "took {elapsed:?}");
        assert_eq!(eval("return 8;").unwrap(), Some(serde_json::json!(8)));
    }

    /// Calibration, not a check: how long a unit of fuel takes in a tight loop and in a
    /// call-heavy loop (`cargo test -p charter-gov fuel_rate -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn fuel_rate() {
        for (what, body) in [
            ("loop", "while (true) {}"),
            (
                "calls",
                "const g = (x) => x + 1; let i = 0; while (true) i = g(i);",
            ),
            ("objects", "let a; while (true) a = {x: [1, 2, 3]};"),
        ] {
            let source = format!("export function f() {{ {body} }}");
            let call = Call {
                module_name: "test",
                source: &source,
                exports: &["f"],
                invoke: Some(("f", &[])),
                access: KvAccess::ReadOnly,
            };
            let fuel = 10_000;
            let limits = JsRuntimeOptions {
                max_execution_fuel: fuel,
                ..limits()
            };
            let mut tx = Tx::new(store().snapshot());
            let started = Instant::now();
            assert!(matches!(
                run(&call, &mut tx, limits),
                Err(JsError::OutOfTime)
            ));
            let elapsed = started.elapsed();
            println!(
                "{what}: {fuel} fuel in {elapsed:?}, {:.1} us per unit",
                elapsed.as_secs_f64() * 1e6 / fuel as f64
            );
        }
    }

    #[test]
    fn fuel_is_deterministic() {
        // The same script stops at the same point every time.
        let body = "let i = 0; try { while (true) { i++; } } finally { ccf.kv['public:charter.gov.x'].set(ccf.strToBuf('i'), ccf.strToBuf(String(i))); }";
        let mut first = Tx::new(store().snapshot());
        let mut second = Tx::new(store().snapshot());
        assert!(matches!(
            run_fn(&mut first, body, KvAccess::ReadWrite),
            Err(JsError::OutOfTime)
        ));
        assert!(matches!(
            run_fn(&mut second, body, KvAccess::ReadWrite),
            Err(JsError::OutOfTime)
        ));
        assert_eq!(first.write_set(), second.write_set());
    }

    #[test]
    fn unbounded_allocation_runs_out_of_memory() {
        let result = eval("let a = []; while (true) a.push(new Array(1e6));");
        assert!(
            matches!(result, Err(JsError::OutOfMemory | JsError::OutOfTime)),
            "{result:?}"
        );
        let result = eval("let s = 'x'; while (true) s = s + s;");
        assert!(
            matches!(result, Err(JsError::OutOfMemory | JsError::OutOfTime)),
            "{result:?}"
        );
        let result = eval("return new ArrayBuffer(1 << 30).byteLength;");
        assert!(matches!(result, Err(JsError::OutOfMemory)), "{result:?}");
        assert_eq!(eval("return 6;").unwrap(), Some(serde_json::json!(6)));
    }

    #[test]
    fn deep_recursion_is_an_error() {
        match eval("function g(n) { return g(n + 1) + 1; } return g(0);") {
            Err(JsError::Exception(text)) => assert!(text.contains("stack"), "{text}"),
            other => panic!("{other:?}"),
        }
        // Large options are clamped to what the thread can hold.
        let mut tx = Tx::new(store().snapshot());
        let call = Call {
            module_name: "test",
            source: "function g(n) { return g(n + 1) + 1; } export function f() { return g(0); }",
            exports: &["f"],
            invoke: Some(("f", &[])),
            access: KvAccess::ReadOnly,
        };
        let huge = JsRuntimeOptions {
            max_stack_bytes: u64::MAX,
            max_execution_fuel: 100_000,
            ..limits()
        };
        assert!(matches!(
            run(&call, &mut tx, huge),
            Err(JsError::Exception(_))
        ));
        let none = JsRuntimeOptions {
            max_stack_bytes: 0,
            ..limits()
        };
        assert!(matches!(
            run(&call, &mut tx, none),
            Err(JsError::Exception(_))
        ));
        assert_eq!(eval("return 7;").unwrap(), Some(serde_json::json!(7)));
    }

    #[test]
    fn no_regular_expressions() {
        // A catastrophic pattern would never yield to the interrupt handler.
        assert!(eval("return /(a+)+b/.test('a'.repeat(40));").is_err());
        assert!(eval("return new RegExp('(a+)+b').test('a'.repeat(40));").is_err());
        assert_eq!(
            eval("return typeof RegExp;").unwrap(),
            Some(serde_json::json!("undefined"))
        );
        assert_eq!(
            eval("return 'a-b-c'.split('-').join('+').replace('+', '*');").unwrap(),
            Some(serde_json::json!("a*b+c"))
        );
    }

    #[test]
    fn no_clock_no_randomness() {
        assert_eq!(
            eval(
                "return [typeof Math.random, typeof Date.now, typeof performance, typeof WeakRef];"
            )
            .unwrap(),
            Some(serde_json::json!([
                "undefined",
                "undefined",
                "undefined",
                "undefined"
            ]))
        );
        assert!(matches!(
            eval("return new Date().getTime();"),
            Err(JsError::Exception(_))
        ));
        assert!(matches!(eval("return Date();"), Err(JsError::Exception(_))));
        assert!(matches!(
            eval("return Date.now();"),
            Err(JsError::Exception(_))
        ));
        assert!(matches!(
            eval("return Math.random();"),
            Err(JsError::Exception(_))
        ));
        assert_eq!(
            eval("const d = new Date(86400000); return [d.getTime(), d.toISOString(), d instanceof Date, Date.UTC(1970, 0, 2)];")
                .unwrap(),
            Some(serde_json::json!([86400000, "1970-01-02T00:00:00.000Z", true, 86400000]))
        );
    }

    #[test]
    fn kv_reads_and_writes_governance_maps() {
        let mut tx = Tx::new(store().snapshot());
        let body = r#"
            const members = ccf.kv["public:charter.gov.members"];
            const info = ccf.bufToJsonCompatible(members.get(ccf.strToBuf("m1")));
            const absent = members.get(ccf.strToBuf("m2"));
            members.set(ccf.strToBuf("m2"), ccf.jsonCompatibleToBuf({status: "Accepted"}));
            members.set(new Uint8Array([109, 51]), new Uint8Array([1, 2]));
            const keys = [];
            members.forEach((value, key) => keys.push(ccf.bufToStr(key)));
            members.delete(ccf.strToBuf("m3"));
            ccf.kv["public:charter.internal.nodes"].set(ccf.strToBuf("n"), ccf.strToBuf("x"));
            return [info.status, absent, keys, members.size, members.has(ccf.strToBuf("m3")),
                    members.has(ccf.strToBuf("m2"))];
        "#;
        assert_eq!(
            run_fn(&mut tx, body, KvAccess::ReadWrite).unwrap(),
            Some(serde_json::json!([
                "Active",
                null,
                ["m1", "m2", "m3"],
                2,
                false,
                true
            ]))
        );
        assert_eq!(
            tx.get(MEMBERS_MAP, b"m2"),
            Some(br#"{"status":"Accepted"}"#.to_vec())
        );
        assert_eq!(tx.get(MEMBERS_MAP, b"m3"), None);
        assert_eq!(
            tx.get("public:charter.internal.nodes", b"n"),
            Some(b"x".to_vec())
        );
        assert_eq!(tx.write_set().len(), 3);
    }

    #[test]
    fn for_each_pages_through_large_maps() {
        let mut tx = Tx::new(store().snapshot());
        let body = r#"
            const map = ccf.kv["public:charter.gov.big"];
            for (let i = 0; i < 1000; i++) {
                map.set(ccf.strToBuf(String(i).padStart(4, "0")), ccf.strToBuf("v"));
            }
            let count = 0, last = "";
            map.forEach((value, key) => {
                const k = ccf.bufToStr(key);
                if (k <= last) throw new Error("out of order");
                last = k;
                count++;
                map.delete(key);
            });
            return [count, map.size];
        "#;
        assert_eq!(
            run_fn(&mut tx, body, KvAccess::ReadWrite).unwrap(),
            Some(serde_json::json!([1000, 0]))
        );
    }

    #[test]
    fn other_maps_are_forbidden() {
        let mut tx = Tx::new(store().snapshot());
        for body in [
            "return ccf.kv['public:kv'].get(ccf.strToBuf('k'));",
            "ccf.kv['public:kv'].set(ccf.strToBuf('k'), ccf.strToBuf('v'));",
            "return ccf.kv['private'].get(ccf.strToBuf('k'));",
            "ccf.kv['private'].set(ccf.strToBuf('k'), ccf.strToBuf('v'));",
            // Catching the exception does not hide the attempt.
            "try { ccf.kv['public:kv'].delete(ccf.strToBuf('k')); } catch (e) {} return 1;",
        ] {
            let result = run_fn(&mut tx, body, KvAccess::ReadWrite);
            assert!(
                matches!(result, Err(JsError::Forbidden(_))),
                "{body}: {result:?}"
            );
        }
        assert!(tx.is_read_only());
    }

    #[test]
    fn read_only_runs_cannot_write() {
        let mut tx = Tx::new(store().snapshot());
        let read =
            "return ccf.bufToStr(ccf.kv['public:charter.gov.members'].get(ccf.strToBuf('m1')));";
        assert!(run_fn(&mut tx, read, KvAccess::ReadOnly).unwrap().is_some());
        for body in [
            "ccf.kv['public:charter.gov.members'].set(ccf.strToBuf('m9'), ccf.strToBuf('{}'));",
            "ccf.kv['public:charter.gov.members'].delete(ccf.strToBuf('m1'));",
        ] {
            let result = run_fn(&mut tx, body, KvAccess::ReadOnly);
            assert!(matches!(result, Err(JsError::Forbidden(_))), "{result:?}");
        }
        assert!(tx.is_read_only());
    }

    #[test]
    fn helpers_and_crypto() {
        let key = charter_crypto::SigningKey::from_seed(&[3; 32]).unwrap();
        let spec = charter_crypto::CertificateSpec {
            common_name: "member",
            is_ca: false,
            subject_alt_names: &[],
            validity: charter_crypto::Validity {
                not_before_unix: 1_700_000_000,
                days: 365,
            },
        };
        let cert = charter_crypto::Certificate::self_signed(&key, &spec).unwrap();
        let pem = cert.to_pem();
        let body = format!(
            r#"const pem = {pem:?};
               return [ccf.crypto.pemToId(pem), ccf.crypto.isValidX509CertBundle(pem),
                       ccf.crypto.isValidX509CertBundle(pem + pem),
                       ccf.crypto.isValidX509CertBundle("nope"),
                       ccf.crypto.isValidX509CertBundle(pem + "junk"),
                       ccf.bufToStr(ccf.strToBuf("héllo")),
                       ccf.bufToJsonCompatible(ccf.jsonCompatibleToBuf({{a: 1}}))];"#
        );
        assert_eq!(
            eval(&body).unwrap(),
            Some(serde_json::json!([
                cert.fingerprint_hex(),
                true,
                true,
                false,
                false,
                "héllo",
                {"a": 1}
            ]))
        );
        assert!(matches!(
            eval("return ccf.crypto.pemToId('nope');"),
            Err(JsError::Exception(_))
        ));
        assert!(matches!(
            eval("return ccf.bufToStr(new Uint8Array([0xff]));"),
            Err(JsError::Exception(_))
        ));
        assert!(matches!(
            eval("return ccf.strToBuf(1);"),
            Err(JsError::Exception(_))
        ));
        assert!(matches!(eval("ccf.kv.x = 1;"), Err(JsError::Exception(_))));
    }

    #[test]
    fn kv_limits_become_exceptions() {
        let body = "ccf.kv['public:charter.gov.' + 'x'.repeat(300)].set(ccf.strToBuf('k'), ccf.strToBuf('v'));";
        assert!(matches!(eval(body), Err(JsError::Exception(_))));
    }

    #[test]
    fn the_transaction_comes_back_after_every_run() {
        let mut tx = Tx::new(store().snapshot());
        tx.put(SERVICE_CONFIG_MAP, b"config", b"{}");
        let write = "ccf.kv['public:charter.gov.a'].set(ccf.strToBuf('k'), ccf.strToBuf('v'));";
        run_fn(&mut tx, write, KvAccess::ReadWrite).unwrap();
        assert!(run_fn(&mut tx, "while (true) {}", KvAccess::ReadWrite).is_err());
        assert_eq!(tx.get(SERVICE_CONFIG_MAP, b"config"), Some(b"{}".to_vec()));
        assert_eq!(tx.get("public:charter.gov.a", b"k"), Some(b"v".to_vec()));
        assert!(tx.get(MEMBERS_MAP, b"m1").is_some());
    }

    #[test]
    fn ballots() {
        let mut tx = Tx::new(store().snapshot());
        let ballot =
            |source: &str, tx: &mut Tx| run_ballot(source, tx, r#"{"actions":[]}"#, "m1", limits());
        assert!(ballot("export function vote(p, id) { return true; }", &mut tx).unwrap());
        assert!(!ballot("export function vote(p, id) { return false; }", &mut tx).unwrap());
        assert!(ballot(
            "export function vote(p, id) { return JSON.parse(p).actions.length === 0 && id === 'm1'; }",
            &mut tx
        )
        .unwrap());
        for bad in [
            "export function vote() { return 1; }",
            "export function vote() { return 'true'; }",
            "export function vote() {}",
        ] {
            assert!(
                matches!(ballot(bad, &mut tx), Err(JsError::BadResult(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            ballot("export function ballot() { return true; }", &mut tx),
            Err(JsError::Compile(_))
        ));
        assert!(matches!(
            ballot(
                "export function vote() { ccf.kv['public:charter.gov.members'].delete(ccf.strToBuf('m1')); return true; }",
                &mut tx
            ),
            Err(JsError::Forbidden(_))
        ));
        assert!(tx.is_read_only());
    }
}
