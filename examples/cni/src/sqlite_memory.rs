//! SQLite's memory in a plugin process: size classes on free lists, never
//! handed back to the C allocator.
//!
//! Why: a plugin process opens the datastore, does one operation and exits.
//! SQLite allocates and frees many small blocks meanwhile, and musl's
//! allocator (the static install build) unmaps a page group as soon as it
//! empties and maps it again on the next allocation: ~150 `mmap`/`munmap` per
//! ADD, each with a page fault (BENCHMARKS.md, "CNI plugin"). Here a freed
//! block waits on its class's list for the next allocation of that class, and
//! blocks are cut from 256 KiB chunks. Memory stays bounded by the process's
//! peak of live SQLite memory (rounded up to powers of two) since nothing is
//! freed before exit: SQLite's own cache limit bounds that peak.
//!
//! Blocks above the largest class go to the C allocator as they are.

use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};

/// Each block starts with this header: 16 bytes, so the payload keeps the
/// 16-byte alignment of the chunk (SQLite needs 8).
const HEADER: usize = 16;
/// Size classes: payloads of 16 << class bytes, 16 B to 64 KiB.
const CLASSES: usize = 13;
/// Class mark of a block that came straight from the C allocator.
const LARGE: u32 = u32::MAX;
const CHUNK: usize = 256 * 1024;

struct State {
    free: [*mut u8; CLASSES],
    /// The unused rest of the current chunk.
    next: *mut u8,
    end: *mut u8,
}

struct Pool {
    busy: AtomicBool,
    state: std::cell::UnsafeCell<State>,
}

// SAFETY: `state` is only accessed while `busy` is held (`Pool::with`).
unsafe impl Sync for Pool {}

static POOL: Pool = Pool {
    busy: AtomicBool::new(false),
    state: std::cell::UnsafeCell::new(State {
        free: [null_mut(); CLASSES],
        next: null_mut(),
        end: null_mut(),
    }),
};

impl Pool {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        while self.busy.swap(true, Ordering::Acquire) {
            std::hint::spin_loop();
        }
        // SAFETY: exclusive while `busy` is held.
        let out = f(unsafe { &mut *self.state.get() });
        self.busy.store(false, Ordering::Release);
        out
    }
}

/// The class whose payload holds `size` bytes, if any.
fn class_of(size: usize) -> Option<usize> {
    let rounded = size.max(16).next_power_of_two();
    let class = rounded.trailing_zeros() as usize - 4;
    (class < CLASSES).then_some(class)
}

fn payload_size(class: usize) -> usize {
    16 << class
}

/// Writes the header of a block at `block` and returns its payload.
///
/// # Safety
/// `block` points to at least `HEADER` writable, 16-byte aligned bytes.
unsafe fn finish(block: *mut u8, class: u32, size: usize) -> *mut c_void {
    // SAFETY: per the contract; the header is two u64s.
    unsafe {
        block.cast::<u64>().write(u64::from(class));
        block.cast::<u64>().add(1).write(size as u64);
        block.add(HEADER).cast()
    }
}

