//! Campaign progress: enqueued recipients recorded on their msg_id markers, counters spread
//! over shards so concurrent workers and EnqueueBulk calls rarely touch the same item.
//!
//! Every transaction that moves a campaign's counters moves its tenant's in the same way
//! (partition `~tenant:<tenant>` of the campaigns table, sharded alike), so a tenant's backlog
//! (enqueued, not yet persisted or dead-lettered) is exact on SQS, whose lanes are shared
//! by tenants: it is what the per-tenant queue quota checks there.

use super::call::{Capacity, TxFailure, account, drop_failed_conditions, store_error};
use super::items::{
    CAMPAIGN_META, CAMPAIGN_SHARDS, Item, campaign_shard, get_i64, get_s, get_u64, item_size, key, marker_expiry, n, put, s, update,
    write_units,
};
use super::{DynamoStore, Tries, persist};
use aws_sdk_dynamodb::types::ReturnConsumedCapacity;
use futures::StreamExt;
use sluice_core::control::{Control, Controls, Scope};
use sluice_core::error::StoreError;
use sluice_core::ids;
use sluice_core::model::Campaign;
use std::collections::BTreeSet;

/// Recipients recorded per transaction (plus the campaign's and the tenant's shard updates).
const CHUNK: usize = 98;
/// Campaign tenants a store remembers (a campaign's tenant never changes).
const TENANTS_CACHED: usize = 10_000;
/// Chunks recorded at once.
const CONCURRENCY: usize = 8;

pub(crate) async fn record_enqueued(
    store: &DynamoStore,
    campaign_id: &str,
    owner: &str,
    requested: u64,
    recipients: &[String],
) -> Result<Campaign, StoreError> {
    // The campaign belongs to its first owner (tenant and sender); checked before anything is recorded.
    update_meta(store, campaign_id, owner, "SET #owner = if_not_exists(#owner, :o)").await?;
    let tenant = ids::owner_tenant(owner);
    remember_tenant(store, campaign_id, tenant);
    let distinct: Vec<String> = recipients.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let chunks: Vec<Vec<String>> = distinct.chunks(CHUNK).map(<[String]>::to_vec).collect();
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(chunks)
        .map(|chunk| record_chunk(store, campaign_id, tenant, chunk))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    // Last, so that a call's request is never seen without its recipients (a campaign whose
    // recipients were all the sender is done as soon as its request is counted).
    count_request(store, campaign_id, owner, requested, &ids::enqueue_call_key(campaign_id, requested, recipients)).await?;
    campaign(store, campaign_id).await?.ok_or_else(|| StoreError::Internal(format!("campaign {campaign_id} vanished")))
}

/// Adds a call's request entries to the campaign once: the call's key goes into the msgids
/// table (with a marker's TTL) in the same transaction, on the condition that it is new, so a
/// retried EnqueueBulk (its answer lost, or refused part way) does not count twice.
async fn count_request(store: &DynamoStore, campaign_id: &str, owner: &str, requested: u64, call: &str) -> Result<(), StoreError> {
    let mut tries = Tries::default();
    loop {
        let mut marker = key(&[("msg_id", s(call))]);
        marker.insert("campaign_id".into(), s(campaign_id));
        marker.insert("expires_at".into(), n(marker_expiry(sluice_core::now_ms())));
        let items = vec![
            put(&store.t.msgids, marker, Some("attribute_not_exists(#msg_id)")),
            update(
                &store.t.campaigns,
                key(&[("campaign_id", s(campaign_id)), ("part", s(CAMPAIGN_META))]),
                "ADD #requested :r",
                Some("attribute_not_exists(#owner) OR #owner = :o"),
                vec![(":r", n(requested)), (":o", s(owner))],
            ),
        ];
        match store.transact(items, None).await {
            Ok(()) => return Ok(()),
            Err(TxFailure::Cancelled(r)) if r.first().is_some_and(|c| c == "ConditionalCheckFailed") => return Ok(()),
            Err(TxFailure::Cancelled(r)) if r.get(1).is_some_and(|c| c == "ConditionalCheckFailed") => {
                return Err(StoreError::CampaignOwned { campaign_id: campaign_id.to_string() });
            }
            Err(f) => store.again(&mut tries, f, "counting a campaign's request").await?,
        }
    }
}

