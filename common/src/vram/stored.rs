//! Where measured VRAM lives in Redis, and who reads what.
//!
//! Why two hashes: every worker writes its own measurements (one field per
//! model and worker in `<ns>:model_vram`, one author per field), so the raw
//! hash grows with workers × models. Had every worker merged all of it at
//! each heartbeat, a fleet of a hundred workers would move megabytes a
//! second through Redis for figures that change slowly. So one process, the
//! placing dispatcher, reads the raw hash every [`MERGE_INTERVAL_MS`] and
//! writes the merged figures to `<ns>:model_vram_merged` (field `<model>`,
//! the same JSON merged), expiring after [`MERGED_TTL_MS`] unless renewed.
//! Workers read only the fields of their models there; `gpuq system` and
//! the dashboard read one field per model. Where no dispatcher places
//! (placement off, or between leaders) the merged hash is absent and
//! readers merge the raw hash themselves, as before.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;
use redis::RedisResult;

use super::{merge, ModelVram};
use crate::Names;

/// How often the placing dispatcher merges the raw hash.
pub const MERGE_INTERVAL_MS: u64 = 2_000;
/// The merged hash expires this long after its last write: readers fall
/// back to the raw hash when no dispatcher merges any more.
pub const MERGED_TTL_MS: u64 = 10_000;

/// Every worker's fields merged per model, from the raw hash (one `HVALS`):
/// what the merging dispatcher reads, and everyone's fall-back.
pub async fn learned_raw<C: ConnectionLike>(
    connection: &mut C,
    names: &Names,
) -> RedisResult<BTreeMap<String, ModelVram>> {
    let values: Vec<String> = redis::cmd("HVALS")
        .arg(names.model_vram())
        .query_async(connection)
        .await?;
    Ok(merge(&values))
}

/// Replaces the merged hash with `merged`, in one transaction, expiring
/// after [`MERGED_TTL_MS`]. Written only by the placing dispatcher.
pub async fn write_merged<C: ConnectionLike>(
    connection: &mut C,
    names: &Names,
    merged: &BTreeMap<String, ModelVram>,
) -> RedisResult<()> {
    let key = names.model_vram_merged();
    let mut pipe = redis::pipe();
    pipe.atomic().del(&key).ignore();
    if !merged.is_empty() {
        let fields: Vec<(String, String)> = merged
            .iter()
            .filter_map(|(model, vram)| Some((model.clone(), serde_json::to_string(vram).ok()?)))
            .collect();
        pipe.hset_multiple(&key, &fields).ignore();
        pipe.pexpire(&key, MERGED_TTL_MS as i64).ignore();
    }
    pipe.query_async(connection).await
}

/// Every model's merged measurements: the merged hash while a dispatcher
/// keeps it, else the raw hash merged here.
pub async fn learned<C: ConnectionLike>(
    connection: &mut C,
    names: &Names,
) -> RedisResult<BTreeMap<String, ModelVram>> {
    let values: Vec<String> = redis::cmd("HVALS")
        .arg(names.model_vram_merged())
        .query_async(connection)
        .await?;
    if values.is_empty() {
        return learned_raw(connection, names).await;
    }
    Ok(parse(values.iter().map(String::as_str)))
}

/// The merged measurements of `models` only (one `HMGET` while a dispatcher
/// keeps the merged hash; else the raw hash merged here).
pub async fn learned_for<C: ConnectionLike>(
    connection: &mut C,
    names: &Names,
    models: &[String],
) -> RedisResult<BTreeMap<String, ModelVram>> {
    if models.is_empty() {
        return Ok(BTreeMap::new());
    }
    let key = names.model_vram_merged();
    let (exists, values): (bool, Vec<Option<String>>) = redis::pipe()
        .exists(&key)
        .cmd("HMGET")
        .arg(&key)
        .arg(models)
        .query_async(connection)
        .await?;
    if !exists {
        let mut all = learned_raw(connection, names).await?;
        all.retain(|model, _| models.contains(model));
        return Ok(all);
    }
    Ok(parse(values.iter().flatten().map(String::as_str)))
}

/// One worker's own measurements of `models` (its raw fields).
pub async fn own<C: ConnectionLike>(
    connection: &mut C,
    names: &Names,
    worker: &str,
    models: &[String],
) -> RedisResult<BTreeMap<String, ModelVram>> {
    if models.is_empty() {
        return Ok(BTreeMap::new());
    }
    let fields: Vec<String> = models.iter().map(|m| format!("{m}/{worker}")).collect();
    let values: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(names.model_vram())
        .arg(&fields)
        .query_async(connection)
        .await?;
    Ok(values
        .iter()
        .flatten()
        .filter_map(|json| serde_json::from_str::<ModelVram>(json).ok())
        .filter(|vram| vram.worker == worker)
        .map(|vram| (vram.model.clone(), vram))
        .collect())
}

/// Merged values, by model; unreadable ones are skipped.
fn parse<'a>(values: impl Iterator<Item = &'a str>) -> BTreeMap<String, ModelVram> {
    values
        .filter_map(|json| serde_json::from_str::<ModelVram>(json).ok())
        .map(|vram| (vram.model.clone(), vram))
        .collect()
}
