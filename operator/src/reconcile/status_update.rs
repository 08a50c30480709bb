//! Step 4: the status the resource should show, from its Deployment and Consul, written
//! only when it differs from what the resource shows (or was last written).

use super::children::Applied;
use super::{Context, Subject};
use crate::error::{Error, Result};
use crate::labels::FIELD_MANAGER;
use crate::status::{compute_status, is_ready};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;
use streamgate_crds::{StreamGateService, StreamGateServiceStatus};

/// The status wanted, and what it was computed from.
pub(super) struct StatusUpdate {
    pub status: StreamGateServiceStatus,
    /// The status the resource shows, or the one written moments ago that the cache
    /// does not show yet.
    pub shown: Option<StreamGateServiceStatus>,
    /// Part of what was read came from a recent write's answer, not the cache.
    pub provisional: bool,
}

impl StatusUpdate {
    /// When to look again: soon while not Ready (Consul changes do not wake a reconcile;
    /// the next look reads them from the watch's cache), and
    /// within the cache's catch-up time when part of the picture was provisional, so
    /// someone else's change hidden behind it shows.
    pub fn next_look(&self, ctx: &Context) -> Duration {
        let resync = if is_ready(&self.status) {
            ctx.resync_ready
        } else {
            ctx.resync_not_ready
        };
        if self.provisional {
            resync.min(crate::known::CATCH_UP)
        } else {
            resync
        }
    }
}

pub(super) async fn observe(
    sgs: &StreamGateService,
    ctx: &Context,
    target: &Subject,
    applied: &Applied,
) -> StatusUpdate {
    let consul = ctx
        .instances
        .managed_instances(&sgs.consul_name(), &target.namespace)
        .await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Computed from the status last written when the cache does not show it yet, so the
    // same status is not written twice and condition transition times carry over.
    let written = ctx.statuses.stand_in(sgs);
    let provisional = applied.provisional || written.is_some();
    let as_written;
    let shown = match written {
        Some(status) => {
            as_written = StreamGateService {
                status: Some(status),
                ..sgs.clone()
            };
            &as_written
        }
        None => sgs,
    };
    let status = compute_status(shown, applied.deployment.as_deref(), &consul, now);
    StatusUpdate {
        status,
        shown: shown.status.clone(),
        provisional,
    }
}

pub(super) async fn write(
    ctx: &Context,
    target: &Subject,
    sgs: &StreamGateService,
    update: &StatusUpdate,
) -> Result<()> {
    if update.shown.as_ref() == Some(&update.status) {
        return Ok(());
    }
    // A JSON merge patch of the whole status, not a server-side apply: the status is
    // ours alone and computed whole (every field set, conditions replaced as a list),
    // so the two write the same thing, and a merge patch costs the API server a
    // fraction of an apply (no YAML decoding, no field-set merging). Status writes
    // were the largest share of its CPU with 1,000 resources.
    let api: Api<StreamGateService> = Api::namespaced(ctx.client.clone(), &target.namespace);
    let patch = json!({ "status": update.status });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch_status(&target.name, &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::WriteStatus)?;
    ctx.statuses.remember(sgs, update.status.clone());
    Ok(())
}
