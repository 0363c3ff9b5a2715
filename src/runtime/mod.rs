//! Business rules, between the HTTP layer (`api`) and the SQL (`store`). Nothing here knows of
//! requests, keys or responses: every function takes the [`Runtime`] context, or the parts of it
//! it needs, and a scope.

pub mod agents;
pub mod background;
pub mod chat;
pub mod context;
pub mod event_log;
pub mod lag;
pub mod missions;
pub mod models;
pub mod prompt;
pub mod sessions;
pub mod tasks;
pub mod turn;
pub mod webhooks;

pub use context::Runtime;
