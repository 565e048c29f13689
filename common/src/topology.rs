//! The AMQP topology as plain data, derived from the config.
//!
//! Every process declares the same topology idempotently at start, so the order
//! in which producers, dispatchers and workers come up does not matter. This
//! module only describes it; `amqp` (feature `amqp`) applies it with lapin.

use crate::config::{Config, QueueType};
use crate::fair_share::SubQueue;
use crate::names::Names;

/// A queue argument value (`x-...` arguments are strings or integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: Vec<(String, ArgValue)>,
    /// `(exchange, routing key)` pairs.
    pub bindings: Vec<(String, String)>,
    /// The model this queue holds jobs for; `None` for the dead-letter queue.
    pub model_id: Option<String>,
    /// An existing queue declared with other arguments is kept as it is
    /// (a retry queue that an older gpuq created classic: a queue's type
    /// cannot change in place) instead of stopping the declare.
    pub keep_existing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
}

impl Topology {
    /// Exchanges, the dead-letter queue and one queue per registered model.
    pub fn for_config(config: &Config) -> Topology {
        let names = config.names();
        let mut queues = vec![
            dead_letter_queue(config, &names),
            QueueSpec {
                name: names.dead_letter_events_queue(),
                arguments: queue_type_arguments(config),
                bindings: vec![(names.dead_letter_exchange(), String::new())],
                model_id: None,
                keep_existing: false,
            },
        ];
        for model in config.registry().models() {
            let mut bindings = vec![(
                names.jobs_exchange(),
                Names::pinned_routing_key(&model.feature, &model.id),
            )];
            if config.registry().is_default(model) {
                bindings.push((
                    names.jobs_exchange(),
                    Names::feature_routing_key(&model.feature),
                ));
            }
            queues.push(QueueSpec {
                name: names.model_queue(&model.id),
                arguments: model_queue_arguments(config, &names),
                bindings,
                model_id: Some(model.id.clone()),
                keep_existing: false,
            });
            queues.push(QueueSpec {
                name: names.retry_queue(&model.id),
                arguments: retry_queue_arguments(config, &names.model_queue(&model.id)),
                bindings: Vec::new(),
                model_id: None,
                keep_existing: true,
            });
        }
        Topology {
            exchanges: vec![
                ExchangeSpec {
                    name: names.jobs_exchange(),
                    kind: ExchangeKind::Direct,
                },
                ExchangeSpec {
                    name: names.dead_letter_exchange(),
                    kind: ExchangeKind::Fanout,
                },
            ],
            queues,
        }
    }

    /// One sub-queue of a model (`crate::fair_share`): the arguments of the
    /// model's own queue (delivery limit, dead-lettering), no binding: a
    /// producer publishes to it by name through the default exchange.
    pub fn sub_queue(config: &Config, model_id: &str, sub: &SubQueue) -> QueueSpec {
        let names = config.names();
        QueueSpec {
            name: sub.queue_name(&names, model_id),
            arguments: model_queue_arguments(config, &names),
            bindings: Vec::new(),
            model_id: Some(model_id.to_owned()),
            keep_existing: false,
        }
    }

    /// The queue of one model, if registered.
    pub fn model_queue(&self, model_id: &str) -> Option<&QueueSpec> {
        self.queues
            .iter()
            .find(|q| q.model_id.as_deref() == Some(model_id))
    }
}

/// A quorum queue's replica count at creation (`queues.replicas`); RabbitMQ
/// caps it at the cluster's size, and ignores it for an existing queue.
pub const REPLICAS_ARGUMENT: &str = "x-quorum-initial-group-size";

pub(crate) fn queue_type_arguments(config: &Config) -> Vec<(String, ArgValue)> {
    match config.queues.queue_type {
        QueueType::Quorum => {
            let mut args = vec![("x-queue-type".into(), ArgValue::Str("quorum".into()))];
            if config.queues.replicas > 0 {
                args.push((
                    REPLICAS_ARGUMENT.into(),
                    ArgValue::Int(i64::from(config.queues.replicas)),
                ));
            }
            args
        }
        QueueType::Classic => vec![("x-queue-type".into(), ArgValue::Str("classic".into()))],
    }
}

/// A model's retry queue: jobs wait out their back-off there (per-message
/// TTL), then the broker dead-letters them back to the model's queue. With
/// quorum queues it is a quorum queue too (replicated, at-least-once
/// dead-lettering: RabbitMQ 3.10+ has message TTL on quorum queues), so a
/// lost node loses no parked retry.
fn retry_queue_arguments(config: &Config, model_queue: &str) -> Vec<(String, ArgValue)> {
    let mut args = queue_type_arguments(config);
    args.push((
        "x-dead-letter-exchange".into(),
        ArgValue::Str(String::new()),
    ));
    args.push((
        "x-dead-letter-routing-key".into(),
        ArgValue::Str(model_queue.to_owned()),
    ));
    if config.queues.queue_type == QueueType::Quorum {
        args.push((
            "x-dead-letter-strategy".into(),
            ArgValue::Str("at-least-once".into()),
        ));
        args.push(("x-overflow".into(), ArgValue::Str("reject-publish".into())));
    }
    args
}

