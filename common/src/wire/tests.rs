use super::*;

fn sample_job() -> JobMessage {
    let mut inputs = ValueMap::new();
    inputs.insert("prompt".into(), Value::from("a wooden chair"));
    inputs.insert("steps".into(), Value::from(12));
    inputs.insert("scale".into(), Value::from(0.5));
    inputs.insert("image".into(), Value::Binary(vec![0, 1, 2, 255]));
    let mut metadata = ValueMap::new();
    metadata.insert("user".into(), Value::from("u-42"));
    JobMessage {
        schema_version: SCHEMA_VERSION,
        job_id: "job-1".into(),
        feature: "text_to_textured_mesh".into(),
        model: Some("trellis".into()),
        inputs,
        priority: Some(3),
        timeout_s: Some(120),
        metadata,
        submitted_at_ms: Some(1_700_000_000_000),
        queue_timeout_s: Some(60),
        submitted_by: Some("alice".into()),
        tenant: Some("acme".into()),
        webhook: None,
    }
}

#[test]
fn job_round_trips_through_msgpack_with_named_fields() {
    let job = sample_job();
    let body = Encoding::Msgpack.encode(&job).unwrap();
    // Named fields: the body is a map, so field order is not part of the contract.
    assert_eq!(body[0] & 0xf0, 0x80, "msgpack body must be a map");
    let decoded = JobMessage::decode(Some(CONTENT_TYPE_MSGPACK), &body, None).unwrap();
    assert_eq!(decoded, job);
}

#[test]
fn job_round_trips_through_json() {
    let mut job = sample_job();
    job.inputs.remove("image"); // JSON has no bytes type
    let body = Encoding::Json.encode(&job).unwrap();
    let decoded = JobMessage::decode(Some("application/json; charset=utf-8"), &body, None).unwrap();
    assert_eq!(decoded, job);
}

#[test]
fn minimal_json_job_takes_defaults_and_message_id() {
    let body = br#"{"feature": "echo", "inputs": {"text": "hi"}}"#;
    let job = JobMessage::decode(None, body, Some("from-message-id")).unwrap();
    assert_eq!(job.job_id, "from-message-id");
    assert_eq!(job.schema_version, 1);
    assert_eq!(job.model, None);
    assert_eq!(job.inputs["text"], Value::from("hi"));
}

#[test]
fn missing_job_id_is_reported() {
    let err = JobMessage::decode(None, br#"{"feature":"echo"}"#, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::MissingJobId);
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    let err = JobMessage::decode(Some(CONTENT_TYPE_JSON), b"{not json", None).unwrap_err();
    assert_eq!(err.code, ErrorCode::MalformedMessage);
    let err = JobMessage::decode(None, &[0xc1, 0x00, 0xff], None).unwrap_err();
    assert_eq!(err.code, ErrorCode::MalformedMessage);
    let err = JobMessage::decode(Some(CONTENT_TYPE_JSON), br#"{"inputs": 3}"#, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::MalformedMessage);
}

#[test]
fn unknown_content_type_and_future_schema_are_refused() {
    let err = JobMessage::decode(Some("text/plain"), b"hello", None).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnsupportedContentType);
    let body = br#"{"schema_version": 99, "job_id": "a", "feature": "echo"}"#;
    let err = JobMessage::decode(None, body, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnsupportedSchemaVersion);
}

#[test]
fn job_ids_with_spaces_or_too_long_are_refused() {
    assert!(validate_job_id("abc-123_x.y").is_ok());
    assert_eq!(
        validate_job_id("a b").unwrap_err().code,
        ErrorCode::MalformedMessage
    );
    assert!(validate_job_id(&"x".repeat(MAX_JOB_ID_LEN + 1)).is_err());
}

#[test]
fn status_and_event_round_trip_as_json() {
    for status in JobStatus::ALL {
        assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(json, format!("\"{}\"", status.as_str()));
    }
    let event = StatusEvent {
        job_id: "j".into(),
        status: JobStatus::Failed,
        ts_ms: 5,
        feature: Some("echo".into()),
        model: None,
        worker: Some("w".into()),
        attempt: Some(2),
        progress: None,
        error: Some(JobError::new(ErrorCode::InvalidInput, "missing 'text'")),
        tenant: Some("acme".into()),
    };
    let json = serde_json::to_string(&event).unwrap();
    assert!(json.contains(r#""code":"invalid_input""#), "{json}");
    assert!(json.contains(r#""tenant":"acme""#), "{json}");
    assert_eq!(serde_json::from_str::<StatusEvent>(&json).unwrap(), event);
}

#[test]
fn reply_round_trips_in_both_encodings() {
    let mut result = ValueMap::new();
    result.insert("mesh".into(), Value::from("artifact:abc"));
    let reply = JobReply {
        schema_version: SCHEMA_VERSION,
        job_id: "j".into(),
        status: JobStatus::Completed,
        result: Some(result),
        error: None,
        finished_at_ms: 9,
    };
    let packed = Encoding::Msgpack.encode(&reply).unwrap();
    assert_eq!(rmp_serde::from_slice::<JobReply>(&packed).unwrap(), reply);
    let json = Encoding::Json.encode(&reply).unwrap();
    assert_eq!(serde_json::from_slice::<JobReply>(&json).unwrap(), reply);
}

#[test]
fn json_jobs_carry_bytes_as_base64_markers_and_results_render_them_back() {
    let body = br#"{"job_id": "b", "feature": "f", "inputs": {"image": {"$bytes": "AP8H"}, "nested": [{"$bytes": ""}]}}"#;
    let job = JobMessage::decode(Some(CONTENT_TYPE_JSON), body, None).unwrap();
    assert_eq!(job.inputs["image"], Value::Binary(vec![0, 255, 7]));
    assert_eq!(
        job.inputs["nested"],
        Value::Array(vec![Value::Binary(vec![])])
    );
    assert_eq!(
        value_map_to_json_string(&job.inputs),
        r#"{"image":{"$bytes":"AP8H"},"nested":[{"$bytes":""}]}"#
    );
    let bad = br#"{"job_id": "b", "feature": "f", "inputs": {"image": {"$bytes": "***"}}}"#;
    assert_eq!(
        JobMessage::decode(None, bad, None).unwrap_err().code,
        ErrorCode::MalformedMessage
    );
    let reply = JobReply {
        schema_version: 1,
        job_id: "b".into(),
        status: JobStatus::Completed,
        result: Some(job.inputs.clone()),
        error: None,
        finished_at_ms: 1,
    };
    let json: serde_json::Value =
        serde_json::from_slice(&reply.encode(Encoding::Json).unwrap()).unwrap();
    assert_eq!(json["result"]["image"]["$bytes"], "AP8H");
    let packed: JobReply =
        rmp_serde::from_slice(&reply.encode(Encoding::Msgpack).unwrap()).unwrap();
    assert_eq!(
        packed.result.unwrap()["image"],
        Value::Binary(vec![0, 255, 7])
    );
}

#[test]
fn error_codes_serialize_as_their_names() {
    for code in [
        ErrorCode::MalformedMessage,
        ErrorCode::Timeout,
        ErrorCode::UnknownFeature,
    ] {
        assert_eq!(
            serde_json::to_string(&code).unwrap(),
            format!("\"{}\"", code.as_str())
        );
    }
}
