//! Passing descriptors through the broker leaks none, on either side.
//!
//! Alone in its own test binary so that no other test opens descriptors in
//! this process while it counts them.

use std::os::fd::AsFd;

use pidbus_tests::{Broker, fd_count_of};

#[tokio::test]
async fn ten_thousand_messages_with_fds_leave_fd_counts_unchanged() {
    let broker = Broker::start();
    let bus = pidbus::Connection::connect(broker.socket()).await.unwrap();
    let (read_end, write_end) = rustix::pipe::pipe().unwrap();
    // Warm up (the first request may allocate runtime resources) without
    // fds, so the broker holds no transient descriptor when we count.
    bus.ping(b"warm-up", &[]).await.unwrap();
    let client_before = fd_count_of(std::process::id());
    let broker_before = broker.fd_count();

    for i in 0..10_000u32 {
        let fds = [read_end.as_fd(), write_end.as_fd()];
        let (payload, returned) = bus.ping(&i.to_le_bytes(), &fds).await.unwrap();
        assert_eq!(payload, i.to_le_bytes());
        assert_eq!(returned.len(), 2);
        if i == 0 {
            // The returned descriptors are the same pipe: write through one,
            // read through ours.
            rustix::io::write(&returned[1], b"x").unwrap();
            let mut byte = [0u8; 1];
            rustix::io::read(&read_end, &mut byte).unwrap();
            assert_eq!(&byte, b"x");
        }
    }

    assert_eq!(
        fd_count_of(std::process::id()),
        client_before,
        "client leaked descriptors"
    );
    // The broker closes its copies just after sending them back, so its count
    // settles a moment after our last answer arrives; a leak never settles.
    broker.wait_for_fd_count(broker_before);
}
