//! The bulk runtime: where a process that serves chat runs its bulk work (the worker's drain
//! and EnqueueBulk's recording and queueing), on threads of a lower OS priority (a higher
//! `nice`). On a machine whose cores chat keeps busy, the kernel's scheduler then gives chat's
//! threads the cores first and the bulk threads what is left, tick by tick; the drain
//! governor and the accept gate still set the bulk rate from chat's signals, over seconds.
//!
//! The store's writer thread is shared by both lanes and keeps the normal priority: a chat
//! persist waiting behind a bulk commit must not wait for a starved thread. Its lanes
//! (DESIGN.md invariant 6) order the two instead.

use std::io;

/// Name of the bulk runtime's threads (in `top -H`, `perf` and `/proc/PID/task/*/comm`).
pub const THREAD_NAME: &str = "sluice-bulk";

/// A running bulk runtime. Dropping it stops its threads without waiting for them (so it may
/// be dropped inside another runtime); what still runs there is dropped.
pub struct BulkRuntime(Option<tokio::runtime::Runtime>);

impl BulkRuntime {
    /// Starts a runtime of `threads` worker threads (and its blocking pool), each thread at
    /// `nice` steps (1 to 19) below the calling thread's priority.
    pub fn start(threads: usize, nice: u8) -> io::Result<Self> {
        // Absolute: a thread starts at its creator's priority, and a blocking thread may be
        // started by a bulk thread.
        let nice = (own_priority()? + i32::from(nice)).min(19);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(THREAD_NAME)
            .on_thread_start(move || {
                if let Err(e) = set_priority(nice) {
                    tracing::warn!(error = %e, "cannot lower the priority of a bulk thread; it runs at the process's");
                }
            })
            .enable_all()
            .build()?;
        Ok(BulkRuntime(Some(rt)))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("a runtime until dropped").handle()
    }
}

impl Drop for BulkRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The calling thread's niceness (Linux: each thread has its own).
#[cfg(target_os = "linux")]
fn own_priority() -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(rustix::thread::gettid()))?)
}

/// Sets the calling thread's niceness (raising it needs no privilege).
#[cfg(target_os = "linux")]
fn set_priority(nice: i32) -> io::Result<()> {
    Ok(rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)?)
}

#[cfg(not(target_os = "linux"))]
fn own_priority() -> io::Result<i32> {
    Ok(0)
}

#[cfg(not(target_os = "linux"))]
fn set_priority(_nice: i32) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "thread priorities are set on Linux only"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's niceness and name, as the kernel reports them.
    fn own_nice_and_name() -> (i32, String) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let name = std::fs::read_to_string("/proc/thread-self/comm").unwrap().trim().to_string();
        // Fields after the name (in parentheses) start at the state, field 3; nice is 19.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        (after.split(' ').nth(16).unwrap().parse().unwrap(), name)
    }

    #[test]
    fn tasks_and_their_blocking_work_run_on_named_threads_below_the_process() {
        let (base, _) = own_nice_and_name();
        let rt = BulkRuntime::start(2, 7).unwrap();
        let seen = rt.handle().spawn(async { (own_nice_and_name(), tokio::task::spawn_blocking(own_nice_and_name).await.unwrap()) });
        let (task, blocking) = rt.handle().block_on(seen).unwrap();
        let expected = ((base + 7).min(19), THREAD_NAME.to_string());
        assert_eq!(task, expected, "a task's thread");
        assert_eq!(blocking, expected, "a blocking call's thread");
        assert_eq!(own_nice_and_name().0, base, "the caller's thread keeps its priority");
    }
}
