use super::*;

fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn job_record_parses_a_failed_job() {
    let record = JobRecord::from_hash(
        "j1",
        &hash(&[
            ("status", "failed"),
            ("feature", "echo"),
            ("attempts", "2"),
            ("error_code", "invalid_input"),
            ("error_message", "missing 'text'"),
            ("created_ms", "10"),
        ]),
    )
    .unwrap();
    assert_eq!(record.status, Some(JobStatus::Failed));
    assert_eq!(record.attempts, 2);
    assert_eq!(record.error.unwrap().code, ErrorCode::InvalidInput);
    assert!(JobRecord::from_hash("j2", &HashMap::new()).is_none());
}

#[test]
fn worker_and_host_records_round_trip_through_hash_fields() {
    let worker = WorkerRecord {
        worker_id: "h-gpu0-slot0".into(),
        host: "h".into(),
        gpu: "0".into(),
        pid: 42,
        state: "idle".into(),
        vram_budget_mib: 8000,
        models: vec!["echo".into()],
        consuming: vec!["echo".into()],
        waiting: [("echo".to_string(), 2)].into(),
        current_jobs: vec![],
        jobs_done: 3,
        jobs_failed: 1,
        resident_models: vec![ResidentModel {
            model: "echo".into(),
            vram_mib: 256,
            in_use: 0,
            loaded_at_ms: 5,
            load_ms: 12,
            jobs: 3,
        }],
        model_loads: 1,
        model_unloads: 0,
        peak_resident_mib: 256,
        metrics: Default::default(),
        amqp: AmqpLink {
            node: Some("rabbit-2:5672".into()),
            reconnects: 3,
        },
        started_ms: 1,
        heartbeat_ms: 2,
    };
    let fields: HashMap<String, String> = worker
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(WorkerRecord::from_hash(&fields).unwrap(), worker);

    let host = HostRecord {
        host_id: "h".into(),
        version: "0.1.0".into(),
        pid: 7,
        gpu_source: "declared".into(),
        nvml_error: Some("no driver".into()),
        gpus: vec![GpuRecord {
            index: 0,
            uuid: None,
            name: "g".into(),
            memory_total_mib: 24576,
            memory_used_mib: 0,
            foreign_used_mib: 0,
            utilization_percent: None,
            temperature_c: None,
            processes: 0,
            source: "declared".into(),
        }],
        slots: vec![SlotRecord {
            worker_id: "h-gpu0-slot0".into(),
            gpu: 0,
            vram_budget_mib: 12000,
            models: vec!["echo".into()],
            state: "running".into(),
            pid: Some(9),
            restarts: 1,
            last_exit: Some("exit code 1".into()),
        }],
        unplaced_models: vec!["big: needs 99999 MiB".into()],
        amqp: AmqpLink::default(),
        started_ms: 1,
        heartbeat_ms: 2,
    };
    let fields: HashMap<String, String> = host
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(HostRecord::from_hash(&fields).unwrap(), host);
}
