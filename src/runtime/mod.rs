//! Business rules, between the HTTP layer (`api`) and the SQL (`store`).

pub mod agents;
pub mod chat;
pub mod prompt;
pub mod sessions;
pub mod turn;
