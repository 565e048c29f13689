use super::*;

/// The error a client sees for the error reply `text`.
fn server_error(text: &str) -> RedisError {
    let reply = format!("-{text}\r\n");
    match redis::parse_redis_value(reply.as_bytes()).expect("an error reply") {
        Value::ServerError(error) => RedisError::from(error),
        other => panic!("not an error reply: {other:?}"),
    }
}

#[test]
fn readonly_and_lost_connections_mean_the_primary_is_gone() {
    assert!(primary_lost(&server_error(
        "READONLY You can't write against a read only replica."
    )));
    assert!(primary_lost(&server_error(
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."
    )));
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert!(primary_lost(&RedisError::from(refused)));
    assert!(primary_lost(&timed_out("test")));
}

#[test]
fn script_and_command_errors_keep_the_primary() {
    assert!(!primary_lost(&server_error("NOSCRIPT No matching script.")));
    assert!(!primary_lost(&server_error(
        "ERR wrong number of arguments"
    )));
    assert!(!primary_lost(&server_error(
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    )));
}