/// One conditional update of the campaign's META item, on the condition that `owner` owns
/// the campaign (or nobody does yet). Retried while another call's transaction holds the
/// item (TransactionConflictException) or DynamoDB throttles.
async fn update_meta(store: &DynamoStore, campaign_id: &str, owner: &str, expr: &str) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        let update = store
            .client
            .update_item()
            .table_name(&store.t.campaigns)
            .set_key(Some(key(&[("campaign_id", s(campaign_id)), ("part", s(CAMPAIGN_META))])))
            .update_expression(expr)
            .condition_expression("attribute_not_exists(#owner) OR #owner = :o")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":o", s(owner))
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        match update.send().await {
            Ok(out) => {
                account(&store.metrics, "UpdateItem", Capacity::Write, out.consumed_capacity());
                store.metrics.dynamodb_items_written.with_label_values(&["standard"]).inc();
                store.metrics.dynamodb_write_units.inc();
                return Ok(());
            }
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                return Err(StoreError::CampaignOwned { campaign_id: campaign_id.to_string() });
            }
            Err(e) => match store_error("UpdateItem", e) {
                e @ (StoreError::Conflict(_) | StoreError::Unavailable(_)) => {
                    account(&store.metrics, "UpdateItem", Capacity::Write, []);
                    store.pause(attempt, &e.to_string()).await?;
                    attempt += 1;
                }
                e => return Err(e),
            },
        }
    }
}

/// Marks each recipient's message as enqueued (once ever) and counts the new ones, in one
/// transaction; recipients recorded before are dropped from the chunk and it is tried again.
async fn record_chunk(store: &DynamoStore, campaign_id: &str, tenant: &str, mut chunk: Vec<String>) -> Result<(), StoreError> {
    let expires = marker_expiry(sluice_core::now_ms());
    let mut tries = Tries::default();
    while !chunk.is_empty() {
        // A shard of its own each try: concurrent calls of one campaign rarely meet on one.
        let shard = format!("p{:02}", rand::random_range(0..CAMPAIGN_SHARDS));
        let mut items: Vec<_> = chunk
            .iter()
            .map(|r| {
                update(
                    &store.t.msgids,
                    key(&[("msg_id", s(ids::bulk_msg_id(campaign_id, r)))]),
                    "SET #enq = :one, #campaign_id = :c, #expires_at = if_not_exists(#expires_at, :exp)",
                    Some("attribute_not_exists(#enq)"),
                    vec![(":one", n(1)), (":c", s(campaign_id)), (":exp", n(expires))],
                )
            })
            .collect();
        items.extend(counter_updates(store, campaign_id, Some(tenant), &shard, "ADD #enqueued :k", vec![(":k", n(chunk.len()))]));
        match store.transact(items, None).await {
            Ok(()) => return Ok(()),
            // Recorded before: they drop out, and the rest goes again at once.
            Err(TxFailure::Cancelled(reasons)) if drop_failed_conditions(&mut chunk, &reasons) => {}
            Err(f) => store.again(&mut tries, f, "recording enqueued recipients").await?,
        }
    }
    Ok(())
}

pub(crate) async fn record_dead_letter(store: &DynamoStore, campaign_id: &str, msg_id: &str) -> Result<(), StoreError> {
    let mut tries = Tries::default();
    let tenant = campaign_tenant(store, campaign_id).await?;
    loop {
        let mut items = vec![update(
            &store.t.msgids,
            key(&[("msg_id", s(msg_id))]),
            "SET #dead = :one, #campaign_id = :c, #expires_at = if_not_exists(#expires_at, :exp)",
            Some("attribute_not_exists(#seq) AND attribute_not_exists(#dead)"),
            vec![(":one", n(1)), (":c", s(campaign_id)), (":exp", n(marker_expiry(sluice_core::now_ms())))],
        )];
        let shard = campaign_shard(msg_id);
        items.extend(counter_updates(store, campaign_id, tenant.as_deref(), &shard, "ADD #dead_lettered :one", vec![(":one", n(1))]));
        match store.transact(items, None).await {
            Ok(()) => return Ok(()),
            // Persisted after all, or counted already. A message persisted by a delivery that
            // never counted it is counted as persisted here, since no delivery will come again.
            Err(TxFailure::Cancelled(r)) if r.first().is_some_and(|c| c == "ConditionalCheckFailed") => {
                let campaign = campaign_id.to_string();
                return match persist::marker(store, msg_id).await?.uncounted(store, Some(&campaign), msg_id).await? {
                    Some(u) => persist::count_persisted(store, vec![u]).await,
                    None => Ok(()),
                };
            }
            Err(f) => store.again(&mut tries, f, "recording a dead letter").await?,
        }
    }
}

