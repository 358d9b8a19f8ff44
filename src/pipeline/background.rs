//! A thread of its own, at a lower scheduling priority, for CPU work that trails delivery.
//!
//! The rules' reorder buffer releases whole one-second cells: while a backlog drains, each
//! release is 60-80 ms of evaluation at once. On the blocking pool that burst took a core at
//! the same priority as the intake, and on two cores the events polled meanwhile waited for it:
//! it was most of the p99 from Kafka to HEC at half of peak. Alerts may trail by a cell; the
//! events' delivery should not. So the evaluator runs here, on one thread whose nice value is
//! raised: the scheduler gives the intake the CPU first and the evaluator the rest. Nothing is
//! starved: when the evaluator falls behind, its bounded queue stops the intake, which leaves it
//! the CPU.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::PipelineError;

/// How much lower than the rest of the process the thread runs (a nice value: at 10 the
/// scheduler weighs it a tenth of a default thread when both want the same core).
pub(super) const BACKGROUND_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// One thread that runs the jobs handed to it in order. It stops once this is dropped and its
/// queue is empty.
pub(super) struct Background {
    name: &'static str,
    jobs: mpsc::Sender<Job>,
}

impl Background {
    /// Starts the thread, `name`d, at nice value `nice` above the process's. A system that
    /// refuses the lower priority (a seccomp profile, say) only gets a warning: the work is the
    /// same, only less polite.
    pub(super) fn spawn(name: &'static str, nice: i32) -> Result<Background, PipelineError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lower_priority(name, nice);
                for job in queue {
                    job();
                }
            })
            .map_err(|e| PipelineError::Task(format!("starting the {name} thread: {e}")))?;
        Ok(Background { name, jobs })
    }

    /// Runs `work` on the thread once the jobs before it are done, and returns its result. A
    /// panic in `work` is an error naming the thread and the panic's message, as a panic on
    /// the blocking pool would be.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, PipelineError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(catch_unwind(AssertUnwindSafe(work)));
        });
        let stopped = || PipelineError::Task(format!("{what}: the {} thread has stopped", self.name));
        self.jobs.send(job).map_err(|_| stopped())?;
        match result.await.map_err(|_| stopped())? {
            Ok(r) => Ok(r),
            Err(panic) => {
                let message = (panic.downcast_ref::<&str>().copied())
                    .or(panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("a panic without a message");
                Err(PipelineError::Task(format!(
                    "{what} on the {} thread: {message}",
                    self.name
                )))
            }
        }
    }
}

/// Raises the calling thread's nice value by `nice` (Linux keeps one per thread).
#[cfg(target_os = "linux")]
fn lower_priority(name: &str, nice: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    let tid = Some(rustix::thread::gettid());
    let lowered = getpriority_process(tid).and_then(|now| setpriority_process(tid, now + nice));
    if let Err(e) = lowered {
        tracing::warn!(thread = name, nice, error = %e, "could not lower the thread's priority; it runs at the process's");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_name: &str, _nice: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs run in the order given, each result comes back to its caller, and the thread runs
    /// at the lower priority.
    #[tokio::test]
    async fn runs_jobs_in_order_at_a_lower_priority() {
        let background = Background::spawn("test-background", 5).unwrap();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for i in 0..3 {
            let order = order.clone();
            let got = background.run("a job", move || {
                order.lock().unwrap().push(i);
                i * 10
            });
            assert_eq!(got.await.unwrap(), i * 10);
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        #[cfg(target_os = "linux")]
        {
            let mine = rustix::process::getpriority_process(None).unwrap();
            let its = background
                .run("reading the priority", || {
                    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
                })
                .await
                .unwrap();
            assert_eq!(its, (mine + 5).min(19), "the thread's nice value");
        }
    }

    /// A panicking job is an error that names the thread and the panic; the thread is still
    /// there for the next job.
    #[tokio::test]
    async fn a_panic_is_an_error_with_its_message() {
        let background = Background::spawn("test-panics", 0).unwrap();
        let err = background
            .run("evaluating a poll", || -> u32 { panic!("bad rule state") })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("evaluating a poll on the test-panics thread: bad rule state"),
            "{err}"
        );
        assert_eq!(background.run("the next job", || 7).await.unwrap(), 7);
    }
}
