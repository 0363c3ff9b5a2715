//! Between the task object and its row: the document is stored whole, the columns beside it are
//! derived from it on every write.

use super::model::Task;
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::scope::Scope;
use crate::store::{self, tasks::TaskRow};

/// A task as read for a change.
pub struct Stored {
    pub task: Task,
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("task {id:?} not found"))
}

pub fn row(task: &Task) -> Result<TaskRow, ApiError> {
    Ok(TaskRow {
        id: task.id.clone(),
        title: task.title.clone(),
        task_group: task.group.clone(),
        assign_to: task.assign_to.clone(),
        mission_id: task.mission_id.clone(),
        run_id: task.run_id.clone(),
        status: task.status().as_str().to_string(),
        priority: task.priority,
        body: serde_json::to_string(task).map_err(ApiError::internal)?,
        deadline: task.deadline.map(Timestamp::ms),
        updated_at: task.updated_at.ms(),
    })
}

pub fn from_body(body: &str) -> Result<Task, sqlx::Error> {
    store::read_json(body, "task document")
}

pub async fn load(conn: &mut sqlx::AnyConnection, scope: &Scope, id: &str) -> Result<Stored, ApiError> {
    let row = store::tasks::get(conn, scope, id).await?.ok_or_else(|| not_found(id))?;
    Ok(Stored {
        task: from_body(&row.body)?,
    })
}