/// The updates of a campaign's counter shard `shard` and, when the tenant is known, its
/// tenant's (one expression for both).
pub(crate) fn counter_updates(
    store: &DynamoStore,
    campaign_id: &str,
    tenant: Option<&str>,
    shard: &str,
    expr: &str,
    values: Vec<(&str, aws_sdk_dynamodb::types::AttributeValue)>,
) -> Vec<aws_sdk_dynamodb::types::TransactWriteItem> {
    let mut partitions = vec![campaign_id.to_string()];
    partitions.extend(tenant.map(tenant_partition));
    partitions
        .into_iter()
        .map(|p| update(&store.t.campaigns, key(&[("campaign_id", s(p)), ("part", s(shard))]), expr, None, values.clone()))
        .collect()
}

/// The partition of the campaigns table that counts a tenant's campaign messages (`~` is no
/// character of a campaign id, and `:` none of a tenant's).
fn tenant_partition(tenant: &str) -> String {
    format!("~tenant:{tenant}")
}

fn remember_tenant(store: &DynamoStore, campaign_id: &str, tenant: &str) {
    let mut tenants = store.campaign_tenants.lock().unwrap_or_else(|p| p.into_inner());
    if tenants.len() >= TENANTS_CACHED && !tenants.contains_key(campaign_id) {
        tenants.clear();
    }
    tenants.insert(campaign_id.to_string(), tenant.to_string());
}

/// The tenant a campaign belongs to (from its meta item, then cached); `None` for a
/// campaign never recorded (its counts have no tenant to go to).
pub(crate) async fn campaign_tenant(store: &DynamoStore, campaign_id: &str) -> Result<Option<String>, StoreError> {
    if let Some(t) = store.campaign_tenants.lock().unwrap_or_else(|p| p.into_inner()).get(campaign_id) {
        return Ok(Some(t.clone()));
    }
    let meta = store.get(&store.t.campaigns, key(&[("campaign_id", s(campaign_id)), ("part", s(CAMPAIGN_META))])).await?;
    let Some(tenant) = meta.as_ref().and_then(|m| get_s(m, "owner")).map(|o| ids::owner_tenant(o).to_string()) else { return Ok(None) };
    remember_tenant(store, campaign_id, &tenant);
    Ok(Some(tenant))
}

/// A tenant's campaign messages enqueued and not yet persisted or dead-lettered.
pub(crate) async fn tenant_backlog(store: &DynamoStore, tenant: &str) -> Result<u64, StoreError> {
    let (enqueued, persisted, dead) = counter_sums(&partition(store, &tenant_partition(tenant)).await?);
    // Campaigns enqueued before tenants were counted add what finishes but not what was
    // enqueued: never below zero.
    Ok((enqueued - persisted - dead).max(0) as u64)
}

/// Enqueued, persisted and dead-lettered summed over a partition's shards (a shard may hold a
/// negative count: a redrive takes its dead letter back from whichever shard its counting
/// transaction picked).
fn counter_sums(items: &[Item]) -> (i64, i64, i64) {
    items.iter().fold((0, 0, 0), |(e, p, d), item| {
        (e + get_i64(item, "enqueued"), p + get_i64(item, "persisted"), d + get_i64(item, "dead_lettered"))
    })
}

/// Every item of one partition of the campaigns table, strongly consistent.
async fn partition(store: &DynamoStore, campaign_id: &str) -> Result<Vec<Item>, StoreError> {
    let q = store
        .client
        .query()
        .table_name(&store.t.campaigns)
        .key_condition_expression("#c = :c")
        .expression_attribute_names("#c", "campaign_id")
        .expression_attribute_values(":c", s(campaign_id))
        .consistent_read(true);
    store.query_all(q, None).await
}

