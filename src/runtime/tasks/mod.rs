//! Tasks (spec §5): one piece of work for one agent, its attempts and their assessment.

pub mod assessment;
