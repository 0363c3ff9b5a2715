//! The task status machine of spec §5.3, as one table: which moves are regular, and which are
//! allowed only for a stated reason. `Task::transition` is the one place that changes a status.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Pending,
    AwaitingApproval,
    Assigned,
    InProgress,
    Review,
    Done,
    Failed,
}

pub const ALL: [Status; 8] = [
    Status::Draft,
    Status::Pending,
    Status::AwaitingApproval,
    Status::Assigned,
    Status::InProgress,
    Status::Review,
    Status::Done,
    Status::Failed,
];

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Pending => "pending",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Assigned => "assigned",
            Self::InProgress => "in_progress",
            Self::Review => "review",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }

    /// Claimed by a worker: an attempt or its review may be running.
    pub fn is_running(self) -> bool {
        matches!(self, Self::Assigned | Self::InProgress | Self::Review)
    }
}

/// Why a status changes; the moves beyond the regular ones need their reason (spec §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The normal course of work: queue, claim, attempt, review, approval.
    Regular,
    Pause,
    /// Kill, timeout, deadline, agent deleted with force, dependency removed, mission stop.
    Stop,
    /// Automatic retry after an attempt error, fix after a failed review, lease recovery.
    Requeue,
    Reassess,
}

fn regular(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (Draft, Pending)
            | (Pending, Assigned | AwaitingApproval)
            | (AwaitingApproval, Assigned | Failed | Done | Pending)
            | (Assigned, InProgress | AwaitingApproval)
            | (InProgress, Review | Failed | AwaitingApproval)
            | (Review, Done | Failed | AwaitingApproval)
            | (Failed, Pending)
    )
}

/// Whether `from → to` is allowed for `reason`.
pub fn allowed(from: Status, to: Status, reason: Reason) -> bool {
    use Status::*;
    if regular(from, to) {
        return true;
    }
    match reason {
        Reason::Regular => false,
        Reason::Pause => to == Draft && matches!(from, Pending | Assigned | InProgress | Review),
        Reason::Stop => to == Failed && !from.is_terminal(),
        Reason::Requeue => to == Pending && from.is_running(),
        Reason::Reassess => matches!((from, to), (Done, Failed) | (Failed, Done)),
    }
}

/// The phase a status has when entered without a more specific one (spec §5.3).
pub fn default_phase(status: Status) -> Option<Phase> {
    (status == Status::Review).then_some(Phase::Review)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Execution,
    Fix,
    Review,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regular_table_is_the_specs() {
        use Status::*;
        let regular_moves: Vec<(Status, Status)> = ALL
            .into_iter()
            .flat_map(|f| ALL.into_iter().map(move |t| (f, t)))
            .filter(|(f, t)| allowed(*f, *t, Reason::Regular))
            .collect();
        assert_eq!(regular_moves.len(), 16);
        assert!(allowed(Draft, Pending, Reason::Regular));
        assert!(!allowed(Done, Pending, Reason::Regular));
        assert!(
            !allowed(Done, Failed, Reason::Stop),
            "a terminal task cannot be stopped"
        );
        assert!(allowed(Done, Failed, Reason::Reassess));
        assert!(allowed(InProgress, Draft, Reason::Pause));
        assert!(!allowed(AwaitingApproval, Draft, Reason::Pause));
        assert!(allowed(Review, Pending, Reason::Requeue));
        assert!(!allowed(Pending, Pending, Reason::Requeue));
        assert!(allowed(AwaitingApproval, Failed, Reason::Stop));
    }
}
