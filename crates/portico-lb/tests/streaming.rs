//! 100 MB through the proxy each way without memory growing with the body: alone in its own
//! test binary so that the process's peak RSS measures only this.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use support::*;

const TOTAL: u64 = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_in_bounded_memory() {
    let dir = TempDir::new("stream");
    let b = Backend::start("b").await;
    let lb = start_lb(&one_group(b.addr, ""), dir.path()).await;
    let l = addr(&lb, "l");
    // Warm up so that buffers and pools exist before the baseline.
    assert_eq!(
        get(l, "x", "/download?bytes=1000000").await.body.len(),
        1_000_000
    );
    let baseline = peak_rss_bytes();

    // Upload: the body is generated chunk by chunk; the target counts what arrives.
    let stream = tokio::net::TcpStream::connect(l).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let body = StreamBody::new(futures_util::stream::iter(
        (0..TOTAL / chunk.len() as u64)
            .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    ));
    let req = http::Request::post("/upload")
        .header("host", "x")
        .body(body)
        .unwrap();
    let res = tx.send_request(req).await.unwrap();
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&text),
        format!("received {TOTAL}\n")
    );

    // Download: read frame by frame, never holding the whole body.
    let stream = tokio::net::TcpStream::connect(l).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("/download?bytes={TOTAL}"))
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let mut body = tx.send_request(req).await.unwrap().into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        n += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(n, TOTAL);

    let growth = peak_rss_bytes().saturating_sub(baseline);
    assert!(
        growth < 32 * 1024 * 1024,
        "peak RSS grew by {} MB while streaming 2 × 100 MB",
        growth / (1024 * 1024)
    );
}
