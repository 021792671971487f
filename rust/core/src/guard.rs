//! Reading mapped files that shrink underneath us.
//!
//! A read through a memory map of a page that lies past the end of its file (the file was
//! truncated after it was mapped: a download still running, a file rewritten in place, a network
//! filesystem) raises SIGBUS, whose default action kills the process on the spot: no message, and
//! the temporary output left behind. Mappings registered here are protected instead: a
//! process-wide SIGBUS handler maps a page of zeros over the faulting page (so the read completes)
//! and records where the fault was. Readers check `MapGuard::fault` after each chunk they read and
//! fail with an error naming the file and tensor. Faults anywhere else are passed on to the other
//! handler (installed before ours, or after it: Python's faulthandler, say; ours is re-installed
//! before each guarded read region) or get the default action; a SIGBUS sent by a process (`kill`)
//! is raised again with the default action.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Slots per chunk of the table; chunks are added as needed (never freed: the handler may be
/// walking them), so any number of mappings can be guarded at once.
const CHUNK: usize = 256;
const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const ACTIVE: u8 = 2;
/// `Slot::fault` when no fault has happened.
const NO_FAULT: usize = usize::MAX;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    /// Offset of the first faulting byte from `start`, or `NO_FAULT`.
    fault: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the arrays below
const EMPTY: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    fault: AtomicUsize::new(NO_FAULT),
};

struct Chunk {
    slots: [Slot; CHUNK],
    next: AtomicPtr<Chunk>,
}

static FIRST: Chunk = Chunk {
    slots: [EMPTY; CHUNK],
    next: AtomicPtr::new(std::ptr::null_mut()),
};

/// Every slot of the table, chunk after chunk (async-signal-safe: atomics only).
fn slots() -> impl Iterator<Item = &'static Slot> {
    let mut chunk: Option<&'static Chunk> = Some(&FIRST);
    std::iter::from_fn(move || {
        let current = chunk?;
        let next = current.next.load(Ordering::Acquire);
        // SAFETY: chunks are leaked boxes, never freed.
        chunk = unsafe { next.as_ref() };
        Some(current.slots.iter())
    })
    .flatten()
}

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();
/// Serialises checking and re-installing our handler.
static REASSERT: Mutex<()> = Mutex::new(());
/// The handler to pass faults outside our mappings on to: the one found when ours was installed,
/// or one installed after ours (found and replaced by `protect`). `SIG_DFL` when none.
static PREVIOUS_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREVIOUS_SIGINFO: AtomicBool = AtomicBool::new(false);
/// Set while a fault is being passed on: a previous handler that calls ours back (it saved ours
/// as its own previous) ends the loop with the default action.
static PASSING_ON: AtomicBool = AtomicBool::new(false);

/// A registered mapping; unregistered when dropped (drop it before unmapping).
#[derive(Debug)]
pub struct MapGuard {
    slot: Option<&'static Slot>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("start", &self.start.load(Ordering::Relaxed))
            .field("len", &self.len.load(Ordering::Relaxed))
            .finish()
    }
}

impl MapGuard {
    /// Protects `[start, start + len)`, a mapping of a file. Installs the handler on first use
    /// (and re-installs it if another one replaced it since).
    pub fn register(start: *const u8, len: usize) -> MapGuard {
        if len == 0 {
            return MapGuard { slot: None };
        }
        protect();
        let claim = |slot: &'static Slot| {
            let free = slot
                .state
                .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
            if free {
                slot.start.store(start as usize, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                slot.fault.store(NO_FAULT, Ordering::Relaxed);
                slot.state.store(ACTIVE, Ordering::Release);
            }
            free
        };
        loop {
            if let Some(slot) = slots().find(|&slot| claim(slot)) {
                return MapGuard { slot: Some(slot) };
            }
            grow();
        }
    }

    /// Offset (from the start of the mapping) of the first byte whose read faulted, if any did.
    pub fn fault(&self) -> Option<u64> {
        match self.slot?.fault.load(Ordering::Acquire) {
            NO_FAULT => None,
            offset => Some(offset as u64),
        }
    }
}

impl Drop for MapGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.state.store(CLAIMED, Ordering::Release);
            slot.start.store(0, Ordering::Relaxed);
            slot.len.store(0, Ordering::Relaxed);
            slot.state.store(FREE, Ordering::Release);
        }
    }
}

