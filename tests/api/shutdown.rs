//! Graceful shutdown of the real binary: on SIGTERM it stops accepting connections, finishes the
//! requests in flight, stops its engine and exits 0; the tasks it was running are finished by the next
//! replica, each settled once and submitted upstream once.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    assert_ledger_consistent, bearer, http_client, new_account, wait_all_terminal, Gateway, TestDatabase,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_the_next_replica_finishes_the_tasks() {
    let database = TestDatabase::new(5).await;
    let pool = database.pool.clone();
    let dir = tempfile::tempdir().expect("temporary directory");
    let files = dir.path().join("files");
    let client = http_client();
    let (_, key) = new_account(&pool, 10_000).await;
    // A lease far longer than the test: a task left claimed by the stopped replica would never finish.
    let env = [("AIO__TASKS__LEASE_SECS", "600"), ("AIO__SERVER__SHUTDOWN_GRACE_SECS", "20")];
    let mut first = Gateway::start_with(&database.url, &files, &dir.path().join("first.log"), "all", &env);
    first.ready(&client).await;
    for i in 0..6 {
        first.create(&client, &key, &format!("A lake {i} [simulate:delay=1500]")).await;
    }

    // Requests in flight: their headers and the first half of their bodies are sent before SIGTERM,
    // the rest after it.
    let address = first.address.trim_start_matches("http://").to_owned();
    let mut in_flight = Vec::new();
    for i in 0..3 {
        let body = format!(r#"{{"prompt": "in flight {i} [simulate:delay=1500]"}}"#);
        let head = format!(
            "POST /api/v1/images/generations HTTP/1.1\r\nHost: {address}\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            bearer(&key),
            body.len()
        );
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        let (start, rest) = body.split_at(body.len() / 2);
        stream.write_all(format!("{head}{start}").as_bytes()).await.expect("send the first half");
        in_flight.push((stream, rest.to_owned()));
    }
    // Let the server read those heads before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = Pid::from_raw(i32::try_from(first.child.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("send SIGTERM");
    // New connections are refused once the listener is closed (the bound only stops a hang).
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.get(format!("{}/healthz", first.address)).send().await.is_ok() {
        assert!(tokio::time::Instant::now() < give_up, "still accepting connections after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (mut stream, rest) in in_flight {
        stream.write_all(rest.as_bytes()).await.expect("send the rest after SIGTERM");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read the answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "the in-flight request is answered: {answer}");
        assert!(answer.contains(r#""task_id":"task_"#), "{answer}");
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = first.child.wait().expect("wait for the gateway");
        (status, first)
    })
    .await
    .expect("join");
    assert!(status.0.success(), "a clean exit after SIGTERM: {:?}", status.0);
    let log = std::fs::read_to_string(dir.path().join("first.log")).expect("read the log");
    assert!(log.contains("engine stopped") && log.contains("stopped"), "{log}");

    // The next replica finishes every task: nothing lost to the stopped one's leases.
    let mut second = Gateway::start_with(&database.url, &files, &dir.path().join("second.log"), "all", &env);
    second.ready(&client).await;
    wait_all_terminal(&pool).await;
    let (tasks, succeeded): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'succeeded') FROM tasks")
            .fetch_one(&pool)
            .await
            .expect("count tasks");
    assert_eq!((tasks, succeeded), (9, 9));
    let (twice,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT task_id FROM simulated_jobs GROUP BY task_id HAVING count(*) > 1) doubled",
    )
    .fetch_one(&pool)
    .await
    .expect("count jobs");
    assert_eq!(twice, 0, "no task was submitted upstream twice");
    assert_ledger_consistent(&pool).await;
    second.kill();
}
