//! Threads the host owns, on which every guest call runs.
//!
//! Two reasons. WASI's synchronous bindings drive their work with `block_on`, which panics
//! ("Cannot start a runtime from within a runtime") on a thread that is running async tasks,
//! as a caller's runtime worker is; these threads belong to no runtime. And a caller waits for
//! the answer at most a bounded time: a guest stuck in a host call (a query that ignores its
//! timeout) keeps one of these threads, never the caller's.
//!
//! The pool is fixed in size, so a stuck guest cannot multiply threads: calls queue behind it
//! and time out, and the plugin is quarantined.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::PluginError;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of guest threads. Dropping it lets the threads finish their current call and
/// exit; nothing waits for them, so shutdown never hangs on a guest.
pub(crate) struct GuestThreads {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl GuestThreads {
    /// Starts `count` threads named `name`.
    pub(crate) fn start(name: &str, count: usize) -> Result<Self, PluginError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..count.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only while taking a job, never while running one.
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A panic is reported to the caller as a dropped answer; the thread
                        // stays in the pool.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| PluginError::Instantiation(format!("guest thread: {e}")))?;
        }
        Ok(Self { jobs: Mutex::new(Some(sender)) })
    }

    /// Runs `job` on a guest thread and waits for its answer at most `wait`. `None` when no
    /// answer came in time (queued behind stuck guests, or stuck itself), when the job
    /// panicked, or when the pool is shut down.
    pub(crate) fn run<R, F>(&self, wait: Duration, job: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (answer, answered) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = answer.send(job());
        });
        {
            let jobs = self.jobs.lock().ok()?;
            jobs.as_ref()?.send(job).ok()?;
        }
        answered.recv_timeout(wait).ok()
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}
