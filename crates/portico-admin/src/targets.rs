//! `/api/v1/target-groups…`: target groups with their targets' health; register, deregister.

use std::net::SocketAddr;

use axum::extract::{Path as UrlPath, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, ApiError, ApiResult, Ctx};
use crate::Runtime;

pub(super) async fn group_view(ctx: &Ctx, name: &str) -> Option<Value> {
    let c = ctx.node.applied().await;
    let config = c.target_groups.iter().find(|g| g.name == name);
    let exists = config.is_some();
    let attributes = config.map(attributes);
    let api: Vec<String> = c
        .runtime
        .targets
        .get(name)
        .map(|v| {
            v.iter()
                .filter_map(Runtime::target_address)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !exists {
        return None;
    }
    let targets: Vec<Value> = ctx
        .node
        .lb()
        .target_health(name)
        .into_iter()
        .map(|t| {
            let addr = t.addr.to_string();
            json!({
                "address": addr,
                "state": if t.draining { "draining" } else if t.healthy { "healthy" } else { "unhealthy" },
                "reason": t.reason,
                "in_flight": t.outstanding,
                "registered_by": if api.iter().any(|a| a == &addr || resolves_to(a, t.addr)) { "api" } else { "config" },
            })
        })
        .collect();
    Some(json!({"name": name, "attributes": attributes, "targets": targets}))
}

/// A group's settings as an ALB shows its target group attributes.
fn attributes(g: &portico_lb::config::TargetGroupConfig) -> Value {
    use portico_lb::config::{Algorithm, ProtocolVersion, StickinessKind, TargetProtocol};
    json!({
        "protocol": match g.protocol { TargetProtocol::Http => "http", TargetProtocol::Https => "https" },
        "protocol_version": match g.protocol_version {
            ProtocolVersion::Http1 => "http1",
            ProtocolVersion::Http2 => "http2",
            ProtocolVersion::Grpc => "grpc",
        },
        "algorithm": match g.algorithm {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastOutstandingRequests => "least_outstanding_requests",
        },
        "verify": g.verify,
        "stickiness": g.stickiness.as_ref().map(|st| json!({
            "type": match st.kind { StickinessKind::LbCookie => "lb_cookie", StickinessKind::AppCookie => "app_cookie" },
            "duration_seconds": st.duration.as_secs(),
            "cookie_name": st.cookie_name,
        })),
        "slow_start_seconds": g.slow_start.map(|d| d.as_secs()),
        "deregistration_delay_seconds": g.deregistration_delay.as_secs(),
        "connect_timeout_ms": g.connect_timeout.as_millis() as u64,
        "response_timeout_ms": g.response_timeout.as_millis() as u64,
    })
}

pub(super) fn resolves_to(written: &str, addr: SocketAddr) -> bool {
    written.parse::<SocketAddr>().is_ok_and(|a| a == addr)
}

pub(super) async fn groups_list(State(ctx): State<Ctx>) -> Json<Value> {
    let names = ctx.node.applied().await.group_names();
    let mut out = Vec::new();
    for n in names {
        if let Some(v) = group_view(&ctx, &n).await {
            out.push(v);
        }
    }
    Json(Value::Array(out))
}

pub(super) fn no_group(name: &str) -> ApiError {
    ApiError::not_found(format!("no target group {name:?}"))
        .hint("GET /api/v1/target-groups lists them; groups are declared with [[target_group]] in the config")
}

pub(super) async fn group_get(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> ApiResult {
    group_view(&ctx, &name)
        .await
        .map(Json)
        .ok_or_else(|| no_group(&name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Registration {
    targets: Vec<TargetSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetSpec {
    address: String,
    weight: Option<u32>,
}

pub(super) async fn targets_register(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<Registration>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let reg = json_body(body)?;
    if reg.targets.is_empty() {
        return Err(ApiError::bad("no targets given"));
    }
    let added: Vec<String> = reg.targets.iter().map(|t| t.address.clone()).collect();
    ctx.node
        .change(Box::new({
            let name = name.clone();
            move |rt, current| {
                if !current.target_groups.iter().any(|g| g.name == name) {
                    return Err(no_group(&name));
                }
                let list = rt.targets.entry(name.clone()).or_default();
                for t in reg.targets {
                    list.retain(|v| Runtime::target_address(v) != Some(t.address.as_str()));
                    list.push(match t.weight {
                        None => toml::Value::String(t.address),
                        Some(w) => {
                            let mut tab = toml::Table::new();
                            tab.insert("address".into(), t.address.into());
                            tab.insert("weight".into(), i64::from(w).into());
                            toml::Value::Table(tab)
                        }
                    });
                }
                Ok(())
            }
        }))
        .await?;
    tracing::info!(event = "targets_registered", target_group = %name, targets = ?added, "targets registered through the admin API");
    group_view(&ctx, &name)
        .await
        .map(Json)
        .ok_or_else(|| no_group(&name))
}

pub(super) async fn target_deregister(
    State(ctx): State<Ctx>,
    UrlPath((name, address)): UrlPath<(String, String)>,
) -> ApiResult {
    ctx.node
        .change(Box::new({
            let name = name.clone();
            let address = address.clone();
            move |rt, current| {
                let Some(group) = current.target_groups.iter().find(|g| g.name == name) else {
                    return Err(no_group(&name));
                };
                let list = rt.targets.entry(name.clone()).or_default();
                let before = list.len();
                list.retain(|v| Runtime::target_address(v) != Some(address.as_str()));
                if list.is_empty() {
                    rt.targets.remove(&name);
                }
                if rt.targets.get(&name).map_or(0, Vec::len) == before {
                    let in_file = group.targets.iter().any(|t| match t {
                        portico_lb::config::TargetConfig::Address(a) => *a == address,
                        portico_lb::config::TargetConfig::Weighted(w) => w.address == address,
                    });
                    return Err(if in_file {
                        ApiError::conflict(format!(
                            "target {address} of {name:?} is declared in the config file"
                        ))
                        .hint("remove it from the group's targets in the config file, then reload")
                    } else {
                        ApiError::not_found(format!(
                            "target {address} is not registered in {name:?}"
                        ))
                    });
                }
                Ok(())
            }
        }))
        .await?;
    tracing::info!(event = "target_deregistered", target_group = %name, target = %address, "target deregistered through the admin API");
    group_view(&ctx, &name)
        .await
        .map(Json)
        .ok_or_else(|| no_group(&name))
}
