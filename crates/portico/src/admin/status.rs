//! `/api/v1/status` and `/api/v1/reload`: what this node serves from, and a reload.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, ApiResult, Ctx};

pub(super) async fn status(State(ctx): State<Ctx>) -> Json<Value> {
    let store = match &ctx.core.cluster {
        Some(c) => json!({"kind": "etcd", "describe": c.describe(), "reachable": c.reachable()}),
        None => {
            json!({"kind": "state directory", "describe": ctx.core.state_dir, "reachable": true})
        }
    };
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": ctx.core.source_path,
        "store": store,
    }))
}

pub(super) async fn reload(State(ctx): State<Ctx>) -> ApiResult {
    ctx.core.reload().await.map_err(ApiError::config)?;
    Ok(Json(json!({ "result": "reload applied" })))
}