pub(crate) async fn campaign(store: &DynamoStore, campaign_id: &str) -> Result<Option<Campaign>, StoreError> {
    let items = partition(store, campaign_id).await?;
    if items.is_empty() {
        return Ok(None);
    }
    let mut c = Campaign { campaign_id: campaign_id.to_string(), ..Campaign::default() };
    if let Some(meta) = items.iter().find(|item| get_s(item, "part") == Some(CAMPAIGN_META)) {
        c.requested = get_u64(meta, "requested");
        c.tenant = get_s(meta, "owner").map(|o| ids::owner_tenant(o).to_string()).unwrap_or_default();
    }
    let (enqueued, persisted, dead) = counter_sums(&items);
    (c.enqueued, c.persisted, c.dead_lettered) = (enqueued.max(0) as u64, persisted.max(0) as u64, dead.max(0) as u64);
    Ok(Some(c))
}

/// A campaign body's item: partition `~body:<campaign>` of the campaigns table (apart from
/// the campaign's counters, so reading its progress never reads a body), sort key the
/// body's reference.
fn body_key(campaign_id: &str, body_ref: &str) -> Item {
    key(&[("campaign_id", s(format!("~body:{campaign_id}"))), ("part", s(body_ref))])
}

/// Stores a campaign's body once (a plain put: the reference names the body, so a repeated
/// put writes what is there).
pub(crate) async fn put_body(store: &DynamoStore, campaign_id: &str, body_ref: &str, body: &str) -> Result<(), StoreError> {
    let mut item = body_key(campaign_id, body_ref);
    item.insert("body".into(), s(body));
    put_item(store, item).await
}

/// One standard PutItem in the campaigns table, counted in the metrics.
async fn put_item(store: &DynamoStore, item: Item) -> Result<(), StoreError> {
    let units = write_units(item_size(&item));
    let out = store
        .client
        .put_item()
        .table_name(&store.t.campaigns)
        .set_item(Some(item))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .map_err(|e| store_error("PutItem", e))?;
    account(&store.metrics, "PutItem", Capacity::Write, out.consumed_capacity());
    store.metrics.dynamodb_items_written.with_label_values(&["standard"]).inc();
    store.metrics.dynamodb_write_units.inc_by(units);
    Ok(())
}

pub(crate) async fn body(store: &DynamoStore, campaign_id: &str, body_ref: &str) -> Result<Option<String>, StoreError> {
    let item = store.get(&store.t.campaigns, body_key(campaign_id, body_ref)).await?;
    Ok(item.as_ref().and_then(|i| get_s(i, "body")).map(str::to_string))
}

/// The partition of the campaigns table that holds the operator's drain controls (`~` is
/// no character of a campaign id); its sort key is the scope's key.
const CONTROLS_PARTITION: &str = "~controls";

pub(crate) async fn set_control(store: &DynamoStore, scope: &Scope, control: Control) -> Result<(), StoreError> {
    let k = key(&[("campaign_id", s(CONTROLS_PARTITION)), ("part", s(scope.key()))]);
    if control.is_default() {
        let out = store
            .client
            .delete_item()
            .table_name(&store.t.campaigns)
            .set_key(Some(k))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error("DeleteItem", e))?;
        account(&store.metrics, "DeleteItem", Capacity::Write, out.consumed_capacity());
        return Ok(());
    }
    let mut item = k;
    item.insert("paused".into(), n(u8::from(control.paused)));
    if let Some(rate) = control.rate {
        item.insert("rate".into(), n(rate));
    }
    put_item(store, item).await
}

pub(crate) async fn controls(store: &DynamoStore) -> Result<Controls, StoreError> {
    let items = partition(store, CONTROLS_PARTITION).await?;
    let entries = items
        .iter()
        .filter_map(|item| {
            let scope = Scope::parse(get_s(item, "part")?)?;
            let rate = item.get("rate").and_then(|v| v.as_n().ok()).and_then(|r| r.parse::<f64>().ok());
            Some((scope, Control { paused: get_u64(item, "paused") == 1, rate }))
        })
        .collect();
    Ok(Controls { entries })
}
