//! The `gpuq` command line: `submit`, `status`, `system`.
//!
//! Exit codes: 0 success; 1 error (bad arguments, unknown feature, broker or
//! Redis unreachable); 2 the waited-for job ended failed, cancelled or timed
//! out; 3 `--wait` gave up before the job ended; 4 no such job.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use gpuq_common::process::{init_tracing, LogFormat};
use gpuq_common::{Config, ConfigOverrides, JobStatus, Value, ValueMap};

use crate::producer::{JobFilter, JobRequest, Producer};
use crate::store::CancelOutcome;

mod show;
use show::{print_record, watch};

/// Submit GPU jobs to gpuq and see what the system is doing.
#[derive(Parser, Debug)]
#[command(name = "gpuq", version)]
pub struct Cli {
    /// Config file; default ./gpuq.toml if present, else built-in defaults
    /// (with GPUQ_AMQP_URL / GPUQ_REDIS_URL).
    #[arg(long, env = "GPUQ_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Submit a job; prints its id (and its result with --wait).
    Submit(SubmitArgs),
    /// Show a job's status, error and result.
    Status {
        job_id: String,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List recent jobs, newest first.
    Jobs {
        /// Only jobs with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this feature.
        #[arg(long)]
        feature: Option<String>,
        /// Only jobs of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued job never runs, a running one is stopped.
    Cancel { job_id: String },
    /// Follow a job live: status changes and a progress bar, until it ends.
    Watch {
        job_id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
    /// Store or fetch files in the artifact store.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Run the HTTP gateway (POST /v1/jobs, GET /v1/jobs/{id}, ...).
    Serve {
        /// Listen address; default `gateway.listen` (127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Show hosts, GPUs, workers and queues.
    System {
        /// Print the snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// Upload a file; prints its id (use it as an input: {"$artifact": "<id>"}).
    Put { file: PathBuf },
    /// Download an artifact to a file, or to stdout.
    Get {
        id: String,
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Feature to run, e.g. text_to_textured_mesh.
    pub feature: String,
    /// An input as name=value; the value is read as JSON when it parses, else as a
    /// string. name=@path sends a file's bytes (inline when small, else as an artifact).
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// All inputs as one JSON object (merged under --input).
    #[arg(long, value_name = "JSON")]
    pub inputs_json: Option<String>,
    /// Pin a model of the feature.
    #[arg(long)]
    pub model: Option<String>,
    /// The tenant the job belongs to (default `jobs.default_tenant`).
    #[arg(long)]
    pub tenant: Option<String>,
    /// POST the job's status changes here, signed (see `[webhooks]`).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// A status the webhook is sent for (repeat; default: the final ones).
    #[arg(long = "webhook-event", value_name = "STATUS", requires = "webhook")]
    pub webhook_events: Vec<String>,
    /// Use this job id (the idempotency key) instead of a new one.
    #[arg(long)]
    pub job_id: Option<String>,
    /// Priority 0 to 9 (classic queues only).
    #[arg(long)]
    pub priority: Option<u8>,
    /// Run-time limit in seconds (default: the model's).
    #[arg(long)]
    pub timeout_s: Option<u64>,
    /// Longest wait in the queue before the job ends timed_out, seconds.
    #[arg(long)]
    pub queue_timeout_s: Option<u64>,
    /// Wait for the job to end and print its result.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_timeout_s: u64,
    /// Print the final record as JSON (with --wait).
    #[arg(long)]
    pub json: bool,
}

/// Runs the command and returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    init_tracing(cli.log_format);
    match dispatch(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let overrides = ConfigOverrides::from_environment(std::env::vars());
    let default_path = PathBuf::from("gpuq.toml");
    match path {
        Some(path) => Ok(Config::load(path, &overrides)?),
        None if default_path.exists() => Ok(Config::load(&default_path, &overrides)?),
        None => Ok(Config::defaults(&overrides)),
    }
}

// Longer than 80 lines: one short arm per subcommand.

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let mut config = load_config(cli.config.as_ref())?;
    if let Command::Serve {
        listen: Some(listen),
    } = &cli.command
    {
        config.gateway.listen = listen.clone();
    }
    let producer = Producer::connect(config)
        .await
        .context("connecting to rabbitmq and redis")?;
    let code = match cli.command {
        Command::Submit(args) => submit(&producer, args).await?,
        Command::Status { job_id, json } => match producer.status(&job_id).await? {
            Some(record) => {
                print_record(&record, json);
                0
            }
            None => {
                eprintln!("no job '{job_id}' (unknown, or its record expired)");
                4
            }
        },
        Command::Jobs {
            status,
            feature,
            tenant,
            limit,
            json,
        } => {
            let status = match status.as_deref() {
                Some(s) => {
                    Some(JobStatus::parse(s).with_context(|| format!("unknown status '{s}'"))?)
                }
                None => None,
            };
            let filter = JobFilter {
                status,
                feature,
                submitted_by: None,
                tenant,
            };
            let jobs = producer.recent_jobs(limit, &filter).await?.jobs;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                for job in &jobs {
                    let run_ms = job
                        .started_ms
                        .zip(job.finished_ms)
                        .map(|(s, f)| format!("{} ms", f.saturating_sub(s)));
                    println!(
                        "{}  {:<10} {:<24} {:<10} {}",
                        job.job_id,
                        job.status.map_or("-".into(), |s| s.to_string()),
                        job.feature.clone().unwrap_or_default(),
                        run_ms.unwrap_or_default(),
                        job.error
                            .as_ref()
                            .map(|e| format!("{}: {}", e.code, e.message))
                            .unwrap_or_default()
                    );
                }
            }
            0
        }
        Command::Watch { job_id, timeout_s } => {
            watch(&producer, &job_id, Duration::from_secs(timeout_s)).await?
        }
        Command::Cancel { job_id } => match producer.cancel(&job_id).await? {
            CancelOutcome::Cancelled { was } => {
                println!("cancelled {job_id} (was {was})");
                0
            }
            CancelOutcome::AlreadyFinal(status) => {
                eprintln!("job {job_id} already ended: {status}");
                2
            }
        },
        Command::Serve { .. } => {
            crate::gateway::serve(producer, gpuq_common::process::shutdown_on_signals()).await?;
            return Ok(0);
        }
        Command::Artifact(ArtifactCommand::Put { file }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            println!("{}", producer.put_artifact(bytes).await?);
            0
        }
        Command::Artifact(ArtifactCommand::Get { id, output }) => {
            use std::io::Write;
            let mut download = producer.get_artifact(&id).await?;
            let mut out: Box<dyn Write + Send> = match &output {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("writing {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout()),
            };
            // Chunk by chunk: a large artifact never sits whole in memory.
            while let Some(chunk) =
                futures_util::TryStreamExt::try_next(&mut download.chunks).await?
            {
                out.write_all(&chunk)?;
            }
            out.flush()?;
            0
        }
        Command::System { json } => {
            let status = producer.system_status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            0
        }
    };
    producer.close().await;
    Ok(code)
}

/// Parses `name=value` inputs; values are JSON when they parse, else strings.
pub fn parse_inputs(pairs: &[String], json: Option<&str>) -> anyhow::Result<ValueMap> {
    let mut inputs = match json {
        Some(json) => {
            serde_json::from_str::<ValueMap>(json).context("--inputs-json must be a JSON object")?
        }
        None => ValueMap::new(),
    };
    for pair in pairs {
        let Some((name, raw)) = pair.split_once('=') else {
            bail!("--input '{pair}' must look like name=value");
        };
        if name.is_empty() {
            bail!("--input '{pair}' has an empty name");
        }
        let value = serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::from(raw));
        inputs.insert(name.to_owned(), value);
    }
    Ok(inputs)
}

async fn submit(producer: &Producer, args: SubmitArgs) -> anyhow::Result<i32> {
    let mut request = JobRequest::new(&args.feature);
    let (files, values): (Vec<String>, Vec<String>) = args
        .inputs
        .iter()
        .cloned()
        .partition(|pair| pair.contains("=@"));
    request.inputs = parse_inputs(&values, args.inputs_json.as_deref())?;
    for pair in files {
        let (name, path) = pair.split_once("=@").expect("partitioned on =@");
        let bytes =
            std::fs::read(path).with_context(|| format!("--input {name}: reading {path}"))?;
        request
            .inputs
            .insert(name.to_owned(), producer.file_input(bytes).await?);
    }
    request.model = args.model;
    request.tenant = args.tenant;
    request.webhook = args
        .webhook
        .map(|url| gpuq_common::webhook::WebhookRequest {
            url,
            events: args.webhook_events,
        });
    request.job_id = args.job_id;
    request.priority = args.priority;
    request.timeout_s = args.timeout_s;
    request.queue_timeout_s = args.queue_timeout_s;
    let model = request.model.clone().or_else(|| {
        producer
            .config()
            .registry()
            .default_model(&request.feature)
            .map(|m| m.id.clone())
    });
    let job_id = producer.submit(request).await?;
    println!("{job_id}");
    if let Some(model) = model {
        if let Ok(Some(depth)) = producer.queue_depth(&model).await {
            if depth.consumers == 0 {
                eprintln!("warning: no worker consumes model '{model}' right now; the job waits until one does (see `gpuq system`)");
            }
        }
    }
    if !args.wait {
        return Ok(0);
    }
    let record = producer
        .wait(&job_id, Duration::from_secs(args.wait_timeout_s))
        .await?;
    let Some(record) = record else {
        eprintln!("job '{job_id}' has no record (expired?)");
        return Ok(4);
    };
    print_record(&record, args.json);
    Ok(match record.status {
        Some(JobStatus::Completed) => 0,
        Some(status) if status.is_final() => 2,
        _ => {
            eprintln!(
                "gave up waiting after {} s; the job is still {}",
                args.wait_timeout_s,
                record.status.map_or("unknown".into(), |s| s.to_string())
            );
            3
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_parse_as_json_when_they_can() {
        let pairs = vec![
            "n=3".to_string(),
            "text=hello world".to_string(),
            "flag=true".to_string(),
            "s=\"7\"".to_string(),
        ];
        let inputs = parse_inputs(&pairs, Some(r#"{"a": [1, 2]}"#)).unwrap();
        assert_eq!(inputs["n"], Value::from(3));
        assert_eq!(inputs["text"], Value::from("hello world"));
        assert_eq!(inputs["flag"], Value::from(true));
        assert_eq!(inputs["s"], Value::from("7"));
        assert_eq!(
            inputs["a"],
            Value::Array(vec![Value::from(1), Value::from(2)])
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(parse_inputs(&["novalue".to_string()], None).is_err());
        assert!(parse_inputs(&["=x".to_string()], None).is_err());
        assert!(parse_inputs(&[], Some("[1]")).is_err());
    }
}
