//! Tasks (spec §5): units of work handed to an agent, run in the background, reviewed, fixed,
//! retried or escalated, approved, and durable across crashes.
//!
//! - `model`: the task object and the one method that changes a status; `status`: the machine
//! - `assessment`: expectations, checks, the reviewer request and reply, outcomes
//! - `create`, `update`: input rules (dependencies, cycles, titles) and writes
//! - `actions`: run, pause, retry, kill, reassess, queue, delete
//! - `runner`: claims runnable tasks under leases; `attempt`: one attempt and its review
//! - `approvals`: human decisions on side-effect tasks

pub mod actions;
pub mod approvals;
pub mod assessment;
pub mod attempt;
mod call;
pub mod create;
pub mod model;
pub mod runner;
pub mod status;
pub mod store_rows;

pub use model::{Task, TaskError, Usage};
pub use status::{Phase, Reason, Status};
