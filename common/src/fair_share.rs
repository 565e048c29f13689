//! Where a job waits: its model's queue, split by priority level and tenant.
//!
//! RabbitMQ 3.x quorum queues have no message priorities, and one FIFO queue
//! per model makes a tenant with 5 jobs wait behind one with 2,000. So a
//! model's jobs wait in sub-queues, one per (priority level, tenant) in use,
//! and workers choose among them (gpu-worker's `fair` module): the tenant
//! that has used the least GPU time per weight first, and within a tenant
//! the highest level first. Every job stays in a durable queue of the broker
//! until a worker acks it, as before.
//!
//! The model's own queue (`<ns>.model.<id>`) is the sub-queue of the
//! default tenant at `normal`: what a client that knows nothing of tenants
//! publishes to (through the jobs exchange) lands there, and so do retried
//! jobs (the retry queue dead-letters into it). A sub-queue is declared by
//! the producer that first publishes to it and listed in the Redis set
//! `<ns>:subqueues:<model>` (members `<level>/<tenant>`), which workers and
//! the placing dispatcher read. Sub-queues are never deleted by gpuq.
//!
//! A third split serves measured VRAM (`crate::vram`): a job whose input
//! size class needs more VRAM than the worker that received it has is given
//! back to a *VRAM tier* of its sub-queue (`<ns>.model.<id>.vram-<mib>...`,
//! member `<level>/<tenant>/vram-<mib>`), which only workers whose budget is
//! at least `<mib>` consume, whether or not placement gave them the model.

use crate::names::Names;
use crate::wire::DEFAULT_TENANT;

/// A priority level. The wire's `priority` 0 to 9 maps onto three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Low,
    Normal,
    High,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Low, Level::Normal, Level::High];

    /// 0 to 2 `low`, 3 to 6 (and none) `normal`, 7 to 9 `high`.
    pub fn of_priority(priority: Option<u8>) -> Level {
        match priority {
            Some(0..=2) => Level::Low,
            Some(7..) => Level::High,
            _ => Level::Normal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Normal => "normal",
            Level::High => "high",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == text)
    }
}

/// One sub-queue of a model: a priority level, a tenant and, for jobs given
/// back for want of VRAM, the least budget of a worker that may take them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubQueue {
    pub level: Level,
    pub tenant: String,
    /// `Some(mib)`: a VRAM tier, consumed only by workers with that budget.
    pub vram_mib: Option<u64>,
}

impl SubQueue {
    /// The model's own queue: the default tenant at `normal`.
    pub fn main() -> SubQueue {
        SubQueue {
            level: Level::Normal,
            tenant: DEFAULT_TENANT.to_owned(),
            vram_mib: None,
        }
    }

    /// Where a job of `tenant` at `priority` waits: with `split_tenants`
    /// off (`tenants.fair_share = false`) every tenant shares the default
    /// tenant's sub-queues, so only the level splits the queue.
    pub fn for_job(tenant: &str, priority: Option<u8>, split_tenants: bool) -> SubQueue {
        SubQueue {
            level: Level::of_priority(priority),
            tenant: if split_tenants {
                tenant.to_owned()
            } else {
                DEFAULT_TENANT.to_owned()
            },
            vram_mib: None,
        }
    }

    /// The same sub-queue's VRAM tier for workers with at least `mib`.
    pub fn with_vram(self, mib: u64) -> SubQueue {
        SubQueue {
            vram_mib: Some(mib),
            ..self
        }
    }

    /// Whether a worker with `budget_mib` (`None`: no budget) may consume it.
    pub fn fits(&self, budget_mib: Option<u64>) -> bool {
        match (self.vram_mib, budget_mib) {
            (Some(tier), Some(budget)) => budget >= tier,
            _ => true,
        }
    }

    pub fn is_main(&self) -> bool {
        self.level == Level::Normal && self.tenant == DEFAULT_TENANT && self.vram_mib.is_none()
    }

    /// The queue's name: the model's own for [`SubQueue::main`], else
    /// `<ns>.model.<id>.<level>` (default tenant) or
    /// `<ns>.model.<id>.<level>.<tenant>`, with `.vram-<mib>` after the id
    /// for a VRAM tier. A model id has no `.` and no level starts with
    /// `vram-`, so no two sub-queues share a name.
    pub fn queue_name(&self, names: &Names, model_id: &str) -> String {
        let mut main = names.model_queue(model_id);
        if let Some(mib) = self.vram_mib {
            main = format!("{main}.vram-{mib}.{}", self.level.as_str());
            if self.tenant != DEFAULT_TENANT {
                main = format!("{main}.{}", self.tenant);
            }
            return main;
        }
        if self.is_main() {
            main
        } else if self.tenant == DEFAULT_TENANT {
            format!("{main}.{}", self.level.as_str())
        } else {
            format!("{main}.{}.{}", self.level.as_str(), self.tenant)
        }
    }

