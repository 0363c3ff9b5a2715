//! Giving the system back the memory a burst used. glibc's allocator keeps what the program
//! frees in its arenas for reuse and returns pages on its own only from the top of a heap, so
//! after 1,000 streams end the process would stay at their peak. Once the memory in use has
//! fallen well below its peak, [`Trim`] asks glibc to release every free page (`malloc_trim`).
//! Other allocators (musl, macOS, Windows) have no such call; there it does nothing.

/// How far the memory in use must fall below its peak before a trim: small changes are the
/// normal ebb of requests, and their pages are wanted again at once.
pub const TRIM_AFTER_FALL: usize = 4 << 20;

/// Tracks the memory in use between trims and trims once it has fallen far enough.
#[derive(Debug, Default)]
pub struct Trim {
    peak: usize,
}

impl Trim {
    /// Records the memory in use now; when it lies `TRIM_AFTER_FALL` or more below the peak
    /// since the last trim, releases the free pages and returns the bytes in use it found.
    /// Blocks while glibc walks its arenas (milliseconds after a burst of thousands of streams).
    pub fn tick(&mut self) -> Option<usize> {
        let in_use = in_use()?;
        self.peak = self.peak.max(in_use);
        if self.peak - in_use < TRIM_AFTER_FALL {
            return None;
        }
        self.peak = in_use;
        release();
        Some(in_use)
    }
}

/// Bytes the program holds in allocations from glibc's arenas (`mallinfo2().uordblks`); large
/// blocks mapped on their own are returned when freed and not counted.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn in_use() -> Option<usize> {
    // SAFETY: `mallinfo2` takes no arguments and returns a struct of counters by value; glibc
    // locks each arena while it reads it.
    let info = unsafe { libc::mallinfo2() };
    Some(info.uordblks)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn in_use() -> Option<usize> {
    None
}

/// Asks glibc to return every free page of every arena to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release() {
    // SAFETY: `malloc_trim` takes no pointers; glibc serialises it with every other allocator
    // call, arena by arena. Its answer (whether anything was released) is not needed.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident memory of this process, from `/proc/self/statm` (pages of 4 KiB on this target).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    #[test]
    fn memory_freed_after_a_burst_goes_back_to_the_system() {
        let mut trim = Trim::default();
        assert_eq!(trim.tick(), None, "nothing has fallen yet");
        // 64 MiB in blocks of 4 KiB, each written so that its page is resident, then one more
        // block above them that stays: glibc alone returns nothing below a live block.
        let mut burst: Vec<Box<[u8; 4096]>> = (0..16_384).map(|_| Box::new([1u8; 4096])).collect();
        let keep = Box::new([2u8; 4096]);
        assert_eq!(trim.tick(), None, "the burst is in use");
        burst.clear();
        burst.shrink_to_fit();
        let before = resident();
        assert!(trim.tick().is_some(), "64 MiB fell out of use; the trim must run");
        let after = resident();
        assert!(
            before.saturating_sub(after) >= 32 << 20,
            "resident memory went from {} MiB to {} MiB; at least 32 of the 64 freed MiB must go back",
            before >> 20,
            after >> 20
        );
        assert_eq!(trim.tick(), None, "a second trim waits for another fall");
        assert_eq!(keep[0], 2);
    }
}