/// (class, payload size) of the block whose payload is `p`.
///
/// # Safety
/// `p` came from [`x_malloc`] or [`x_realloc`] and was not freed.
unsafe fn header(p: *mut c_void) -> (u32, usize) {
    // SAFETY: per the contract, the header precedes the payload.
    unsafe {
        let block = p.cast::<u8>().sub(HEADER).cast::<u64>();
        (block.read() as u32, block.add(1).read() as usize)
    }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Ok(size) = usize::try_from(n) else {
        return null_mut();
    };
    match class_of(size) {
        Some(class) => {
            let payload = payload_size(class);
            let block = POOL.with(|s| {
                let head = s.free[class];
                if !head.is_null() {
                    // SAFETY: a free block's payload starts with the next pointer.
                    s.free[class] = unsafe { head.add(HEADER).cast::<*mut u8>().read() };
                    return head;
                }
                let need = HEADER + payload;
                if s.next.is_null() || (s.end as usize - s.next as usize) < need {
                    let chunk_size = CHUNK.max(need);
                    // SAFETY: plain C allocation; the chunk is never freed.
                    let chunk = unsafe { libc::malloc(chunk_size) }.cast::<u8>();
                    if chunk.is_null() {
                        return null_mut();
                    }
                    s.next = chunk;
                    // SAFETY: one past the end of the chunk.
                    s.end = unsafe { chunk.add(chunk_size) };
                }
                let block = s.next;
                // SAFETY: `need` bytes fit before `end` (checked above).
                s.next = unsafe { s.next.add(need) };
                block
            });
            if block.is_null() {
                return null_mut();
            }
            // SAFETY: a block of HEADER + payload bytes, 16-byte aligned (chunks
            // from malloc are, and every block size is a multiple of 16).
            unsafe { finish(block, class as u32, payload) }
        }
        None => {
            // SAFETY: plain C allocation of header + payload.
            let block = unsafe { libc::malloc(HEADER + size) }.cast::<u8>();
            if block.is_null() {
                return null_mut();
            }
            // SAFETY: as above.
            unsafe { finish(block, LARGE, size) }
        }
    }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what x_malloc / x_realloc returned.
    let (class, _) = unsafe { header(p) };
    // SAFETY: as above; the block starts HEADER bytes before the payload.
    let block = unsafe { p.cast::<u8>().sub(HEADER) };
    if class == LARGE {
        // SAFETY: a large block came from libc::malloc.
        unsafe { libc::free(block.cast()) };
        return;
    }
    POOL.with(|s| {
        // SAFETY: the payload (at least 16 bytes) is ours again: it holds the link.
        unsafe { p.cast::<*mut u8>().write(s.free[class as usize]) };
        s.free[class as usize] = block;
    });
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: a live block of ours.
    let (_, size) = unsafe { header(p) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: a live block of ours (SQLite never reallocates null here).
    let (class, size) = unsafe { header(p) };
    let Ok(want) = usize::try_from(n) else {
        return null_mut();
    };
    if class != LARGE && want <= size {
        return p;
    }
    // SAFETY: allocation, copy of the smaller size, free of the old block.
    unsafe {
        let q = x_malloc(n);
        if q.is_null() {
            return null_mut();
        }
        std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), size.min(want));
        x_free(p);
        q
    }
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    match usize::try_from(n).ok().and_then(class_of) {
        Some(class) => payload_size(class) as c_int,
        None => n,
    }
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    rusqlite::ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Makes SQLite allocate through this module. Must run before SQLite
/// initialises (before the first connection); returns whether SQLite took it.
pub fn install() -> bool {
    let methods = rusqlite::ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to the methods and copies them.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(
            rusqlite::ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const rusqlite::ffi::sqlite3_mem_methods,
        )
    };
    rc == rusqlite::ffi::SQLITE_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_to_powers_of_two_and_stop_at_64_kib() {
        assert_eq!(class_of(0), Some(0));
        assert_eq!(class_of(16), Some(0));
        assert_eq!(class_of(17), Some(1));
        assert_eq!(class_of(4096), Some(8));
        assert_eq!(class_of(4097), Some(9));
        assert_eq!(class_of(65536), Some(12));
        assert_eq!(class_of(65537), None);
    }

    #[test]
    fn blocks_hold_their_size_are_reused_and_survive_realloc() {
        // SAFETY: the calls follow SQLite's contract: live blocks only.
        unsafe {
            let a = x_malloc(100);
            assert!(!a.is_null());
            assert_eq!(a as usize % 16, 0, "16-byte aligned");
            assert_eq!(x_size(a), 128);
            assert_eq!(x_roundup(100), 128);
            std::ptr::write_bytes(a.cast::<u8>(), 0xAB, 100);
            // Growing within the class keeps the block.
            assert_eq!(x_realloc(a, 120), a);
            // Growing past it moves the data.
            let b = x_realloc(a, 1000);
            assert_ne!(b, a);
            assert_eq!(x_size(b), 1024);
            let bytes = std::slice::from_raw_parts(b.cast::<u8>(), 100);
            assert!(bytes.iter().all(|&x| x == 0xAB));
            // The freed 128-byte block comes back for the next 128-byte class request
            // (tests of this module may run in parallel: any block of the class is fine).
            let c = x_malloc(128);
            assert_eq!(x_size(c), 128);
            x_free(b);
            x_free(c);
            // Large blocks go to the C allocator and keep their exact size.
            let big = x_malloc(200_000);
            assert_eq!(x_size(big), 200_000);
            std::ptr::write_bytes(big.cast::<u8>(), 1, 200_000);
            let big2 = x_realloc(big, 300_000);
            assert_eq!(x_size(big2), 300_000);
            assert_eq!(*big2.cast::<u8>().add(199_999), 1);
            x_free(big2);
            x_free(null_mut());
        }
    }

    #[test]
    fn many_blocks_of_every_class_do_not_overlap() {
        // SAFETY: live blocks only, each written within its size.
        unsafe {
            let mut blocks = Vec::new();
            for round in 0..3 {
                for class in 0..CLASSES {
                    let n = payload_size(class) as c_int - round;
                    let p = x_malloc(n);
                    std::ptr::write_bytes(p.cast::<u8>(), class as u8, n as usize);
                    blocks.push((p, class as u8, n as usize));
                }
            }
            for &(p, tag, n) in &blocks {
                let bytes = std::slice::from_raw_parts(p.cast::<u8>(), n);
                assert!(
                    bytes.iter().all(|&x| x == tag),
                    "block of class {tag} overwritten"
                );
            }
            for (p, _, _) in blocks {
                x_free(p);
            }
        }
    }
}
