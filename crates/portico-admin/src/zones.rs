//! `/api/v1/zones…` and `/api/v1/changes/{id}`: hosted zones, their records, change batches.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, ApiError, ApiResult, Ctx};

pub(super) async fn zones_list(State(ctx): State<Ctx>) -> Json<Value> {
    let catalog = ctx.node.zones().catalog();
    let mut zones: Vec<_> = catalog.zones.values().collect();
    zones.sort_by_key(|z| z.origin.to_string());
    Json(Value::Array(
        zones
            .into_iter()
            .map(|z| json!({"name": z.origin.to_string(), "serial": z.serial(), "records": z.record_count()}))
            .collect(),
    ))
}

pub(super) fn zone_of(ctx: &Ctx, zone: &str) -> ApiResult<Arc<portico_dns::zone::Zone>> {
    let name = portico_dns::zones::zone_name(zone).map_err(|e| ApiError::bad(e.to_string()))?;
    ctx.node
        .zones()
        .catalog()
        .zones
        .get(&name)
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(format!("no hosted zone {name}")).hint(
                "GET /api/v1/zones lists them; zones are declared with [[zone]] in the config",
            )
        })
}

pub(super) async fn zone_get(State(ctx): State<Ctx>, UrlPath(zone): UrlPath<String>) -> ApiResult {
    let z = zone_of(&ctx, &zone)?;
    let seen = ctx.node.answers_see();
    let mut records = Vec::new();
    for (name, node) in &z.nodes {
        for set in &node.sets {
            records.push(json!({
                "name": name.to_string(),
                "type": set.rtype.to_string(),
                "ttl": set.ttl,
                "values": set.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            }));
        }
        let target = |a: &portico_dns::zone::Alias| match &a.target {
            portico_dns::zone::AliasTarget::Listener(l) => format!("listener:{l}"),
            portico_dns::zone::AliasTarget::Name(n) => n.to_string(),
        };
        if let Some(a) = node.alias() {
            let mut r = json!({"name": name.to_string(), "type": "ALIAS", "ttl": a.ttl, "target": target(a)});
            if a.evaluate_target_health {
                r["evaluate_target_health"] = json!(true);
            }
            records.push(r);
        }
        for rs in node.routed() {
            use portico_dns::routing::RoutedData;
            let mut r = serde_json::to_value(portico_dns::routing::RoutingFields::of(rs))
                .unwrap_or_default();
            r["name"] = json!(name.to_string());
            r["type"] = json!(rs.type_name());
            r["ttl"] = json!(rs.ttl());
            match &rs.data {
                RoutedData::Set(set) => {
                    r["values"] = json!(set.iter().map(|v| v.to_string()).collect::<Vec<_>>())
                }
                RoutedData::Alias(a) => r["target"] = json!(target(a)),
            }
            r["answered"] = json!(rs.stats.answered());
            r["healthy"] = json!(portico_dns::answer::set_healthy(&z, rs, seen.as_ref()));
            records.push(r);
        }
    }
    Ok(Json(json!({
        "name": z.origin.to_string(),
        "serial": z.serial(),
        "records": records,
    })))
}

pub(super) async fn zone_export(
    State(ctx): State<Ctx>,
    UrlPath(zone): UrlPath<String>,
) -> ApiResult<Response> {
    zone_of(&ctx, &zone)?;
    let text = ctx.node.zones().export(&zone).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangeBatch {
    changes: Vec<portico_dns::zones::RecordChange>,
    #[serde(default)]
    comment: Option<String>,
}

pub(super) async fn zone_change(
    State(ctx): State<Ctx>,
    UrlPath(zone): UrlPath<String>,
    body: Result<Json<ChangeBatch>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let batch = json_body(body)?;
    if batch.changes.is_empty() {
        return Err(ApiError::bad("the change batch has no changes"));
    }
    zone_of(&ctx, &zone)?;
    // Health must name a target group or listener that exists: an unknown one would count as
    // healthy for ever, and failover would never happen.
    let seen = ctx.node.answers_see();
    for (i, c) in batch.changes.iter().enumerate() {
        let Some(h) = c.routing.health.as_deref() else {
            continue;
        };
        if !(h.starts_with("target_group:") || h.starts_with("listener:")) {
            continue;
        }
        if let Ok(health) =
            portico_dns::routing::Health::parse(h, portico_dns::routing::CheckTiming::default())
        {
            if seen.healthy(&health).is_none() {
                return Err(ApiError::bad(format!(
                    "change {i} ({:?} {} {}): health {h:?} names nothing this node serves",
                    c.action, c.name, c.rtype
                ))
                .hint("GET /api/v1/target-groups and /api/v1/listeners list what exists"));
            }
        }
    }
    use portico_dns::zones::ChangeError;
    let info = ctx
        .node
        .zones()
        .change(&zone, &batch.changes)
        .await
        .map_err(|e| match e {
            ChangeError::NoSuchZone(z) => ApiError::not_found(format!("no hosted zone {z}")),
            ChangeError::Invalid(m) => ApiError::bad(m)
                .hint("CREATE fails on an existing record set, DELETE needs the exact values; UPSERT sets it whatever was there"),
            ChangeError::Storage(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m)
                .hint("the change was not applied; retry when the state store answers"),
            ChangeError::Conflict(m) => ApiError::conflict(m)
                .hint("read the zone again (GET /api/v1/zones/{zone}) and retry the change"),
        })?;
    tracing::info!(event = "records_changed", zone = %info.zone, change = %info.id, serial = info.serial,
        comment = batch.comment.as_deref().unwrap_or(""), "change batch applied through the admin API");
    Ok(Json(change_view(&ctx, info).await))
}

/// A change as the API reports it: in cluster mode INSYNC also needs every live node to serve
/// the new serial (as Route 53 reports INSYNC once every authoritative server has the change).
pub(super) async fn change_view(ctx: &Ctx, mut info: portico_dns::zones::ChangeInfo) -> Value {
    use portico_dns::zones::ChangeStatus;
    if info.status == ChangeStatus::Insync
        && !ctx.node.served_everywhere(&info.zone, info.serial).await
    {
        info.status = ChangeStatus::Pending;
    }
    serde_json::to_value(info).unwrap_or_default()
}

pub(super) async fn change_get(State(ctx): State<Ctx>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let info = ctx.node.zones().change_status(&id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no change {id:?} (ids are kept while the server runs)"
        ))
    })?;
    Ok(Json(change_view(&ctx, info).await))
}
