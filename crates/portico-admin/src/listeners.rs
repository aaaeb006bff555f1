//! `/api/v1/listeners…`: listeners and their rules; the API's own listeners put and deleted.

use axum::extract::{Path as UrlPath, State};
use axum::Json;
use serde_json::{json, Value};

use super::{json_body, ApiError, ApiResult, Ctx, Runtime};

pub(super) async fn listener_views(ctx: &Ctx) -> Vec<Value> {
    let c = ctx.node.applied().await;
    let file: toml::Table = toml::from_str(&c.file_text).unwrap_or_default();
    let (api, config) = (c.runtime.listener, c.listeners);
    let file_tables: Vec<toml::Table> = file
        .get("listener")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_table().cloned()).collect())
        .unwrap_or_default();
    config
        .iter()
        .map(|l| {
            let from_api = api
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(l.name.as_str()));
            let table = from_api.cloned().or_else(|| {
                file_tables
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(l.name.as_str()))
                    .cloned()
            });
            json!({
                "name": l.name,
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "bind": l.bind,
                "listening_on": ctx.node.lb().local_addrs(&l.name).iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "certificates": l.certificates,
                "rules": l.rules.len(),
                "source": if from_api.is_some() { "api" } else { "config" },
                "config": serde_json::to_value(table.unwrap_or_default()).unwrap_or_default(),
            })
        })
        .collect()
}

pub(super) async fn listeners_list(State(ctx): State<Ctx>) -> Json<Value> {
    Json(Value::Array(listener_views(&ctx).await))
}

pub(super) async fn listener_get(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    listener_views(&ctx)
        .await
        .into_iter()
        .find(|v| v["name"] == json!(name))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no listener {name:?}")))
}

pub(super) async fn listener_put(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let body = json_body(body)?;
    let mut table: toml::Table = toml::Value::try_from(body)
        .ok()
        .and_then(|v| v.as_table().cloned())
        .ok_or_else(|| {
            ApiError::bad("the body must be a JSON object with a listener's config keys (null is not allowed)")
        })?;
    match table.get("name").and_then(|n| n.as_str()) {
        Some(n) if n != name => {
            return Err(ApiError::bad(format!(
                "the body names listener {n:?} but the URL {name:?}"
            )))
        }
        _ => {
            table.insert("name".into(), name.clone().into());
        }
    }
    ctx.node.change(Box::new({
let name = name.clone();
move |rt, current| {
            let api_owned = rt
                .listener
                .iter()
                .any(|t| t.get("name").and_then(|n| n.as_str()) == Some(name.as_str()));
            if !api_owned && current.listeners.iter().any(|l| l.name == name) {
                return Err(ApiError::conflict(format!(
                    "listener {name:?} is declared in the config file"
                ))
                .hint("change it in the config file and reload; the API changes the listeners it created"));
            }
            rt.listener
                .retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name.as_str()));
            rt.listener.push(table);
            Ok(())
        }}))
        .await?;
    tracing::info!(event = "listener_changed", listener = %name, "listener created or replaced through the admin API");
    listener_get(State(ctx), UrlPath(name)).await
}

pub(super) async fn listener_delete(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    ctx.node
        .change(Box::new({
            let name = name.clone();
            move |rt, current| {
                let in_file = current.listeners.iter().any(|l| l.name == name);
                Runtime::remove_named(
                    &mut rt.listener,
                    &name,
                    "listener",
                    in_file,
                    "remove it from the config file, then reload",
                )
            }
        }))
        .await?;
    tracing::info!(event = "listener_deleted", listener = %name, "listener deleted through the admin API");
    Ok(Json(json!({ "deleted": name })))
}