fn model_queue_arguments(config: &Config, names: &Names) -> Vec<(String, ArgValue)> {
    let mut args = queue_type_arguments(config);
    args.push((
        "x-dead-letter-exchange".into(),
        ArgValue::Str(names.dead_letter_exchange()),
    ));
    match config.queues.queue_type {
        QueueType::Quorum => {
            args.push((
                "x-delivery-limit".into(),
                ArgValue::Int(i64::from(config.queues.delivery_limit)),
            ));
            // At-least-once dead-lettering: a poison message is never dropped on the way
            // to the dead-letter queue. RabbitMQ requires reject-publish overflow for it.
            args.push((
                "x-dead-letter-strategy".into(),
                ArgValue::Str("at-least-once".into()),
            ));
            args.push(("x-overflow".into(), ArgValue::Str("reject-publish".into())));
        }
        QueueType::Classic => {
            args.push(("x-max-priority".into(), ArgValue::Int(9)));
        }
    }
    args
}

fn dead_letter_queue(config: &Config, names: &Names) -> QueueSpec {
    QueueSpec {
        keep_existing: false,
        name: names.dead_letter_queue(),
        arguments: queue_type_arguments(config),
        bindings: vec![(names.dead_letter_exchange(), String::new())],
        model_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigOverrides;

    const CONFIG: &str = r#"
namespace = "t1"
[[models]]
id = "echo"
feature = "echo"
runtime = "echo"
vram_mib = 100
[[models]]
id = "echo_b"
feature = "echo"
runtime = "echo"
vram_mib = 100
"#;

    #[test]
    fn default_model_gets_the_feature_binding_and_every_model_its_pinned_one() {
        let config = Config::parse(CONFIG, None, &ConfigOverrides::default()).unwrap();
        let topology = Topology::for_config(&config);
        let echo = topology.model_queue("echo").unwrap();
        assert_eq!(echo.name, "t1.model.echo");
        assert_eq!(
            echo.bindings,
            vec![
                ("t1.jobs".to_string(), "echo.echo".to_string()),
                ("t1.jobs".to_string(), "echo".to_string())
            ]
        );
        let echo_b = topology.model_queue("echo_b").unwrap();
        assert_eq!(
            echo_b.bindings,
            vec![("t1.jobs".to_string(), "echo.echo_b".to_string())]
        );
        assert!(echo
            .arguments
            .contains(&("x-queue-type".into(), ArgValue::Str("quorum".into()))));
        assert!(echo
            .arguments
            .contains(&("x-delivery-limit".into(), ArgValue::Int(5))));
        assert!(echo.arguments.contains(&(
            "x-dead-letter-exchange".into(),
            ArgValue::Str("t1.dlx".into())
        )));
        assert_eq!(topology.queues[0].name, "t1.dead");
    }

    #[test]
    fn retry_queues_are_replicated_with_quorum_queues_and_kept_if_older() {
        let config = Config::parse(CONFIG, None, &ConfigOverrides::default()).unwrap();
        let topology = Topology::for_config(&config);
        let retry = topology
            .queues
            .iter()
            .find(|q| q.name == "t1.retry.echo")
            .unwrap();
        for arg in [
            ("x-queue-type", ArgValue::Str("quorum".into())),
            (REPLICAS_ARGUMENT, ArgValue::Int(3)),
            (
                "x-dead-letter-routing-key",
                ArgValue::Str("t1.model.echo".into()),
            ),
            (
                "x-dead-letter-strategy",
                ArgValue::Str("at-least-once".into()),
            ),
        ] {
            assert!(
                retry.arguments.contains(&(arg.0.into(), arg.1.clone())),
                "{arg:?}"
            );
        }
        assert!(retry.keep_existing, "an older classic retry queue is kept");
        assert!(!topology.model_queue("echo").unwrap().keep_existing);
        let classic = Config::parse(
            &format!("{CONFIG}\n[queues]\ntype = \"classic\"\n"),
            None,
            &ConfigOverrides::default(),
        )
        .unwrap();
        let topology = Topology::for_config(&classic);
        let retry = topology
            .queues
            .iter()
            .find(|q| q.name == "t1.retry.echo")
            .unwrap();
        assert!(retry
            .arguments
            .contains(&("x-queue-type".into(), ArgValue::Str("classic".into()))));
        assert!(!retry
            .arguments
            .iter()
            .any(|(key, _)| key == "x-dead-letter-strategy"));
    }
}