    /// The member of `<ns>:subqueues:<model>` naming this sub-queue:
    /// `<level>/<tenant>`, plus `/vram-<mib>` for a VRAM tier (which a
    /// version without tiers reads as an invalid tenant and skips).
    pub fn member(&self) -> String {
        match self.vram_mib {
            None => format!("{}/{}", self.level.as_str(), self.tenant),
            Some(mib) => format!("{}/{}/vram-{mib}", self.level.as_str(), self.tenant),
        }
    }

    /// A member read back from Redis; `None` for one this version cannot
    /// read (it is skipped, never an error).
    pub fn from_member(member: &str) -> Option<SubQueue> {
        let mut parts = member.split('/');
        let (level, tenant) = (parts.next()?, parts.next()?);
        let vram_mib = match parts.next() {
            None => None,
            Some(tier) => Some(tier.strip_prefix("vram-")?.parse().ok()?),
        };
        if parts.next().is_some() {
            return None;
        }
        crate::wire::validate_tenant(tenant).ok()?;
        Some(SubQueue {
            level: Level::parse(level)?,
            tenant: tenant.to_owned(),
            vram_mib,
        })
    }
}

/// The sub-queues listed for each of `models`, in one pipelined round
/// trip (members this version cannot read are skipped): what the workers,
/// the placing dispatcher and the tests' clean-up read.
#[cfg(feature = "redis")]
pub async fn listed<C: redis::aio::ConnectionLike>(
    connection: &mut C,
    names: &Names,
    models: &[String],
) -> redis::RedisResult<Vec<(String, Vec<SubQueue>)>> {
    let mut pipe = redis::pipe();
    for model in models {
        pipe.cmd("SMEMBERS").arg(names.sub_queues_key(model));
    }
    let members: Vec<Vec<String>> = pipe.query_async(connection).await?;
    Ok(models
        .iter()
        .cloned()
        .zip(members)
        .map(|(model, members)| {
            let subs = members.iter().filter_map(|m| SubQueue::from_member(m));
            (model, subs.collect())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_onto_three_levels() {
        let levels: Vec<Level> = (0..=9).map(|p| Level::of_priority(Some(p))).collect();
        assert_eq!(&levels[..3], [Level::Low; 3]);
        assert_eq!(&levels[3..7], [Level::Normal; 4]);
        assert_eq!(&levels[7..], [Level::High; 3]);
        assert_eq!(Level::of_priority(None), Level::Normal);
        assert!(Level::High > Level::Normal && Level::Normal > Level::Low);
    }

    #[test]
    fn the_main_sub_queue_is_the_models_own_queue() {
        let names = Names::new("ns");
        assert_eq!(SubQueue::main().queue_name(&names, "m"), "ns.model.m");
        let high = SubQueue::for_job("default", Some(9), true);
        assert_eq!(high.queue_name(&names, "m"), "ns.model.m.high");
        let acme = SubQueue::for_job("acme.eu", None, true);
        assert_eq!(acme.queue_name(&names, "m"), "ns.model.m.normal.acme.eu");
        let shared = SubQueue::for_job("acme", None, false);
        assert!(shared.is_main());
    }

    #[test]
    fn members_round_trip_and_unknown_ones_are_skipped() {
        let sub = SubQueue::for_job("acme", Some(1), true);
        assert_eq!(SubQueue::from_member(&sub.member()), Some(sub));
        assert_eq!(SubQueue::from_member("urgent/acme"), None);
        assert_eq!(SubQueue::from_member("high/a b"), None);
        assert_eq!(SubQueue::from_member("high"), None);
    }

    #[test]
    fn vram_tiers_have_their_own_names_and_members() {
        let names = Names::new("ns");
        let tier = SubQueue::main().with_vram(24576);
        assert!(!tier.is_main());
        assert_eq!(tier.queue_name(&names, "m"), "ns.model.m.vram-24576.normal");
        let acme = SubQueue::for_job("acme.eu", Some(9), true).with_vram(8192);
        assert_eq!(
            acme.queue_name(&names, "m"),
            "ns.model.m.vram-8192.high.acme.eu"
        );
        assert_eq!(acme.member(), "high/acme.eu/vram-8192");
        assert_eq!(SubQueue::from_member(&acme.member()), Some(acme.clone()));
        assert_eq!(SubQueue::from_member("high/acme/vram-x"), None);
        assert_eq!(SubQueue::from_member("high/acme/gpu-1"), None);
        assert_eq!(SubQueue::from_member("high/acme/vram-1/x"), None);
        // Only a worker with the tier's budget (or no budget) takes it.
        assert!(acme.fits(Some(8192)) && acme.fits(None));
        assert!(!acme.fits(Some(8191)));
        assert!(SubQueue::main().fits(Some(1)));
    }
}
