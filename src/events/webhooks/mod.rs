//! Webhooks (spec §8): secrets and signatures, destination checks, and the delivery worker.

pub mod destination;
pub mod signing;
pub mod worker;

pub use destination::check_url;
pub use signing::{generate_secret, sign};
pub use worker::Worker;
