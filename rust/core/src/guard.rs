//! Reading mapped files that shrink underneath us.
//!
//! A read through a memory map of a page that lies past the end of its file (the file was
//! truncated after it was mapped: a download still running, a file rewritten in place, a network
//! filesystem) raises SIGBUS, whose default action kills the process on the spot: no message, and
//! the temporary output left behind. Mappings registered here are protected instead: a
//! process-wide SIGBUS handler maps a page of zeros over the faulting page (so the read completes)
//! and records where the fault was. Readers check `MapGuard::fault` after each chunk they read and
//! fail with an error naming the file and tensor. Faults anywhere else are passed on to the handler
//! that was installed before ours (Python's faulthandler, say) or get the default action.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;

/// How many mappings can be guarded at once; a registration beyond that is simply unguarded.
const SLOTS: usize = 512;
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

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the array below
const EMPTY: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    fault: AtomicUsize::new(NO_FAULT),
};
static SLOTS_TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();
/// The SIGBUS disposition found when ours was installed, to pass other faults on to.
static mut PREVIOUS: Option<libc::sigaction> = None;

/// A registered mapping; unregistered when dropped (drop it before unmapping).
#[derive(Debug)]
pub struct MapGuard {
    slot: Option<usize>,
}

impl MapGuard {
    /// Protects `[start, start + len)`, a mapping of a file. Installs the handler on first use.
    pub fn register(start: *const u8, len: usize) -> MapGuard {
        if len == 0 {
            return MapGuard { slot: None };
        }
        INSTALL.call_once(install);
        for (i, slot) in SLOTS_TABLE.iter().enumerate() {
            if slot
                .state
                .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.start.store(start as usize, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                slot.fault.store(NO_FAULT, Ordering::Relaxed);
                slot.state.store(ACTIVE, Ordering::Release);
                return MapGuard { slot: Some(i) };
            }
        }
        MapGuard { slot: None }
    }

    /// Offset (from the start of the mapping) of the first byte whose read faulted, if any did.
    pub fn fault(&self) -> Option<u64> {
        let slot = &SLOTS_TABLE[self.slot?];
        match slot.fault.load(Ordering::Acquire) {
            NO_FAULT => None,
            offset => Some(offset as u64),
        }
    }
}

impl Drop for MapGuard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let slot = &SLOTS_TABLE[i];
            slot.state.store(CLAIMED, Ordering::Release);
            slot.start.store(0, Ordering::Relaxed);
            slot.len.store(0, Ordering::Relaxed);
            slot.state.store(FREE, Ordering::Release);
        }
    }
}

fn install() {
    // SAFETY: sysconf and sigaction are plain libc calls with valid arguments; PREVIOUS is written
    // here, once, before our handler (its only reader) is installed.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE);
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) == 0 {
            PREVIOUS = Some(previous);
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut action.sa_mask);
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
    // SAFETY: the kernel passes a valid siginfo; only async-signal-safe calls follow (atomics, mmap).
    unsafe {
        // Only faults the kernel raised (si_code > 0) carry an address; `kill -BUS` does not.
        let address = (*info).si_addr() as usize;
        let ours = (*info).si_code > 0 && SLOTS_TABLE.iter().any(|slot| holds(slot, address));
        if ours {
            let page = address & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
            let zeros = libc::mmap(
                page as *mut libc::c_void,
                PAGE_SIZE.load(Ordering::Relaxed),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
            if zeros != libc::MAP_FAILED {
                // Every registration of the range learns of it (one file may be mapped twice).
                for slot in SLOTS_TABLE.iter().filter(|slot| holds(slot, address)) {
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

/// Hands a fault that is not ours to the previous handler, or restores the default action (the
/// faulting instruction then runs again and the process dies of SIGBUS, as it would have).
unsafe fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: PREVIOUS was written before this handler was installed and is never written again.
    let previous = unsafe { *std::ptr::addr_of!(PREVIOUS) };
    if let Some(previous) = previous {
        let handler = previous.sa_sigaction;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(handler) };
                f(signal, info, context);
            } else {
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
                f(signal);
            }
            return;
        }
    }
    let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
    default.sa_sigaction = libc::SIG_DFL;
    unsafe { libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut()) };
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
        assert_eq!(SLOTS_TABLE[slot].state.load(Ordering::Acquire), ACTIVE);
        assert!(holds(&SLOTS_TABLE[slot], data.as_ptr() as usize + 15));
        assert!(!holds(&SLOTS_TABLE[slot], data.as_ptr() as usize + 16));
        drop(guard);
        assert_eq!(SLOTS_TABLE[slot].state.load(Ordering::Acquire), FREE);
        assert!(
            MapGuard::register(data.as_ptr(), 0).slot.is_none(),
            "empty ranges need no slot"
        );
    }
}
