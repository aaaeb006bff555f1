//! `/api/v1/status` and `/api/v1/reload`: what this node serves from, and a reload.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiResult, Ctx};

pub(super) async fn status(State(ctx): State<Ctx>) -> Json<Value> {
    let store = match ctx.node.store() {
        Some(c) => json!({"kind": "etcd", "describe": c.describe, "reachable": c.reachable}),
        None => {
            json!({"kind": "state directory", "describe": ctx.node.state_dir(), "reachable": true})
        }
    };
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": ctx.node.config_path(),
        "store": store,
    }))
}

pub(super) async fn reload(State(ctx): State<Ctx>) -> ApiResult {
    ctx.node.reload().await?;
    Ok(Json(json!({ "result": "reload applied" })))
}