/// Appends an empty chunk to the table.
fn grow() {
    let fresh = Box::into_raw(Box::new(Chunk {
        slots: [EMPTY; CHUNK],
        next: AtomicPtr::new(std::ptr::null_mut()),
    }));
    let mut tail: &'static Chunk = &FIRST;
    loop {
        match tail
            .next
            .compare_exchange(std::ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return,
            // SAFETY: a chunk in the list, leaked and never freed.
            Err(next) => tail = unsafe { &*next },
        }
    }
}

fn our_action() -> libc::sigaction {
    // SAFETY: an all-zero sigaction is valid; the fields that matter are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigbus as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
    // SAFETY: sa_mask is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    action
}

/// Makes sure our SIGBUS handler is the one installed: on first use, and whenever another one
/// replaced it since (Python's `faulthandler.enable()`, a library's own), which then gets the
/// faults outside our mappings. Called before every guarded read region.
pub fn protect() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf is a plain libc call.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
    });
    let _serial = REASSERT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // SAFETY: sigaction with valid arguments.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current) != 0 {
            return;
        }
        if current.sa_sigaction == on_sigbus as *const () as usize {
            return;
        }
        PREVIOUS_SIGINFO.store(current.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
        PREVIOUS_HANDLER.store(current.sa_sigaction, Ordering::Release);
        let action = our_action();
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

/// Whether `slot` is active and its mapping holds `address`.
fn holds(slot: &Slot, address: usize) -> bool {
    if slot.state.load(Ordering::Acquire) != ACTIVE {
        return false;
    }
    let start = slot.start.load(Ordering::Relaxed);
    address >= start && address - start < slot.len.load(Ordering::Relaxed)
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; only async-signal-safe calls follow (atomics,
    // mmap, sigaction, raise).
    unsafe {
        let code = (*info).si_code;
        if code <= 0 {
            // Sent by a process (kill, raise, sigqueue), not a fault: what SIGBUS does by default.
            die_of(signal);
            return;
        }
        // Only a read past the end of a mapped file (BUS_ADRERR) in one of our mappings is ours.
        let address = (*info).si_addr() as usize;
        if code == libc::BUS_ADRERR && slots().any(|slot| holds(slot, address)) {
            let page_size = PAGE_SIZE.load(Ordering::Relaxed);
            let page = address & !(page_size - 1);
            let zeros = libc::mmap(
                page as *mut libc::c_void,
                page_size,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
            if zeros != libc::MAP_FAILED {
                // Every registration of the range learns of it (one file may be mapped twice).
                for slot in slots().filter(|slot| holds(slot, address)) {
                    let offset = address - slot.start.load(Ordering::Relaxed);
                    let _ = slot
                        .fault
                        .compare_exchange(NO_FAULT, offset, Ordering::AcqRel, Ordering::Relaxed);
                }
                return; // the faulting read is retried and now reads zeros
            }
        }
        pass_on(signal, info, context);
    }
}

/// Restores the default action and raises the signal again: the process dies of it.
unsafe fn die_of(signal: libc::c_int) {
    // SAFETY: sigaction and raise are async-signal-safe; SA_NODEFER leaves the signal unblocked.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &default, std::ptr::null_mut());
        libc::raise(signal);
    }
}

/// Hands a fault that is not ours to the other handler, or restores the default action (the
/// faulting instruction then runs again and the process dies of SIGBUS, as it would have).
unsafe fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let handler = PREVIOUS_HANDLER.load(Ordering::Acquire);
    let nested = PASSING_ON.swap(true, Ordering::AcqRel);
    if handler != libc::SIG_DFL && handler != libc::SIG_IGN && !nested {
        // SAFETY: the handler was installed for SIGBUS by someone else, with these flags.
        unsafe {
            if PREVIOUS_SIGINFO.load(Ordering::Acquire) {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                f(signal, info, context);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                f(signal);
            }
        }
        PASSING_ON.store(false, Ordering::Release);
        return;
    }
    // SAFETY: sigaction is async-signal-safe.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memmap2::Mmap;
    use std::fs::OpenOptions;

    #[test]
    fn a_file_truncated_under_its_mapping_reads_zeros_and_reports_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shrinks");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        // SAFETY: read-only map of a file this test owns.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let guard = MapGuard::register(map.as_ptr(), map.len());
        // A second registration of the same range (a stale one, or another reader's) learns of it too.
        let twin = MapGuard::register(map.as_ptr(), map.len());
        assert_eq!(guard.fault(), None);
        assert_eq!(map[100], 7);
        file.set_len(8192).unwrap();
        let tail: u64 = map[20_000..30_000].iter().map(|&b| b as u64).sum();
        assert_eq!(tail, 0, "pages past the new end read as zeros");
        assert_eq!(guard.fault(), Some(20_000));
        assert_eq!(twin.fault(), Some(20_000));
        assert_eq!(map[100], 7, "pages still inside the file are untouched");
        drop((guard, twin));
    }

    #[test]
    fn a_dropped_guard_frees_its_slot() {
        let data = [1u8; 16];
        let guard = MapGuard::register(data.as_ptr(), 16);
        let slot = guard.slot.expect("a free slot");
        assert_eq!(slot.state.load(Ordering::Acquire), ACTIVE);
        assert!(holds(slot, data.as_ptr() as usize + 15));
        assert!(!holds(slot, data.as_ptr() as usize + 16));
        let shown = format!("{guard:?}");
        assert!(
            shown.contains(&format!("start: {}, len: 16", data.as_ptr() as usize)),
            "{shown}"
        );
        drop(guard);
        assert_eq!(slot.state.load(Ordering::Acquire), FREE);
        assert!(
            MapGuard::register(data.as_ptr(), 0).slot.is_none(),
            "empty ranges need no slot"
        );
    }

    #[test]
    fn any_number_of_mappings_is_guarded() {
        let data = [1u8; 16];
        let many: Vec<MapGuard> = (0..3 * CHUNK).map(|_| MapGuard::register(data.as_ptr(), 16)).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shrinks");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        // SAFETY: read-only map of a file this test owns.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let guard = MapGuard::register(map.as_ptr(), map.len());
        file.set_len(4096).unwrap();
        assert_eq!(map[50_000], 0);
        assert_eq!(guard.fault(), Some(50_000));
        drop((guard, many));
    }

    static OTHER_CALLS: AtomicUsize = AtomicUsize::new(0);

    /// A handler installed after ours that chains to it (so that faults of tests running
    /// meanwhile are still handled), counting the faults it sees.
    extern "C" fn other(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        OTHER_CALLS.fetch_add(1, Ordering::SeqCst);
        on_sigbus(signal, info, context);
    }

    #[test]
    fn a_handler_installed_after_ours_is_replaced_before_the_next_guarded_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shrinks");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        // SAFETY: read-only map of a file this test owns.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        drop(MapGuard::register(map.as_ptr(), 1)); // ours is installed
                                                   // SAFETY: installs a SIGBUS handler over ours, as faulthandler.enable() does.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = other as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
        let guard = MapGuard::register(map.as_ptr(), map.len());
        file.set_len(4096).unwrap();
        assert_eq!(map[40_000], 0);
        assert_eq!(guard.fault(), Some(40_000));
        assert_eq!(OTHER_CALLS.load(Ordering::SeqCst), 0, "ours was installed again first");
        drop(guard);
        // Ours runs on the alternate stack (a fault during a stack overflow) and may nest; the one
        // it replaced is called back the way it expects (with siginfo, or a plain handler).
        // SAFETY: sigaction queries and installs with valid arguments.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current);
            assert_eq!(current.sa_sigaction, on_sigbus as *const () as usize);
            let wanted = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            assert_eq!(current.sa_flags & wanted, wanted);
            assert_eq!(PREVIOUS_HANDLER.load(Ordering::Acquire), other as *const () as usize);
            assert!(PREVIOUS_SIGINFO.load(Ordering::Acquire));
            let mut plain: libc::sigaction = std::mem::zeroed();
            plain.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(libc::SIGBUS, &plain, std::ptr::null_mut());
            protect();
            assert_eq!(PREVIOUS_HANDLER.load(Ordering::Acquire), libc::SIG_IGN);
            assert!(!PREVIOUS_SIGINFO.load(Ordering::Acquire));
            plain.sa_sigaction = libc::SIG_DFL; // as the process had it
            libc::sigaction(libc::SIGBUS, &plain, std::ptr::null_mut());
            protect();
        }
    }
}
