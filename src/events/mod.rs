//! Events: the catalogue, the one write path that appends them with the change they describe (and
//! its group commit), the live fan-out, filters, and webhook delivery.

pub mod catalogue;
pub mod change;
pub mod filter;
pub mod group;
pub mod hub;
pub mod live;
pub mod webhooks;

pub use catalogue::{Event, UsageCounts};
pub use change::{Change, Hold};
